//! The gateway: keel's only public entry. It admits every call through one gate (route table,
//! credentials, tenant, scope), then serves the public `keel.v1` API by calling the internal
//! services on behalf of the caller's tenant.
//!
//! * [`Config`] / [`Application`] — listeners, upstream channels, readiness on auth and inference.
//! * [`routes`] — the route table; [`gate`] — admission; [`limits`] — tier rate limits shared
//!   through Redis; [`grpc`] — the public services; [`forwarded`] — the client's address
//!   behind trusted proxies.

pub mod forwarded;
pub mod gate;
pub mod grpc;
pub mod limits;
pub mod openai;
pub mod routes;
pub mod swr;

use std::sync::Arc;
use std::time::Duration;

use keel_config::{ConfigError, Env};
use keel_runtime::health::grpc_serving;
use keel_runtime::{Host, HostConfig, HostSpec, Tasks};
use tonic::transport::Channel;

/// Default ports: gRPC 50051, HTTP 8080 (the OpenAI-compatible surface), admin 9091.
pub const DEFAULT_GRPC_PORT: u16 = 50051;
pub const DEFAULT_HTTP_PORT: u16 = 8080;
pub const DEFAULT_ADMIN_PORT: u16 = 9091;
/// Upstream deadline when the client sets none (or a longer one): CRUD must answer well inside
/// the 300 ms p95 objective, so 5 s only bounds the pathological case.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Payload caps, enforced while the request is decoded, before any work: a document call
/// carries at most the 1 MiB content inference accepts plus its other fields...
pub const MAX_DOCUMENT_MESSAGE_BYTES: usize = (1 << 20) + 8 * 1024;
/// ...an inference call a prompt (keel-tiny takes 4,096 tokens; 256 texts to embed)...
pub const MAX_INFERENCE_MESSAGE_BYTES: usize = 2 << 20;
/// ...and an authentication call a few short strings.
pub const MAX_AUTH_MESSAGE_BYTES: usize = 16 * 1024;
/// Calls in flight before the gateway sheds load (`KEEL_GATEWAY_MAX_IN_FLIGHT`): beyond it,
/// refusing at once keeps latency and memory bounded (an unbounded queue at 8,000/s grew the
/// process past 250 MB and its p99 to seconds on the 2-core benchmark machine).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 2048;

#[derive(Debug, Clone)]
pub struct Config {
    pub host: HostConfig,
    pub auth_url: String,
    pub inference_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub issuer_base: String,
    pub upstream_timeout: Duration,
    /// The OpenAI-compatible HTTP surface.
    pub http_addr: std::net::SocketAddr,
    /// While Redis is unreachable: refuse calls (true) or serve with per-replica limits and
    /// unchecked revocations (false, the default: availability first; tokens still expire).
    pub redis_fail_closed: bool,
    /// The per-source budget of the anonymous methods (login flows).
    pub anonymous_rate: limits::Rate,
    /// Proxies (an ingress, a load balancer) whose `x-forwarded-for` names the client.
    pub trusted_proxies: forwarded::TrustedProxies,
    /// The circuit breaker in front of inference.
    pub breaker: keel_resilience::BreakerConfig,
    /// Post-processing (`KEEL_POSTPROC_URL`), which serves metered usage; unset: `GetUsage`
    /// answers NOT_IMPLEMENTED.
    pub postproc_url: Option<String>,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Config {
            host: {
                let mut h = HostConfig::from_env(
                    env,
                    "KEEL_GATEWAY",
                    DEFAULT_GRPC_PORT,
                    DEFAULT_ADMIN_PORT,
                )?;
                h.max_in_flight = h.max_in_flight.or(Some(DEFAULT_MAX_IN_FLIGHT));
                h
            },
            auth_url: env.url("KEEL_AUTH_URL", &["http", "https"])?,
            inference_url: env.url("KEEL_INFERENCE_URL", &["http", "https"])?,
            postproc_url: match env.raw("KEEL_POSTPROC_URL") {
                Some(_) => Some(env.url("KEEL_POSTPROC_URL", &["http", "https"])?),
                None => None,
            },
            redis_url: env.url("KEEL_REDIS_URL", &["redis", "rediss"])?,
            redis_prefix: env.or("KEEL_REDIS_PREFIX", "keel".to_owned())?,
            issuer_base: env.or(
                "KEEL_AUTH_ISSUER_BASE",
                keel_token::DEFAULT_ISSUER_BASE.to_owned(),
            )?,
            upstream_timeout: env
                .duration("KEEL_GATEWAY_UPSTREAM_TIMEOUT", DEFAULT_UPSTREAM_TIMEOUT)?,
            redis_fail_closed: env.bool("KEEL_GATEWAY_REDIS_FAIL_CLOSED", false)?,
            http_addr: env.addr(
                "KEEL_GATEWAY_HTTP_ADDR",
                std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_HTTP_PORT)),
            )?,
            breaker: {
                let d = keel_resilience::BreakerConfig::default();
                keel_resilience::BreakerConfig {
                    min_calls: env.or("KEEL_GATEWAY_BREAKER_MIN_CALLS", d.min_calls)?,
                    open_for: env.duration("KEEL_GATEWAY_BREAKER_OPEN_FOR", d.open_for)?,
                    slow_call: env.duration("KEEL_GATEWAY_BREAKER_SLOW_CALL", d.slow_call)?,
                    ..d
                }
            },
            anonymous_rate: limits::Rate {
                per_second: env.or("KEEL_GATEWAY_ANONYMOUS_RATE", limits::ANONYMOUS.per_second)?,
                burst: env.or("KEEL_GATEWAY_ANONYMOUS_BURST", limits::ANONYMOUS.burst)?,
            },
            trusted_proxies: env.or("KEEL_GATEWAY_TRUSTED_PROXIES", Default::default())?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] keel_runtime::RuntimeError),
    #[error("redis configuration: {0}")]
    Redis(String),
    #[error("upstream URL {url} is invalid: {source}")]
    Upstream {
        url: String,
        source: tonic::transport::Error,
    },
}

fn channel(url: &str) -> Result<Channel, StartError> {
    keel_runtime::context::lazy_channel(url).map_err(|source| StartError::Upstream {
        url: url.to_owned(),
        source,
    })
}

/// Starts the service: binds its listeners, serves, runs its background work. The returned
/// [`Host`] reports readiness and shuts everything down.
pub async fn start(cfg: Config) -> Result<Host, StartError> {
    let auth = channel(&cfg.auth_url)?;
    let inference = channel(&cfg.inference_url)?;
    let redis = deadpool_redis::Config::from_url(cfg.redis_url.clone())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| StartError::Redis(e.to_string()))?;
    let tasks = Tasks::new();
    let gate = Arc::new(gate::AuthGate::new(
        &cfg,
        auth.clone(),
        redis.clone(),
        tasks.clone(),
    ));
    let inference_edge = Arc::new(grpc::InferenceGateway::new(
        inference.clone(),
        gate.limiter(),
        tasks.clone(),
        cfg.breaker.clone(),
    ));
    let models_edge = Arc::new(grpc::ModelGateway::new(
        inference.clone(),
        cfg.upstream_timeout,
    ));
    let postproc_edge = Arc::new(grpc::PostprocGateway::new(
        cfg.postproc_url.as_deref().map(channel).transpose()?,
        cfg.upstream_timeout,
    ));
    let openai = openai::router(gate.clone(), inference_edge.clone(), models_edge.clone());
    let routes = tonic::service::Routes::new(
        keel_proto::public::document_service_server::DocumentServiceServer::new(
            grpc::DocumentGateway::new(
                inference.clone(),
                cfg.upstream_timeout,
                Arc::new(keel_resilience::Breaker::new(
                    "inference",
                    cfg.breaker.clone(),
                )),
            ),
        )
        .max_decoding_message_size(MAX_DOCUMENT_MESSAGE_BYTES),
    )
    .add_service(
        keel_proto::public::inference_service_server::InferenceServiceServer::from_arc(
            inference_edge.clone(),
        )
        .max_decoding_message_size(MAX_INFERENCE_MESSAGE_BYTES),
    )
    .add_service(
        keel_proto::public::model_service_server::ModelServiceServer::from_arc(models_edge),
    )
    .add_service(
        keel_proto::public::usage_service_server::UsageServiceServer::from_arc(
            postproc_edge.clone(),
        ),
    )
    .add_service(
        keel_proto::public::audit_service_server::AuditServiceServer::from_arc(
            postproc_edge.clone(),
        ),
    )
    .add_service(
        keel_proto::public::moderation_service_server::ModerationServiceServer::from_arc(
            postproc_edge,
        ),
    )
    .add_service(
        keel_proto::public::authentication_service_server::AuthenticationServiceServer::new(
            grpc::AuthenticationGateway::new(
                auth.clone(),
                cfg.upstream_timeout,
                cfg.trusted_proxies.clone(),
            ),
        )
        .max_decoding_message_size(MAX_AUTH_MESSAGE_BYTES),
    );

    let host = Host::start(
        &cfg.host,
        HostSpec {
            name: "gateway",
            grpc_services: vec![
                "keel.v1.DocumentService",
                "keel.v1.InferenceService",
                "keel.v1.ModelService",
                "keel.v1.UsageService",
                "keel.v1.AuditService",
                "keel.v1.ModerationService",
                "keel.v1.AuthenticationService",
            ],
            routes,
            checks: vec![
                grpc_serving("auth", auth.clone()),
                grpc_serving("inference", inference),
                keel_runtime::health::redis_ping("redis", redis.clone()),
            ],
            trust_tenant_header: false,
            gate: Some(gate),
            http: Some((cfg.http_addr, openai)),
        },
        tasks,
    )
    .await?;
    Ok(host)
}
