//! The consumer runner against a real JetStream: work that outlasts the ack wait is kept alive
//! with in-progress acks (not redelivered meanwhile); a runner that dies without acking gets its
//! message redelivered after the ack wait (see `postproc_crash.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_work_is_kept_alive_with_in_progress_acks() {
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
    let tenant = keel_tenancy::TenantId::parse("slow").unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "one");
    bus.jetstream()
        .publish_with_headers(bus.subject(&tenant, "work.slow"), headers, "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
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
