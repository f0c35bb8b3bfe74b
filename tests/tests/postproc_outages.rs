//! Post-processing through a PostgreSQL crash: the server is SIGKILLed (postmaster and every
//! backend) while events keep arriving; nothing is acknowledged that did not commit, so when
//! it comes back the backlog drains with every event metered once, none dead-lettered.
//! (NATS going away and coming back: `inference_documents.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use keel_tests::metering::{metered, publish_completions};
use keel_tests::{TestStack, eventually, own, unique};

const BEFORE: usize = 3_000;
const DURING: usize = 3_000;
const TENANTS: usize = 8;

/// What JetStream says of a consumer, for failure messages.
async fn consumer_state(bus: &keel_bus::Bus, durable: &str) -> String {
    let Ok(stream) = bus.ensure_stream().await else {
        return "(stream unavailable)".into();
    };
    match stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(durable)
        .await
    {
        Ok(mut c) => match c.info().await {
            Ok(i) => format!(
                "pending={} ack_pending={} redelivered={} waiting={} delivered={:?} ack_floor={:?}",
                i.num_pending,
                i.num_ack_pending,
                i.num_redelivered,
                i.num_waiting,
                i.delivered,
                i.ack_floor
            ),
            Err(e) => format!("(info: {e})"),
        },
        Err(e) => format!("(consumer: {e})"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_postgres_crash_the_backlog_drains_exactly_once() {
    let mut pg = own::Postgres::start().await;
    let urls = pg.create_databases(&unique("pgcrash"), 2).await;
    let stack = TestStack::start_with(|e| e.with("KEEL_DATABASE_URLS", urls.join(",")))
        .await
        .unwrap();
    let bus = keel_bus::Bus::connect(keel_bus::BusConfig::from_env(&stack.env).unwrap())
        .await
        .unwrap();
    let pool = |url: &str| {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(url)
            .unwrap()
    };
    let pools: Vec<_> = urls.iter().map(|u| pool(u)).collect();

    publish_completions(&bus, "pgcrash", TENANTS, BEFORE).await;
    eventually(Duration::from_secs(60), "metering under way", || async {
        let (n, _) = metered(&pools).await?;
        Ok((n > 0).then_some(()))
    })
    .await
    .unwrap();

    pg.kill();
    let killed_at = Instant::now();
    // Accepted by JetStream while the database is down: this is the backlog.
    publish_completions(&bus, "pgcrash", TENANTS, DURING).await;
    assert!(
        metered(&pools).await.is_err(),
        "the database really is down"
    );
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(killed_at.elapsed())).await;
    pg.restart().await;
    let outage = killed_at.elapsed();

    let total = (BEFORE + DURING) as i64;
    let drained_at = Instant::now();
    loop {
        let progress = metered(&pools).await;
        if matches!(progress, Ok((n, _)) if n >= total) {
            break;
        }
        let consumer = consumer_state(&bus, "postproc-usage").await;
        assert!(
            drained_at.elapsed() < Duration::from_secs(90),
            "the backlog did not drain: metered {progress:?} of {total}; consumer {consumer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain = drained_at.elapsed();
    // Anything redelivered late would land now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (requests, records) = metered(&pools).await.unwrap();
    assert_eq!(
        (requests, records),
        (total, total),
        "every event metered once"
    );
    let dead = bus.dead_letters(10).await.unwrap();
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    eprintln!(
        "postgres outage {:.1}s; backlog of {total} events drained {:.1}s after restart",
        outage.as_secs_f64(),
        drain.as_secs_f64()
    );
    for p in pools {
        p.close().await;
    }
    stack.shutdown().await;
}
