//! `cargo xtask chaos`: the fault run of issue 9. The whole stack as processes (see
//! [`crate::rig`]) with a fault proxy on each link — the gateway to auth and to inference, the
//! services to PostgreSQL, Redis and NATS — under a steady load: writers creating documents
//! through the gateway with idempotency keys (retrying under the same key), and a reader
//! getting acknowledged documents back 20 times a second whether or not earlier reads have
//! answered. Every call has a 5 s deadline; one still unanswered a second after it has hung.
//! One fault at a time:
//!
//! 1. **kills**: SIGKILL, 2 s down, restart — each service and each server;
//! 2. **stalls**: SIGSTOP for 3 s, then SIGCONT — each service and each server process;
//! 3. **network**, on each link: 200 ms latency for 4 s, 8 KB/s for 4 s, a blackhole for 4 s,
//!    one wave of resets;
//! 4. **overload**: the gateway's peak for GetDocument measured briefly (the highest 2-s step
//!    with nothing refused or failed and p99 within the CRUD objective), then twice that for 5 s
//!    from 16 users of 4 top-tier tenants (so the tiers' limits do not bind first): refused fast
//!    vs served vs other errors, the refusals' p99, the gateway's peak RSS before and after, and
//!    how long the writes take to be back at their usual latency.
//!
//! Each fault prints one line: what was injected and for how long, the calls that ended after
//! the injection (writes, reads, failures by code, the longest call, hung ones) and the recovery
//! (from the fault's end to the first acknowledged write sent after it). Then the accounting of
//! `gameday failover` (acknowledged writes stored, each counted once by post-processing, none
//! given up), and one last line: `faults=… requests=… lost=… duplicated=… unprocessed=…
//! gave_up=… hung=… max_recovery_s=… overload_refused=… overload_refusal_p99_ms=…
//! gateway_rss_mb=… verdict=pass|fail`. The verdict fails on any loss, duplicate, unprocessed
//! or abandoned write, any hung call, any failure other than a clean one (UNAVAILABLE,
//! DEADLINE_EXCEEDED, the client's own deadline, RESOURCE_EXHAUSTED), a part not back within
//! a minute, or an overload not handled (other errors ≥ 1 %, refusals p99 ≥ 100 ms, gateway
//! RSS growing by ≥ 512 MiB, writes not back to normal within 5 s).
//!
//! `--only kills,stalls,network,overload` runs some of the phases (the accounting always runs;
//! the overload's figures are `n/a` without it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keel_faultproxy::Fault;
use keel_loadtest::engine::{Outcome, Recorder, Stage, drive};
use keel_loadtest::scenarios::{CRUD_P95_MS, REFUSAL_P99_MS};
use keel_proto::public as pb;
use keel_tests::authed;
use tonic::transport::Channel;

use crate::rig::{self, DEADLINE, HANG_SLACK, Load, Op, Options, PARTS, Rig, Window, lock};

const TENANT: &str = "chaos";
const WRITERS: usize = 2;
const READ_EVERY: Duration = Duration::from_millis(50);
const KILL_DOWN: Duration = Duration::from_secs(2);
const STALL: Duration = Duration::from_secs(3);
const NETWORK_FAULT: Duration = Duration::from_secs(4);
const LATENCY: Duration = Duration::from_millis(200);
const BANDWIDTH: u64 = 8 * 1024;
/// The burst: twice the measured peak for this long.
const BURST: Duration = Duration::from_secs(5);
const BURST_TENANTS: usize = 4;
const BURST_USERS: usize = 4;
/// Connections the burst is spread over (HTTP/2 multiplexes the rest).
const BURST_CHANNELS: usize = 8;
/// The peak search's steps (GetDocument/s), each held this long.
const PEAK_STEPS: &[f64] = &[250.0, 500.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0];
const PEAK_STEP: Duration = Duration::from_secs(2);
/// Calls the generator keeps in flight at most.
const MAX_IN_FLIGHT: usize = 20_000;
/// The gateway sheds beyond this many calls in flight (as in `cargo xtask load`: reachable on a
/// small machine; production's default is 2,048).
const GATEWAY_MAX_IN_FLIGHT: usize = keel_tests::load::GATEWAY_MAX_IN_FLIGHT;
const RSS_GROWTH_LIMIT_MB: f64 = 512.0;
/// After the burst, writes must be back at their usual latency within this.
const WRITE_RECOVERY_LIMIT: Duration = Duration::from_secs(5);
/// Failures that are a clean answer to a fault.
const CLEAN: &[&str] = &[
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "CLIENT_DEADLINE",
    "BROKEN_CONNECTION",
    "RESOURCE_EXHAUSTED",
];

/// A user of a burst tenant with a document it may read.
#[derive(Clone)]
struct Caller {
    token: String,
    document: String,
}

/// Prints one fault's line.
fn report(kind: &str, target: &str, injected: &str, w: &Window, after: &str, extra: &str) {
    println!(
        "{kind:<9} {target:<18} {injected}: {} calls ({} writes, {} reads), {} failed [{}], longest call {:.2}s, hung {}, recovered {}{extra}",
        w.calls.len(),
        w.of(Op::Write).count(),
        w.of(Op::Read).count(),
        w.failed().count(),
        w.codes(),
        w.longest().as_secs_f64(),
        w.hung(),
        w.recovery(after),
    );
}

/// The phases, in the order they run.
const PHASES: [&str; 4] = ["kills", "stalls", "network", "overload"];

/// `[--only PHASE[,PHASE…]]`: the phases to run (default: all of them).
fn phases(args: &[String]) -> Result<Vec<&'static str>> {
    match args {
        [] => Ok(PHASES.to_vec()),
        [flag, list] if flag == "--only" => list
            .split(',')
            .map(|p| {
                PHASES
                    .into_iter()
                    .find(|known| *known == p)
                    .with_context(|| format!("unknown phase {p:?}; phases: {}", PHASES.join(",")))
            })
            .collect(),
        _ => anyhow::bail!("usage: gameday chaos [--only {}]", PHASES.join(",")),
    }
}

pub async fn run(args: &[String]) -> Result<bool> {
    let phases = phases(args)?;
    let mut rig = Rig::start(Options {
        proxies: true,
        settings: vec![
            // Longer than the run: the writers' tokens must not expire half-way.
            ("KEEL_AUTH_ACCESS_TOKEN_TTL", "3600s".into()),
            (
                "KEEL_GATEWAY_MAX_IN_FLIGHT",
                GATEWAY_MAX_IN_FLIGHT.to_string(),
            ),
        ],
    })
    .await?;
    let gateway = rig.url("gateway")?;
    println!(
        "stack up: 4 services as processes, own postgres, redis, nats; fault proxies on {}; logs in {}",
        rig.links
            .iter()
            .map(|l| l.name)
            .collect::<Vec<_>>()
            .join(", "),
        rig.dir.display()
    );
    rig.create_tenant(TENANT, "enterprise").await?;
    let token = rig.user_token(TENANT, "writer").await?;
    let callers = burst_callers(&rig).await?;

    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let l = load.clone();
        let (g, t, s) = (gateway.clone(), token.clone(), stop.clone());
        tasks.spawn(async move {
            l.writer(g, t, format!("{TENANT}-{w}"), s).await;
            Ok(())
        });
    }
    tasks.spawn(
        load.clone()
            .reader(gateway.clone(), token.clone(), READ_EVERY, stop.clone()),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "load: {WRITERS} writers (one write at a time each, retried under the same key), reads every {} ms; every call's deadline {} s",
        READ_EVERY.as_millis(),
        DEADLINE.as_secs()
    );

    let mut windows: Vec<Window> = Vec::new();
    let parts: &[&str] = if phases.contains(&"kills") {
        &PARTS
    } else {
        &[]
    };
    for &part in parts {
        let w = rig.kill_and_restart(&load, part, KILL_DOWN).await?;
        let what = format!("SIGKILL, restarted after {:.1}s", w.down.as_secs_f64());
        report("kill", part, &what, &w, "the restart", "");
        windows.push(w);
    }
    let parts: &[&str] = if phases.contains(&"stalls") {
        &PARTS
    } else {
        &[]
    };
    for &part in parts {
        let injected = Instant::now();
        rig.pause(part)?;
        tokio::time::sleep(STALL).await;
        let ended = Instant::now();
        rig.resume(part)?;
        let w = load.window(injected, ended).await;
        let what = format!("SIGSTOP for {:.1}s, then SIGCONT", w.down.as_secs_f64());
        report("stall", part, &what, &w, "the SIGCONT", "");
        windows.push(w);
    }
    // 3. Network faults.
    let faults = [
        ("latency", Fault::Latency(LATENCY)),
        (
            "bandwidth",
            Fault::Bandwidth {
                bytes_per_sec: BANDWIDTH,
            },
        ),
        ("blackhole", Fault::Blackhole),
        ("reset", Fault::Reset),
    ];
    let links = if phases.contains(&"network") {
        &rig.links[..]
    } else {
        &[]
    };
    for link in links {
        for (kind, fault) in &faults {
            let before = link.proxy.stats();
            let injected = Instant::now();
            link.proxy.set(fault.clone());
            if *fault != Fault::Reset {
                tokio::time::sleep(NETWORK_FAULT).await;
            }
            link.proxy.set(Fault::None);
            let ended = Instant::now();
            let w = load.window(injected, ended).await;
            let s = link.proxy.stats();
            let what = match fault {
                Fault::Latency(d) => format!(
                    "{} ms each way for {:.1}s",
                    d.as_millis(),
                    w.down.as_secs_f64()
                ),
                Fault::Bandwidth { bytes_per_sec } => format!(
                    "{} KB/s per direction for {:.1}s",
                    bytes_per_sec / 1024,
                    w.down.as_secs_f64()
                ),
                Fault::Blackhole => format!("blackhole for {:.1}s", w.down.as_secs_f64()),
                _ => "one wave of RSTs".into(),
            };
            let extra = format!(
                "; proxy: {} connections reset, {} B blackholed, {} new connections",
                s.resets - before.resets,
                s.blackholed_bytes - before.blackholed_bytes,
                s.accepted - before.accepted
            );
            report(kind, link.name, &what, &w, "the fault ended", &extra);
            windows.push(w);
        }
    }
    let over = if phases.contains(&"overload") {
        Some(overload(&rig, &load, &callers, &gateway).await?)
    } else {
        None
    };
    stop.store(true, Ordering::Relaxed);
    while let Some(t) = tasks.join_next().await {
        t??;
    }

    // The accounting.
    let a = rig.account(TENANT, &load).await?;
    let calls = load.calls();
    let reads: Vec<&rig::Call> = calls.iter().filter(|c| c.op == Op::Read).collect();
    let failed_reads = reads.iter().filter(|c| c.code != "OK").count();
    let mut unclean = over.as_ref().map(|o| o.unclean.clone()).unwrap_or_default();
    for c in calls.iter().filter(|c| c.code != "OK" && c.code != "HUNG") {
        if !CLEAN.contains(&c.code) {
            *unclean.entry(c.code.to_owned()).or_default() += 1;
        }
    }
    let unclean_n: u64 = unclean.values().sum();
    println!(
        "reads: {} ({failed_reads} failed); failures other than a clean refusal or deadline: {unclean_n}{}",
        reads.len(),
        if unclean.is_empty() {
            String::new()
        } else {
            format!(
                " [{}]",
                unclean
                    .iter()
                    .map(|(c, n)| format!("{c}×{n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
    );
    for (kind, (n, message)) in lock(&load.failures).iter() {
        println!("  {kind}: {n} calls, first message {message:?}");
    }
    let hung = calls.iter().filter(|c| c.code == "HUNG").count() as u64
        + over.as_ref().map_or(0, |o| o.hung);
    let recovered = windows.iter().all(|w| w.recovered.is_some());
    let max_recovery = windows
        .iter()
        .map(|w| w.recovered.map_or(f64::INFINITY, |d| d.as_secs_f64()))
        .chain(over.iter().map(|o| o.write_recovery.as_secs_f64()))
        .fold(0.0f64, f64::max);
    let requests = load.write_attempts.load(Ordering::Relaxed)
        + reads.len() as u64
        + over.as_ref().map_or(0, |o| o.sent);
    let pass = a.clean()
        && hung == 0
        && unclean_n == 0
        && recovered
        && over.as_ref().is_none_or(|o| o.pass);
    let na = || "n/a".to_owned();
    println!(
        "faults={} requests={requests} lost={} duplicated={} unprocessed={} gave_up={} hung={hung} max_recovery_s={max_recovery:.2} overload_refused={} overload_refusal_p99_ms={} gateway_rss_mb={} verdict={}",
        windows.len() + usize::from(over.is_some()),
        a.lost,
        a.duplicated,
        a.unprocessed,
        a.gave_up,
        over.as_ref().map_or_else(na, |o| o.refused.to_string()),
        over.as_ref()
            .filter(|o| o.refused > 0)
            .map_or_else(na, |o| format!("{:.2}", o.refusal_p99_ms)),
        over.as_ref()
            .map_or_else(na, |o| format!("{:.1}", o.rss_after_mb)),
        if pass { "pass" } else { "fail" }
    );
    rig.finish(pass);
    Ok(pass)
}

/// Tenants on the top tier, each with users holding a document, for the burst.
async fn burst_callers(rig: &Rig) -> Result<Vec<Caller>> {
    let mut out = Vec::new();
    let ch = rig::channel(&rig.url("gateway")?)?;
    for t in 0..BURST_TENANTS {
        let tenant = format!("burst{t}");
        rig.create_tenant(&tenant, "enterprise").await?;
        for u in 0..BURST_USERS {
            let token = rig.user_token(&tenant, &format!("u{u}")).await?;
            let document = pb::document_service_client::DocumentServiceClient::new(ch.clone())
                .create_document(authed(
                    pb::CreateDocumentRequest {
                        title: "burst".into(),
                        content: "read under overload ".repeat(20),
                        idempotency_key: String::new(),
                    },
                    &token,
                ))
                .await?
                .into_inner()
                .id;
            out.push(Caller { token, document });
        }
    }
    Ok(out)
}

/// What the overload came to.
struct Overload {
    sent: u64,
    refused: u64,
    refusal_p99_ms: f64,
    rss_after_mb: f64,
    hung: u64,
    unclean: BTreeMap<String, u64>,
    write_recovery: Duration,
    pass: bool,
}

/// The gateway's peak RSS so far (VmHWM), in MB.
fn peak_rss_mb(pid: Option<u32>) -> Result<f64> {
    let pid = pid.context("the gateway is not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")?;
    Ok(kb / 1024.0)
}

/// One GetDocument of the burst, as the load generator counts it; a call that outlives its
/// deadline by [`HANG_SLACK`] is `HUNG`.
async fn get(ch: Channel, c: Caller) -> Outcome {
    let mut req = authed(pb::GetDocumentRequest { id: c.document }, &c.token);
    req.set_timeout(DEADLINE);
    let mut docs = pb::document_service_client::DocumentServiceClient::new(ch);
    match tokio::time::timeout(DEADLINE + HANG_SLACK, docs.get_document(req)).await {
        Ok(Ok(_)) => Outcome::ok(),
        Ok(Err(st)) => Outcome {
            code: rig::code_label(&st).into(),
            ..Outcome::from_status(&st)
        },
        Err(_) => Outcome::error("HUNG"),
    }
}

/// Runs `rate` GetDocument/s for `secs` from every caller over every channel.
async fn burst(rate: f64, secs: Duration, channels: &[Channel], callers: &[Caller]) -> Recorder {
    let rec = Recorder::new();
    drive(&[Stage::constant(rate, secs)], MAX_IN_FLIGHT, &rec, |i| {
        let i = i as usize;
        let ch = channels[i % channels.len()].clone();
        let c = callers[i % callers.len()].clone();
        ("get", get(ch, c))
    })
    .await;
    rec
}

/// 2× the gateway's measured peak for [`BURST`]; prints one line.
async fn overload(rig: &Rig, load: &Load, callers: &[Caller], gateway: &str) -> Result<Overload> {
    let channels: Vec<Channel> = (0..BURST_CHANNELS)
        .map(|_| rig::channel(gateway))
        .collect::<Result<_>>()?;
    // The writes' usual latency: the last 5 s before the overload.
    let since = Instant::now() - Duration::from_secs(5);
    let usual = p95(lock(&load.calls)
        .iter()
        .filter(|c| c.op == Op::Write && c.code == "OK" && c.start >= since)
        .map(|c| c.took)
        .collect());
    // Back to normal: twice the usual p95, and never asked to beat 50 ms.
    let normal = (usual * 2).max(Duration::from_millis(50));

    let mut peak = PEAK_STEPS[0];
    let mut sent = 0;
    let mut hung = 0;
    for &rate in PEAK_STEPS {
        let s = burst(rate, PEAK_STEP, &channels, callers).await.op("get");
        sent += s.total();
        hung += s.codes.get("HUNG").copied().unwrap_or(0);
        if s.errors + s.refused > 0 || s.ms(0.99) > CRUD_P95_MS {
            break;
        }
        peak = rate;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let gateway_pid = rig.service("gateway")?.process.pid();
    let rss_before = peak_rss_mb(gateway_pid)?;
    let injected = Instant::now();
    let rec = burst(2.0 * peak, BURST, &channels, callers).await;
    let ended = injected + BURST;
    let rss_after = peak_rss_mb(gateway_pid)?;
    let s = rec.op("get");
    sent += s.total();
    hung += s.codes.get("HUNG").copied().unwrap_or(0);
    let w = load.window(injected, ended).await;
    // Writes back at their usual latency: from the end of the burst to the end of the last
    // write sent after it that failed or took longer than `normal`.
    tokio::time::sleep(
        WRITE_RECOVERY_LIMIT.saturating_sub(ended.elapsed()) + Duration::from_secs(1),
    )
    .await;
    let after: Vec<rig::Call> = load
        .calls()
        .into_iter()
        .filter(|c| c.op == Op::Write && c.start >= ended)
        .collect();
    let write_recovery = after
        .iter()
        .filter(|c| c.code != "OK" || c.took > normal)
        .map(|c| c.start + c.took)
        .max()
        .or_else(|| after.iter().map(|c| c.start + c.took).min())
        .map_or(Duration::MAX, |t| t.saturating_duration_since(ended));

    let codes = s
        .codes
        .iter()
        .map(|(c, n)| format!("{c}×{n}"))
        .collect::<Vec<_>>()
        .join(" ");
    // GENERATOR_OVERFLOW (the generator itself saturated) lands here too: it invalidates the
    // run as surely as a server's unclean answer.
    let unclean: BTreeMap<String, u64> = s
        .codes
        .iter()
        .filter(|(c, _)| !["OK", "HUNG"].contains(&c.as_str()) && !CLEAN.contains(&c.as_str()))
        .map(|(c, n)| (c.clone(), *n))
        .collect();
    let error_rate = s.error_rate();
    let refusal_p99_ms = s.refused_ms(0.99);
    let growth = rss_after - rss_before;
    let served_per_s = s.ok as f64 / BURST.as_secs_f64();
    let pass = error_rate < 0.01
        && (s.refused == 0 || refusal_p99_ms < REFUSAL_P99_MS)
        && growth < RSS_GROWTH_LIMIT_MB
        && write_recovery <= WRITE_RECOVERY_LIMIT;
    report(
        "overload",
        "gateway",
        &format!(
            "GetDocument at 2× the measured peak ({peak:.0}/s → {:.0}/s) for {:.1}s from {} users",
            2.0 * peak,
            BURST.as_secs_f64(),
            callers.len()
        ),
        &w,
        "the burst",
        &format!(
            "; burst: {} sent, {} served ({served_per_s:.0}/s, p99 {:.1} ms), {} refused fast (p99 {:.2} ms), {} other errors ({:.2} %) [{codes}]; gateway VmHWM {rss_before:.1} MB before, {rss_after:.1} MB after; writes back under {} ms {:.2}s after the burst (usual p95 {:.1} ms)",
            s.total(),
            s.ok,
            s.ms(0.99),
            s.refused,
            refusal_p99_ms,
            s.errors,
            100.0 * error_rate,
            normal.as_millis(),
            write_recovery.as_secs_f64(),
            usual.as_secs_f64() * 1000.0,
        ),
    );
    Ok(Overload {
        sent,
        refused: s.refused,
        refusal_p99_ms,
        rss_after_mb: rss_after,
        hung,
        unclean,
        write_recovery,
        pass,
    })
}

fn p95(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[(v.len() * 95 / 100).min(v.len() - 1)]
}
