//! `cargo xtask bench gateway`: an open-model load (requests sent on a fixed schedule,
//! latency measured from the *intended* send time, so a slow server cannot hide its queueing)
//! against (a) inference directly and (b) the same call through the gateway, a separate
//! release process with authentication and rate limiting on, at rising rates until the gateway
//! no longer sustains one without errors. Prints p50/p99/p99.9 per rate and target, the
//! overhead (b − a), the gateway's peak RSS, and a last `key=value` line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

use keel_proto::inference::document_store_client::DocumentStoreClient;
use keel_proto::public as pb;
use keel_tests::{TestStack, authed, connect, free_port};
use tonic::transport::Channel;

/// Each rate runs this long (after a short warm-up at the same rate).
const RUN: Duration = Duration::from_secs(4);
const WARMUP: Duration = Duration::from_secs(1);
const RATES: &[u32] = &[500, 1000, 2000, 3000, 4000, 5000, 6000, 8000];
/// Connections per target (HTTP/2 multiplexes the rest).
const CONNECTIONS: usize = 8;
/// Enterprise tenants × users each: 4 × 2000 rps per tenant, 500 per user, stay above the
/// highest rate so the limiter is exercised but not the bottleneck.
const TENANTS: usize = 4;
const USERS: usize = 8;

#[derive(Clone)]
struct Caller {
    tenant: String,
    token: String,
    doc: String,
}

#[derive(Clone, Copy)]
enum Target {
    Direct,
    Gateway,
}

struct Stats {
    p50: f64,
    p99: f64,
    p999: f64,
    errors: usize,
    sent: usize,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn one(target: Target, ch: Channel, c: Caller) -> bool {
    match target {
        Target::Direct => {
            let mut req = tonic::Request::new(pb::GetDocumentRequest { id: c.doc });
            req.metadata_mut()
                .insert("keel-tenant-id", c.tenant.parse().unwrap());
            DocumentStoreClient::new(ch).get_document(req).await.is_ok()
        }
        Target::Gateway => pb::document_service_client::DocumentServiceClient::new(ch)
            .get_document(authed(pb::GetDocumentRequest { id: c.doc }, &c.token))
            .await
            .is_ok(),
    }
}

/// Sends `rate` requests a second for `dur` on a fixed schedule.
async fn open_model(
    target: Target,
    channels: &[Channel],
    callers: &[Caller],
    rate: u32,
    dur: Duration,
) -> Stats {
    let n = (f64::from(rate) * dur.as_secs_f64()) as usize;
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let intended = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
        let ch = channels[i % channels.len()].clone();
        let c = callers[i % callers.len()].clone();
        set.spawn(async move {
            tokio::time::sleep_until(intended).await;
            let ok = one(target, ch, c).await;
            (intended.elapsed().as_secs_f64() * 1000.0, ok)
        });
    }
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    while let Some(r) = set.join_next().await {
        let (ms, ok) = r.unwrap();
        lat.push(ms);
        errors += usize::from(!ok);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Stats {
        p50: pct(&lat, 0.50),
        p99: pct(&lat, 0.99),
        p999: pct(&lat, 0.999),
        errors,
        sent: n,
    }
}

fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let cfg = keel_telemetry::TelemetryConfig::from_env(
        "keel-bench",
        &keel_config::Env::from_pairs([("RUST_LOG", "error")]),
    )
    .unwrap();
    let _telemetry = keel_telemetry::init(cfg).unwrap();
    #[allow(clippy::disallowed_methods)]
    let gateway_bin = std::env::var("KEEL_BENCH_GATEWAY_BIN")
        .expect("KEEL_BENCH_GATEWAY_BIN: run through `cargo xtask bench gateway`");
    let pool = keel_store::DEFAULT_MAX_CONNECTIONS.to_string();
    let stack = TestStack::start_with(|e| {
        e.with("KEEL_DB_MAX_CONNECTIONS", pool)
            .with("KEEL_GATEWAY_ANONYMOUS_BURST", "1000000")
    })
    .await
    .unwrap();

    // Tenants, users, one document each, through the in-process stack.
    let mut callers = Vec::new();
    for t in 0..TENANTS {
        let tenant = format!("bench{t}");
        stack
            .directory()
            .await
            .unwrap()
            .create_tenant(keel_proto::auth::CreateTenantRequest {
                tenant_id: tenant.clone(),
                display_name: tenant.clone(),
                tier: "enterprise".into(),
            })
            .await
            .unwrap();
        for u in 0..USERS {
            let user = format!("u{u}");
            stack
                .create_user(&tenant, &user, &["member"])
                .await
                .unwrap();
            let (token, _) = stack.login(&tenant, &user).await.unwrap();
            let doc = stack
                .documents()
                .await
                .unwrap()
                .create_document(authed(
                    pb::CreateDocumentRequest {
                        title: "bench".into(),
                        content: "x".repeat(512),
                        idempotency_key: String::new(),
                    },
                    &token,
                ))
                .await
                .unwrap()
                .into_inner()
                .id;
            callers.push(Caller {
                tenant: tenant.clone(),
                token,
                doc,
            });
        }
    }

    // The gateway under test: its own release process.
    let grpc_port = free_port();
    let admin_port = free_port();
    let mut cmd = std::process::Command::new(&gateway_bin);
    cmd.env_clear();
    for key in [
        "KEEL_REDIS_URL",
        "KEEL_REDIS_PREFIX",
        "KEEL_AUTH_URL",
        "KEEL_INFERENCE_URL",
        "KEEL_AUTH_ISSUER_BASE",
    ] {
        cmd.env(key, stack.env.raw(key).unwrap_or_default());
    }
    let mut child = cmd
        .env("KEEL_GATEWAY_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env("KEEL_GATEWAY_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
        .env("KEEL_GATEWAY_HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the gateway");
    let gw_url = format!("http://127.0.0.1:{grpc_port}");
    keel_tests::wait_serving(&gw_url, Duration::from_secs(30))
        .await
        .unwrap();
    let mut direct = Vec::new();
    let mut via = Vec::new();
    for _ in 0..CONNECTIONS {
        direct.push(connect(&stack.inference_url()).await.unwrap());
        via.push(connect(&gw_url).await.unwrap());
    }

    println!(
        "open-model GetDocument, {RUN:?} per rate after {WARMUP:?} warm-up; latency from the intended send time (ms)"
    );
    println!(
        "{:>6} | {:>26} | {:>26} | {:>18}",
        "rate", "direct p50/p99/p99.9", "gateway p50/p99/p99.9", "overhead p50/p99"
    );
    let mut best: Option<(u32, f64, f64, usize)> = None;
    let mut sustained_rss = f64::NAN;
    let mut total_errors = 0;
    for &rate in RATES {
        open_model(Target::Direct, &direct, &callers, rate, WARMUP).await;
        let a = open_model(Target::Direct, &direct, &callers, rate, RUN).await;
        open_model(Target::Gateway, &via, &callers, rate, WARMUP).await;
        let b = open_model(Target::Gateway, &via, &callers, rate, RUN).await;
        let (o50, o99) = (b.p50 - a.p50, b.p99 - a.p99);
        println!(
            "{rate:>6} | {:>8.2} {:>8.2} {:>8.2} | {:>8.2} {:>8.2} {:>8.2} | {:>8.2} {:>8.2}   errors direct {} gateway {} of {}",
            a.p50, a.p99, a.p999, b.p50, b.p99, b.p999, o50, o99, a.errors, b.errors, b.sent
        );
        // Sustained: no errors and the latency is not a queue (p99 under 50 ms).
        if b.errors == 0 && b.p99 < 50.0 && a.errors == 0 {
            best = Some((rate, o50, o99, b.errors));
            // The peak so far: everything up to the highest sustained rate.
            sustained_rss = peak_rss_mb(child.id());
        } else {
            total_errors += b.errors;
            break;
        }
    }
    let overall = peak_rss_mb(child.id());
    let rss = sustained_rss;
    let _ = child.kill();
    let _ = child.wait();
    stack.shutdown().await;
    println!(
        "gateway peak RSS: {rss:.1} MB up to the highest sustained rate ({overall:.1} MB including the rate it could not sustain)"
    );
    match best {
        Some((rate, o50, o99, errors)) => println!(
            "max_rate={rate} overhead_p50_ms={o50:.2} overhead_p99_ms={o99:.2} errors={errors} rss_mb={rss:.1}"
        ),
        None => println!(
            "max_rate=0 overhead_p50_ms=NaN overhead_p99_ms=NaN errors={total_errors} rss_mb={rss:.1}"
        ),
    }
}
