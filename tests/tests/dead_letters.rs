//! Nothing is dropped silently: a poison message and one whose retries ran out land in the
//! dead-letter stream with their payload and headers intact, and a replay (after the cause is
//! fixed) processes them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keel_tests::{TestStack, eventually};
use prost::Message;

async fn bus(stack: &TestStack) -> keel_bus::Bus {
    keel_bus::Bus::connect(keel_bus::BusConfig::from_env(&stack.env).unwrap())
        .await
        .unwrap()
}

/// Publishes a document event straight to the stream, as the relay would.
async fn publish(bus: &keel_bus::Bus, tenant: &str, id: &str, schema: &str, payload: Vec<u8>) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    headers.insert("Keel-Tenant-Id", tenant);
    headers.insert("Keel-Event-Type", "keel.events.v1.DocumentCreated");
    headers.insert("Keel-Schema-Version", schema);
    let subject = bus.subject(
        &keel_tenancy::TenantId::parse(tenant).unwrap(),
        "document.created",
    );
    bus.jetstream()
        .publish_with_headers(subject, headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn created(tenant: &str, event_id: &str, document_id: &str) -> Vec<u8> {
    keel_proto::events::DocumentCreated {
        event_id: event_id.into(),
        tenant_id: tenant.into(),
        document_id: document_id.into(),
        version: 1,
        title: "from the dead".into(),
        content_bytes: 4,
        occur_time: None,
    }
    .encode_to_vec()
}

async fn recorded(stack: &TestStack, tenant: &str, document_id: &str) -> bool {
    let pool = stack.shard(stack.shard_of(tenant)).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM postproc.document_records WHERE tenant_id = $1 AND document_id = $2::uuid",
    )
    .bind(tenant)
    .bind(document_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    n == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_and_exhausted_messages_are_dead_lettered_intact_and_replayable() {
    let mut stack = TestStack::start_with(|e| e.with("KEEL_POSTPROC_MAX_DELIVER", "2"))
        .await
        .unwrap();
    let bus = bus(&stack).await;
    let tenant = "dead-letters";

    // A poison message: a schema version nobody understands. Dead-lettered on first delivery.
    publish(
        &bus,
        tenant,
        "poison-1",
        "9",
        b"\x00\xffnot protobuf".to_vec(),
    )
    .await;
    let letters = eventually(
        Duration::from_secs(20),
        "the poison dead-lettered",
        || async {
            let l = bus.dead_letters(100).await?;
            Ok((!l.is_empty()).then_some(l))
        },
    )
    .await
    .unwrap();
    assert_eq!(letters.len(), 1);
    let poison = &letters[0];
    assert_eq!(
        poison.payload.as_ref(),
        b"\x00\xffnot protobuf",
        "payload intact"
    );
    assert_eq!(poison.consumer, keel_postproc::handler::DOCUMENTS_CONSUMER);
    assert!(poison.error.contains("schema version"), "{}", poison.error);
    assert_eq!(poison.delivered, 1);
    assert_eq!(
        poison.subject,
        bus.subject(
            &keel_tenancy::TenantId::parse(tenant).unwrap(),
            "document.created"
        ),
        "the original subject, for the replay"
    );
    assert!(
        poison
            .headers
            .iter()
            .any(|(k, v)| k == "Keel-Schema-Version" && v == "9"),
        "original headers kept: {:?}",
        poison.headers
    );

    // A good event whose processing fails while inference is down: retried, then dead-lettered
    // once its deliveries run out.
    let inference = stack.inference.take().unwrap();
    let inference_addr = inference.grpc_addr();
    inference.shutdown().await;
    let doc = "0190b3c4-0000-7000-8000-0000000000aa";
    publish(&bus, tenant, "good-1", "1", created(tenant, "good-1", doc)).await;
    let exhausted = eventually(Duration::from_secs(30), "the retries run out", || async {
        let l = bus.dead_letters(100).await?;
        Ok(l.into_iter().find(|d| d.error.contains("gave up after 2")))
    })
    .await
    .unwrap();
    assert!(!recorded(&stack, tenant, doc).await);

    // The cause is fixed (inference back on its address); the replay is processed once.
    let (back, _) = stack
        .inference_replica(|e| e.with("KEEL_INFERENCE_GRPC_ADDR", inference_addr.to_string()))
        .await
        .unwrap();
    stack.inference = Some(back);
    assert!(bus.replay_dead_letter(exhausted.sequence).await.unwrap());
    eventually(
        Duration::from_secs(30),
        "the replayed event processed",
        || async { Ok(recorded(&stack, tenant, doc).await.then_some(())) },
    )
    .await
    .unwrap();
    let left = bus.dead_letters(100).await.unwrap();
    assert_eq!(left.len(), 1, "only the poison is left: {left:?}");
    // Replaying it again changes nothing downstream (the effect is keyed by the event ID).
    assert!(!bus.replay_dead_letter(exhausted.sequence).await.unwrap());

    // Replaying the poison sends it round again: still poison, dead-lettered again, marked.
    assert!(bus.replay_dead_letter(poison.sequence).await.unwrap());
    let again = eventually(Duration::from_secs(20), "the poison back", || async {
        let l = bus.dead_letters(100).await?;
        Ok(l.into_iter().find(|d| d.sequence != poison.sequence))
    })
    .await
    .unwrap();
    assert!(
        again
            .headers
            .iter()
            .any(|(k, v)| k == "Keel-Replays" && v == "1")
    );
    assert_eq!(again.payload.as_ref(), b"\x00\xffnot protobuf");
    stack.shutdown().await;
}
