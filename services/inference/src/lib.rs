//! The inference service: keel's AI data plane. Today it owns tenants' documents (CRUD on the
//! tenant's shard) and the transactional outbox that announces every change on JetStream;
//! models, providers and the cache build on the same skeleton.
//!
//! * [`Config`] — typed configuration from an injected environment.
//! * [`Application`] — binds, serves `keel.inference.v1.DocumentStore`, runs the outbox relay.
//! * [`documents`] — domain and storage; [`grpc`] — the edge.

pub mod documents;
pub mod error;
pub mod generation;
pub mod grpc;
pub mod models;

use keel_bus::{Bus, BusConfig};
use keel_config::{ConfigError, Env};
use keel_runtime::{Host, HostConfig, HostSpec, Tasks};
use keel_store::{Shards, StoreConfig};

pub use error::Error;

/// Default ports (README's table): gRPC 50053, admin 9093.
pub const DEFAULT_GRPC_PORT: u16 = 50053;
pub const DEFAULT_ADMIN_PORT: u16 = 9093;
/// Postgres schema owned by this service on every shard.
pub const SCHEMA: &str = "inference";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct Config {
    pub host: HostConfig,
    pub store: StoreConfig,
    pub bus: BusConfig,
    pub redis_url: String,
    pub relay: keel_outbox::RelayConfig,
    /// keel-tiny's pacing (time to first token, then per token).
    pub pace: models::Pace,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Config {
            host: HostConfig::from_env(
                env,
                "KEEL_INFERENCE",
                DEFAULT_GRPC_PORT,
                DEFAULT_ADMIN_PORT,
            )?,
            store: StoreConfig::from_env(env)?,
            bus: BusConfig::from_env(env)?,
            redis_url: env.url("KEEL_REDIS_URL", &["redis", "rediss"])?,
            relay: keel_outbox::RelayConfig {
                batch: env.or("KEEL_OUTBOX_BATCH", keel_outbox::DEFAULT_RELAY_BATCH)?,
                interval: env
                    .duration("KEEL_OUTBOX_INTERVAL", keel_outbox::DEFAULT_RELAY_INTERVAL)?,
            },
            pace: models::Pace {
                first_token: env.duration(
                    "KEEL_INFERENCE_TINY_FIRST_TOKEN",
                    generation::DEFAULT_FIRST_TOKEN,
                )?,
                per_token: env.duration(
                    "KEEL_INFERENCE_TINY_PER_TOKEN",
                    generation::DEFAULT_PER_TOKEN,
                )?,
            },
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] keel_runtime::RuntimeError),
    #[error(transparent)]
    Store(#[from] keel_store::StoreError),
    #[error(transparent)]
    Bus(#[from] keel_bus::BusError),
    #[error("redis configuration: {0}")]
    Redis(String),
}

/// Starts the service: binds its listeners, serves, runs its background work. The returned
/// [`Host`] reports readiness and shuts everything down.
pub async fn start(cfg: Config) -> Result<Host, StartError> {
    let tasks = Tasks::new();
    let shards = Shards::connect_lazy(&cfg.store, SCHEMA)?;
    let bus = Bus::connect(cfg.bus.clone()).await?;
    let redis = deadpool_redis::Config::from_url(cfg.redis_url.clone())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| StartError::Redis(e.to_string()))?;
    let wakeup = keel_outbox::Wakeup::default();
    let docs = documents::Documents::new(shards.clone(), wakeup.clone());
    let routes = tonic::service::Routes::new(
        keel_proto::inference::document_store_server::DocumentStoreServer::new(
            grpc::DocumentStoreService::new(docs),
        ),
    )
    .add_service(
        keel_proto::inference::generation_server::GenerationServer::new(
            generation::GenerationService::new(cfg.pace),
        ),
    );
    let checks = vec![
        keel_runtime::health::postgres(shards.clone(), &MIGRATOR),
        keel_runtime::health::nats(bus.clone()),
        keel_runtime::health::redis_ping("redis", redis),
    ];
    let mut host = Host::start(
        &cfg.host,
        HostSpec {
            name: "inference",
            grpc_services: vec![
                "keel.inference.v1.DocumentStore",
                "keel.inference.v1.Generation",
            ],
            routes,
            checks,
            trust_tenant_header: true,
            gate: None,
            http: None,
        },
        tasks.clone(),
    )
    .await?;
    let token = tasks.token();
    let relay_shards = shards.clone();
    tasks.spawn("outbox-relay", async move {
        keel_outbox::run_relay(relay_shards, bus, cfg.relay, wakeup, token).await;
    });
    host.on_shutdown(async move { shards.close().await });
    Ok(host)
}
