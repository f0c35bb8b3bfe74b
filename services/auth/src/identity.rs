//! Users, logins, sessions and refresh-token families.
//!
//! * Login: the attempt is *reserved* (the failure counter incremented atomically, refused past
//!   the limit or while locked) before the password is checked, so parallel guesses can never
//!   exceed the limit; success resets it. Unknown user, wrong password, locked or disabled
//!   account all answer the same, after the same argon2 work.
//! * Refresh: `UPDATE … SET state = 'used' WHERE state = 'active'` is the one atomic step; of N
//!   concurrent redemptions one wins, and every other presentation of a used token revokes the
//!   whole family and its session (no grace window, so there is nothing to bypass: R-4…R-6).
//! * Revocation reaches the gateway through Redis (`keel:revoked:<tenant>:<sid>`), which it
//!   consults on every call.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use keel_authspec::TenantPolicy;
use keel_errors::{KeelError, Reason};
use keel_store::{Shards, StoreError};
use keel_tenancy::TenantId;
use keel_token::{AccessClaims, Clock};
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use crate::keys::KeyStore;
use crate::passwords::{self, Hasher};
use crate::tenants::Directory;

/// NIST 800-63B §5.2.2: at most 100 consecutive failed attempts per account.
pub const MAX_FAILED_LOGINS: i32 = 100;
/// Failures allowed before delays start.
const FREE_FAILURES: i32 = 5;
/// Longest delay between attempts once delays apply.
const MAX_LOCK_SECS: i64 = 900;
/// Prefix of revoked-session keys in Redis.
/// Default first part of every Redis key (`KEEL_REDIS_PREFIX`; tests use one per test).
pub const DEFAULT_REDIS_PREFIX: &str = "keel";
/// Failed logins counted per tenant and source address within this window...
const SOURCE_WINDOW_SECS: i64 = 900;
/// ...refused beyond this many (per-account limits stay the primary defence, NIST 800-63B).
pub const MAX_SOURCE_FAILURES: i64 = 50;
const REFRESH_PREFIX: &str = "rt1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {problem}")]
    InvalidArgument {
        field: &'static str,
        problem: String,
    },
    /// Deliberately vague: the same for every login failure.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// RFC 6749 `invalid_grant`: the refresh token is unknown, used, expired or revoked.
    #[error("the refresh token is not valid")]
    InvalidGrant,
    #[error("user {0} already exists")]
    UserExists(String),
    /// RFC 6749 `invalid_client`: unknown or disabled client, or wrong secret.
    #[error("client authentication failed")]
    InvalidClient,
    #[error("no client {0}")]
    UnknownClient(String),
    #[error("no session {0}")]
    UnknownSession(String),
    /// Authenticated, but not allowed to do this.
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("stored data is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("revocation store unavailable: {0}")]
    Redis(String),
    /// Too many failed logins from one source address.
    #[error("too many failed logins from this address; retry later")]
    SourceThrottled,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tenant(#[from] crate::tenants::Error),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Store(e.into())
    }
}

impl KeelError for Error {
    fn reason(&self) -> Reason {
        match self {
            Error::InvalidArgument { .. } => Reason::InvalidArgument,
            Error::InvalidCredentials | Error::InvalidGrant | Error::InvalidClient => {
                Reason::Unauthenticated
            }
            Error::UnknownClient(_) | Error::UnknownSession(_) => Reason::NotFound,
            Error::Forbidden(_) => Reason::PermissionDenied,
            Error::UserExists(_) => Reason::IdempotencyKeyReused,
            Error::Corrupt(_) => Reason::Internal,
            Error::Redis(_) => Reason::Unavailable,
            Error::SourceThrottled => Reason::RateLimited,
            Error::Store(e) => e.reason(),
            Error::Tenant(e) => e.reason(),
        }
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        match self {
            Error::InvalidArgument { field, .. } => vec![("field", (*field).into())],
            Error::SourceThrottled => {
                vec![("retry_after_ms", (SOURCE_WINDOW_SECS * 1000).to_string())]
            }
            Error::Store(e) => e.details(),
            _ => Vec::new(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        keel_errors::to_status(&e)
    }
}

pub(crate) fn invalid(field: &'static str, problem: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field,
        problem: problem.into(),
    }
}

/// Unix seconds as a timestamp for the database (the epoch for out-of-range values).
pub(crate) fn ts(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

pub(crate) fn random_token<const N: usize>() -> Result<String, Error> {
    keel_token::keys::random_bytes::<N>()
        .map(|b| URL_SAFE_NO_PAD.encode(b))
        .map_err(|_| Error::Corrupt("random source"))
}

pub(crate) fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub use keel_authspec::policy::OIDC_SCOPES;

/// The deployment's default token lifetimes (tenants may set their own in their policy).
#[derive(Debug, Clone)]
pub struct Lifetimes {
    pub access_secs: i64,
    pub refresh_idle_secs: i64,
    pub refresh_absolute_secs: i64,
}

/// RFC 9068 suggests short access tokens; 5 minutes bounds the damage of a leaked one.
pub const DEFAULT_ACCESS_SECS: i64 = 300;
/// A refresh family unused for 7 days dies (ASVS 7.3.1 inactivity).
pub const DEFAULT_REFRESH_IDLE_SECS: i64 = 7 * 86400;
/// And every family dies 30 days after login, used or not (ASVS 10.4.8 absolute expiry).
pub const DEFAULT_REFRESH_ABSOLUTE_SECS: i64 = 30 * 86400;

pub struct Issued {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
    /// The scope the access token carries.
    pub scope: String,
    /// The session the tokens belong to (empty while a second factor is pending).
    pub sid: String,
    /// Set (and the tokens empty) when the password was right and a second factor is needed.
    pub mfa_token: Option<String>,
}

#[derive(Clone)]
pub struct Identity {
    pub shards: Shards,
    pub keys: KeyStore,
    pub tenants: Directory,
    pub hasher: Hasher,
    pub clock: Arc<dyn Clock>,
    pub redis: deadpool_redis::Pool,
    pub issuer_base: String,
    pub policies: crate::policies::Policies,
    pub sealer: crate::seal::Sealer,
    pub audit: crate::audit::Audit,
    pub redis_prefix: String,
    pub clients: crate::clients::Clients,
}

pub(crate) struct SessionInfo {
    pub(crate) sid: String,
    pub(crate) user_id: Uuid,
    pub(crate) client_id: String,
    pub(crate) acr: String,
    pub(crate) amr: Vec<String>,
    pub(crate) auth_time: i64,
    pub(crate) scope: String,
}

/// Someone who has just proved who they are: the input of a new session.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: TenantId,
    pub tier: String,
    pub user_id: Uuid,
    pub roles: Vec<String>,
    /// `pwd` or `mfa`.
    pub acr: String,
    pub amr: Vec<String>,
    pub auth_time: i64,
}

/// The outcome of a correct password.
pub enum Authenticated {
    Done(Principal),
    /// A second factor is required; the token names the parked login.
    MfaRequired(String),
}

impl Identity {
    pub async fn create_user(
        &self,
        tenant: &TenantId,
        username: &str,
        password: String,
        roles: Vec<String>,
    ) -> Result<(Uuid, Vec<String>, DateTime<Utc>), Error> {
        if username.is_empty()
            || username.chars().count() > 128
            || username.chars().any(char::is_control)
        {
            return Err(invalid("username", "must be 1 to 128 printable characters"));
        }
        passwords::check_policy(&password).map_err(|p| invalid("password", p))?;
        let roles = if roles.is_empty() {
            vec!["member".to_owned()]
        } else {
            roles
        };
        self.check_roles(tenant, &roles).await?;
        self.tenants.get(tenant).await?;
        let hash = self
            .hasher
            .hash(password)
            .await
            .map_err(|_| Error::Corrupt("hashing"))?;
        let id = Uuid::now_v7();
        let row = sqlx::query(
            "INSERT INTO users (tenant_id, user_id, username, password_hash, roles) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id, username) DO NOTHING RETURNING create_time",
        )
        .bind(tenant.as_str())
        .bind(id)
        .bind(username)
        .bind(hash)
        .bind(&roles)
        .fetch_optional(self.shards.pool(tenant))
        .await?
        .ok_or_else(|| Error::UserExists(username.to_owned()))?;
        Ok((id, roles, row.try_get("create_time")?))
    }

    /// Every role must be one the tenant's policy defines.
    pub(crate) async fn check_roles(
        &self,
        tenant: &TenantId,
        roles: &[String],
    ) -> Result<(), Error> {
        let policy = self.policies.get(tenant).await?;
        match roles.iter().find(|r| !policy.roles.contains_key(*r)) {
            Some(r) => Err(invalid(
                "roles",
                format!(
                    "unknown role {r:?}; this tenant defines {}",
                    policy.roles.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    /// Password login (the gRPC flow): a session at once, or an MFA challenge.
    pub async fn login(
        &self,
        tenant_raw: &str,
        username: &str,
        password: String,
        client_id: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<Issued, Error> {
        match self
            .password_step(tenant_raw, username, password, client_id, source)
            .await?
        {
            Authenticated::Done(p) => self.start_session(&p, client_id, None).await,
            Authenticated::MfaRequired(mfa_token) => Ok(Issued {
                access_token: String::new(),
                refresh_token: String::new(),
                expires_in: 0,
                scope: String::new(),
                sid: String::new(),
                mfa_token: Some(mfa_token),
            }),
        }
    }

    /// A password check limited per account (inside) and per tenant and source address (here):
    /// the first step of every login, gRPC or the OIDC login page.
    pub(crate) async fn password_step(
        &self,
        tenant_raw: &str,
        username: &str,
        password: String,
        client_id: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<Authenticated, Error> {
        let source_key = source.and_then(|ip| {
            let tenant = TenantId::parse(tenant_raw).ok()?;
            Some(self.redis_key(&tenant, "login-src", &ip.to_string()))
        });
        if let Some(key) = &source_key {
            let mut conn = self
                .redis
                .get()
                .await
                .map_err(|e| Error::Redis(e.to_string()))?;
            let failures: Option<i64> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(|e| Error::Redis(e.to_string()))?;
            if failures.unwrap_or(0) >= MAX_SOURCE_FAILURES {
                tracing::warn!(source = ?source, "login refused: too many failures from this source");
                return Err(Error::SourceThrottled);
            }
        }
        let result = self
            .authenticate_password(tenant_raw, username, password, client_id)
            .await;
        if let (Err(Error::InvalidCredentials), Some(key)) = (&result, &source_key) {
            let mut conn = self
                .redis
                .get()
                .await
                .map_err(|e| Error::Redis(e.to_string()))?;
            redis::pipe()
                .atomic()
                .cmd("INCR")
                .arg(key)
                .ignore()
                .cmd("EXPIRE")
                .arg(key)
                .arg(SOURCE_WINDOW_SECS)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| Error::Redis(e.to_string()))?;
        }
        result
    }

    /// `<prefix>:<kind>:<tenant>:<key>`: every Redis key of this service.
    pub(crate) fn redis_key(&self, tenant: &TenantId, kind: &str, key: &str) -> String {
        tenant.redis_key(&format!("{}:{kind}", self.redis_prefix), key)
    }

    /// Checks a password (with the per-account limit), without starting a session: the caller
    /// starts one (gRPC login) or issues an authorization code (the OIDC code flow).
    async fn authenticate_password(
        &self,
        tenant_raw: &str,
        username: &str,
        password: String,
        client_id: &str,
    ) -> Result<Authenticated, Error> {
        let tenant =
            TenantId::parse(tenant_raw).map_err(|e| invalid("tenant_id", e.to_string()))?;
        if client_id.is_empty() || client_id.len() > 128 {
            return Err(invalid("client_id", "must be 1 to 128 characters"));
        }
        if username.len() > 512 || password.len() > passwords::MAX_PASSWORD_BYTES {
            // Still costs one hash, like every other failure.
            self.hasher.verify(password, None).await;
            return Err(Error::InvalidCredentials);
        }
        let now = self.clock.now();
        let tier = match self.tenants.get(&tenant).await {
            Ok(t) if t.active => t.tier.as_str(),
            Ok(_) | Err(crate::tenants::Error::Unknown(_)) => {
                self.hasher.verify(password, None).await;
                return Err(Error::InvalidCredentials);
            }
            Err(e) => return Err(e.into()),
        };
        // Reserve the attempt before checking the password (race-safe limit).
        let reserved = sqlx::query(
            "UPDATE users SET failed_logins = failed_logins + 1
             WHERE tenant_id = $1 AND username = $2 AND NOT disabled
               AND failed_logins < $3 AND (locked_until IS NULL OR locked_until <= $4)
             RETURNING user_id, password_hash, roles, failed_logins",
        )
        .bind(tenant.as_str())
        .bind(username)
        .bind(MAX_FAILED_LOGINS)
        .bind(ts(now))
        .fetch_optional(self.shards.pool(&tenant))
        .await?;
        let Some(row) = reserved else {
            self.hasher.verify(password, None).await;
            tracing::info!(tenant = %tenant, "login refused");
            self.audit_alone(
                &tenant,
                "login.failed",
                None,
                None,
                vec![("cause", "unknown, disabled or locked account".into())],
            )
            .await;
            return Err(Error::InvalidCredentials);
        };
        let user_id: Uuid = row.try_get("user_id")?;
        let stored: String = row.try_get("password_hash")?;
        let roles: Vec<String> = row.try_get("roles")?;
        let failures: i32 = row.try_get("failed_logins")?;
        if !self.hasher.verify(password, Some(stored)).await {
            if failures >= FREE_FAILURES {
                let delay = 1i64
                    .checked_shl((failures - FREE_FAILURES) as u32)
                    .unwrap_or(MAX_LOCK_SECS)
                    .min(MAX_LOCK_SECS);
                sqlx::query(
                    "UPDATE users SET locked_until = $3 WHERE tenant_id = $1 AND user_id = $2",
                )
                .bind(tenant.as_str())
                .bind(user_id)
                .bind(ts(now + delay))
                .execute(self.shards.pool(&tenant))
                .await?;
            }
            tracing::info!(tenant = %tenant, user_id = %user_id, failures, "login failed");
            self.audit_alone(
                &tenant,
                "login.failed",
                Some(user_id),
                None,
                vec![("consecutive_failures", failures.to_string())],
            )
            .await;
            return Err(Error::InvalidCredentials);
        }
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant.as_str())
            .bind(user_id)
            .execute(self.shards.pool(&tenant))
            .await?;
        if self.mfa_enabled(&tenant, user_id).await? {
            let mfa_token = self.begin_mfa(&tenant, user_id, client_id).await?;
            tracing::info!(tenant = %tenant, user_id = %user_id, "password accepted; second factor required");
            return Ok(Authenticated::MfaRequired(mfa_token));
        }
        tracing::info!(tenant = %tenant, user_id = %user_id, "password accepted");
        Ok(Authenticated::Done(Principal {
            tenant: tenant.clone(),
            tier: tier.to_owned(),
            user_id,
            roles,
            acr: "pwd".into(),
            amr: vec!["pwd".into()],
            auth_time: now,
        }))
    }

    /// A new session (a new ID every time: R-40), its refresh family and first tokens.
    /// `scope`: what the client asked for (already narrowed to what the roles allow); `None`
    /// for first-party logins, which get everything the roles allow.
    pub async fn start_session(
        &self,
        p: &Principal,
        client_id: &str,
        scope: Option<String>,
    ) -> Result<Issued, Error> {
        let key = self.keys.signing_key(&p.tenant).await?;
        let policy = self.policies.get(&p.tenant).await?;
        let mut tx = self.shards.begin(&p.tenant).await?;
        let issued = self
            .start_session_in(&mut tx, &key, &policy, p, client_id, scope)
            .await?;
        tx.commit().await?;
        self.audit.wake();
        Ok(issued)
    }

    /// [`Identity::start_session`] inside the caller's transaction (the code flow marks the
    /// code with the session in the same transaction). The caller commits and wakes the audit
    /// relay.
    pub(crate) async fn start_session_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        key: &keel_token::SigningKey,
        policy: &TenantPolicy,
        p: &Principal,
        client_id: &str,
        scope: Option<String>,
    ) -> Result<Issued, Error> {
        let tenant = &p.tenant;
        let session = SessionInfo {
            sid: random_token::<16>()?,
            user_id: p.user_id,
            client_id: client_id.to_owned(),
            acr: p.acr.clone(),
            amr: p.amr.clone(),
            auth_time: p.auth_time,
            scope: policy.session_scope(&p.roles, &p.acr, scope.as_deref()),
        };
        let now = self.clock.now();
        sqlx::query(
            "INSERT INTO sessions (tenant_id, sid, user_id, client_id, acr, amr, auth_time, scope) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(tenant.as_str())
        .bind(&session.sid)
        .bind(p.user_id)
        .bind(client_id)
        .bind(&session.acr)
        .bind(&session.amr)
        .bind(ts(p.auth_time))
        .bind(scope.as_ref().map(|_| &session.scope))
        .execute(&mut **tx)
        .await?;
        let family = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO refresh_families (tenant_id, family_id, sid, user_id, client_id, generation, state, idle_expires, absolute_expires)
             VALUES ($1, $2, $3, $4, $5, 0, 'active', $6, $7)",
        )
        .bind(tenant.as_str())
        .bind(family)
        .bind(&session.sid)
        .bind(p.user_id)
        .bind(client_id)
        .bind(ts(now + i64::from(policy.refresh_idle_secs.min(policy.refresh_absolute_secs))))
        .bind(ts(now + i64::from(policy.refresh_absolute_secs)))
        .execute(&mut **tx)
        .await?;
        let refresh = self.new_refresh_token(tx, tenant, family, 0).await?;
        let ttl = i64::from(policy.access_ttl_secs);
        let access = self.access_token(key, tenant, &p.tier, &session, now, ttl);
        self.audit
            .record(
                tx,
                tenant,
                "session.started",
                Some(p.user_id),
                Some(&session.sid),
                vec![
                    ("acr", session.acr.clone()),
                    ("amr", session.amr.join(" ")),
                    ("client_id", session.client_id.clone()),
                ],
            )
            .await?;
        Ok(Issued {
            access_token: access,
            refresh_token: refresh,
            expires_in: ttl,
            scope: session.scope,
            sid: session.sid,
            mfa_token: None,
        })
    }

    pub(crate) async fn new_refresh_token(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        tenant: &TenantId,
        family: Uuid,
        generation: i64,
    ) -> Result<String, Error> {
        let token = format!("{REFRESH_PREFIX}.{tenant}.{}", random_token::<32>()?);
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, tenant_id, family_id, generation, state) VALUES ($1, $2, $3, $4, 'active')",
        )
        .bind(hash_token(&token))
        .bind(tenant.as_str())
        .bind(family)
        .bind(generation)
        .execute(&mut **tx)
        .await?;
        Ok(token)
    }

    /// Signs an access token. The key is fetched by the caller *before* it opens a transaction:
    /// fetching may need a connection of its own, and a transaction waiting for a second
    /// connection from a drained pool would starve every other.
    pub(crate) fn access_token(
        &self,
        key: &keel_token::SigningKey,
        tenant: &TenantId,
        tier: &str,
        s: &SessionInfo,
        now: i64,
        ttl: i64,
    ) -> String {
        let claims = AccessClaims {
            iss: keel_token::issuer(&self.issuer_base, tenant),
            // Client-credentials tokens are about the client itself (RFC 9068 §2.2), under a
            // subject no user ID can equal (so no client can act as a user).
            sub: match crate::clients::client_of_sid(&s.sid) {
                Some(client) => crate::clients::client_subject(client),
                None => s.user_id.to_string(),
            },
            aud: keel_token::audience(tenant),
            client_id: s.client_id.clone(),
            iat: now,
            exp: now + ttl,
            nbf: None,
            jti: Uuid::new_v4().to_string(),
            scope: s.scope.clone(),
            tenant_id: tenant.to_string(),
            tier: tier.to_owned(),
            sid: s.sid.clone(),
            acr: s.acr.clone(),
            amr: s.amr.clone(),
            auth_time: s.auth_time,
        };
        keel_token::sign(&claims, key)
    }

    /// The tenant a refresh token belongs to (its second segment), or `InvalidGrant`.
    fn refresh_tenant(token: &str) -> Result<TenantId, Error> {
        let mut parts = token.splitn(3, '.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(REFRESH_PREFIX), Some(t), Some(secret))
                if !secret.is_empty() && token.len() <= 256 =>
            {
                TenantId::parse(t).map_err(|_| Error::InvalidGrant)
            }
            _ => Err(Error::InvalidGrant),
        }
    }

    /// Rotates a refresh token. `client_id` empty: a first-party caller (gRPC), which may not
    /// redeem the tokens of a registered confidential client; `client_authenticated`: the caller
    /// proved it is `client_id` with its secret.
    pub async fn refresh(
        &self,
        token: &str,
        client_id: &str,
        client_authenticated: bool,
    ) -> Result<Issued, Error> {
        let tenant = Self::refresh_tenant(token)?;
        let now = self.clock.now();
        let hash = hash_token(token);
        // Everything that needs a connection of its own comes before the transaction.
        let key = self.keys.signing_key(&tenant).await?;
        let tenant_record = self.tenants.get(&tenant).await?;
        let tier = tenant_record.tier.as_str();
        let policy = self.policies.get(&tenant).await?;
        let mut tx = self.shards.begin(&tenant).await?;
        let used = sqlx::query(
            "UPDATE refresh_tokens SET state = 'used', used_at = $3
             WHERE token_hash = $1 AND tenant_id = $2 AND state = 'active'
             RETURNING family_id, generation",
        )
        .bind(&hash)
        .bind(tenant.as_str())
        .bind(ts(now))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(used) = used else {
            // Unknown, or already used/revoked: a reuse revokes everything it belongs to.
            let known = sqlx::query(
                "SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND tenant_id = $2",
            )
            .bind(&hash)
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = known {
                let family: Uuid = row.try_get("family_id")?;
                let sid = self.revoke_family(&mut tx, &tenant, family, now).await?;
                self.audit
                    .record(
                        &mut tx,
                        &tenant,
                        "refresh.reuse_detected",
                        None,
                        sid.as_deref(),
                        vec![("family_id", family.to_string())],
                    )
                    .await?;
                tx.commit().await?;
                self.audit.wake();
                tracing::warn!(tenant = %tenant, family = %family, "refresh token reuse detected; family and session revoked");
                if let Some(sid) = sid {
                    self.publish_revocation(&tenant, &sid).await?;
                }
            }
            return Err(Error::InvalidGrant);
        };
        let family: Uuid = used.try_get("family_id")?;
        let generation: i64 = used.try_get("generation")?;
        let fam = sqlx::query(
            "SELECT f.sid, f.user_id, f.client_id, f.state, f.idle_expires, f.absolute_expires,
                    s.acr, s.amr, s.auth_time, s.revoked_at, s.scope, u.roles, u.disabled
             FROM refresh_families f
             JOIN sessions s ON s.tenant_id = f.tenant_id AND s.sid = f.sid
             JOIN users u ON u.tenant_id = f.tenant_id AND u.user_id = f.user_id
             WHERE f.tenant_id = $1 AND f.family_id = $2 FOR UPDATE OF f",
        )
        .bind(tenant.as_str())
        .bind(family)
        .fetch_one(&mut *tx)
        .await?;
        let idle: DateTime<Utc> = fam.try_get("idle_expires")?;
        let absolute: DateTime<Utc> = fam.try_get("absolute_expires")?;
        let fam_client: String = fam.try_get("client_id")?;
        let state: String = fam.try_get("state")?;
        let revoked_at: Option<DateTime<Utc>> = fam.try_get("revoked_at")?;
        let disabled: bool = fam.try_get("disabled")?;
        // A registered client must still be enabled and allowed to refresh; a confidential one
        // must have authenticated. (Unregistered IDs are keel's first-party clients.)
        let registered = sqlx::query(
            "SELECT secret_hash IS NOT NULL AS confidential, disabled, 'refresh_token' = ANY(grant_types) AS refresh_ok
             FROM oauth_clients WHERE tenant_id = $1 AND client_id = $2",
        )
        .bind(tenant.as_str())
        .bind(&fam_client)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = &registered
            && r.try_get::<bool, _>("confidential")?
            && !client_authenticated
        {
            // Not the client's fault to punish: refuse without touching the family (the
            // transaction rolls back, the token stays active).
            return Err(Error::InvalidClient);
        }
        let client_ok = match &registered {
            None => true,
            Some(r) => !r.try_get::<bool, _>("disabled")? && r.try_get::<bool, _>("refresh_ok")?,
        };
        let usable = state == "active"
            && client_ok
            && revoked_at.is_none()
            && !disabled
            && now < idle.timestamp()
            && now < absolute.timestamp()
            && (client_id.is_empty() || client_id == fam_client);
        if !usable {
            let sid = self.revoke_family(&mut tx, &tenant, family, now).await?;
            tx.commit().await?;
            if let Some(sid) = sid {
                self.publish_revocation(&tenant, &sid).await?;
            }
            return Err(Error::InvalidGrant);
        }
        let next = self
            .new_refresh_token(&mut tx, &tenant, family, generation + 1)
            .await?;
        sqlx::query("UPDATE refresh_tokens SET successor_hash = $2 WHERE token_hash = $1")
            .bind(&hash)
            .bind(hash_token(&next))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE refresh_families SET generation = $3, idle_expires = LEAST($4, absolute_expires)
             WHERE tenant_id = $1 AND family_id = $2",
        )
        .bind(tenant.as_str())
        .bind(family)
        .bind(generation + 1)
        .bind(ts(now + i64::from(policy.refresh_idle_secs)))
        .execute(&mut *tx)
        .await?;
        let session = SessionInfo {
            sid: fam.try_get("sid")?,
            user_id: fam.try_get("user_id")?,
            client_id: fam_client,
            acr: fam.try_get("acr")?,
            amr: fam.try_get("amr")?,
            auth_time: fam.try_get::<DateTime<Utc>, _>("auth_time")?.timestamp(),
            scope: policy.session_scope(
                &fam.try_get::<Vec<String>, _>("roles")?,
                &fam.try_get::<String, _>("acr")?,
                fam.try_get::<Option<String>, _>("scope")?.as_deref(),
            ),
        };
        let ttl = i64::from(policy.access_ttl_secs);
        let access = self.access_token(&key, &tenant, tier, &session, now, ttl);
        tx.commit().await?;
        Ok(Issued {
            access_token: access,
            refresh_token: next,
            expires_in: ttl,
            scope: session.scope,
            sid: session.sid,
            mfa_token: None,
        })
    }

    /// Ends the session a refresh token belongs to. Unknown tokens are not an error (RFC 7009).
    pub async fn logout(&self, token: &str) -> Result<(), Error> {
        let Ok(tenant) = Self::refresh_tenant(token) else {
            return Ok(());
        };
        let mut tx = self.shards.begin(&tenant).await?;
        let row = sqlx::query(
            "SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND tenant_id = $2",
        )
        .bind(hash_token(token))
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(());
        };
        let sid = self
            .revoke_family(
                &mut tx,
                &tenant,
                row.try_get("family_id")?,
                self.clock.now(),
            )
            .await?;
        tx.commit().await?;
        if let Some(sid) = sid {
            self.publish_revocation(&tenant, &sid).await?;
        }
        Ok(())
    }

    /// Revokes a family, every token in it and its session; returns the session ID.
    pub(crate) async fn revoke_family(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        tenant: &TenantId,
        family: Uuid,
        now: i64,
    ) -> Result<Option<String>, Error> {
        let row = sqlx::query(
            "UPDATE refresh_families SET state = 'revoked' WHERE tenant_id = $1 AND family_id = $2 RETURNING sid",
        )
        .bind(tenant.as_str())
        .bind(family)
        .fetch_optional(&mut **tx)
        .await?;
        sqlx::query("UPDATE refresh_tokens SET state = 'revoked' WHERE tenant_id = $1 AND family_id = $2 AND state = 'active'")
            .bind(tenant.as_str())
            .bind(family)
            .execute(&mut **tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let sid: String = row.try_get("sid")?;
        sqlx::query("UPDATE sessions SET revoked_at = COALESCE(revoked_at, $3) WHERE tenant_id = $1 AND sid = $2")
            .bind(tenant.as_str())
            .bind(&sid)
            .bind(ts(now))
            .execute(&mut **tx)
            .await?;
        Ok(Some(sid))
    }

    /// Records an audit event that joins no change (a failed login). A failure to record is
    /// logged, not returned: the caller's answer does not depend on it.
    pub(crate) async fn audit_alone(
        &self,
        tenant: &TenantId,
        kind: &'static str,
        user: Option<Uuid>,
        sid: Option<&str>,
        details: Vec<(&str, String)>,
    ) {
        let result = async {
            let mut conn = self.shards.pool(tenant).acquire().await?;
            self.audit
                .record(&mut conn, tenant, kind, user, sid, details)
                .await
        }
        .await;
        match result {
            Ok(()) => self.audit.wake(),
            Err(e) => {
                tracing::warn!(tenant = %tenant, kind, error = %e, "audit event not recorded")
            }
        }
    }

    /// Tells resource servers the session is dead: its access tokens stop working at once,
    /// for as long as any of them could still be unexpired.
    /// Takes a revocation back (a re-enabled client's `sid`).
    pub(crate) async fn unpublish_revocation(
        &self,
        tenant: &TenantId,
        sid: &str,
    ) -> Result<(), Error> {
        let mut conn = self
            .redis
            .get()
            .await
            .map_err(|e| Error::Redis(e.to_string()))?;
        redis::cmd("DEL")
            .arg(self.redis_key(tenant, "revoked", sid))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| Error::Redis(e.to_string()))
    }

    pub(crate) async fn publish_revocation(
        &self,
        tenant: &TenantId,
        sid: &str,
    ) -> Result<(), Error> {
        let mut conn = self
            .redis
            .get()
            .await
            .map_err(|e| Error::Redis(e.to_string()))?;
        // As long as any tenant's access tokens may live.
        let ttl = keel_token::MAX_LIFETIME_SECS + 2 * keel_token::LEEWAY_SECS;
        redis::cmd("SET")
            .arg(self.redis_key(tenant, "revoked", sid))
            .arg(1)
            .arg("EX")
            .arg(ttl)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| Error::Redis(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_name_their_tenant_and_nothing_else_parses() {
        assert_eq!(
            Identity::refresh_tenant("rt1.acme.abc").unwrap().as_str(),
            "acme"
        );
        for bad in [
            "",
            "rt1",
            "rt1.acme",
            "rt1.acme.",
            "rt2.acme.x",
            "rt1.ACME.x",
            "rt1..x",
            &format!("rt1.acme.{}", "x".repeat(300)),
        ] {
            assert!(
                matches!(Identity::refresh_tenant(bad), Err(Error::InvalidGrant)),
                "{bad:?}"
            );
        }
    }
}
