//! Second factors: TOTP enrolment and confirmation, the second step of a login, step-up,
//! recovery codes, and ending a user's other sessions when a credential changes.
//!
//! Each TOTP code is accepted once: the credential keeps the last accepted step and the
//! acceptance is `UPDATE … WHERE last_step < $step` (atomic: two logins racing with one code get
//! one success). Failed codes are limited per user (RFC 4226 §7.3, R-31).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_tenancy::TenantId;
use keel_token::Verified;
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use crate::identity::{Error, Identity, Issued, invalid};
use crate::totp;

/// A login waiting for its second factor lives this long.
const MFA_TOKEN_TTL_SECS: i64 = 300;
/// Wrong codes allowed per user within [`MFA_FAILURE_WINDOW_SECS`] before codes are refused.
const MAX_MFA_FAILURES: i64 = 10;
const MFA_FAILURE_WINDOW_SECS: i64 = 900;
/// Recovery codes issued at confirmation.
const RECOVERY_CODES: usize = 10;
const MFA_PREFIX: &str = "mfa1";

fn secret_aad(tenant: &TenantId, user: Uuid) -> Vec<u8> {
    format!("totp|{tenant}|{user}").into_bytes()
}

fn hash(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

fn redis_err(e: impl std::fmt::Display) -> Error {
    Error::Redis(e.to_string())
}

fn user_of(v: &Verified) -> Result<Uuid, Error> {
    Uuid::try_parse(&v.claims.sub).map_err(|_| Error::InvalidCredentials)
}

impl Identity {
    /// Verifies an access token presented to auth itself (the account methods), including that
    /// its session is still alive.
    pub async fn authenticate(
        &self,
        meta: &tonic::metadata::MetadataMap,
    ) -> Result<Verified, Error> {
        let token = meta
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or(Error::InvalidCredentials)?;
        self.verify_access_token(token).await
    }

    /// Verifies an access token with the same verifier the gateway uses, then checks it is still
    /// alive: its session not revoked, or (client-credentials tokens) its client not disabled.
    pub async fn verify_access_token(&self, token: &str) -> Result<Verified, Error> {
        let kid = keel_token::peek_kid(token).map_err(|_| Error::InvalidCredentials)?;
        let record = self.keys.record(&kid).await?;
        struct One(Option<keel_token::KeyRecord>);
        impl keel_token::KeySource for One {
            fn key(
                &self,
                kid: &str,
            ) -> Result<Option<keel_token::KeyRecord>, keel_token::TokenError> {
                Ok(self.0.clone().filter(|k| k.kid == kid))
            }
        }
        let v = keel_token::Verifier {
            issuer_base: &self.issuer_base,
            clock: &*self.clock,
        }
        .verify(token, &One(record))
        .map_err(|_| Error::InvalidCredentials)?;
        let alive = match crate::clients::client_of_sid(&v.claims.sid) {
            Some(client_id) => self
                .clients
                .get(&v.tenant, client_id)
                .await?
                .map(|c| !c.disabled),
            None => {
                sqlx::query_scalar(
                    "SELECT revoked_at IS NULL FROM sessions WHERE tenant_id = $1 AND sid = $2",
                )
                .bind(v.tenant.as_str())
                .bind(&v.claims.sid)
                .fetch_optional(self.shards.pool(&v.tenant))
                .await?
            }
        };
        if alive != Some(true) {
            return Err(Error::InvalidCredentials);
        }
        Ok(v)
    }

    /// RFC 7009 for an access token of `tenant`: ends its session. Tokens that do not verify
    /// (or belong to another tenant) are ignored.
    pub async fn revoke_access_token(&self, tenant: &TenantId, token: &str) -> Result<(), Error> {
        match self.verify_access_token(token).await {
            // A client-credentials token stands for its client, not a session: revoking it
            // would lock the client out; it expires within minutes, or ends with the client.
            Ok(v) if crate::clients::client_of_sid(&v.claims.sid).is_some() => Ok(()),
            Ok(v) if &v.tenant == tenant => self.end_session(tenant, &v.claims.sid).await,
            Ok(_) | Err(Error::InvalidCredentials) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn mfa_enabled(&self, tenant: &TenantId, user: Uuid) -> Result<bool, Error> {
        let on: Option<bool> = sqlx::query_scalar(
            "SELECT confirmed FROM totp_credentials WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant.as_str())
        .bind(user)
        .fetch_optional(self.shards.pool(tenant))
        .await?;
        Ok(on == Some(true))
    }

    /// Parks a password-verified login until its second factor: returns the MFA token.
    pub(crate) async fn begin_mfa(
        &self,
        tenant: &TenantId,
        user: Uuid,
        client_id: &str,
    ) -> Result<String, Error> {
        let secret: [u8; 32] =
            keel_token::keys::random_bytes().map_err(|_| Error::Corrupt("random source"))?;
        let token = format!("{MFA_PREFIX}.{tenant}.{}", URL_SAFE_NO_PAD.encode(secret));
        let mut conn = self.redis.get().await.map_err(redis_err)?;
        redis::cmd("SET")
            .arg(self.redis_key(tenant, "mfa", &URL_SAFE_NO_PAD.encode(hash(&token))))
            .arg(format!("{user}|{client_id}"))
            .arg("EX")
            .arg(MFA_TOKEN_TTL_SECS)
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(token)
    }

    /// Checks a TOTP or recovery code for `user`, consuming it. Returns the `amr` value.
    async fn second_factor(
        &self,
        tenant: &TenantId,
        user: Uuid,
        code: &str,
    ) -> Result<&'static str, Error> {
        let mut conn = self.redis.get().await.map_err(redis_err)?;
        let fail_key = self.redis_key(tenant, "mfa-fail", &user.to_string());
        // Reserve the attempt before checking the code: of N parallel guesses, those past
        // the limit are refused without a look at the code. A success gives the attempt back.
        let (attempts,): (i64,) = redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg(&fail_key)
            .cmd("EXPIRE")
            .arg(&fail_key)
            .arg(MFA_FAILURE_WINDOW_SECS)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        if attempts > MAX_MFA_FAILURES {
            tracing::warn!(tenant = %tenant, user_id = %user, "second factor refused: too many failures");
            return Err(Error::InvalidCredentials);
        }
        let pool = self.shards.pool(tenant);
        let accepted = if code.len() == totp::DIGITS as usize {
            let row = sqlx::query("SELECT sealed_secret FROM totp_credentials WHERE tenant_id = $1 AND user_id = $2 AND confirmed")
                .bind(tenant.as_str())
                .bind(user)
                .fetch_optional(pool)
                .await?;
            match row {
                None => false,
                Some(row) => {
                    let sealed: Vec<u8> = row.try_get("sealed_secret")?;
                    let secret = self
                        .sealer
                        .open(&sealed, &secret_aad(tenant, user))
                        .map_err(|_| Error::Corrupt("totp secret"))?;
                    match totp::matching_step(&secret, code, self.clock.now()) {
                        None => false,
                        Some(step) => {
                            let fresh = sqlx::query(
                                "UPDATE totp_credentials SET last_step = $3 WHERE tenant_id = $1 AND user_id = $2 AND last_step < $3",
                            )
                            .bind(tenant.as_str())
                            .bind(user)
                            .bind(step)
                            .execute(pool)
                            .await?
                            .rows_affected()
                                == 1;
                            if !fresh {
                                tracing::warn!(tenant = %tenant, user_id = %user, "replayed TOTP code refused");
                                self.audit_alone(
                                    tenant,
                                    "mfa.code_replayed",
                                    Some(user),
                                    None,
                                    vec![("step", step.to_string())],
                                )
                                .await;
                            }
                            fresh
                        }
                    }
                }
            }
        } else {
            sqlx::query(
                "UPDATE recovery_codes SET used_at = now() WHERE tenant_id = $1 AND user_id = $2 AND code_hash = $3 AND used_at IS NULL",
            )
            .bind(tenant.as_str())
            .bind(user)
            .bind(hash(code.trim()))
            .execute(pool)
            .await?
            .rows_affected()
                == 1
        };
        if !accepted {
            // The reserved attempt stays counted.
            return Err(Error::InvalidCredentials);
        }
        let _: () = redis::cmd("DEL")
            .arg(&fail_key)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(if code.len() == totp::DIGITS as usize {
            "otp"
        } else {
            "recovery"
        })
    }

    /// The second step of a login that answered `mfa_required`.
    pub async fn verify_mfa(&self, mfa_token: &str, code: &str) -> Result<Issued, Error> {
        let (p, client_id) = self.complete_mfa(mfa_token, code).await?;
        self.start_session(&p, &client_id, None).await
    }

    /// Checks the second factor of a parked login and consumes it: the principal (with
    /// `acr=mfa`) and the client the login was for.
    pub(crate) async fn complete_mfa(
        &self,
        mfa_token: &str,
        code: &str,
    ) -> Result<(crate::identity::Principal, String), Error> {
        let mut parts = mfa_token.splitn(3, '.');
        let tenant = match (parts.next(), parts.next(), parts.next()) {
            (Some(MFA_PREFIX), Some(t), Some(s)) if !s.is_empty() && mfa_token.len() <= 256 => {
                TenantId::parse(t).map_err(|_| Error::InvalidCredentials)?
            }
            _ => return Err(Error::InvalidCredentials),
        };
        let key = self.redis_key(&tenant, "mfa", &URL_SAFE_NO_PAD.encode(hash(mfa_token)));
        let mut conn = self.redis.get().await.map_err(redis_err)?;
        let parked: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let (user, client_id) = parked
            .as_deref()
            .and_then(|p| p.split_once('|'))
            .and_then(|(u, c)| Some((Uuid::try_parse(u).ok()?, c.to_owned())))
            .ok_or(Error::InvalidCredentials)?;
        let amr = self.second_factor(&tenant, user, code).await?;
        // Single use: whoever deletes the parked login first completes it.
        let deleted: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        if deleted != 1 {
            return Err(Error::InvalidCredentials);
        }
        Ok((self.mfa_principal(&tenant, user, amr).await?, client_id))
    }

    /// A user who has just passed a second factor (`amr`: `otp` or `recovery`).
    async fn mfa_principal(
        &self,
        tenant: &TenantId,
        user: Uuid,
        amr: &str,
    ) -> Result<crate::identity::Principal, Error> {
        let (roles, tier) = self.user_roles_and_tier(tenant, user).await?;
        Ok(crate::identity::Principal {
            tenant: tenant.clone(),
            tier,
            user_id: user,
            roles,
            acr: "mfa".into(),
            amr: vec!["pwd".into(), amr.into()],
            auth_time: self.clock.now(),
        })
    }

    async fn user_roles_and_tier(
        &self,
        tenant: &TenantId,
        user: Uuid,
    ) -> Result<(Vec<String>, String), Error> {
        let roles: Option<Vec<String>> = sqlx::query_scalar(
            "SELECT roles FROM users WHERE tenant_id = $1 AND user_id = $2 AND NOT disabled",
        )
        .bind(tenant.as_str())
        .bind(user)
        .fetch_optional(self.shards.pool(tenant))
        .await?;
        let roles = roles.ok_or(Error::InvalidCredentials)?;
        let tier = self.tenants.get(tenant).await?.tier.as_str().to_owned();
        Ok((roles, tier))
    }

    pub async fn enroll_mfa(&self, v: &Verified) -> Result<(String, String), Error> {
        let user = user_of(v)?;
        if self.mfa_enabled(&v.tenant, user).await? {
            return Err(Error::InvalidArgument {
                field: "mfa",
                problem: "MFA is already on; disable it first".into(),
            });
        }
        let secret: [u8; totp::SECRET_BYTES] =
            keel_token::keys::random_bytes().map_err(|_| Error::Corrupt("random source"))?;
        let sealed = self
            .sealer
            .seal(&secret, &secret_aad(&v.tenant, user))
            .map_err(|_| Error::Corrupt("seal"))?;
        sqlx::query(
            "INSERT INTO totp_credentials (tenant_id, user_id, sealed_secret) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET sealed_secret = EXCLUDED.sealed_secret, confirmed = false, last_step = 0",
        )
        .bind(v.tenant.as_str())
        .bind(user)
        .bind(sealed)
        .execute(self.shards.pool(&v.tenant))
        .await?;
        let username: String =
            sqlx::query_scalar("SELECT username FROM users WHERE tenant_id = $1 AND user_id = $2")
                .bind(v.tenant.as_str())
                .bind(user)
                .fetch_one(self.shards.pool(&v.tenant))
                .await?;
        Ok((
            totp::otpauth_uri(&format!("keel {}", v.tenant), &username, &secret),
            totp::base32(&secret),
        ))
    }

    pub async fn confirm_mfa(&self, v: &Verified, code: &str) -> Result<Vec<String>, Error> {
        let user = user_of(v)?;
        let pool = self.shards.pool(&v.tenant);
        let row = sqlx::query("SELECT sealed_secret FROM totp_credentials WHERE tenant_id = $1 AND user_id = $2 AND NOT confirmed")
            .bind(v.tenant.as_str())
            .bind(user)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| Error::InvalidArgument { field: "mfa", problem: "no enrolment is pending; call EnrollMfa".into() })?;
        let sealed: Vec<u8> = row.try_get("sealed_secret")?;
        let secret = self
            .sealer
            .open(&sealed, &secret_aad(&v.tenant, user))
            .map_err(|_| Error::Corrupt("totp secret"))?;
        let step = totp::matching_step(&secret, code, self.clock.now())
            .ok_or(Error::InvalidCredentials)?;
        let mut codes = Vec::with_capacity(RECOVERY_CODES);
        let mut tx = self.shards.begin(&v.tenant).await?;
        sqlx::query("UPDATE totp_credentials SET confirmed = true, last_step = $3 WHERE tenant_id = $1 AND user_id = $2")
            .bind(v.tenant.as_str())
            .bind(user)
            .bind(step)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2")
            .bind(v.tenant.as_str())
            .bind(user)
            .execute(&mut *tx)
            .await?;
        for _ in 0..RECOVERY_CODES {
            let raw: [u8; 16] =
                keel_token::keys::random_bytes().map_err(|_| Error::Corrupt("random source"))?;
            let code = totp::base32(&raw).to_lowercase();
            sqlx::query(
                "INSERT INTO recovery_codes (tenant_id, user_id, code_hash) VALUES ($1, $2, $3)",
            )
            .bind(v.tenant.as_str())
            .bind(user)
            .bind(hash(&code))
            .execute(&mut *tx)
            .await?;
            codes.push(code);
        }
        tx.commit().await?;
        let ended = self
            .end_sessions(&v.tenant, user, Some(&v.claims.sid))
            .await?;
        tracing::info!(tenant = %v.tenant, user_id = %user, other_sessions_ended = ended, "MFA enabled");
        Ok(codes)
    }

    pub async fn disable_mfa(&self, v: &Verified, code: &str) -> Result<(), Error> {
        let user = user_of(v)?;
        self.second_factor(&v.tenant, user, code).await?;
        let mut tx = self.shards.begin(&v.tenant).await?;
        for table in ["totp_credentials", "recovery_codes"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE tenant_id = $1 AND user_id = $2"
            )))
            .bind(v.tenant.as_str())
            .bind(user)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let ended = self
            .end_sessions(&v.tenant, user, Some(&v.claims.sid))
            .await?;
        tracing::info!(tenant = %v.tenant, user_id = %user, other_sessions_ended = ended, "MFA disabled");
        Ok(())
    }

    /// Re-verifies a factor: a new session with `acr=mfa` and a fresh `auth_time`; the old
    /// session ends (ASVS 7.2.4).
    pub async fn step_up(&self, v: &Verified, code: &str) -> Result<Issued, Error> {
        let user = user_of(v)?;
        let amr = self.second_factor(&v.tenant, user, code).await?;
        let principal = self.mfa_principal(&v.tenant, user, amr).await?;
        // The new session keeps what the old one was granted.
        let granted: Option<String> =
            sqlx::query_scalar("SELECT scope FROM sessions WHERE tenant_id = $1 AND sid = $2")
                .bind(v.tenant.as_str())
                .bind(&v.claims.sid)
                .fetch_optional(self.shards.pool(&v.tenant))
                .await?
                .flatten();
        let issued = self
            .start_session(&principal, &v.claims.client_id, granted)
            .await?;
        self.end_session(&v.tenant, &v.claims.sid).await?;
        tracing::info!(tenant = %v.tenant, user_id = %user, "step-up succeeded; previous session ended");
        Ok(issued)
    }

    /// Re-verifies the current password, sets the new one, ends every other session
    /// (ASVS 7.4.3). Wrong current passwords count as failed logins.
    pub async fn change_password(
        &self,
        v: &Verified,
        current: String,
        new: String,
    ) -> Result<u32, Error> {
        let user = user_of(v)?;
        crate::passwords::check_policy(&new).map_err(|p| Error::InvalidArgument {
            field: "new_password",
            problem: p,
        })?;
        let stored: Option<String> = sqlx::query_scalar("SELECT password_hash FROM users WHERE tenant_id = $1 AND user_id = $2 AND NOT disabled")
            .bind(v.tenant.as_str())
            .bind(user)
            .fetch_optional(self.shards.pool(&v.tenant))
            .await?;
        if !self.hasher.verify(current, stored).await {
            sqlx::query("UPDATE users SET failed_logins = failed_logins + 1 WHERE tenant_id = $1 AND user_id = $2")
                .bind(v.tenant.as_str())
                .bind(user)
                .execute(self.shards.pool(&v.tenant))
                .await?;
            return Err(Error::InvalidCredentials);
        }
        let hash = self
            .hasher
            .hash(new)
            .await
            .map_err(|_| Error::Corrupt("hashing"))?;
        let mut tx = self.shards.begin(&v.tenant).await?;
        sqlx::query("UPDATE users SET password_hash = $3, failed_logins = 0, locked_until = NULL WHERE tenant_id = $1 AND user_id = $2")
            .bind(v.tenant.as_str())
            .bind(user)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
        self.audit
            .record(
                &mut tx,
                &v.tenant,
                "password.changed",
                Some(user),
                Some(&v.claims.sid),
                Vec::new(),
            )
            .await?;
        tx.commit().await?;
        self.audit.wake();
        self.end_sessions(&v.tenant, user, Some(&v.claims.sid))
            .await
    }

    /// Disables a user (ASVS 7.4.2): logins are refused and every session ends now.
    pub async fn disable_user(
        &self,
        tenant: &TenantId,
        username: &str,
    ) -> Result<(Uuid, Vec<String>, chrono::DateTime<chrono::Utc>), Error> {
        let row = sqlx::query("UPDATE users SET disabled = true WHERE tenant_id = $1 AND username = $2 RETURNING user_id, roles, create_time")
            .bind(tenant.as_str())
            .bind(username)
            .fetch_optional(self.shards.pool(tenant))
            .await?
            .ok_or_else(|| Error::InvalidArgument { field: "username", problem: "no such user".into() })?;
        let user: Uuid = row.try_get("user_id")?;
        let ended = self.end_sessions(tenant, user, None).await?;
        self.audit_alone(
            tenant,
            "user.disabled",
            Some(user),
            None,
            vec![("sessions_ended", ended.to_string())],
        )
        .await;
        Ok((user, row.try_get("roles")?, row.try_get("create_time")?))
    }

    /// Replaces a user's roles (which must be defined by the tenant's policy). Live sessions
    /// get the new scopes at their next refresh (within the access-token lifetime).
    pub async fn set_user_roles(
        &self,
        tenant: &TenantId,
        username: &str,
        roles: Vec<String>,
    ) -> Result<(Uuid, Vec<String>, chrono::DateTime<chrono::Utc>), Error> {
        if roles.is_empty() {
            return Err(invalid("roles", "name at least one role"));
        }
        self.check_roles(tenant, &roles).await?;
        let row = sqlx::query(
            "UPDATE users SET roles = $3 WHERE tenant_id = $1 AND username = $2 RETURNING user_id, roles, create_time",
        )
        .bind(tenant.as_str())
        .bind(username)
        .bind(&roles)
        .fetch_optional(self.shards.pool(tenant))
        .await?
        .ok_or_else(|| invalid("username", "no such user"))?;
        let user: Uuid = row.try_get("user_id")?;
        self.audit_alone(
            tenant,
            "user.roles_changed",
            Some(user),
            None,
            vec![("roles", roles.join(" "))],
        )
        .await;
        Ok((user, row.try_get("roles")?, row.try_get("create_time")?))
    }

    /// The caller's live sessions, newest first.
    pub async fn list_sessions(&self, v: &Verified) -> Result<Vec<SessionView>, Error> {
        let user = user_of(v)?;
        let rows = sqlx::query(
            "SELECT sid, client_id, acr, amr, auth_time FROM sessions
             WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL
             ORDER BY create_time DESC LIMIT 100",
        )
        .bind(v.tenant.as_str())
        .bind(user)
        .fetch_all(self.shards.pool(&v.tenant))
        .await?;
        rows.iter()
            .map(|r| {
                let sid: String = r.try_get("sid")?;
                Ok(SessionView {
                    current: sid == v.claims.sid,
                    sid,
                    client_id: r.try_get("client_id")?,
                    acr: r.try_get("acr")?,
                    amr: r.try_get("amr")?,
                    auth_time: r.try_get("auth_time")?,
                })
            })
            .collect()
    }

    /// Ends one of the caller's own sessions.
    pub async fn revoke_own_session(&self, v: &Verified, sid: &str) -> Result<(), Error> {
        let user = user_of(v)?;
        let mine: Option<bool> = sqlx::query_scalar(
            "SELECT revoked_at IS NULL FROM sessions WHERE tenant_id = $1 AND sid = $2 AND user_id = $3",
        )
        .bind(v.tenant.as_str())
        .bind(sid)
        .bind(user)
        .fetch_optional(self.shards.pool(&v.tenant))
        .await?;
        match mine {
            Some(true) => self.end_session(&v.tenant, sid).await,
            // Already ended: nothing to do. Not the caller's: indistinguishable from unknown.
            Some(false) => Ok(()),
            None => Err(Error::UnknownSession(sid.chars().take(64).collect())),
        }
    }

    /// Ends every user session a client holds (when it is disabled).
    pub async fn end_client_sessions(
        &self,
        tenant: &TenantId,
        client_id: &str,
    ) -> Result<u32, Error> {
        let sids: Vec<String> = sqlx::query_scalar(
            "SELECT sid FROM sessions WHERE tenant_id = $1 AND client_id = $2 AND revoked_at IS NULL",
        )
        .bind(tenant.as_str())
        .bind(client_id)
        .fetch_all(self.shards.pool(tenant))
        .await?;
        for sid in &sids {
            self.end_session(tenant, sid).await?;
        }
        Ok(sids.len() as u32)
    }

    /// Ends every session of a user, by username (operators and tenant admins).
    pub async fn end_user_sessions(&self, tenant: &TenantId, username: &str) -> Result<u32, Error> {
        let user: Option<Uuid> =
            sqlx::query_scalar("SELECT user_id FROM users WHERE tenant_id = $1 AND username = $2")
                .bind(tenant.as_str())
                .bind(username)
                .fetch_optional(self.shards.pool(tenant))
                .await?;
        let user = user.ok_or_else(|| invalid("username", "no such user"))?;
        let n = self.end_sessions(tenant, user, None).await?;
        tracing::info!(tenant = %tenant, user_id = %user, sessions_ended = n, "user's sessions ended by an admin");
        Ok(n)
    }

    pub async fn sign_out_everywhere(&self, v: &Verified) -> Result<u32, Error> {
        let user = user_of(v)?;
        self.end_sessions(&v.tenant, user, None).await
    }

    pub(crate) async fn end_session(&self, tenant: &TenantId, sid: &str) -> Result<(), Error> {
        let mut tx = self.shards.begin(tenant).await?;
        let families: Vec<Uuid> = sqlx::query_scalar(
            "SELECT family_id FROM refresh_families WHERE tenant_id = $1 AND sid = $2",
        )
        .bind(tenant.as_str())
        .bind(sid)
        .fetch_all(&mut *tx)
        .await?;
        let now = self.clock.now();
        for f in families {
            self.revoke_family(&mut tx, tenant, f, now).await?;
        }
        sqlx::query("UPDATE sessions SET revoked_at = COALESCE(revoked_at, now()) WHERE tenant_id = $1 AND sid = $2")
            .bind(tenant.as_str())
            .bind(sid)
            .execute(&mut *tx)
            .await?;
        self.audit
            .record(
                &mut tx,
                tenant,
                "session.revoked",
                None,
                Some(sid),
                Vec::new(),
            )
            .await?;
        tx.commit().await?;
        self.audit.wake();
        self.publish_revocation(tenant, sid).await
    }

    /// Ends every live session of `user` except `keep`; returns how many ended.
    pub async fn end_sessions(
        &self,
        tenant: &TenantId,
        user: Uuid,
        keep: Option<&str>,
    ) -> Result<u32, Error> {
        let sids: Vec<String> = sqlx::query_scalar(
            "SELECT sid FROM sessions WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .bind(tenant.as_str())
        .bind(user)
        .fetch_all(self.shards.pool(tenant))
        .await?;
        let mut n = 0;
        for sid in sids.iter().filter(|s| Some(s.as_str()) != keep) {
            self.end_session(tenant, sid).await?;
            n += 1;
        }
        Ok(n)
    }
}

/// One live session, as its owner sees it.
pub struct SessionView {
    pub sid: String,
    pub client_id: String,
    pub acr: String,
    pub amr: Vec<String>,
    pub auth_time: chrono::DateTime<chrono::Utc>,
    pub current: bool,
}
