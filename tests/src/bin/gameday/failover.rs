//! `cargo xtask gameday failover`: the whole stack as separate processes — PostgreSQL, Redis
//! and nats-server of the game day's own, the four services from their release binaries —
//! under a light, steady load of document writes through the gateway. Each service and each
//! server in turn is killed with SIGKILL and restarted. The client retries a failed write
//! with the same idempotency key, as a careful client would. Afterwards: every write the
//! gateway acknowledged must be stored (lost = acknowledged but missing), post-processing must
//! have counted each stored document exactly once (duplicated = counted more than once), and
//! each fault gets its recovery time (from the restart to the first acknowledged write sent
//! after it). The report ends with `faults=… requests=… lost=… duplicated=… max_recovery_s=…
//! verdict=…`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;

use crate::rig::{Load, Op, Options, PARTS, Rig};

/// How long a fault lasts before the restart.
const DOWN: Duration = Duration::from_secs(2);
const TENANT: &str = "failover";

pub async fn run() -> Result<bool> {
    let mut rig = Rig::start(Options::default()).await?;
    println!(
        "stack up: 4 services as processes, own postgres, redis, nats; logs in {}",
        rig.dir.display()
    );
    rig.create_tenant(TENANT, "enterprise").await?;
    let token = rig.user_token(TENANT, "writer").await?;
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(
        load.clone()
            .writer(rig.url("gateway")?, token, TENANT.into(), stop.clone()),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The faults, one at a time.
    let mut recoveries = Vec::new();
    for part in PARTS {
        let w = rig.kill_and_restart(&load, part, DOWN).await?;
        println!(
            "fault {part:<9} killed for {:.1}s; failed attempts {} (of {} so far); longest wait between acknowledged writes {:.2}s; recovered {}",
            w.down.as_secs_f64(),
            w.failed().filter(|c| c.op == Op::Write).count(),
            load.failed_writes.load(Ordering::Relaxed),
            w.gap.as_secs_f64(),
            w.recovery("the restart"),
        );
        recoveries.push(w.recovered);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}

    let a = rig.account(TENANT, &load).await?;
    let max_recovery = recoveries
        .iter()
        .map(|r| r.map_or(f64::INFINITY, |d| d.as_secs_f64()))
        .fold(0.0f64, f64::max);
    let pass = a.clean() && recoveries.iter().all(Option::is_some);
    println!(
        "faults={} requests={} lost={} duplicated={} unprocessed={} gave_up={} max_recovery_s={max_recovery:.2} verdict={}",
        recoveries.len(),
        load.write_attempts.load(Ordering::Relaxed),
        a.lost,
        a.duplicated,
        a.unprocessed,
        a.gave_up,
        if pass { "pass" } else { "fail" }
    );
    rig.finish(pass);
    Ok(pass)
}
