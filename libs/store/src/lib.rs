//! PostgreSQL for keel: one pool per physical shard, each service's migrations applied in its own
//! schema at start-up, and tenant-scoped transactions on the tenant's shard.
//!
//! * [`StoreConfig`] — shard URLs and pool limits from the environment.
//! * [`Shards`] — pools (created lazily, so a service starts and reports NOT_SERVING while
//!   Postgres is away), [`Shards::migrate`], [`Shards::begin`], [`Shards::ping`].
//!
//! Architecture invariant: a service touches only its own schema (`search_path` is set per
//! connection), so services share databases without sharing tables, and every table of a
//! tenant's data has `tenant_id` in its primary key.

use std::time::Duration;

use keel_config::{ConfigError, Env};
use keel_errors::{KeelError, Reason};
use keel_tenancy::{DEFAULT_LOGICAL_SHARDS, ShardMap, TenantId};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

/// Per-shard pool size: a 2-core box serves best with few connections per database; more only
/// queue inside Postgres.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// How long a request waits for a connection before failing UNAVAILABLE: short, so overload and
/// outages turn into fast, retryable errors rather than piled-up requests.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Server-side cap on any statement, so a stuck query cannot hold a connection forever.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Query(#[source] sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database URL is invalid: {0}")]
    Url(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| {
                    // admin shutdown, cannot connect now, too many connections, query canceled
                    c.starts_with("57P") || c == "53300" || c == "57014" || c.starts_with("08")
                }) =>
            {
                StoreError::Unavailable(e)
            }
            other => StoreError::Query(other),
        }
    }
}

impl StoreError {
    /// The Postgres SQLSTATE, when the server answered with one.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            StoreError::Query(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

impl KeelError for StoreError {
    fn reason(&self) -> Reason {
        match self {
            StoreError::Unavailable(_) => Reason::Unavailable,
            _ => Reason::Internal,
        }
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        match self {
            StoreError::Unavailable(_) => vec![("dependency", "postgres".into())],
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// One URL per physical shard, in shard order (the order is part of placement).
    pub urls: Vec<String>,
    pub logical_shards: u16,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
}

impl StoreConfig {
    /// `KEEL_DATABASE_URLS` (comma-separated), `KEEL_LOGICAL_SHARDS`, `KEEL_DB_MAX_CONNECTIONS`,
    /// `KEEL_DB_ACQUIRE_TIMEOUT`, `KEEL_DB_STATEMENT_TIMEOUT`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let cfg = StoreConfig {
            urls: env.urls("KEEL_DATABASE_URLS", &["postgres", "postgresql"])?,
            logical_shards: env.or("KEEL_LOGICAL_SHARDS", DEFAULT_LOGICAL_SHARDS)?,
            max_connections: env.or("KEEL_DB_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS)?,
            acquire_timeout: env.duration("KEEL_DB_ACQUIRE_TIMEOUT", DEFAULT_ACQUIRE_TIMEOUT)?,
            statement_timeout: env
                .duration("KEEL_DB_STATEMENT_TIMEOUT", DEFAULT_STATEMENT_TIMEOUT)?,
        };
        cfg.shard_map().map_err(|e| ConfigError::Invalid {
            key: "KEEL_LOGICAL_SHARDS".into(),
            shown: cfg.logical_shards.to_string(),
            problem: e.to_string(),
        })?;
        if cfg.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "KEEL_DB_MAX_CONNECTIONS".into(),
                shown: "0".into(),
                problem: "must be at least 1".into(),
            });
        }
        for url in &cfg.urls {
            url.parse::<PgConnectOptions>()
                .map_err(|e| ConfigError::Invalid {
                    key: "KEEL_DATABASE_URLS".into(),
                    shown: "<redacted>".into(),
                    problem: e.to_string(),
                })?;
        }
        Ok(cfg)
    }

    pub fn shard_map(&self) -> Result<ShardMap, keel_tenancy::ShardMapError> {
        ShardMap::new(self.logical_shards, self.urls.len())
    }
}

/// Pools of every physical shard, confined to one service's schema.
#[derive(Clone, Debug)]
pub struct Shards {
    map: ShardMap,
    pools: Vec<PgPool>,
    schema: &'static str,
    migrated: std::sync::Arc<tokio::sync::OnceCell<()>>,
    /// The role tenant transactions run as (row-level security), when the schema has one.
    tenant_role: Option<&'static str>,
}

impl Shards {
    /// Creates the pools without connecting (connections open on first use).
    pub fn connect_lazy(cfg: &StoreConfig, schema: &'static str) -> Result<Self, StoreError> {
        let map = cfg
            .shard_map()
            .map_err(|e| StoreError::Url(sqlx::Error::Configuration(e.to_string().into())))?;
        let statement_timeout = format!("{}", cfg.statement_timeout.as_millis());
        let pools = cfg
            .urls
            .iter()
            .map(|url| {
                let opts: PgConnectOptions = url.parse().map_err(StoreError::Url)?;
                let opts = opts.application_name(schema).options([
                    ("search_path", schema),
                    ("statement_timeout", statement_timeout.as_str()),
                ]);
                Ok(PgPoolOptions::new()
                    .max_connections(cfg.max_connections)
                    .acquire_timeout(cfg.acquire_timeout)
                    .connect_lazy_with(opts))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Shards {
            map,
            pools,
            schema,
            migrated: Default::default(),
            tenant_role: None,
        })
    }

    /// Tenant transactions ([`Shards::begin`]) switch to `role` for their duration: a role
    /// that the schema's row-level security policies confine to the `keel.tenant_id` rows.
    pub fn with_tenant_role(mut self, role: &'static str) -> Self {
        self.tenant_role = Some(role);
        self
    }

    /// Creates the service's schema and applies its migrations on every shard. Safe to run from
    /// several replicas at once (sqlx serialises on an advisory lock).
    pub async fn migrate(&self, migrator: &Migrator) -> Result<(), StoreError> {
        for pool in &self.pools {
            let create = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema);
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(create)).execute(pool).await {
                let e = StoreError::from(e);
                // Two replicas creating the schema at once: one wins, the other sees 23505/42P06.
                if !matches!(e.sqlstate().as_deref(), Some("23505" | "42P06")) {
                    return Err(e);
                }
            }
            migrator.run(pool).await?;
        }
        Ok(())
    }

    /// The readiness check of a service that owns a schema: applies its migrations the first
    /// time every shard answers; after that the service is ready while **any** shard answers.
    /// One shard down must cost only its own tenants: were readiness to need every shard, a
    /// balancer would take every replica out of rotation and all tenants would lose service.
    /// Each shard's state is in the answer (`keel_db_shard_up` is exported from it).
    pub async fn ready(&self, migrator: &'static Migrator) -> Result<Vec<bool>, StoreError> {
        self.migrated
            .get_or_try_init(|| self.migrate(migrator))
            .await?;
        let pings = self.ping_each().await;
        let up: Vec<bool> = pings.iter().map(Result::is_ok).collect();
        if up.iter().any(|u| *u) {
            return Ok(up);
        }
        match pings.into_iter().find_map(Result::err) {
            Some(e) => Err(e),
            None => Ok(up),
        }
    }

    /// Pings every shard at once, each bounded by the pool's acquire timeout.
    pub async fn ping_each(&self) -> Vec<Result<(), StoreError>> {
        futures::future::join_all(self.pools.iter().map(|pool| async move {
            sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(StoreError::from)
        }))
        .await
    }

    /// Whether [`Shards::ready`] has applied the migrations (work that needs the schema waits).
    pub fn is_migrated(&self) -> bool {
        self.migrated.get().is_some()
    }

    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// The pool of the tenant's physical shard.
    pub fn pool(&self, tenant: &TenantId) -> &PgPool {
        &self.pools[self.map.physical(tenant)]
    }

    /// The schema this service owns (`auth`, `inference`, `postproc`).
    pub fn schema(&self) -> &'static str {
        self.schema
    }

    /// Every physical shard, in order (for relays and sweeps that visit all of them).
    pub fn pools(&self) -> &[PgPool] {
        &self.pools
    }

    /// Begins a transaction on the tenant's shard with `keel.tenant_id` set for its duration
    /// (for row-level security policies and for audit triggers) and, when the service has a
    /// tenant role ([`Shards::with_tenant_role`]), running as that role: one round trip.
    pub async fn begin(
        &self,
        tenant: &TenantId,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool(tenant).begin().await?;
        match self.tenant_role {
            Some(role) => {
                sqlx::query(
                    "SELECT set_config('keel.tenant_id', $1, true), set_config('role', $2, true)",
                )
                .bind(tenant.as_str())
                .bind(role)
                .execute(&mut *tx)
                .await?
            }
            None => {
                sqlx::query("SELECT set_config('keel.tenant_id', $1, true)")
                    .bind(tenant.as_str())
                    .execute(&mut *tx)
                    .await?
            }
        };
        Ok(tx)
    }

    /// `SELECT 1` on every shard.
    pub async fn ping(&self) -> Result<(), StoreError> {
        for pool in &self.pools {
            sqlx::query("SELECT 1").execute(pool).await?;
        }
        Ok(())
    }

    /// Closes every pool, waiting for checked-out connections to come back.
    pub async fn close(&self) {
        for pool in &self.pools {
            pool.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_requires_postgres_urls() {
        let env = Env::from_pairs([("KEEL_DATABASE_URLS", "postgres://a/b, postgres://c/d")]);
        let cfg = StoreConfig::from_env(&env).unwrap();
        assert_eq!(cfg.urls.len(), 2);
        assert_eq!(cfg.shard_map().unwrap().physical_shards(), 2);
        for bad in ["", "mysql://a/b", "postgres://a/b,redis://c"] {
            let env = Env::from_pairs([("KEEL_DATABASE_URLS", bad)]);
            assert!(StoreConfig::from_env(&env).is_err(), "{bad}");
        }
        let env = Env::from_pairs([
            (
                "KEEL_DATABASE_URLS",
                "postgres://a/b,postgres://c/d,postgres://e/f",
            ),
            ("KEEL_LOGICAL_SHARDS", "2"),
        ]);
        assert!(StoreConfig::from_env(&env).is_err());
    }
}
