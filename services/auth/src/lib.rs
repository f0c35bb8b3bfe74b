//! The auth service: keel's identity provider.
//!
//! * [`tenants`] — the tenant directory (tier, status), each tenant on its own shard.
//! * [`keys`] — per-tenant Ed25519 signing keys, sealed at rest ([`seal`]), rotated on schedule.
//! * [`identity`] — users ([`passwords`]: argon2id), logins with race-safe throttling, sessions,
//!   refresh-token families with reuse detection, revocation pushed to the gateway via Redis.
//! * [`grpc`] — `TenantDirectory`, `Authentication`, `KeyDirectory`, `IdentityAdmin`.

pub mod admin;
pub mod audit;
pub mod clients;
pub mod codes;
pub mod grpc;
pub mod identity;
pub mod keys;
pub mod mfa;
pub mod oidc;
pub mod passwords;
pub mod policies;
pub mod seal;
pub mod tenants;
pub mod totp;

use std::sync::Arc;
use std::time::Duration;

use keel_config::{ConfigError, Env};
use keel_runtime::{Host, HostConfig, HostSpec, Tasks};
use keel_store::{Shards, StoreConfig};
use keel_token::{Clock, SystemClock};

/// Default ports: gRPC 50052, HTTP 8081 (JWKS and OIDC), admin 9092.
pub const DEFAULT_GRPC_PORT: u16 = 50052;
pub const DEFAULT_HTTP_PORT: u16 = 8081;
pub const DEFAULT_ADMIN_PORT: u16 = 9092;
pub const SCHEMA: &str = "auth";
/// How often due key rotations are applied.
const ROTATION_TICK: Duration = Duration::from_secs(1);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone)]
pub struct Config {
    pub host: HostConfig,
    pub bus: keel_bus::BusConfig,
    /// The public HTTP listener (JWKS; OIDC endpoints to come).
    pub http_addr: std::net::SocketAddr,
    pub store: StoreConfig,
    pub redis_url: String,
    /// Standard base64 of 32 random bytes; seals private keys at rest.
    pub master_key: String,
    pub issuer_base: String,
    pub redis_prefix: String,
    pub lifetimes: identity::Lifetimes,
    /// Password hashes computed at once (the rest wait).
    pub hash_concurrency: usize,
    /// The operator's bootstrap credential for the admin APIs (`None`: no operator access).
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("issuer_base", &self.issuer_base)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let master_key: String = env.required("KEEL_AUTH_MASTER_KEY")?;
        seal::Sealer::from_base64(&master_key).map_err(|e| ConfigError::Invalid {
            key: "KEEL_AUTH_MASTER_KEY".into(),
            shown: "<redacted>".into(),
            problem: e.to_string(),
        })?;
        let secs = |key: &str, default: i64| -> Result<i64, ConfigError> {
            Ok(env
                .duration(key, Duration::from_secs(default as u64))?
                .as_secs() as i64)
        };
        let lifetimes = identity::Lifetimes {
            access_secs: secs("KEEL_AUTH_ACCESS_TOKEN_TTL", identity::DEFAULT_ACCESS_SECS)?,
            refresh_idle_secs: secs(
                "KEEL_AUTH_REFRESH_IDLE_TTL",
                identity::DEFAULT_REFRESH_IDLE_SECS,
            )?,
            refresh_absolute_secs: secs(
                "KEEL_AUTH_REFRESH_ABSOLUTE_TTL",
                identity::DEFAULT_REFRESH_ABSOLUTE_SECS,
            )?,
        };
        if !(30..=keel_token::MAX_LIFETIME_SECS).contains(&lifetimes.access_secs) {
            return Err(ConfigError::Invalid {
                key: "KEEL_AUTH_ACCESS_TOKEN_TTL".into(),
                shown: format!("{}s", lifetimes.access_secs),
                problem: format!("must be between 30s and {}s", keel_token::MAX_LIFETIME_SECS),
            });
        }
        let admin_token: Option<String> = env.optional("KEEL_AUTH_ADMIN_TOKEN")?;
        if let Some(t) = &admin_token
            && t.chars().count() < admin::MIN_ADMIN_TOKEN_CHARS
        {
            return Err(ConfigError::Invalid {
                key: "KEEL_AUTH_ADMIN_TOKEN".into(),
                shown: "<redacted>".into(),
                problem: format!(
                    "must be at least {} characters of randomness",
                    admin::MIN_ADMIN_TOKEN_CHARS
                ),
            });
        }
        Ok(Config {
            admin_token,
            host: HostConfig::from_env(env, "KEEL_AUTH", DEFAULT_GRPC_PORT, DEFAULT_ADMIN_PORT)?,
            http_addr: env.addr(
                "KEEL_AUTH_HTTP_ADDR",
                std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_HTTP_PORT)),
            )?,
            store: StoreConfig::from_env(env)?,
            bus: keel_bus::BusConfig::from_env(env)?,
            redis_url: env.url("KEEL_REDIS_URL", &["redis", "rediss"])?,
            master_key,
            redis_prefix: env.or(
                "KEEL_REDIS_PREFIX",
                identity::DEFAULT_REDIS_PREFIX.to_owned(),
            )?,
            issuer_base: env.or(
                "KEEL_AUTH_ISSUER_BASE",
                keel_token::DEFAULT_ISSUER_BASE.to_owned(),
            )?,
            lifetimes,
            hash_concurrency: env.or(
                "KEEL_AUTH_HASH_CONCURRENCY",
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2),
            )?,
        })
    }
}

impl Config {
    /// The policy of tenants that never applied their own: the built-in one, with this
    /// deployment's token lifetimes.
    pub fn default_policy(&self) -> keel_authspec::TenantPolicy {
        let secs = |s: i64| u32::try_from(s).unwrap_or(u32::MAX);
        keel_authspec::TenantPolicy {
            access_ttl_secs: secs(self.lifetimes.access_secs),
            refresh_idle_secs: secs(self.lifetimes.refresh_idle_secs),
            refresh_absolute_secs: secs(self.lifetimes.refresh_absolute_secs),
            ..keel_authspec::TenantPolicy::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] keel_runtime::RuntimeError),
    #[error(transparent)]
    Store(#[from] keel_store::StoreError),
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Bus(#[from] keel_bus::BusError),
}

/// Starts the service with the system clock.
pub async fn start(cfg: Config) -> Result<Host, StartError> {
    start_with_clock(cfg, Arc::new(SystemClock)).await
}

/// Starts the service with a given clock (tests rehearse rotations and expiry on a manual one).
pub async fn start_with_clock(cfg: Config, clock: Arc<dyn Clock>) -> Result<Host, StartError> {
    let shards = Shards::connect_lazy(&cfg.store, SCHEMA)?;
    let dir = tenants::Directory::new(shards.clone());
    let sealer =
        seal::Sealer::from_base64(&cfg.master_key).map_err(|e| StartError::Setup(e.to_string()))?;
    let audit = audit::Audit::new(keel_outbox::Wakeup::default());
    let keys = keys::KeyStore::new(shards.clone(), sealer.clone(), clock.clone(), audit.clone());
    let redis = deadpool_redis::Config::from_url(cfg.redis_url.clone())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| StartError::Setup(e.to_string()))?;
    let hasher = passwords::Hasher::new(cfg.hash_concurrency).map_err(StartError::Setup)?;
    let identity = identity::Identity {
        shards: shards.clone(),
        keys: keys.clone(),
        tenants: dir.clone(),
        hasher,
        clock,
        redis: redis.clone(),
        issuer_base: cfg.issuer_base.clone(),
        policies: policies::Policies::new(shards.clone(), cfg.default_policy()),
        sealer,
        audit: audit.clone(),
        redis_prefix: cfg.redis_prefix.clone(),
        clients: clients::Clients::new(shards.clone()),
    };
    let guard = admin::AdminGuard::new(cfg.admin_token.as_deref(), identity.clone());
    let routes = tonic::service::Routes::new(
        keel_proto::auth::tenant_directory_server::TenantDirectoryServer::new(
            grpc::TenantDirectoryService::new(dir, guard.clone(), identity.policies.clone()),
        ),
    )
    .add_service(
        keel_proto::auth::authentication_server::AuthenticationServer::new(
            grpc::AuthenticationService::new(identity.clone()),
        ),
    )
    .add_service(
        keel_proto::auth::key_directory_server::KeyDirectoryServer::new(
            grpc::KeyDirectoryService::new(keys.clone()),
        ),
    )
    .add_service(
        keel_proto::auth::identity_admin_server::IdentityAdminServer::new(
            grpc::IdentityAdminService::new(identity.clone(), guard),
        ),
    );
    let identity_for_http = identity;
    let bus = keel_bus::Bus::connect(cfg.bus.clone()).await?;
    let checks = vec![
        keel_runtime::health::postgres(shards.clone(), &MIGRATOR),
        keel_runtime::health::redis_ping("redis", redis),
        keel_runtime::health::nats(bus.clone()),
    ];
    let tasks = Tasks::new();
    let mut host = Host::start(
        &cfg.host,
        HostSpec {
            name: "auth",
            grpc_services: vec![
                "keel.auth.v1.TenantDirectory",
                "keel.auth.v1.Authentication",
                "keel.auth.v1.KeyDirectory",
                "keel.auth.v1.IdentityAdmin",
            ],
            routes,
            checks,
            trust_tenant_header: true,
            gate: None,
            http: Some((cfg.http_addr, oidc::router(identity_for_http))),
        },
        tasks.clone(),
    )
    .await?;
    let token = tasks.token();
    let rotation_shards = shards.clone();
    let default_rotation = i64::from(cfg.default_policy().rotation_period_secs);
    tasks.spawn("key-rotation", async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(ROTATION_TICK) => {}
            }
            if !rotation_shards.is_migrated() {
                continue;
            }
            if let Err(e) = keys.promote_all_due().await {
                tracing::warn!(error = %e, "key rotation tick failed");
            }
            if let Err(e) = keys.rotate_aged(default_rotation).await {
                tracing::warn!(error = %e, "key rotation schedule failed");
            }
        }
    });
    let token = tasks.token();
    let relay_shards = shards.clone();
    let relay_cfg = keel_outbox::RelayConfig {
        batch: keel_outbox::DEFAULT_RELAY_BATCH,
        interval: keel_outbox::DEFAULT_RELAY_INTERVAL,
    };
    let wakeup = audit.wakeup();
    tasks.spawn("outbox-relay", async move {
        keel_outbox::run_relay(relay_shards, bus, relay_cfg, wakeup, token).await;
    });
    host.on_shutdown(async move { shards.close().await });
    Ok(host)
}
