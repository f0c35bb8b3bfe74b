//! The post-processing service: durable JetStream consumers that take work off the critical
//! path and record its effects effectively once.
//!
//! * [`Config`] / [`Application`] — consumers plus a gRPC health/reflection port and admin HTTP.
//! * [`handler`] — document events → document records (effect + dedupe in one transaction).
//! * [`indexer`] — document events → chunks and embeddings in inference's retrieval index.
//! * [`usage`] — inference events → usage per tenant, day and model version, and the internal
//!   `UsageStore` the gateway reads it through.
//! * [`moderation`] — answers → a rule-based moderation and quality verdict, stored per event.
//! * [`audit`] — audit events → each tenant's append-only audit log, and the internal `AuditLog`.

pub mod audit;
pub mod common;
pub mod handler;
pub mod indexer;
pub mod moderation;
pub mod usage;

use keel_bus::{Bus, BusConfig, ConsumerSpec};
use keel_config::{ConfigError, Env};
use keel_runtime::{Host, HostConfig, HostSpec, Tasks};
use keel_store::{Shards, StoreConfig};

/// Default ports: gRPC (health and reflection only) 50054, admin 9094.
pub const DEFAULT_GRPC_PORT: u16 = 50054;
pub const DEFAULT_ADMIN_PORT: u16 = 9094;
pub const SCHEMA: &str = "postproc";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct Config {
    pub host: HostConfig,
    pub store: StoreConfig,
    pub bus: BusConfig,
    pub max_ack_pending: i64,
    /// Deliveries of one message before it is dead-lettered.
    pub max_deliver: i64,
    /// Redelivery when a message is not acked in time (a crashed or stuck instance).
    pub ack_wait: std::time::Duration,
    /// Inference (`KEEL_INFERENCE_URL`): where documents are read, embedded and indexed.
    pub inference_url: Option<String>,
    pub embed_model: String,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let max_ack_pending: i64 = env.or(
            "KEEL_POSTPROC_MAX_ACK_PENDING",
            keel_bus::consumer::DEFAULT_MAX_ACK_PENDING,
        )?;
        if max_ack_pending < 1 {
            return Err(ConfigError::Invalid {
                key: "KEEL_POSTPROC_MAX_ACK_PENDING".into(),
                shown: max_ack_pending.to_string(),
                problem: "must be at least 1".into(),
            });
        }
        Ok(Config {
            host: HostConfig::from_env(
                env,
                "KEEL_POSTPROC",
                DEFAULT_GRPC_PORT,
                DEFAULT_ADMIN_PORT,
            )?,
            store: StoreConfig::from_env(env)?,
            bus: BusConfig::from_env(env)?,
            max_ack_pending,
            max_deliver: match env.or(
                "KEEL_POSTPROC_MAX_DELIVER",
                keel_bus::consumer::DEFAULT_MAX_DELIVER,
            )? {
                n if n >= 1 => n,
                n => {
                    return Err(ConfigError::Invalid {
                        key: "KEEL_POSTPROC_MAX_DELIVER".into(),
                        shown: n.to_string(),
                        problem: "must be at least 1".into(),
                    });
                }
            },
            ack_wait: env.duration(
                "KEEL_POSTPROC_ACK_WAIT",
                keel_bus::consumer::DEFAULT_ACK_WAIT,
            )?,
            inference_url: match env.raw("KEEL_INFERENCE_URL") {
                Some(_) => Some(env.url("KEEL_INFERENCE_URL", &["http", "https"])?),
                None => None,
            },
            embed_model: env.or(
                "KEEL_POSTPROC_EMBED_MODEL",
                indexer::DEFAULT_EMBED_MODEL.to_owned(),
            )?,
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
    #[error("inference URL {url}: {source}")]
    Upstream {
        url: String,
        source: tonic::transport::Error,
    },
}

/// Starts the service: binds its listeners, serves, runs its background work. The returned
/// [`Host`] reports readiness and shuts everything down.
pub async fn start(cfg: Config) -> Result<Host, StartError> {
    let tasks = Tasks::new();
    let shards = Shards::connect_lazy(&cfg.store, SCHEMA)?;
    let bus = Bus::connect(cfg.bus.clone()).await?;
    let indexer = match &cfg.inference_url {
        Some(url) => Some(indexer::Indexer::new(
            keel_runtime::context::lazy_channel(url).map_err(|source| StartError::Upstream {
                url: url.clone(),
                source,
            })?,
            cfg.embed_model.clone(),
        )),
        None => {
            tracing::warn!(
                "KEEL_INFERENCE_URL is not set: documents are recorded but not indexed for retrieval"
            );
            None
        }
    };
    let checks = vec![
        keel_runtime::health::postgres(shards.clone(), &MIGRATOR),
        keel_runtime::health::nats(bus.clone()),
    ];
    let mut host = Host::start(
        &cfg.host,
        HostSpec {
            name: "postproc",
            grpc_services: vec![
                "keel.postproc.v1.UsageStore",
                "keel.postproc.v1.AuditLog",
                "keel.postproc.v1.ModerationStore",
            ],
            routes: tonic::service::Routes::new(
                keel_proto::postproc::usage_store_server::UsageStoreServer::new(
                    usage::UsageStore::new(shards.clone()),
                ),
            )
            .add_service(keel_proto::postproc::audit_log_server::AuditLogServer::new(
                audit::AuditLog::new(shards.clone()),
            ))
            .add_service(
                keel_proto::postproc::moderation_store_server::ModerationStoreServer::new(
                    moderation::ModerationStore::new(shards.clone()),
                ),
            ),
            checks,
            trust_tenant_header: true,
            gate: None,
            http: None,
        },
        tasks.clone(),
    )
    .await?;
    let consumer = |durable: &str, kind: &str| {
        let mut spec = ConsumerSpec::new(durable, bus.kind_filter(kind));
        spec.max_ack_pending = cfg.max_ack_pending;
        spec.max_deliver = cfg.max_deliver;
        spec.ack_wait = cfg.ack_wait;
        spec
    };
    spawn_consumer(
        &tasks,
        "consumer-documents",
        bus.clone(),
        shards.clone(),
        consumer(handler::DOCUMENTS_CONSUMER, "document.*"),
        handler::DocumentHandler::new(shards.clone(), indexer),
    );
    spawn_consumer(
        &tasks,
        "consumer-usage",
        bus.clone(),
        shards.clone(),
        consumer(usage::USAGE_CONSUMER, "inference.completed"),
        common::Batched::new(shards.clone(), usage::UsageHandler),
    );
    spawn_consumer(
        &tasks,
        "consumer-moderation",
        bus.clone(),
        shards.clone(),
        consumer(moderation::MODERATION_CONSUMER, "inference.completed"),
        common::Batched::new(shards.clone(), moderation::ModerationHandler),
    );
    spawn_consumer(
        &tasks,
        "consumer-audit",
        bus.clone(),
        shards.clone(),
        consumer(audit::AUDIT_CONSUMER, "audit.>"),
        common::Batched::new(shards.clone(), audit::AuditHandler),
    );
    host.on_shutdown(async move { shards.close().await });
    Ok(host)
}

/// Runs one durable consumer under `tasks`, once the schema its effects need is migrated.
fn spawn_consumer<H: keel_bus::Handler>(
    tasks: &Tasks,
    name: &'static str,
    bus: Bus,
    shards: Shards,
    spec: ConsumerSpec,
    handler: H,
) {
    let token = tasks.token();
    tasks.spawn(name, async move {
        // Effects need the schema: wait for the migrations the readiness check applies.
        while !shards.is_migrated() {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            }
        }
        if let Err(e) = keel_bus::run_consumer(&bus, spec, handler, token).await {
            tracing::error!(error = %e, consumer = name, "consumer stopped");
        }
    });
}
