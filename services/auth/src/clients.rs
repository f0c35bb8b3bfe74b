//! OAuth clients of a tenant: public clients (browser and native apps: no secret, PKCE) and
//! confidential ones (servers and service clients: a 256-bit secret, shown once, stored as its
//! SHA-256). Registration applies the rules of [`keel_oauth::redirect`]: exact redirect URIs,
//! no wildcards, plain http only on loopback.

use chrono::{DateTime, Utc};
use keel_oauth::request::ClientAuth;
use keel_store::Shards;
use keel_tenancy::TenantId;
use sqlx::Row;
use subtle::ConstantTimeEq;

use crate::identity::{Error, hash_token, invalid, random_token};

pub use keel_authspec::client::{
    ClientSpec, GRANT_CLIENT_CREDENTIALS, GRANT_CODE, GRANT_REFRESH, check as check_spec,
};

/// The `sid` of client-credentials tokens: `client.<client_id>`. Disabling the client revokes
/// it like a session.
pub fn client_sid(client_id: &str) -> String {
    format!("client.{client_id}")
}

/// The `sub` of client-credentials tokens: `client:<client_id>`, which no user ID (a UUID) can
/// equal, so a client can never act as a user.
pub fn client_subject(client_id: &str) -> String {
    format!("client:{client_id}")
}

/// The client a client-credentials `sid` names (user sessions never contain a dot).
pub fn client_of_sid(sid: &str) -> Option<&str> {
    sid.strip_prefix("client.")
}

#[derive(Debug, Clone)]
pub struct Client {
    pub tenant: TenantId,
    pub spec: ClientSpec,
    pub disabled: bool,
    pub create_time: DateTime<Utc>,
    secret_hash: Option<Vec<u8>>,
}

impl Client {
    pub fn allows(&self, grant: &str) -> bool {
        self.spec.allows(grant)
    }
}

#[derive(Clone)]
pub struct Clients {
    shards: Shards,
}

fn row_to_client(tenant: &TenantId, row: &sqlx::postgres::PgRow) -> Result<Client, Error> {
    let secret_hash: Option<Vec<u8>> = row.try_get("secret_hash")?;
    Ok(Client {
        tenant: tenant.clone(),
        spec: ClientSpec {
            client_id: row.try_get("client_id")?,
            display_name: row.try_get("display_name")?,
            confidential: secret_hash.is_some(),
            redirect_uris: row.try_get("redirect_uris")?,
            grant_types: row.try_get("grant_types")?,
            scopes: row.try_get("scopes")?,
        },
        disabled: row.try_get("disabled")?,
        create_time: row.try_get("create_time")?,
        secret_hash,
    })
}

/// The columns every query returns (a macro, so queries stay `&'static str` for sqlx).
macro_rules! columns {
    () => {
        "client_id, display_name, secret_hash, redirect_uris, grant_types, scopes, disabled, create_time"
    };
}

impl Clients {
    pub fn new(shards: Shards) -> Self {
        Clients { shards }
    }

    /// Registers a client, or brings an existing one in line with `spec` (idempotent: applying
    /// the same spec twice changes nothing). Returns the client, its secret when one was just
    /// minted (a new confidential client, or `rotate_secret`), and whether anything changed.
    pub async fn put(
        &self,
        tenant: &TenantId,
        spec: &ClientSpec,
        rotate_secret: bool,
    ) -> Result<(Client, Option<String>, bool), Error> {
        check_spec(spec).map_err(|(field, why)| invalid(field, why))?;
        let existing = self.get(tenant, &spec.client_id).await?;
        let needs_secret = spec.confidential
            && (rotate_secret || existing.as_ref().is_none_or(|c| c.secret_hash.is_none()));
        let secret = if needs_secret {
            Some(format!("cs1.{}", random_token::<32>()?))
        } else {
            None
        };
        if let Some(c) = &existing
            && c.spec == *spec
            && !c.disabled
            && secret.is_none()
        {
            return Ok((c.clone(), None, false));
        }
        let secret_hash: Option<Vec<u8>> = match (&secret, &existing) {
            (Some(s), _) => Some(hash_token(s)),
            (None, Some(c)) if spec.confidential => c.secret_hash.clone(),
            (None, _) => None,
        };
        let row = sqlx::query(concat!("INSERT INTO oauth_clients (tenant_id, client_id, display_name, secret_hash, redirect_uris, grant_types, scopes)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (tenant_id, client_id) DO UPDATE SET
               display_name = EXCLUDED.display_name, secret_hash = EXCLUDED.secret_hash,
               redirect_uris = EXCLUDED.redirect_uris, grant_types = EXCLUDED.grant_types,
               scopes = EXCLUDED.scopes, disabled = false
             RETURNING ", columns!(), ""))
        .bind(tenant.as_str())
        .bind(&spec.client_id)
        .bind(&spec.display_name)
        .bind(secret_hash)
        .bind(&spec.redirect_uris)
        .bind(&spec.grant_types)
        .bind(&spec.scopes)
        .fetch_one(self.shards.pool(tenant))
        .await?;
        Ok((row_to_client(tenant, &row)?, secret, true))
    }

    pub async fn get(&self, tenant: &TenantId, client_id: &str) -> Result<Option<Client>, Error> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM oauth_clients WHERE tenant_id = $1 AND client_id = $2"
        ))
        .bind(tenant.as_str())
        .bind(client_id)
        .fetch_optional(self.shards.pool(tenant))
        .await?;
        row.map(|r| row_to_client(tenant, &r)).transpose()
    }

    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<Client>, Error> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM oauth_clients WHERE tenant_id = $1 ORDER BY client_id"
        ))
        .bind(tenant.as_str())
        .fetch_all(self.shards.pool(tenant))
        .await?;
        rows.iter().map(|r| row_to_client(tenant, r)).collect()
    }

    /// Disables a client: it can no longer authenticate or redeem anything.
    pub async fn disable(&self, tenant: &TenantId, client_id: &str) -> Result<Client, Error> {
        let row = sqlx::query(concat!("UPDATE oauth_clients SET disabled = true WHERE tenant_id = $1 AND client_id = $2 RETURNING ", columns!(), ""))
        .bind(tenant.as_str())
        .bind(client_id)
        .fetch_optional(self.shards.pool(tenant))
        .await?
        .ok_or_else(|| Error::UnknownClient(client_id.to_owned()))?;
        row_to_client(tenant, &row)
    }

    /// Authenticates a client at the token or introspection endpoint: a confidential client
    /// must present its secret, a public one must not present any (`invalid_client` either way).
    pub async fn authenticate(
        &self,
        tenant: &TenantId,
        auth: &ClientAuth,
    ) -> Result<Client, Error> {
        let client = self
            .get(tenant, auth.client_id())
            .await?
            .filter(|c| !c.disabled);
        // Unknown clients cost the same hash as known ones.
        let presented = match auth {
            ClientAuth::Secret { secret, .. } => Some(hash_token(secret)),
            ClientAuth::None { .. } => None,
        };
        let Some(client) = client else {
            return Err(Error::InvalidClient);
        };
        match (&client.secret_hash, presented) {
            (Some(stored), Some(given)) if bool::from(stored.ct_eq(&given)) => Ok(client),
            (None, None) => Ok(client),
            _ => Err(Error::InvalidClient),
        }
    }
}
