//! The authorization-code grant's domain half: issuing one-time codes after a login on the
//! authorization page, redeeming them (PKCE S256, exact redirect URI, same client), ID tokens,
//! and client-credentials tokens for service clients.
//!
//! A code is redeemed by `UPDATE … SET used_at WHERE used_at IS NULL`, in the transaction that
//! starts the session, so of two concurrent redemptions exactly one wins and the loser finds
//! the session to revoke (RFC 6749 §4.1.2, R-8).

use chrono::{DateTime, Utc};
use keel_tenancy::TenantId;
use sqlx::Row;
use uuid::Uuid;

use crate::clients::{Client, client_sid};
use crate::identity::{Error, Identity, Issued, Principal, hash_token, random_token, ts};

/// ASVS 5 10.4.3 (L3): authorization codes live at most one minute.
pub const CODE_TTL_SECS: i64 = 60;
const CODE_PREFIX: &str = "ac1";

/// What an authorization request asked for, once checked.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CodeRequest {
    pub client_id: String,
    pub redirect_uri: String,
    /// Space-delimited; empty means "what the user's roles allow".
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: String,
}

/// OpenID Connect Core §2 ID token claims.
#[derive(Debug, serde::Serialize)]
pub struct IdClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub azp: String,
    pub exp: i64,
    pub iat: i64,
    pub auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    pub acr: String,
    pub amr: Vec<String>,
    pub sid: String,
    pub tenant_id: String,
}

/// The tokens of a redeemed code.
pub struct CodeTokens {
    pub issued: Issued,
    pub id_token: Option<String>,
}

impl Identity {
    /// Issues a one-time code for a principal who just signed in on the authorization page.
    pub async fn issue_code(&self, p: &Principal, req: &CodeRequest) -> Result<String, Error> {
        let code = format!("{CODE_PREFIX}.{}", random_token::<32>()?);
        let now = self.clock.now();
        sqlx::query(
            "INSERT INTO authorization_codes (code_hash, tenant_id, client_id, redirect_uri, user_id, scope, nonce,
                 code_challenge, acr, amr, auth_time, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(hash_token(&code))
        .bind(p.tenant.as_str())
        .bind(&req.client_id)
        .bind(&req.redirect_uri)
        .bind(p.user_id)
        .bind(&req.scope)
        .bind(&req.nonce)
        .bind(&req.code_challenge)
        .bind(&p.acr)
        .bind(&p.amr)
        .bind(ts(p.auth_time))
        .bind(ts(now + CODE_TTL_SECS))
        .execute(self.shards.pool(&p.tenant))
        .await?;
        Ok(code)
    }

    /// Redeems a code: the client, redirect URI and PKCE verifier must match what the code was
    /// issued for. Any failure burns the code; presenting a redeemed code again revokes the
    /// session it started.
    pub async fn redeem_code(
        &self,
        tenant: &TenantId,
        client: &Client,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<CodeTokens, Error> {
        let now = self.clock.now();
        let hash = hash_token(code);
        // Connections of their own first (see `Identity::access_token`).
        let key = self.keys.signing_key(tenant).await?;
        let tier = self.tenants.get(tenant).await?;
        if !tier.active {
            return Err(Error::InvalidGrant);
        }
        let policy = self.policies.get(tenant).await?;
        let mut tx = self.shards.begin(tenant).await?;
        let row = sqlx::query(
            "UPDATE authorization_codes SET used_at = $3
             WHERE code_hash = $1 AND tenant_id = $2 AND used_at IS NULL
             RETURNING client_id, redirect_uri, user_id, scope, nonce, code_challenge, acr, amr, auth_time, expires_at",
        )
        .bind(&hash)
        .bind(tenant.as_str())
        .bind(ts(now))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            let sid: Option<Option<String>> = sqlx::query_scalar(
                "SELECT sid FROM authorization_codes WHERE code_hash = $1 AND tenant_id = $2",
            )
            .bind(&hash)
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            if let Some(sid) = sid.flatten() {
                tracing::warn!(tenant = %tenant, "authorization code reused; its session is revoked");
                self.end_session(tenant, &sid).await?;
                self.audit_alone(
                    tenant,
                    "code.reuse_detected",
                    None,
                    Some(&sid),
                    vec![("client_id", client.spec.client_id.clone())],
                )
                .await;
            }
            return Err(Error::InvalidGrant);
        };
        let expires: DateTime<Utc> = row.try_get("expires_at")?;
        let code_client: String = row.try_get("client_id")?;
        let code_redirect: String = row.try_get("redirect_uri")?;
        let challenge: String = row.try_get("code_challenge")?;
        let ok = now < expires.timestamp()
            && code_client == client.spec.client_id
            && code_redirect == redirect_uri
            && keel_oauth::pkce::verify(code_verifier, &challenge);
        if !ok {
            // The code is spent either way.
            tx.commit().await?;
            return Err(Error::InvalidGrant);
        }
        let user_id: Uuid = row.try_get("user_id")?;
        let roles: Option<Vec<String>> = sqlx::query_scalar(
            "SELECT roles FROM users WHERE tenant_id = $1 AND user_id = $2 AND NOT disabled",
        )
        .bind(tenant.as_str())
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(roles) = roles else {
            tx.commit().await?;
            return Err(Error::InvalidGrant);
        };
        let principal = Principal {
            tenant: tenant.clone(),
            tier: tier.tier.as_str().to_owned(),
            user_id,
            roles,
            acr: row.try_get("acr")?,
            amr: row.try_get("amr")?,
            auth_time: row.try_get::<DateTime<Utc>, _>("auth_time")?.timestamp(),
        };
        let scope: String = row.try_get("scope")?;
        let nonce: Option<String> = row.try_get("nonce")?;
        let issued = self
            .start_session_in(
                &mut tx,
                &key,
                &policy,
                &principal,
                &client.spec.client_id,
                (!scope.is_empty()).then_some(scope),
            )
            .await?;
        sqlx::query("UPDATE authorization_codes SET sid = $2 WHERE code_hash = $1")
            .bind(&hash)
            .bind(&issued.sid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.audit.wake();
        let id_token = issued.scope.split(' ').any(|s| s == "openid").then(|| {
            keel_token::sign_jws(
                keel_token::ID_TOKEN_TYP,
                &IdClaims {
                    iss: keel_token::issuer(&self.issuer_base, tenant),
                    sub: user_id.to_string(),
                    aud: client.spec.client_id.clone(),
                    azp: client.spec.client_id.clone(),
                    exp: now + i64::from(policy.access_ttl_secs),
                    iat: now,
                    auth_time: principal.auth_time,
                    nonce,
                    acr: principal.acr.clone(),
                    amr: principal.amr.clone(),
                    sid: issued.sid.clone(),
                    tenant_id: tenant.to_string(),
                },
                &key,
            )
        });
        Ok(CodeTokens { issued, id_token })
    }

    /// A client-credentials access token for a service client: `sub` and `client_id` are the
    /// client, its `sid` is `client.<id>` (disabling the client revokes it), no refresh token
    /// (RFC 6749 §4.4.3).
    pub async fn client_token(&self, client: &Client, scope: &[String]) -> Result<Issued, Error> {
        let tenant = &client.tenant;
        let t = self.tenants.get(tenant).await?;
        if !t.active {
            return Err(Error::InvalidClient);
        }
        let key = self.keys.signing_key(tenant).await?;
        let now = self.clock.now();
        let session = crate::identity::SessionInfo {
            sid: client_sid(&client.spec.client_id),
            user_id: Uuid::nil(),
            client_id: client.spec.client_id.clone(),
            acr: "client".into(),
            amr: Vec::new(),
            auth_time: now,
            scope: scope.join(" "),
        };
        let ttl = i64::from(self.policies.get(tenant).await?.access_ttl_secs);
        let token = self.access_token(&key, tenant, t.tier.as_str(), &session, now, ttl);
        tracing::info!(tenant = %tenant, client_id = %client.spec.client_id, "client credentials token issued");
        Ok(Issued {
            access_token: token,
            refresh_token: String::new(),
            expires_in: ttl,
            scope: session.scope,
            sid: session.sid,
            mfa_token: None,
        })
    }
}

/// What introspection reports about a refresh token.
pub struct RefreshInfo {
    pub client_id: String,
    pub user_id: Uuid,
    pub sid: String,
    pub expires: i64,
    pub scope: String,
}

impl Identity {
    /// An active refresh token of `tenant` (RFC 7662): the token, its family and its session
    /// all alive and unexpired. `None` for anything else.
    pub async fn introspect_refresh(
        &self,
        tenant: &TenantId,
        token: &str,
    ) -> Result<Option<RefreshInfo>, Error> {
        let now = self.clock.now();
        let policy = self.policies.get(tenant).await?;
        let row = sqlx::query(
            "SELECT f.client_id, f.user_id, f.sid, f.idle_expires, f.absolute_expires, s.scope, s.acr, u.roles
             FROM refresh_tokens t
             JOIN refresh_families f ON f.tenant_id = t.tenant_id AND f.family_id = t.family_id
             JOIN sessions s ON s.tenant_id = f.tenant_id AND s.sid = f.sid
             JOIN users u ON u.tenant_id = f.tenant_id AND u.user_id = f.user_id
             WHERE t.token_hash = $1 AND t.tenant_id = $2 AND t.state = 'active'
               AND f.state = 'active' AND s.revoked_at IS NULL AND NOT u.disabled",
        )
        .bind(hash_token(token))
        .bind(tenant.as_str())
        .fetch_optional(self.shards.pool(tenant))
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let expires = row
            .try_get::<DateTime<Utc>, _>("idle_expires")?
            .timestamp()
            .min(
                row.try_get::<DateTime<Utc>, _>("absolute_expires")?
                    .timestamp(),
            );
        if now >= expires {
            return Ok(None);
        }
        Ok(Some(RefreshInfo {
            client_id: row.try_get("client_id")?,
            user_id: row.try_get("user_id")?,
            sid: row.try_get("sid")?,
            expires,
            scope: policy.session_scope(
                &row.try_get::<Vec<String>, _>("roles")?,
                &row.try_get::<String, _>("acr")?,
                row.try_get::<Option<String>, _>("scope")?.as_deref(),
            ),
        }))
    }

    /// The client a refresh token of `tenant` was issued to, if the token is known.
    pub async fn refresh_token_client(
        &self,
        tenant: &TenantId,
        token: &str,
    ) -> Result<Option<String>, Error> {
        Ok(sqlx::query_scalar(
            "SELECT f.client_id FROM refresh_tokens t
             JOIN refresh_families f ON f.tenant_id = t.tenant_id AND f.family_id = t.family_id
             WHERE t.token_hash = $1 AND t.tenant_id = $2",
        )
        .bind(hash_token(token))
        .bind(tenant.as_str())
        .fetch_optional(self.shards.pool(tenant))
        .await?)
    }

    /// The username of a user ID (for userinfo's `preferred_username`).
    pub async fn username(&self, tenant: &TenantId, sub: &str) -> Result<Option<String>, Error> {
        let Ok(user) = Uuid::try_parse(sub) else {
            return Ok(None);
        };
        Ok(
            sqlx::query_scalar("SELECT username FROM users WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant.as_str())
                .bind(user)
                .fetch_optional(self.shards.pool(tenant))
                .await?,
        )
    }
}
