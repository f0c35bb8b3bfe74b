//! Readiness: dependency [`Check`]s run on an interval; the service reports SERVING (gRPC
//! health, `/readyz`) only while they pass. Liveness (`/livez`) never depends on anything
//! downstream: a process whose database is down is alive and should not be restarted.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::Tasks;

/// A check gets this long before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Consecutive failed rounds before a ready service turns NOT_SERVING: damps a single blip
/// (one slow ping) without hiding an outage for more than a few seconds.
const FAILURES_BEFORE_UNREADY: u32 = 3;

type CheckFn = dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync;

/// One named dependency check. It may do start-up work too (e.g. apply migrations once).
#[derive(Clone)]
pub struct Check {
    name: &'static str,
    run: Arc<CheckFn>,
}

impl Check {
    pub fn new<F, Fut, E>(name: &'static str, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        Check {
            name,
            run: Arc::new(move || {
                let fut = f();
                Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
            }),
        }
    }
}

/// The readiness latch, shared by gRPC health and `/readyz`.
#[derive(Clone)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    reporter: HealthReporter,
    services: Arc<Vec<&'static str>>,
    last: Arc<Mutex<BTreeMap<&'static str, Result<(), String>>>>,
}

impl Readiness {
    pub fn new(reporter: HealthReporter, services: Vec<&'static str>) -> Self {
        Readiness {
            ready: Arc::new(AtomicBool::new(false)),
            reporter,
            services: Arc::new(services),
            last: Arc::default(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Sets the overall (`""`) status and each served service's status.
    pub async fn set(&self, ready: bool) {
        let was = self.ready.swap(ready, Ordering::AcqRel);
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for s in self.services.iter() {
            self.reporter.set_service_status(*s, status).await;
        }
        if was != ready {
            tracing::info!(ready, "readiness changed");
        }
        metrics::gauge!("keel_ready").set(if ready { 1.0 } else { 0.0 });
    }

    fn record(&self, results: BTreeMap<&'static str, Result<(), String>>) {
        if let Ok(mut last) = self.last.lock() {
            *last = results;
        }
    }

    fn snapshot(&self) -> BTreeMap<&'static str, Result<(), String>> {
        self.last.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

pub(crate) fn spawn_readiness_loop(
    tasks: &Tasks,
    readiness: Readiness,
    checks: Vec<Check>,
    interval: Duration,
) {
    let token = tasks.token();
    tasks.spawn("readiness", async move {
        let mut failures = 0u32;
        loop {
            let mut results = BTreeMap::new();
            for c in &checks {
                let r = match tokio::time::timeout(CHECK_TIMEOUT, (c.run)()).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
                };
                if let Err(e) = &r {
                    tracing::debug!(check = c.name, error = %e, "dependency check failed");
                }
                results.insert(c.name, r);
            }
            let ok = results.values().all(Result::is_ok);
            readiness.record(results);
            if token.is_cancelled() {
                return;
            }
            if ok {
                failures = 0;
                if !readiness.is_ready() {
                    readiness.set(true).await;
                }
            } else {
                failures += 1;
                if readiness.is_ready() && failures >= FAILURES_BEFORE_UNREADY {
                    tracing::warn!(failures, "dependencies failing; reporting NOT_SERVING");
                    readiness.set(false).await;
                }
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    });
}

pub(crate) fn admin_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|| async { keel_telemetry::render_metrics() }),
        )
        .with_state(readiness)
}

async fn readyz(State(r): State<Readiness>) -> impl IntoResponse {
    let checks: serde_json::Map<String, serde_json::Value> = r
        .snapshot()
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Ok(()) => serde_json::Value::from("ok"),
                Err(e) => serde_json::Value::from(e),
            };
            (k.to_owned(), v)
        })
        .collect();
    let ready = r.is_ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(serde_json::json!({ "ready": ready, "checks": checks })),
    )
}

/// A check that another keel service reports SERVING on its gRPC health endpoint.
pub fn grpc_serving(name: &'static str, channel: tonic::transport::Channel) -> Check {
    Check::new(name, move || {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        async move {
            let resp = client
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map_err(|s| format!("{}: {}", crate::layer::code_name(s.code()), s.message()))?;
            if resp.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                Ok(())
            } else {
                Err("NOT_SERVING".to_owned())
            }
        }
    })
}

/// A check that Redis answers PING. Each round also samples the pool's use (USE metrics):
/// `keel_redis_pool_connections{pool,state="used"|"idle"}`, `keel_redis_pool_max_connections`
/// and `keel_redis_pool_waiting` (callers queued for a connection).
pub fn redis_ping(name: &'static str, pool: deadpool_redis::Pool) -> Check {
    Check::new(name, move || {
        let pool = pool.clone();
        async move {
            let s = pool.status();
            let used = s.size.saturating_sub(s.available);
            metrics::gauge!("keel_redis_pool_connections", "pool" => name, "state" => "used")
                .set(used as f64);
            metrics::gauge!("keel_redis_pool_connections", "pool" => name, "state" => "idle")
                .set(s.available as f64);
            metrics::gauge!("keel_redis_pool_max_connections", "pool" => name)
                .set(s.max_size as f64);
            metrics::gauge!("keel_redis_pool_waiting", "pool" => name).set(s.waiting as f64);
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
}

/// The Postgres check of a service that owns a schema: applies its migrations once every shard
/// answers, then passes while any shard answers (one shard down costs only its tenants; see
/// `Shards::ready`), exporting `keel_db_shard_up{schema,shard}`. Each round also samples every
/// shard's pool (USE metrics):
/// `keel_db_pool_connections{schema,shard,state="used"|"idle"}` and
/// `keel_db_pool_max_connections{schema,shard}`.
pub fn postgres(shards: keel_store::Shards, migrator: &'static sqlx::migrate::Migrator) -> Check {
    Check::new("postgres", move || {
        let shards = shards.clone();
        async move {
            for (i, pool) in shards.pools().iter().enumerate() {
                let (schema, shard) = (shards.schema(), i.to_string());
                let size = pool.size() as f64;
                let idle = pool.num_idle() as f64;
                metrics::gauge!("keel_db_pool_connections", "schema" => schema, "shard" => shard.clone(), "state" => "used")
                    .set((size - idle).max(0.0));
                metrics::gauge!("keel_db_pool_connections", "schema" => schema, "shard" => shard.clone(), "state" => "idle")
                    .set(idle);
                metrics::gauge!("keel_db_pool_max_connections", "schema" => schema, "shard" => shard)
                    .set(f64::from(pool.options().get_max_connections()));
            }
            let up = shards.ready(migrator).await?;
            for (i, up) in up.into_iter().enumerate() {
                metrics::gauge!("keel_db_shard_up", "schema" => shards.schema(), "shard" => i.to_string())
                    .set(if up { 1.0 } else { 0.0 });
            }
            Ok::<(), keel_store::StoreError>(())
        }
    })
}

/// The NATS check: connected, JetStream answering, the event stream declared. Each round also
/// samples the stream's durable consumers (USE metrics of the queues):
/// `keel_nats_consumer_pending{consumer}` (not yet delivered) and
/// `keel_nats_consumer_ack_pending{consumer}` (delivered, not yet acknowledged).
pub fn nats(bus: keel_bus::Bus) -> Check {
    Check::new("nats", move || {
        let bus = bus.clone();
        async move {
            bus.ping().await?;
            bus.ensure_stream().await?;
            for c in bus.consumer_states().await? {
                metrics::gauge!("keel_nats_consumer_pending", "consumer" => c.name.clone())
                    .set(c.pending as f64);
                metrics::gauge!("keel_nats_consumer_ack_pending", "consumer" => c.name)
                    .set(c.ack_pending as f64);
            }
            Ok::<(), keel_bus::BusError>(())
        }
    })
}
