//! Admission for every public call: route lookup, credentials, tenant resolution, scope.
//!
//! Order of checks: the route must exist (fail closed), anonymous routes pass, then the bearer
//! token is parsed, its tenant resolved through the auth service's directory (cached briefly),
//! a client-sent `keel-tenant-id` must agree with it, and the route's scope must be granted.
//!
//! Credentials today are development tokens (`Bearer dev.<tenant>`, all scopes), accepted only
//! when `KEEL_GATEWAY_DEV_TOKENS=true`; signed access tokens replace them with the auth issue.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keel_errors::{Reason, reason_of, status};
use keel_proto::auth::tenant_directory_client::TenantDirectoryClient;
use keel_runtime::{Caller, Gate, GateFuture};
use keel_tenancy::{GRPC_TENANT_HEADER, TenantId};
use tonic::transport::Channel;

use crate::routes::{self, Access};

/// Cache a resolved tenant this long: tenant status changes (suspension) take effect within it.
pub const TENANT_CACHE_TTL: Duration = Duration::from_secs(5);
/// Cache "no such tenant" for less time, so a tenant created a moment ago becomes usable fast.
const NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(1);
/// Bound on the cache, so a flood of made-up tenant IDs cannot grow memory without limit.
const TENANT_CACHE_CAPACITY: usize = 10_000;
/// Deadline for the directory lookup.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `authorization` value considered at all (tokens are far smaller).
const MAX_AUTHORIZATION_BYTES: usize = 8 * 1024;
const DEV_TOKEN_PREFIX: &str = "dev.";

#[derive(Clone, Debug)]
enum Resolved {
    Active,
    Suspended,
    Unknown,
}

pub struct AuthGate {
    dev_tokens: bool,
    directory: TenantDirectoryClient<Channel>,
    cache: Mutex<HashMap<TenantId, (Instant, Resolved)>>,
}

fn unauthenticated(msg: &str) -> tonic::Status {
    let mut st = status(Reason::Unauthenticated, msg, Vec::new());
    st.metadata_mut().insert(
        "www-authenticate",
        tonic::metadata::MetadataValue::from_static("Bearer realm=\"keel\""),
    );
    st
}

impl AuthGate {
    pub fn new(dev_tokens: bool, auth: Channel) -> Self {
        AuthGate {
            dev_tokens,
            directory: TenantDirectoryClient::new(auth),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, t: &TenantId) -> Option<Resolved> {
        let cache = self.cache.lock().ok()?;
        let (at, r) = cache.get(t)?;
        let ttl = match r {
            Resolved::Unknown => NEGATIVE_CACHE_TTL,
            _ => TENANT_CACHE_TTL,
        };
        (at.elapsed() < ttl).then(|| r.clone())
    }

    async fn resolve(&self, t: &TenantId) -> Result<Resolved, tonic::Status> {
        if let Some(r) = self.cached(t) {
            return Ok(r);
        }
        let mut req = tonic::Request::new(keel_proto::auth::GetTenantRequest {
            tenant_id: t.to_string(),
        });
        req.set_timeout(DIRECTORY_TIMEOUT);
        // On behalf of this tenant: the directory's spans and logs carry it too.
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(t.as_str()) {
            req.metadata_mut().insert(GRPC_TENANT_HEADER, v);
        }
        keel_telemetry::propagation::inject_grpc(req.metadata_mut());
        let resolved = match self.directory.clone().get_tenant(req).await {
            Ok(resp) if resp.get_ref().status == "active" => Resolved::Active,
            Ok(_) => Resolved::Suspended,
            Err(st) if reason_of(&st) == Reason::TenantUnknown => Resolved::Unknown,
            Err(st) => {
                tracing::warn!(code = ?st.code(), message = st.message(), "tenant directory unavailable");
                return Err(status(
                    Reason::Unavailable,
                    "the tenant directory is unavailable; retry shortly",
                    vec![("dependency", "auth".into())],
                ));
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= TENANT_CACHE_CAPACITY {
                cache.retain(|_, (at, _)| at.elapsed() < TENANT_CACHE_TTL);
                if cache.len() >= TENANT_CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(t.clone(), (Instant::now(), resolved.clone()));
        }
        Ok(resolved)
    }

    /// Parses the bearer credential into the caller it claims to be.
    fn credential(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<(TenantId, String, Vec<String>), tonic::Status> {
        let raw = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
            unauthenticated("the `authorization` metadata is required: `Bearer <access token>`")
        })?;
        if raw.len() > MAX_AUTHORIZATION_BYTES {
            return Err(unauthenticated("the `authorization` metadata is too large"));
        }
        let value = raw
            .to_str()
            .map_err(|_| unauthenticated("the `authorization` metadata is not ASCII"))?;
        let (scheme, token) = value.split_once(' ').ok_or_else(|| {
            unauthenticated("the `authorization` metadata must be `Bearer <access token>`")
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(unauthenticated(
                "the `authorization` metadata must be `Bearer <access token>`",
            ));
        }
        match token.strip_prefix(DEV_TOKEN_PREFIX) {
            Some(tenant) if self.dev_tokens => {
                let tenant = TenantId::parse(tenant).map_err(|_| {
                    unauthenticated("the development token names a malformed tenant ID")
                })?;
                Ok((
                    tenant.clone(),
                    format!("dev:{tenant}"),
                    vec!["*".to_owned()],
                ))
            }
            _ => Err(unauthenticated("the access token is not valid")),
        }
    }
}

impl Gate for AuthGate {
    fn admit<'a>(&'a self, path: &'a str, headers: &'a http::HeaderMap) -> GateFuture<'a> {
        Box::pin(async move {
            if routes::UNGATED_PREFIXES.iter().any(|p| path.starts_with(p)) {
                return Ok(None);
            }
            let route = routes::lookup(path).ok_or_else(|| {
                status(
                    Reason::NotImplemented,
                    format!("{path} is not a keel.v1 method"),
                    Vec::new(),
                )
            })?;
            let scope = match route.access {
                // Anonymous flows carry no caller; the auth issue serves them.
                Access::Anonymous => return Ok(None),
                Access::Token(s) | Access::StepUp(s) => s,
            };
            let (tenant, subject, scopes) = self.credential(headers)?;
            match self.resolve(&tenant).await? {
                Resolved::Active => {}
                Resolved::Unknown => {
                    return Err(status(
                        Reason::TenantUnknown,
                        "the credentials name a tenant that does not exist",
                        vec![("tenant_id", tenant.to_string())],
                    ));
                }
                Resolved::Suspended => {
                    return Err(status(
                        Reason::PermissionDenied,
                        "the tenant is suspended",
                        vec![("tenant_id", tenant.to_string())],
                    ));
                }
            }
            if let Some(claimed) = headers.get(GRPC_TENANT_HEADER)
                && claimed.as_bytes() != tenant.as_str().as_bytes()
            {
                return Err(status(
                    Reason::TenantMismatch,
                    format!("`{GRPC_TENANT_HEADER}` disagrees with the tenant of the credentials"),
                    vec![("field", GRPC_TENANT_HEADER.into())],
                ));
            }
            if !scopes.iter().any(|s| s == "*" || s == scope) {
                return Err(status(
                    Reason::PermissionDenied,
                    format!("the token lacks the `{scope}` scope"),
                    vec![("scope", scope.into())],
                ));
            }
            Ok(Some(Caller {
                tenant,
                subject,
                scopes,
            }))
        })
    }
}
