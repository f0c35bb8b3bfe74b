//! Who may call the admin APIs (`TenantDirectory.CreateTenant/ListTenants`, `IdentityAdmin`):
//!
//! * the **operator**, with the bootstrap credential from `KEEL_AUTH_ADMIN_TOKEN` (compared as
//!   a SHA-256 in constant time; unset means no operator access at all) — every call;
//! * a **tenant admin**, with an access token of that tenant carrying `tenant:admin` (granted by
//!   the `admin` role) — calls about their own tenant only.
//!
//! Reads the gateway needs (`GetTenant`, `KeyDirectory`) stay open to internal callers: they
//! return nothing secret.

use keel_tenancy::TenantId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::identity::{Error, Identity};

/// The scope that makes a user their tenant's administrator.
pub const TENANT_ADMIN_SCOPE: &str = "tenant:admin";
/// Shorter operator credentials are refused at startup.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// Who a successful check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    Operator,
    Tenant(TenantId),
}

#[derive(Clone)]
pub struct AdminGuard {
    operator: Option<[u8; 32]>,
    identity: Identity,
}

fn bearer(meta: &MetadataMap) -> Option<&str> {
    let v = meta.get("authorization")?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
}

impl AdminGuard {
    pub fn new(operator_token: Option<&str>, identity: Identity) -> Self {
        AdminGuard {
            operator: operator_token.map(|t| Sha256::digest(t.as_bytes()).into()),
            identity,
        }
    }

    /// Admits the operator, or (when `tenant` is given) an admin of that tenant.
    pub async fn check(
        &self,
        meta: &MetadataMap,
        tenant: Option<&TenantId>,
    ) -> Result<Admin, Status> {
        let token = bearer(meta).ok_or(Error::InvalidCredentials)?;
        if let Some(op) = &self.operator
            && bool::from(Sha256::digest(token.as_bytes()).as_slice().ct_eq(op))
        {
            return Ok(Admin::Operator);
        }
        let v = self.identity.verify_access_token(token).await?;
        let Some(tenant) = tenant else {
            return Err(Error::Forbidden("only the operator may do this").into());
        };
        if v.tenant != *tenant {
            return Err(Error::Forbidden("tenant admins manage their own tenant only").into());
        }
        if !v.claims.scopes().any(|s| s == TENANT_ADMIN_SCOPE) {
            return Err(Error::Forbidden("this needs the tenant:admin scope").into());
        }
        Ok(Admin::Tenant(v.tenant))
    }
}
