//! The consumer runner against a real JetStream: work that outlasts the ack wait is kept alive
//! with in-progress acks (not redelivered meanwhile); a runner that dies without acking gets its
//! message redelivered after the ack wait (see `postproc_crash.rs`), and one that dies on the
//! last delivery does not leave the message in limbo: it is dead-lettered; a runner shutting
//! down hands what it had not started back at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use keel_bus::{Bus, BusConfig, ConsumerSpec, Delivery, Handler, HandlerError};
use keel_tests::{Servers, eventually, unique};

struct Slow {
    deliveries: Arc<AtomicU32>,
    done: Arc<AtomicU32>,
}

impl Handler for Slow {
    async fn handle(&self, _d: &Delivery) -> Result<(), HandlerError> {
        self.deliveries.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        self.done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A bus on a stream of this test's own.
async fn own_bus() -> Bus {
    let servers = Servers::from_env();
    let id = unique("c");
    let bus = Bus::connect(BusConfig {
        url: servers.nats_url.clone(),
        stream: format!("S_{id}"),
        subject_prefix: id.clone(),
        publish_timeout: Duration::from_secs(5),
        duplicate_window: Duration::from_secs(60),
    })
    .await
    .unwrap();
    bus.ensure_stream().await.unwrap();
    bus
}

async fn publish(bus: &Bus, id: &str) {
    let tenant = keel_tenancy::TenantId::parse("slow").unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    bus.jetstream()
        .publish_with_headers(
            bus.subject(&tenant, "work.slow"),
            headers,
            id.to_owned().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_work_is_kept_alive_with_in_progress_acks() {
    let bus = own_bus().await;
    publish(&bus, "one").await;
    let deliveries = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let mut spec = ConsumerSpec::new("slow-worker", bus.kind_filter("work.*"));
    // Much shorter than the work: without in-progress acks the server would redeliver.
    spec.ack_wait = Duration::from_secs(1);
    let stop = tokio_util::sync::CancellationToken::new();
    let handler = Slow {
        deliveries: deliveries.clone(),
        done: done.clone(),
    };
    let runner = {
        let (bus, stop) = (bus.clone(), stop.clone());
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move { keel_bus::run_consumer(&bus, spec, handler, stop).await })
    };
    eventually(Duration::from_secs(20), "the work done", || async {
        Ok((done.load(Ordering::SeqCst) >= 1).then_some(()))
    })
    .await
    .unwrap();
    // Longer than the ack wait: a redelivery would have shown by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(deliveries.load(Ordering::SeqCst), 1, "delivered once");
    stop.cancel();
    runner.await.unwrap().unwrap();
}

/// Panics (a crash of its worker) on every delivery it is given, counting them.
struct Crashes {
    handled: Arc<AtomicU32>,
}

impl Handler for Crashes {
    async fn handle(&self, _d: &Delivery) -> Result<(), HandlerError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        panic!("simulated crash of the worker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_whose_last_delivery_crashed_is_dead_lettered_not_left_in_limbo() {
    let bus = own_bus().await;
    publish(&bus, "crasher").await;
    let handled = Arc::new(AtomicU32::new(0));
    let mut spec = ConsumerSpec::new("crashy-worker", bus.kind_filter("work.*"));
    spec.ack_wait = Duration::from_millis(500);
    spec.max_deliver = 2;
    let stop = tokio_util::sync::CancellationToken::new();
    // A worker that crashes on the message, restarted after each crash, as a supervisor would.
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        assert!(
            Instant::now() < deadline,
            "the message never reached the dead-letter stream"
        );
        let letters = bus.dead_letters(10).await.unwrap();
        if !letters.is_empty() {
            break letters;
        }
        let runner = {
            let (bus, spec, stop) = (bus.clone(), spec.clone(), stop.clone());
            let handler = Crashes {
                handled: handled.clone(),
            };
            #[allow(clippy::disallowed_methods)]
            tokio::spawn(async move { keel_bus::run_consumer(&bus, spec, handler, stop).await })
        };
        // Crashed (a panic), or still waiting for a redelivery: either way, restart it.
        let _ = tokio::time::timeout(Duration::from_secs(2), runner).await;
    };
    stop.cancel();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.consumer, "crashy-worker");
    assert_eq!(d.delivered, 3, "the reserved delivery dead-lettered it");
    assert!(d.error.contains("never settled"), "{}", d.error);
    assert_eq!(&d.payload[..], b"crasher", "payload intact");
    assert!(
        d.headers
            .iter()
            .any(|(k, v)| k == keel_bus::dlq::EVENT_ID_HEADER && v == "crasher"),
        "the event keeps its identity: {:?}",
        d.headers
    );
    assert_eq!(
        handled.load(Ordering::SeqCst),
        2,
        "handled on its two real deliveries, not on the reserved one"
    );
}

/// Records which messages it handled; each takes a while.
struct Records {
    seen: Arc<Mutex<HashSet<String>>>,
}

impl Handler for Records {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.seen
            .lock()
            .unwrap()
            .insert(d.event_id.clone().unwrap_or_default());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_hands_unstarted_messages_back_at_once() {
    const N: usize = 40;
    let bus = own_bus().await;
    for i in 0..N {
        publish(&bus, &format!("m{i}")).await;
    }
    let mut spec = ConsumerSpec::new("handing-back", bus.kind_filter("work.*"));
    // Far longer than the test: anything not handed back would wait this long.
    spec.ack_wait = Duration::from_secs(60);
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let run = |stop: tokio_util::sync::CancellationToken| {
        let (bus, spec) = (bus.clone(), spec.clone());
        let handler = Records { seen: seen.clone() };
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move { keel_bus::run_consumer(&bus, spec, handler, stop).await })
    };
    let first_stop = tokio_util::sync::CancellationToken::new();
    let first = run(first_stop.clone());
    eventually(
        Duration::from_secs(20),
        "the first runner started",
        || async { Ok((!seen.lock().unwrap().is_empty()).then_some(())) },
    )
    .await
    .unwrap();
    first_stop.cancel();
    first.await.unwrap().unwrap();
    let by_first = seen.lock().unwrap().len();
    assert!(
        by_first < N,
        "the first runner had not finished ({by_first} of {N})"
    );
    let second_stop = tokio_util::sync::CancellationToken::new();
    let second = run(second_stop.clone());
    eventually(
        Duration::from_secs(20),
        "the rest handled by the second runner",
        || async { Ok((seen.lock().unwrap().len() == N).then_some(())) },
    )
    .await
    .unwrap();
    second_stop.cancel();
    second.await.unwrap().unwrap();
}
