//! `cargo xtask bench postproc`: the metering path end to end — InferenceCompleted events
//! published to JetStream as fast as the server acknowledges them, consumed by post-processing
//! and committed to the usage table — with one postproc instance, then two sharing the durable
//! consumer. Prints events/s (first publish → last commit), the lag (publish → commit) at p50
//! and p99, and whether anything was lost or counted twice; the last line is one `key=value`
//! summary.
//!
//! The lag is measured by polling the committed count every 10 ms and taking event i as
//! committed when the count first reaches i + 1 (events are committed close to publish order,
//! so this is accurate to the polling interval plus that reordering). A burst measures
//! throughput (its lag is mostly queueing behind the burst); the steady phase, at 5,000
//! events/s on a fixed schedule, measures the lag the summary reports.
//!
//! Flags: `--events N` per phase (default 50,000), `--smoke` (5,000).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_tests::TestStack;

const TENANTS: usize = 20;
/// Publishes in flight before waiting for their acknowledgements.
const PUBLISH_WINDOW: usize = 2000;
const POLL: Duration = Duration::from_millis(10);
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
/// The steady phase: the target rate, long enough for a p99.
const STEADY_RATE: u32 = 5000;
const STEADY_SECS: usize = 6;

struct Phase {
    events_per_s: f64,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn committed(pools: &[sqlx::PgPool]) -> i64 {
    let mut n = 0;
    for p in pools {
        let c: Option<i64> =
            sqlx::query_scalar("SELECT sum(requests)::bigint FROM postproc.usage_daily")
                .fetch_one(p)
                .await
                .unwrap_or(None);
        n += c.unwrap_or(0);
    }
    n
}

/// `rate`: events a second on a fixed schedule (open model); `None`: as fast as acked.
async fn phase(
    stack: &TestStack,
    pools: &[sqlx::PgPool],
    label: &str,
    n: usize,
    base: i64,
    rate: Option<u32>,
) -> Phase {
    let bus = keel_bus::Bus::connect(keel_bus::BusConfig::from_env(&stack.env).unwrap())
        .await
        .unwrap();
    bus.ensure_stream().await.unwrap();
    let tenants: Vec<keel_tenancy::TenantId> = (0..TENANTS)
        .map(|i| keel_tenancy::TenantId::parse(&format!("meter-{i}")).unwrap())
        .collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let occur = prost_types::Timestamp {
        seconds: now.as_secs() as i64,
        nanos: 0,
    };
    // Poll the committed count while publishing.
    let poll_pools = pools.to_vec();
    let target = base + n as i64;
    #[allow(clippy::disallowed_methods)]
    let poller = tokio::spawn(async move {
        let mut seen: Vec<(Instant, i64)> = Vec::new();
        let deadline = Instant::now() + PHASE_TIMEOUT;
        loop {
            let c = committed(&poll_pools).await;
            seen.push((Instant::now(), c));
            if c >= target || Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(POLL).await;
        }
    });
    let mut sent_at = Vec::with_capacity(n);
    let started = Instant::now();
    let mut acks = Vec::with_capacity(PUBLISH_WINDOW);
    for i in 0..n {
        if let Some(r) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / f64::from(r));
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let tenant = &tenants[i % TENANTS];
        let ack = keel_tests::metering::publish_completion(&bus, tenant, 7, 16, occur).await;
        sent_at.push(Instant::now());
        acks.push(ack);
        if acks.len() >= PUBLISH_WINDOW {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks.drain(..) {
        a.await.unwrap();
    }
    let published = started.elapsed();
    let seen = poller.await.unwrap();
    let last = seen.last().copied().unwrap();
    assert!(
        last.1 >= target,
        "{label}: only {} of {n} events committed within {PHASE_TIMEOUT:?}",
        last.1 - base
    );
    let done_at = seen
        .iter()
        .find(|(_, c)| *c >= target)
        .map(|(t, _)| *t)
        .unwrap();
    let mut lags = Vec::with_capacity(n);
    let mut k = 0;
    for (i, t) in sent_at.iter().enumerate() {
        while k < seen.len() && seen[k].1 < base + i as i64 + 1 {
            k += 1;
        }
        let committed_at = seen.get(k).map_or(done_at, |s| s.0);
        lags.push(committed_at.saturating_duration_since(*t).as_secs_f64() * 1000.0);
    }
    lags.sort_by(f64::total_cmp);
    let secs = done_at.duration_since(started).as_secs_f64();
    let p = Phase {
        events_per_s: n as f64 / secs,
        lag_p50_ms: pct(&lags, 0.5),
        lag_p99_ms: pct(&lags, 0.99),
    };
    println!(
        "{label}: {n} events published in {:.2} s, all committed after {secs:.2} s: {:.0} events/s; lag p50 {:.1} ms, p99 {:.1} ms",
        published.as_secs_f64(),
        p.events_per_s,
        p.lag_p50_ms,
        p.lag_p99_ms
    );
    p
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut n = 50_000usize;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--smoke" => n = 5_000,
            "--events" => {
                i += 1;
                n = args[i].parse().expect("--events N");
            }
            other => panic!("unknown flag {other}"),
        }
        i += 1;
    }
    let cfg = keel_telemetry::TelemetryConfig::from_env(
        "keel-bench",
        &keel_config::Env::from_pairs([("RUST_LOG", "error")]),
    )
    .unwrap();
    let _telemetry = keel_telemetry::init(cfg).unwrap();
    let pool = keel_store::DEFAULT_MAX_CONNECTIONS.to_string();
    let stack = TestStack::start_with(|e| e.with("KEEL_DB_MAX_CONNECTIONS", pool))
        .await
        .unwrap();
    let mut pools = Vec::new();
    for i in 0..stack.database_urls.len() {
        pools.push(stack.shard(i).await.unwrap());
    }
    println!(
        "metering path: InferenceCompleted → JetStream → postproc (batches of up to {}) → usage_daily on {} shards; {} tenants",
        keel_postproc::usage::USAGE_BATCH,
        pools.len(),
        TENANTS
    );
    let one = phase(&stack, &pools, "one instance, burst", n, 0, None).await;
    let steady_n = (STEADY_RATE as usize) * STEADY_SECS;
    let steady = phase(
        &stack,
        &pools,
        &format!("one instance, steady {STEADY_RATE}/s"),
        steady_n,
        n as i64,
        Some(STEADY_RATE),
    )
    .await;
    let base = (n + steady_n) as i64;
    let second = keel_postproc::start(
        keel_postproc::Config::from_env(
            &stack
                .env
                .clone()
                .with("KEEL_POSTPROC_GRPC_ADDR", "127.0.0.1:0")
                .with("KEEL_POSTPROC_ADMIN_ADDR", "127.0.0.1:0"),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    keel_tests::wait_serving(
        &format!("http://{}", second.grpc_addr()),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let two = phase(&stack, &pools, "two instances, burst", n, base, None).await;
    // Settle, then count: every event exactly once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = committed(&pools).await;
    let expected = base + n as i64;
    let (lost, duplicated) = ((expected - total).max(0), (total - expected).max(0));
    println!(
        "total: {total} of {expected} events metered (lost {lost}, counted twice {duplicated})"
    );
    second.shutdown().await;
    stack.shutdown().await;
    println!(
        "events_per_s={:.0} events_per_s_two={:.0} p99_lag_ms={:.1} p50_lag_ms={:.1} burst_p99_lag_ms={:.1} lost={lost} duplicated={duplicated}",
        one.events_per_s, two.events_per_s, steady.lag_p99_ms, steady.lag_p50_ms, one.lag_p99_ms
    );
    assert!(lost == 0 && duplicated == 0, "events lost or counted twice");
}
