//! `cargo xtask bench gateway`: an open-model load (requests sent on a fixed schedule,
//! latency measured from the *intended* send time, so a slow server cannot hide its queueing)
//! against (a) inference directly and (b) the same call through the gateway, a separate
//! release process with authentication and rate limiting on, at rising rates until the gateway
//! no longer sustains one without errors. Prints p50/p99/p99.9 per rate and target, the
//! overhead (b − a), the gateway's peak RSS, and a last `key=value` line.
//!
//! On a shared machine the load drifts within seconds, so each rate's run is cut into short
//! rounds that alternate the targets (direct, gateway, direct, gateway, ...): both see the same
//! moments of the machine, and the overhead is a difference measured together, not across runs.
//! `--baseline PATH` runs a second gateway binary (another build) in the same rounds and prints
//! its figures beside: an A/B comparison of two builds in one run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

use keel_proto::inference::document_store_client::DocumentStoreClient;
use keel_proto::public as pb;
use keel_tests::{TestStack, authed, connect, free_port};
use tonic::transport::Channel;

/// Each rate runs this long per target (after a short warm-up at the same rate)...
const RUN: Duration = Duration::from_secs(4);
const WARMUP: Duration = Duration::from_secs(1);
/// ...in this many rounds that alternate the targets.
const ROUNDS: u32 = 4;
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

/// Latencies and errors of one target over the rounds of a rate.
#[derive(Default)]
struct Samples {
    lat: Vec<f64>,
    errors: usize,
    /// Busy and total CPU ticks of the whole machine during the rounds (`/proc/stat`).
    busy_ticks: u64,
    all_ticks: u64,
}

impl Samples {
    fn stats(mut self) -> Stats {
        self.lat.sort_by(|a, b| a.total_cmp(b));
        Stats {
            p50: pct(&self.lat, 0.50),
            p99: pct(&self.lat, 0.99),
            p999: pct(&self.lat, 0.999),
            errors: self.errors,
            sent: self.lat.len(),
            busy: self.busy_ticks as f64 / self.all_ticks.max(1) as f64,
        }
    }
}

struct Stats {
    /// Share of the machine's CPU busy while this target ran (all processes, all cores).
    busy: f64,
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
) -> Samples {
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
    let mut out = Samples {
        lat: Vec::with_capacity(n),
        ..Samples::default()
    };
    while let Some(r) = set.join_next().await {
        let (ms, ok) = r.unwrap();
        out.lat.push(ms);
        out.errors += usize::from(!ok);
    }
    out
}

const USAGE: &str = "usage: cargo xtask bench gateway [--env KEY=VALUE]... [--baseline PATH-TO-ANOTHER-GATEWAY-BUILD] [--baseline-env KEY=VALUE]...";

/// Command-line options: extra environment for the gateway under test, and a baseline (another
/// build, or the same one with other settings) measured in the same rounds.
#[derive(Default)]
struct Args {
    env: Vec<(String, String)>,
    baseline: Option<String>,
    baseline_env: Vec<(String, String)>,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Self {
        let mut a = Args::default();
        let pair = |v: Option<String>| {
            v.and_then(|v| v.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .unwrap_or_else(|| panic!("{USAGE}"))
        };
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--env" => a.env.push(pair(it.next())),
                "--baseline-env" => a.baseline_env.push(pair(it.next())),
                "--baseline" => a.baseline = Some(it.next().unwrap_or_else(|| panic!("{USAGE}"))),
                _ => panic!("{USAGE}"),
            }
        }
        a
    }
}

/// One gateway under test: its own release process.
struct Gateway {
    child: std::process::Child,
    channels: Vec<Channel>,
}

impl Gateway {
    async fn start(bin: &str, extra_env: &[(String, String)], stack: &TestStack) -> Self {
        let grpc_port = free_port();
        let admin_port = free_port();
        let mut cmd = std::process::Command::new(bin);
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
        // Errors only unless `--env RUST_LOG=...` says otherwise (given last, it wins).
        let child = cmd
            .env("KEEL_GATEWAY_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
            .env("KEEL_GATEWAY_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("KEEL_GATEWAY_HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "error")
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start the gateway {bin}: {e}"));
        let url = format!("http://127.0.0.1:{grpc_port}");
        keel_tests::wait_serving(&url, Duration::from_secs(30))
            .await
            .unwrap();
        let mut channels = Vec::new();
        for _ in 0..CONNECTIONS {
            channels.push(connect(&url).await.unwrap());
        }
        Gateway { child, channels }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `rate` against each target in alternating rounds (after a warm-up of each) and returns
/// each target's samples, in the order given.
async fn alternate(
    targets: &[(Target, &[Channel])],
    callers: &[Caller],
    rate: u32,
) -> Vec<Samples> {
    for (t, ch) in targets {
        open_model(*t, ch, callers, rate, WARMUP).await;
    }
    let mut all: Vec<Samples> = targets.iter().map(|_| Samples::default()).collect();
    for _ in 0..ROUNDS {
        for ((t, ch), acc) in targets.iter().zip(all.iter_mut()) {
            let before = machine_ticks();
            let s = open_model(*t, ch, callers, rate, RUN / ROUNDS).await;
            let after = machine_ticks();
            acc.lat.extend(s.lat);
            acc.errors += s.errors;
            acc.busy_ticks += after.0.saturating_sub(before.0);
            acc.all_ticks += after.1.saturating_sub(before.1);
        }
    }
    all
}

/// The machine's busy and total CPU ticks so far (all cores; idle and iowait are not busy).
fn machine_ticks() -> (u64, u64) {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?;
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            let all: u64 = f.iter().take(8).sum();
            let idle = f.get(3)? + f.get(4)?;
            Some((all - idle, all))
        })
        .unwrap_or((0, 0))
}

/// CPU time (user + system) the process `pid` has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    // Fields 14 and 15 of /proc/PID/stat, after the command name in parentheses.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
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
    let args = Args::parse(std::env::args().skip(1));
    let baseline_bin = args
        .baseline
        .clone()
        .or_else(|| (!args.baseline_env.is_empty()).then(|| gateway_bin.clone()));
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

    // The gateway under test (and the baseline build, when given): release processes.
    let gateway = Gateway::start(&gateway_bin, &args.env, &stack).await;
    let baseline = match &baseline_bin {
        Some(bin) => Some(Gateway::start(bin, &args.baseline_env, &stack).await),
        None => None,
    };
    let mut direct = Vec::new();
    for _ in 0..CONNECTIONS {
        direct.push(connect(&stack.inference_url()).await.unwrap());
    }

    println!(
        "open-model GetDocument, {RUN:?} per rate and target in {ROUNDS} alternating rounds after {WARMUP:?} warm-up; latency from the intended send time (ms)"
    );
    if let Some(bin) = &baseline_bin {
        println!(
            "baseline: {bin} {:?} (same rounds; its overhead in the last columns); under test: {gateway_bin} {:?}",
            args.baseline_env, args.env
        );
    }
    println!(
        "{:>6} | {:>26} | {:>26} | {:>18}{}",
        "rate",
        "direct p50/p99/p99.9",
        "gateway p50/p99/p99.9",
        "overhead p50/p99",
        if baseline.is_some() {
            " | baseline overhead p50/p99"
        } else {
            ""
        }
    );
    let mut best: Option<(u32, f64, f64, usize)> = None;
    let mut best_baseline: Option<(u32, f64, f64)> = None;
    let mut sustained_rss = f64::NAN;
    let mut total_errors = 0;
    for &rate in RATES {
        let mut targets: Vec<(Target, &[Channel])> = vec![
            (Target::Direct, &direct),
            (Target::Gateway, &gateway.channels),
        ];
        if let Some(b) = &baseline {
            targets.push((Target::Gateway, &b.channels));
        }
        let cpu_before = cpu_seconds(gateway.child.id());
        let base_cpu_before = baseline.as_ref().map(|b| cpu_seconds(b.child.id()));
        let mut samples = alternate(&targets, &callers, rate).await.into_iter();
        // The gateway under test serves only its own rounds (warm-up included).
        let calls = f64::from(rate) * (WARMUP + RUN).as_secs_f64();
        let cpu_us = (cpu_seconds(gateway.child.id()) - cpu_before) / calls * 1e6;
        let base_cpu_us = baseline
            .as_ref()
            .zip(base_cpu_before)
            .map_or(f64::NAN, |(b, before)| {
                (cpu_seconds(b.child.id()) - before) / calls * 1e6
            });
        let a = samples.next().unwrap().stats();
        let b = samples.next().unwrap().stats();
        let base = samples.next().map(Samples::stats);
        let (o50, o99) = (b.p50 - a.p50, b.p99 - a.p99);
        let base_cols = base.as_ref().map_or(String::new(), |c| {
            format!(
                " | {:>8.2} {:>8.2}   (p99 {:.2}, errors {}, CPU {base_cpu_us:.0} µs/call, machine busy {:.0}%)",
                c.p50 - a.p50,
                c.p99 - a.p99,
                c.p99,
                c.errors,
                c.busy * 100.0
            )
        });
        println!(
            "{rate:>6} | {:>8.2} {:>8.2} {:>8.2} | {:>8.2} {:>8.2} {:>8.2} | {:>8.2} {:>8.2}   errors direct {} gateway {} of {}; gateway CPU {cpu_us:.0} µs/call; machine busy {:.0}% direct, {:.0}% gateway{base_cols}",
            a.p50,
            a.p99,
            a.p999,
            b.p50,
            b.p99,
            b.p999,
            o50,
            o99,
            a.errors,
            b.errors,
            b.sent,
            a.busy * 100.0,
            b.busy * 100.0
        );
        if let Some(c) = &base
            && c.errors == 0
            && c.p99 < 50.0
        {
            best_baseline = Some((rate, c.p50 - a.p50, c.p99 - a.p99));
        }
        // Sustained: no errors and the latency is not a queue (p99 under 50 ms).
        if b.errors == 0 && b.p99 < 50.0 && a.errors == 0 {
            best = Some((rate, o50, o99, b.errors));
            // The peak so far: everything up to the highest sustained rate.
            sustained_rss = peak_rss_mb(gateway.child.id());
        } else {
            total_errors += b.errors;
            break;
        }
    }
    let overall = peak_rss_mb(gateway.child.id());
    let rss = sustained_rss;
    gateway.stop();
    if let Some(b) = baseline {
        b.stop();
    }
    stack.shutdown().await;
    println!(
        "gateway peak RSS: {rss:.1} MB up to the highest sustained rate ({overall:.1} MB including the rate it could not sustain)"
    );
    if let Some((rate, o50, o99)) = best_baseline {
        println!(
            "baseline: highest sustained rate {rate}, overhead p50 {o50:.2} ms, p99 {o99:.2} ms"
        );
    }
    match best {
        Some((rate, o50, o99, errors)) => println!(
            "max_rate={rate} overhead_p50_ms={o50:.2} overhead_p99_ms={o99:.2} errors={errors} rss_mb={rss:.1}"
        ),
        None => println!(
            "max_rate=0 overhead_p50_ms=NaN overhead_p99_ms=NaN errors={total_errors} rss_mb={rss:.1}"
        ),
    }
}
