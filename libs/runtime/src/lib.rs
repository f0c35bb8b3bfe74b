//! What every keel server shares, so a service's `lib.rs` only wires its own parts:
//!
//! * [`Tasks`] — owned background work: one cancellation token, one tracker, bounded drain.
//! * [`HostConfig`] / [`Host`] — binds the gRPC and admin listeners (port 0 in tests), serves
//!   gRPC health (NOT_SERVING until the dependency [`Check`]s pass) and reflection, `/livez`,
//!   `/readyz` and `/metrics`, and shuts down in order.
//! * [`layer`] — the server-side request layer: trace-context extraction, the request span
//!   with tenant and correlation ID, RED metrics.
//! * [`context`] — tenant and correlation ID on incoming and outgoing internal calls.
//! * [`shutdown_signal`] — SIGTERM or Ctrl-C.

pub mod context;
pub mod health;
pub mod http;
pub mod layer;
pub mod process;
mod tasks;

use std::net::SocketAddr;
use std::time::Duration;

use keel_config::{ConfigError, Env};
use tokio::net::TcpListener;

pub use health::{Check, Readiness};
pub use layer::{Admission, CallStarted, Caller, DownstreamTime, Gate, GateFuture};
pub use tasks::Tasks;

/// Time in-flight work gets to finish after a shutdown signal before it is abandoned: shorter
/// than Kubernetes' default 30 s grace period, so we exit on our own terms.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// TCP keepalive on accepted gRPC connections: finds dead peers behind NATs and load balancers.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// HTTP/2 PINGs on idle gRPC connections, and how long an answer may take: a frozen or vanished
/// client is found within ~40 s; a live one answers in milliseconds.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How often dependency checks run.
pub const DEFAULT_READINESS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Listener addresses and lifecycle knobs of one service.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shutdown_grace: Duration,
    pub readiness_interval: Duration,
    /// Load shedding: gRPC calls in flight beyond this are refused at once (`None`: no bound).
    pub max_in_flight: Option<usize>,
    /// Timeouts and caps of the public HTTP listener, when the service has one.
    pub http_limits: http::HttpLimits,
}

impl HostConfig {
    /// `<PREFIX>_GRPC_ADDR`, `<PREFIX>_ADMIN_ADDR`, `KEEL_SHUTDOWN_GRACE`, `KEEL_READINESS_INTERVAL`.
    pub fn from_env(
        env: &Env,
        prefix: &str,
        default_grpc_port: u16,
        default_admin_port: u16,
    ) -> Result<Self, ConfigError> {
        Ok(HostConfig {
            grpc_addr: env.addr(
                &format!("{prefix}_GRPC_ADDR"),
                SocketAddr::from(([127, 0, 0, 1], default_grpc_port)),
            )?,
            admin_addr: env.addr(
                &format!("{prefix}_ADMIN_ADDR"),
                SocketAddr::from(([127, 0, 0, 1], default_admin_port)),
            )?,
            shutdown_grace: env.duration("KEEL_SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE)?,
            max_in_flight: env.optional(&format!("{prefix}_MAX_IN_FLIGHT"))?,
            readiness_interval: env
                .duration("KEEL_READINESS_INTERVAL", DEFAULT_READINESS_INTERVAL)?,
            http_limits: http::HttpLimits::from_env(env)?,
        })
    }
}

pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RuntimeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::Bind { what, addr, source })
}

/// A running service's shell: its listeners, health and tasks.
pub struct Host {
    name: &'static str,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    tasks: Tasks,
    readiness: Readiness,
    grace: Duration,
    closers: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

/// What a service hands to [`Host::start`].
pub struct HostSpec {
    pub name: &'static str,
    /// Fully-qualified gRPC service names this host serves (health reports each of them).
    pub grpc_services: Vec<&'static str>,
    pub routes: tonic::service::Routes,
    pub checks: Vec<Check>,
    /// Whether the `keel-tenant-id` metadata of incoming calls is trusted (internal services,
    /// behind the gateway) or ignored (the public gateway takes the tenant from the token).
    pub trust_tenant_header: bool,
    /// Admission control for every call (the public gateway's authentication).
    pub gate: Option<std::sync::Arc<dyn layer::Gate>>,
    /// A public HTTP surface and where to serve it (auth's OIDC endpoints).
    pub http: Option<(SocketAddr, axum::Router)>,
}

impl Host {
    /// Binds both listeners (before anything else, so a bad address fails fast), then serves.
    pub async fn start(
        cfg: &HostConfig,
        spec: HostSpec,
        tasks: Tasks,
    ) -> Result<Host, RuntimeError> {
        let grpc = bind("gRPC", cfg.grpc_addr).await?;
        let admin = bind("admin HTTP", cfg.admin_addr).await?;
        let http = match spec.http {
            Some((addr, router)) => Some((bind("HTTP", addr).await?, router)),
            None => None,
        };
        let http_addr = http.as_ref().and_then(|(l, _)| l.local_addr().ok());
        let grpc_addr = grpc.local_addr().unwrap_or(cfg.grpc_addr);
        let admin_addr = admin.local_addr().unwrap_or(cfg.admin_addr);

        let (reporter, health_service) = tonic_health::server::health_reporter();
        let readiness = Readiness::new(reporter, spec.grpc_services.clone());
        readiness.set(false).await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(keel_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .ok();
        let mut routes = spec.routes.add_service(health_service);
        if let Some(r) = reflection {
            routes = routes.add_service(r);
        }
        let token = tasks.token();
        let layer = layer::RequestLayer::new(
            spec.name,
            spec.trust_tenant_header,
            spec.gate,
            cfg.max_in_flight,
        );
        let write_stall = cfg.http_limits.write_stall;
        tasks.spawn("grpc-server", async move {
            // Small gRPC frames must leave at once: without TCP_NODELAY, Nagle's algorithm and
            // the peer's delayed ACKs hold responses for tens of milliseconds.
            let incoming = tonic::transport::server::TcpIncoming::from(grpc)
                .with_nodelay(Some(true))
                .with_keepalive(Some(TCP_KEEPALIVE));
            // A client that stops reading its socket must not hold its calls for ever.
            let incoming = futures::StreamExt::map(incoming, move |conn| {
                conn.map(|c| http::StallGuard::new(c, write_stall))
            });
            let result = tonic::transport::Server::builder()
                // A client that vanished or froze (no PING answered) releases its streams:
                // HTTP/2 flow control would otherwise hold them open for ever.
                .http2_keepalive_interval(Some(HTTP2_PING_INTERVAL))
                .http2_keepalive_timeout(Some(HTTP2_PING_TIMEOUT))
                .layer(layer)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });
        if let Some((listener, router)) = http {
            let token = tasks.token();
            let limits = cfg.http_limits.clone();
            tasks.spawn("http-server", http::serve(listener, router, limits, token));
        }
        let admin_router = health::admin_router(readiness.clone());
        let token = tasks.token();
        tasks.spawn("admin-server", async move {
            let result = axum::serve(admin, admin_router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "admin server failed");
            }
        });
        health::spawn_readiness_loop(
            &tasks,
            readiness.clone(),
            spec.checks,
            cfg.readiness_interval,
        );
        tracing::info!(service = spec.name, grpc = %grpc_addr, admin = %admin_addr, "listening");
        Ok(Host {
            name: spec.name,
            grpc_addr,
            admin_addr,
            http_addr,
            tasks,
            readiness,
            grace: cfg.shutdown_grace,
            closers: Vec::new(),
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The public HTTP listener, when the service has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Work to do after every task has stopped (closing pools, in registration order).
    pub fn on_shutdown(&mut self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        self.closers.push(Box::pin(fut));
    }

    /// Graceful, bounded shutdown: report NOT_SERVING so balancers drain, stop accepting, let
    /// in-flight calls and consumers finish within the grace period, then close resources.
    pub async fn shutdown(self) {
        tracing::info!(service = self.name, "shutting down");
        self.readiness.set(false).await;
        self.tasks.shutdown(self.grace).await;
        for closer in self.closers {
            closer.await;
        }
        tracing::info!(service = self.name, "stopped");
    }
}

impl process::Service for Host {
    async fn shutdown(self) {
        Host::shutdown(self).await
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
