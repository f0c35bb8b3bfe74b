//! Each tenant's auth policy ([`keel_authspec::TenantPolicy`]): stored on the tenant's shard,
//! read through a short cache (a change reaches every replica within [`POLICY_CACHE`]).
//! Tenants that never applied one run the deployment default (the built-in policy with the
//! lifetimes from configuration).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_authspec::TenantPolicy;
use keel_store::Shards;
use keel_tenancy::TenantId;

use crate::identity::{Error, invalid};

/// How stale a replica's view of a policy may be.
pub const POLICY_CACHE: Duration = Duration::from_secs(2);

/// A cached policy: when it was read, the policy, and whether it is the default.
type Cached = (Instant, Arc<TenantPolicy>, bool);

#[derive(Clone)]
pub struct Policies {
    shards: Shards,
    default: Arc<TenantPolicy>,
    cache: Arc<Mutex<HashMap<TenantId, Cached>>>,
}

impl Policies {
    pub fn new(shards: Shards, default: TenantPolicy) -> Self {
        Policies {
            shards,
            default: Arc::new(default),
            cache: Arc::default(),
        }
    }

    pub fn default_policy(&self) -> &TenantPolicy {
        &self.default
    }

    /// The tenant's policy, and whether it is the default.
    pub async fn get_with_origin(
        &self,
        tenant: &TenantId,
    ) -> Result<(Arc<TenantPolicy>, bool), Error> {
        if let Ok(cache) = self.cache.lock()
            && let Some((at, p, is_default)) = cache.get(tenant)
            && at.elapsed() < POLICY_CACHE
        {
            return Ok((p.clone(), *is_default));
        }
        let stored: Option<String> =
            sqlx::query_scalar("SELECT policy::text FROM tenant_policies WHERE tenant_id = $1")
                .bind(tenant.as_str())
                .fetch_optional(self.shards.pool(tenant))
                .await?;
        let (policy, is_default) = match stored {
            Some(v) => (
                Arc::new(
                    serde_json::from_str::<TenantPolicy>(&v)
                        .map_err(|_| Error::Corrupt("stored tenant policy"))?,
                ),
                false,
            ),
            None => (self.default.clone(), true),
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(tenant.clone(), (Instant::now(), policy.clone(), is_default));
        }
        Ok((policy, is_default))
    }

    pub async fn get(&self, tenant: &TenantId) -> Result<Arc<TenantPolicy>, Error> {
        Ok(self.get_with_origin(tenant).await?.0)
    }

    /// Replaces the tenant's policy after checking it; `Ok(false)` when nothing changed.
    pub async fn put(&self, tenant: &TenantId, policy: &TenantPolicy) -> Result<bool, Error> {
        if let Some(p) = policy.problems().into_iter().next() {
            return Err(invalid("policy", format!("{}: {}", p.setting, p.reason)));
        }
        let (current, is_default) = self.get_with_origin(tenant).await?;
        if !is_default && *current == *policy {
            return Ok(false);
        }
        let json = serde_json::to_string(policy).map_err(|_| Error::Corrupt("tenant policy"))?;
        sqlx::query(
            "INSERT INTO tenant_policies (tenant_id, policy) VALUES ($1, $2::jsonb)
             ON CONFLICT (tenant_id) DO UPDATE SET policy = EXCLUDED.policy, update_time = now()",
        )
        .bind(tenant.as_str())
        .bind(json)
        .execute(self.shards.pool(tenant))
        .await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(tenant);
        }
        tracing::info!(tenant = %tenant, "tenant auth policy applied");
        Ok(true)
    }
}
