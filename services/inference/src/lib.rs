//! The inference service: keel's AI data plane. It owns tenants' documents (CRUD on the
//! tenant's shard, row-level security, the transactional outbox that announces every change on
//! JetStream), the model registry and its A/B splits, the providers that serve models (built-in
//! and OpenAI-compatible upstreams, behind breakers, timeouts and fallbacks), the read-through
//! cache in Redis, and the warm-up and hourly prefetch of each tenant's top prompts.
//!
//! * [`Config`] — typed configuration from an injected environment; [`start`] wires it all.
//! * [`documents`] — domain and storage; [`grpc`] — its edge.
//! * [`registry`] — models, versions, visibility, splits; [`catalog`] — its edge.
//! * [`provider`], [`upstream`] — calling a model; [`cache`] — Redis read-through.
//! * [`generation`] — model calls end to end; [`events`] — what they announce.
//! * [`retrieval`] — document chunks and similarity search (Generate's `retrieve_top_k`).

pub mod cache;
pub mod catalog;
pub mod documents;
pub mod error;
pub mod events;
pub mod generation;
pub mod grpc;
pub mod models;
pub mod provider;
pub mod registry;
pub mod retrieval;
pub mod upstream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
/// The role tenant transactions run as (migration 0002's row-level security).
pub const TENANT_ROLE: &str = "keel_inference_tenant";
/// The top prompts are prefetched hourly: popularity shifts over hours, not seconds.
pub const DEFAULT_PREFETCH_INTERVAL: Duration = Duration::from_secs(3600);
/// Prompts prefetched per tenant in each round.
pub const DEFAULT_PREFETCH_TOP: usize = 20;
/// Warm-up never holds readiness longer than this (a slow upstream must not keep a replica
/// out of rotation forever; the prefetch carries on in the background).
pub const WARMUP_LIMIT: Duration = Duration::from_secs(30);
/// An open model breaker refuses for this long before probing.
pub const DEFAULT_MODEL_BREAKER_OPEN: Duration = Duration::from_secs(5);

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
    /// Every model version this deployment serves.
    pub catalogue: Vec<registry::ModelSpec>,
    pub redis_prefix: String,
    pub cache_ttl: Duration,
    pub cache_op_timeout: Duration,
    pub split_ttl: Duration,
    pub model_breaker_open: Duration,
    pub prefetch_interval: Duration,
    pub prefetch_top: usize,
    /// The embedding model retrieval embeds queries (and expects chunks) with.
    pub retrieval_model: String,
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
            catalogue: registry::catalogue_from_env(env)?,
            redis_prefix: env.or("KEEL_REDIS_PREFIX", "keel".to_owned())?,
            cache_ttl: env.duration("KEEL_INFERENCE_CACHE_TTL", cache::DEFAULT_TTL)?,
            cache_op_timeout: env
                .duration("KEEL_INFERENCE_CACHE_TIMEOUT", cache::DEFAULT_OP_TIMEOUT)?,
            split_ttl: env.duration("KEEL_INFERENCE_SPLIT_TTL", registry::DEFAULT_SPLIT_TTL)?,
            model_breaker_open: env.duration(
                "KEEL_INFERENCE_BREAKER_OPEN_FOR",
                DEFAULT_MODEL_BREAKER_OPEN,
            )?,
            prefetch_interval: env.duration(
                "KEEL_INFERENCE_PREFETCH_INTERVAL",
                DEFAULT_PREFETCH_INTERVAL,
            )?,
            prefetch_top: env.or("KEEL_INFERENCE_PREFETCH_TOP", DEFAULT_PREFETCH_TOP)?,
            retrieval_model: env.or(
                "KEEL_INFERENCE_RETRIEVAL_MODEL",
                retrieval::DEFAULT_RETRIEVAL_MODEL.to_owned(),
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
    #[error("redis configuration: {0}")]
    Redis(String),
}

/// Starts the service: binds its listeners, serves, runs its background work. The returned
/// [`Host`] reports readiness and shuts everything down.
pub async fn start(cfg: Config) -> Result<Host, StartError> {
    let tasks = Tasks::new();
    let shards = Shards::connect_lazy(&cfg.store, SCHEMA)?.with_tenant_role(TENANT_ROLE);
    let bus = Bus::connect(cfg.bus.clone()).await?;
    let redis = deadpool_redis::Config::from_url(cfg.redis_url.clone())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| StartError::Redis(e.to_string()))?;
    let wakeup = keel_outbox::Wakeup::default();
    let docs = documents::Documents::new(shards.clone(), wakeup.clone());
    let registry = Arc::new(registry::Registry::new(
        cfg.catalogue.clone(),
        shards.clone(),
        cfg.split_ttl,
    ));
    let events = events::Events::start(shards.clone(), wakeup.clone(), &tasks);
    let inference = Arc::new(generation::Inference {
        providers: provider::Providers::new(&registry, cfg.pace, cfg.model_breaker_open),
        registry: registry.clone(),
        cache: cache::Cache::new(
            cfg.redis_prefix.clone(),
            redis,
            cfg.cache_ttl,
            cfg.cache_op_timeout,
        ),
        events: events.clone(),
        tasks: tasks.clone(),
    });
    let retrieval = Arc::new(retrieval::Retrieval::new(
        shards.clone(),
        inference.clone(),
        cfg.retrieval_model.clone(),
    ));
    let routes = tonic::service::Routes::new(
        keel_proto::inference::document_store_server::DocumentStoreServer::new(
            grpc::DocumentStoreService::new(docs),
        ),
    )
    .add_service(
        keel_proto::inference::generation_server::GenerationServer::new(
            generation::GenerationService::new(inference.clone(), retrieval.clone()),
        ),
    )
    .add_service(
        keel_proto::inference::retrieval_server::RetrievalServer::new(
            retrieval::RetrievalService::new(retrieval),
        ),
    )
    .add_service(keel_proto::inference::models_server::ModelsServer::new(
        catalog::ModelsService::new(registry, events),
    ));
    let warm = Arc::new(AtomicBool::new(false));
    let warm_check = warm.clone();
    let checks = vec![
        keel_runtime::health::postgres(shards.clone(), &MIGRATOR),
        keel_runtime::health::nats(bus.clone()),
        // Redis is not a readiness dependency: without it the cache is bypassed and the
        // service keeps serving from the models.
        keel_runtime::health::Check::new("warm-up", move || {
            let warm = warm_check.load(Ordering::Acquire);
            async move {
                if warm {
                    Ok(())
                } else {
                    Err("prefetching the top prompts")
                }
            }
        }),
    ];
    let mut host = Host::start(
        &cfg.host,
        HostSpec {
            name: "inference",
            grpc_services: vec![
                "keel.inference.v1.DocumentStore",
                "keel.inference.v1.Generation",
                "keel.inference.v1.Models",
                "keel.inference.v1.Retrieval",
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
    let token = tasks.token();
    let (interval, top) = (cfg.prefetch_interval, cfg.prefetch_top);
    tasks.spawn("prefetch", async move {
        // Warm-up: the first round before readiness (bounded), then one round an hour.
        let first = tokio::time::timeout(WARMUP_LIMIT, prefetch_round(&inference, top)).await;
        if first.is_err() {
            tracing::warn!("warm-up prefetch did not finish in time; ready anyway");
        }
        warm.store(true, Ordering::Release);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = prefetch_round(&inference, top) => {}
            }
        }
    });
    host.on_shutdown(async move { shards.close().await });
    Ok(host)
}

/// Replays each tenant's most popular deterministic prompts into the cache.
async fn prefetch_round(inference: &generation::Inference, top: usize) {
    let started = std::time::Instant::now();
    let (mut tenants, mut computed) = (0usize, 0usize);
    for raw in inference.cache.tenants().await {
        let Ok(tenant) = keel_tenancy::TenantId::parse(&raw) else {
            continue;
        };
        tenants += 1;
        for key in inference.cache.popular(&tenant, top).await {
            let Some(bytes) = inference
                .cache
                .get_raw(&inference.cache.request_key(&tenant, &key))
                .await
            else {
                continue;
            };
            let Ok(replay) = serde_json::from_slice::<generation::Replay>(&bytes) else {
                continue;
            };
            match inference.prefetch(&tenant, replay).await {
                Ok(true) => computed += 1,
                Ok(false) => {}
                Err(st) => {
                    tracing::warn!(tenant = %tenant, code = ?st.code(), "prefetch of a popular prompt failed")
                }
            }
        }
    }
    metrics::counter!("keel_inference_prefetched_total").increment(computed as u64);
    tracing::info!(
        tenants,
        computed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "prefetched the top prompts"
    );
}
