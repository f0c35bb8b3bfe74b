//! Telemetry export is switched on by the standard `OTEL_*` variables alone: the real binary,
//! pointed at an in-process OTLP collector of ours, delivers spans and metrics; pointed at
//! nothing, it serves and stops normally.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// The fake collector is a test fixture, aborted at the end of its test.
#![allow(clippy::disallowed_methods)]

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, String)>>>,
    metrics: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    self.spans.lock().unwrap().push((service.clone(), s.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        for rm in req.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    self.metrics.lock().unwrap().push(m.name);
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

fn start_gateway(otlp: &str, grpc: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_keel-gateway"))
        .env_clear()
        .env("KEEL_AUTH_URL", "http://127.0.0.1:1")
        .env("KEEL_INFERENCE_URL", "http://127.0.0.1:1")
        .env("KEEL_REDIS_URL", "redis://127.0.0.1:1")
        .env("KEEL_GATEWAY_GRPC_ADDR", grpc)
        .env("KEEL_GATEWAY_ADMIN_ADDR", "127.0.0.1:0")
        .env("KEEL_GATEWAY_HTTP_ADDR", "127.0.0.1:0")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gateway starts")
}

async fn call_health(grpc: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("gateway never listened: {e}"),
        }
    };
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..times {
        // NOT_SERVING (its upstreams are down) is still an answer, and still traced.
        client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
    }
}

fn stop(mut child: Child) -> Duration {
    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "gateway exited with {status}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_an_otlp_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let server = {
        let c = collector.clone();
        tokio::task::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(c.clone()))
                .add_service(MetricsServiceServer::new(c))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        })
    };
    let grpc = free_addr();
    let gw = start_gateway(&otlp, &grpc);
    call_health(&grpc, 3).await;
    // Metrics are exported every 200 ms; give it a few periods, then stop (which flushes spans).
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop(gw);
    let spans = collector.spans.lock().unwrap().clone();
    assert!(
        spans.iter().any(
            |(svc, name)| name == "grpc.health.v1.Health/Check" && svc.contains("keel-gateway")
        ),
        "no health span from keel-gateway: {spans:?}"
    );
    let metrics = collector.metrics.lock().unwrap().clone();
    assert!(
        metrics.iter().any(|m| m == "keel_rpc_requests_total"),
        "{metrics:?}"
    );
    assert!(
        metrics.iter().any(|m| m == "keel_rpc_duration_seconds"),
        "{metrics:?}"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_collector_the_service_runs_and_stops_normally() {
    let nowhere = format!("http://{}", free_addr());
    let grpc = free_addr();
    let gw = start_gateway(&nowhere, &grpc);
    call_health(&grpc, 3).await;
    let took = stop(gw);
    assert!(
        took < Duration::from_secs(15),
        "shutdown with an absent collector took {took:?}"
    );
}
