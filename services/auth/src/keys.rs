//! Each tenant's signing keys: creation, the active key for signing, lookup by `kid` for
//! verifiers, scheduled rotation and revocation. Times come from an injectable [`Clock`], so a
//! rotation can be rehearsed in tests without waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use keel_store::Shards;
use keel_tenancy::TenantId;
use keel_token::{Clock, KeyRecord, KeyState, SigningKey};
use sqlx::Row;

use crate::identity::Error;
use crate::seal::Sealer;

/// How long an active key stays cached in memory before the database is asked again; a
/// rotation takes effect for signing within this time.
const ACTIVE_KEY_CACHE_SECS: i64 = 5;
/// Scheduled rotations publish the new key this long before it signs: the JWKS cache lifetime
/// we announce, so every cache has seen it first (auth.md: Hydra and ZITADEL broke clients by
/// signing with keys caches did not have).
pub const PUBLISH_AHEAD_SECS: i64 = crate::oidc::JWKS_MAX_AGE_SECS as i64;
/// How long a retired key keeps verifying: the longest token lifetime plus clock skew.
pub const RETENTION_SECS: i64 = keel_token::MAX_LIFETIME_SECS + 2 * keel_token::LEEWAY_SECS;

use crate::identity::ts;

/// The associated data a key's seal is bound to: its kid and tenant (public so operators' tools
/// and tests can open a key with the master key).
pub fn aad(kid: &str, tenant: &TenantId) -> Vec<u8> {
    format!("{kid}|{tenant}").into_bytes()
}

/// Each tenant's active key and when it was read (unix seconds).
type ActiveKeys = HashMap<TenantId, (i64, Arc<SigningKey>)>;

#[derive(Clone)]
pub struct KeyStore {
    shards: Shards,
    sealer: Sealer,
    clock: Arc<dyn Clock>,
    active: Arc<Mutex<ActiveKeys>>,
    audit: crate::audit::Audit,
}

fn row_to_record(row: &sqlx::postgres::PgRow) -> Result<KeyRecord, Error> {
    let tenant: String = row.try_get("tenant_id")?;
    let public: Vec<u8> = row.try_get("public_key")?;
    let public: [u8; 32] = public
        .try_into()
        .map_err(|_| Error::Corrupt("public key length"))?;
    let state: String = row.try_get("state")?;
    let valid_from: DateTime<Utc> = row.try_get("valid_from")?;
    let verify_until: Option<DateTime<Utc>> = row.try_get("verify_until")?;
    Ok(KeyRecord {
        kid: row.try_get("kid")?,
        tenant: TenantId::parse(&tenant).map_err(|_| Error::Corrupt("tenant"))?,
        public: ed25519_dalek::VerifyingKey::from_bytes(&public)
            .map_err(|_| Error::Corrupt("public key"))?,
        state: KeyState::parse(&state).ok_or(Error::Corrupt("key state"))?,
        valid_from: valid_from.timestamp(),
        verify_until: verify_until.map(|t| t.timestamp()),
    })
}

impl KeyStore {
    pub fn new(
        shards: Shards,
        sealer: Sealer,
        clock: Arc<dyn Clock>,
        audit: crate::audit::Audit,
    ) -> Self {
        KeyStore {
            shards,
            sealer,
            clock,
            active: Arc::default(),
            audit,
        }
    }

    async fn record_audit(
        &self,
        tenant: &TenantId,
        kind: &'static str,
        details: Vec<(&str, String)>,
    ) -> Result<(), Error> {
        let mut conn = self.shards.pool(tenant).acquire().await?;
        self.audit
            .record(&mut conn, tenant, kind, None, None, details)
            .await?;
        self.audit.wake();
        Ok(())
    }

    async fn insert(
        &self,
        tenant: &TenantId,
        state: KeyState,
        valid_from: i64,
    ) -> Result<KeyRecord, Error> {
        let key = SigningKey::generate(tenant).map_err(|_| Error::Corrupt("random source"))?;
        let sealed = self
            .sealer
            .seal(&key.seed(), &aad(&key.kid, tenant))
            .map_err(|_| Error::Corrupt("seal"))?;
        let row = sqlx::query(
            "INSERT INTO signing_keys (kid, tenant_id, public_key, sealed_secret, state, valid_from)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
        )
        .bind(&key.kid)
        .bind(tenant.as_str())
        .bind(key.public().as_bytes().as_slice())
        .bind(sealed)
        .bind(state.as_str())
        .bind(ts(valid_from))
        .fetch_one(self.shards.pool(tenant))
        .await?;
        row_to_record(&row)
    }

    /// The key to sign with now: the tenant's active key, created on first use.
    pub async fn signing_key(&self, tenant: &TenantId) -> Result<Arc<SigningKey>, Error> {
        let now = self.clock.now();
        if let Ok(cache) = self.active.lock()
            && let Some((at, k)) = cache.get(tenant)
            && now - at < ACTIVE_KEY_CACHE_SECS
        {
            return Ok(k.clone());
        }
        self.promote_due(tenant).await?;
        let pool = self.shards.pool(tenant);
        let select = "SELECT * FROM signing_keys WHERE tenant_id = $1 AND state = 'active'";
        let row = match sqlx::query(select)
            .bind(tenant.as_str())
            .fetch_optional(pool)
            .await?
        {
            Some(r) => r,
            None => {
                // First token of this tenant. Two replicas racing here: the unique index lets one
                // win; the loser reads the winner's key.
                if let Err(e) = self.insert(tenant, KeyState::Active, now).await
                    && !matches!(&e, Error::Store(s) if s.sqlstate().as_deref() == Some("23505"))
                {
                    return Err(e);
                }
                sqlx::query(select)
                    .bind(tenant.as_str())
                    .fetch_one(pool)
                    .await?
            }
        };
        let kid: String = row.try_get("kid")?;
        let sealed: Vec<u8> = row.try_get("sealed_secret")?;
        let seed = self
            .sealer
            .open(&sealed, &aad(&kid, tenant))
            .map_err(|_| Error::Corrupt("sealed key does not open with this master key"))?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| Error::Corrupt("seed length"))?;
        let key = Arc::new(SigningKey::from_seed(kid, tenant.clone(), &seed));
        if let Ok(mut cache) = self.active.lock() {
            cache.insert(tenant.clone(), (now, key.clone()));
        }
        Ok(key)
    }

    /// Promotes the tenant's pending key whose time has come: the previous active key is
    /// retained (verify-only) for [`RETENTION_SECS`].
    pub async fn promote_due(&self, tenant: &TenantId) -> Result<bool, Error> {
        let now = self.clock.now();
        let mut tx = self.shards.begin(tenant).await?;
        let due = sqlx::query(
            "SELECT kid FROM signing_keys WHERE tenant_id = $1 AND state = 'pending' AND valid_from <= $2
             ORDER BY valid_from DESC LIMIT 1 FOR UPDATE",
        )
        .bind(tenant.as_str())
        .bind(ts(now))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(due) = due else {
            return Ok(false);
        };
        let kid: String = due.try_get("kid")?;
        sqlx::query(
            "UPDATE signing_keys SET state = 'retained', verify_until = $2
             WHERE tenant_id = $1 AND state = 'active'",
        )
        .bind(tenant.as_str())
        .bind(ts(now + RETENTION_SECS))
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE signing_keys SET state = 'active' WHERE kid = $1")
            .bind(&kid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if let Ok(mut cache) = self.active.lock() {
            cache.remove(tenant);
        }
        tracing::info!(tenant = %tenant, kid = %kid, "signing key activated");
        Ok(true)
    }

    /// Promotes every due pending key of every tenant (the rotation scheduler's tick).
    pub async fn promote_all_due(&self) -> Result<usize, Error> {
        let mut n = 0;
        for pool in self.shards.pools() {
            let tenants: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT tenant_id FROM signing_keys WHERE state = 'pending' AND valid_from <= $1",
            )
            .bind(ts(self.clock.now()))
            .fetch_all(pool)
            .await?;
            for t in tenants {
                if let Ok(t) = TenantId::parse(&t)
                    && self.promote_due(&t).await?
                {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// The rotation schedule: every tenant whose active key is older than its rotation period
    /// (from its policy, or `default_period`) and has no key waiting gets a new pending key,
    /// published [`PUBLISH_AHEAD_SECS`] before it signs. Replicas serialise on an advisory
    /// lock per tenant, so one rotation is scheduled, not one per replica.
    pub async fn rotate_aged(&self, default_period: i64) -> Result<usize, Error> {
        let now = self.clock.now();
        let mut n = 0;
        for pool in self.shards.pools() {
            let due: Vec<String> = sqlx::query_scalar(
                "SELECT a.tenant_id FROM signing_keys a
                 LEFT JOIN tenant_policies p ON p.tenant_id = a.tenant_id
                 WHERE a.state = 'active'
                   AND a.valid_from <= $1 - make_interval(secs => COALESCE((p.policy->>'rotation_period_secs')::double precision, $2))
                   AND NOT EXISTS (SELECT 1 FROM signing_keys k WHERE k.tenant_id = a.tenant_id AND k.state = 'pending')",
            )
            .bind(ts(now))
            .bind(default_period as f64)
            .fetch_all(pool)
            .await?;
            for t in due {
                let Ok(tenant) = TenantId::parse(&t) else {
                    continue;
                };
                let mut tx = self.shards.begin(&tenant).await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext('keel-key-rotation:' || $1))")
                    .bind(tenant.as_str())
                    .execute(&mut *tx)
                    .await?;
                let pending: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM signing_keys WHERE tenant_id = $1 AND state = 'pending')",
                )
                .bind(tenant.as_str())
                .fetch_one(&mut *tx)
                .await?;
                if !pending {
                    self.rotate(&tenant, PUBLISH_AHEAD_SECS).await?;
                    n += 1;
                }
                tx.commit().await?;
            }
        }
        Ok(n)
    }

    /// Schedules a new key, published now and signing after `activate_after` seconds.
    pub async fn rotate(&self, tenant: &TenantId, activate_after: i64) -> Result<KeyRecord, Error> {
        let now = self.clock.now();
        let rec = self
            .insert(tenant, KeyState::Pending, now + activate_after.max(0))
            .await?;
        if activate_after <= 0 {
            self.promote_due(tenant).await?;
        }
        tracing::info!(tenant = %tenant, kid = %rec.kid, activate_after, "signing key rotation scheduled");
        self.record_audit(
            tenant,
            "key.rotated",
            vec![
                ("kid", rec.kid.clone()),
                ("activate_after_seconds", activate_after.to_string()),
            ],
        )
        .await?;
        Ok(self.record(&rec.kid).await?.unwrap_or(rec))
    }

    /// Revokes a key at once. The tenant's next token gets a fresh key if it was the active one.
    pub async fn revoke(&self, kid: &str) -> Result<Option<KeyRecord>, Error> {
        for pool in self.shards.pools() {
            if let Some(row) =
                sqlx::query("UPDATE signing_keys SET state = 'revoked' WHERE kid = $1 RETURNING *")
                    .bind(kid)
                    .fetch_optional(pool)
                    .await?
            {
                let rec = row_to_record(&row)?;
                if let Ok(mut cache) = self.active.lock() {
                    cache.remove(&rec.tenant);
                }
                tracing::warn!(tenant = %rec.tenant, kid = %kid, "signing key revoked");
                self.record_audit(&rec.tenant, "key.revoked", vec![("kid", kid.to_owned())])
                    .await?;
                return Ok(Some(rec));
            }
        }
        Ok(None)
    }

    /// A key by `kid`, whatever its tenant (a bind parameter: kids are opaque).
    pub async fn record(&self, kid: &str) -> Result<Option<KeyRecord>, Error> {
        if !keel_token::kid_is_well_formed(kid) {
            return Ok(None);
        }
        // Every shard at once, answering as soon as one has the key: a shard that is down (or
        // slow) costs only the tenants it holds, not every key lookup behind it in order.
        use futures::StreamExt;
        let mut lookups: futures::stream::FuturesUnordered<_> = self
            .shards
            .pools()
            .iter()
            .map(|pool| {
                sqlx::query("SELECT * FROM signing_keys WHERE kid = $1")
                    .bind(kid)
                    .fetch_optional(pool)
            })
            .collect();
        let mut failed = None;
        while let Some(found) = lookups.next().await {
            match found {
                Ok(Some(row)) => return row_to_record(&row).map(Some),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        // Not found on the shards that answered: unknown only if every shard answered.
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(None),
        }
    }

    /// The tenant's published keys: pending, active, and retained ones still verifying.
    pub async fn published(&self, tenant: &TenantId) -> Result<Vec<KeyRecord>, Error> {
        let rows = sqlx::query(
            "SELECT * FROM signing_keys WHERE tenant_id = $1
             AND (state IN ('pending', 'active') OR (state = 'retained' AND verify_until > $2))
             ORDER BY valid_from",
        )
        .bind(tenant.as_str())
        .bind(ts(self.clock.now()))
        .fetch_all(self.shards.pool(tenant))
        .await?;
        rows.iter().map(row_to_record).collect()
    }
}
