//! The walking skeleton, end to end: gateway → inference (document + outbox in one transaction)
//! → relay → JetStream → postproc (effect + dedupe in one transaction) → read back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use keel_proto::public as pb;
use keel_tests::{TestStack, authed, eventually, telemetry};
use opentelemetry::Value;
use sqlx::Row;

const WAIT: Duration = Duration::from_secs(20);

async fn record_version(
    pool: &sqlx::PgPool,
    tenant: &str,
    doc: &str,
) -> anyhow::Result<Option<(i64, bool)>> {
    let row = sqlx::query(
        "SELECT version, deleted FROM postproc.document_records WHERE tenant_id = $1 AND document_id = $2::uuid",
    )
    .bind(tenant)
    .bind(doc)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.get("version"), r.get("deleted"))))
}

async fn stats(pool: &sqlx::PgPool, tenant: &str) -> anyhow::Result<(i64, i64, i64)> {
    let row = sqlx::query(
        "SELECT created, updated, deleted FROM postproc.tenant_document_stats WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_optional(pool)
    .await?;
    Ok(row.map_or((0, 0, 0), |r| {
        (r.get("created"), r.get("updated"), r.get("deleted"))
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn document_travels_the_whole_path_and_reads_back() {
    let stack = TestStack::start().await.unwrap();
    let tok_acme = stack.tenant_token("acme").await.unwrap();
    let mut docs = stack.documents().await.unwrap();

    let created = docs
        .create_document(authed(
            pb::CreateDocumentRequest {
                title: "Hello".into(),
                content: "héllo wörld".into(),
                idempotency_key: "k-1".into(),
            },
            &tok_acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.version, 1);
    assert_eq!(created.content_bytes, "héllo wörld".len() as i64);

    let read = docs
        .get_document(authed(
            pb::GetDocumentRequest {
                id: created.id.clone(),
            },
            &tok_acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, created);

    // A retried create with the same key and body is the same document, not a second one.
    let again = docs
        .create_document(authed(
            pb::CreateDocumentRequest {
                title: "Hello".into(),
                content: "héllo wörld".into(),
                idempotency_key: "k-1".into(),
            },
            &tok_acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, created.id);

    // The tenant's rows live on the shard the shard map names, and only there.
    let home = stack.shard(stack.shard_of("acme")).await.unwrap();
    let other = stack.shard(1 - stack.shard_of("acme")).await.unwrap();
    let count = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM inference.documents WHERE tenant_id = 'acme'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(count(home.clone()).await, 1);
    assert_eq!(count(other).await, 0);

    // postproc records it once the event has travelled the bus.
    let v = eventually(WAIT, "postproc to record the document", || async {
        record_version(&home, "acme", &created.id).await
    })
    .await
    .unwrap();
    assert_eq!(v, (1, false));
    let sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inference.outbox WHERE sent_time IS NOT NULL AND kind LIKE 'document.%'",
    )
    .fetch_one(&home)
    .await
    .unwrap();
    assert_eq!(sent, 1, "the outbox row is marked sent after the PubAck");

    // Update and delete travel the same way.
    let updated = docs
        .update_document(authed(
            pb::UpdateDocumentRequest {
                id: created.id.clone(),
                title: "Hello 2".into(),
                content: "more".into(),
                expected_version: 1,
            },
            &tok_acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.version, 2);
    eventually(WAIT, "postproc to see version 2", || async {
        Ok(record_version(&home, "acme", &created.id)
            .await?
            .filter(|v| v.0 == 2))
    })
    .await
    .unwrap();
    docs.delete_document(authed(
        pb::DeleteDocumentRequest {
            id: created.id.clone(),
            expected_version: 2,
        },
        &tok_acme,
    ))
    .await
    .unwrap();
    eventually(WAIT, "postproc to see the deletion", || async {
        Ok(record_version(&home, "acme", &created.id)
            .await?
            .filter(|v| v.1))
    })
    .await
    .unwrap();
    assert_eq!(stats(&home, "acme").await.unwrap(), (1, 1, 1));
    let gone = docs
        .get_document(authed(
            pb::GetDocumentRequest {
                id: created.id.clone(),
            },
            &tok_acme,
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lists_page_newest_first_without_crossing_tenants() {
    let stack = TestStack::start().await.unwrap();
    let tok_acme = stack.tenant_token("acme").await.unwrap();
    let tok_globex = stack.tenant_token("globex").await.unwrap();
    let mut docs = stack.documents().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let d = docs
            .create_document(authed(
                pb::CreateDocumentRequest {
                    title: format!("a{i}"),
                    content: "x".into(),
                    idempotency_key: String::new(),
                },
                &tok_acme,
            ))
            .await
            .unwrap()
            .into_inner();
        ids.push(d.id);
    }
    docs.create_document(authed(
        pb::CreateDocumentRequest {
            title: "g".into(),
            content: "y".into(),
            idempotency_key: String::new(),
        },
        &tok_globex,
    ))
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = docs
            .list_documents(authed(
                pb::ListDocumentsRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    omit_content: true,
                },
                &tok_acme,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.documents.len() <= 2);
        for d in &page.documents {
            assert!(d.content.is_empty() && d.content_bytes == 1);
        }
        seen.extend(page.documents.into_iter().map(|d| d.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    ids.reverse();
    assert_eq!(
        seen, ids,
        "every acme document once, newest first, none of globex's"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_spans_every_hop_and_every_span_and_line_carries_the_tenant() {
    let captured = telemetry();
    let stack = TestStack::start().await.unwrap();
    let tok_initech = stack.tenant_token("initech").await.unwrap();
    let mut docs = stack.documents().await.unwrap();
    let doc = docs
        .create_document(authed(
            pb::CreateDocumentRequest {
                title: "traced".into(),
                content: "x".into(),
                idempotency_key: String::new(),
            },
            &tok_initech,
        ))
        .await
        .unwrap()
        .into_inner();
    let home = stack.shard(stack.shard_of("initech")).await.unwrap();
    eventually(WAIT, "postproc to record the document", || async {
        record_version(&home, "initech", &doc.id).await
    })
    .await
    .unwrap();

    // The trace of the create: the gateway's server span for CreateDocument is its root.
    let spans = eventually(WAIT, "the consumer span to be exported", || async {
        let all = captured.spans.get_finished_spans().unwrap();
        let root = all.iter().find(|s| {
            s.name == "keel.v1.DocumentService/CreateDocument"
                && s.attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "tenant.id" && kv.value == Value::from("initech"))
        });
        let Some(root) = root else { return Ok(None) };
        let trace = root.span_context.trace_id();
        let in_trace: Vec<_> = all
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect();
        Ok(in_trace
            .iter()
            .any(|s| s.name.starts_with("process "))
            .then_some(in_trace))
    })
    .await
    .unwrap();
    let names: HashSet<String> = spans.iter().map(|s| s.name.to_string()).collect();
    for hop in [
        "keel.v1.DocumentService/CreateDocument",         // gateway
        "gate.authenticate",                              // the gateway's admission...
        "gate.limit",                                     // ...its rate limit...
        "downstream",                                     // ...and its wait on inference
        "keel.auth.v1.TenantDirectory/GetTenant",         // gateway → auth
        "keel.inference.v1.DocumentStore/CreateDocument", // gateway → inference
        "documents.create",           // inference → Postgres (document + outbox)
        "publish document.created",   // outbox relay → NATS
        "process postproc-documents", // NATS → postproc
        "postproc.apply",             // postproc → Postgres
    ] {
        assert!(names.contains(hop), "trace lacks {hop}: {names:?}");
    }
    for s in &spans {
        let tenant = s
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "tenant.id");
        assert_eq!(
            tenant.map(|kv| kv.value.clone()),
            Some(Value::from("initech")),
            "span {} lacks tenant.id",
            s.name
        );
    }
    // The consumer span is linked to the producer's span as well as parented by it.
    let process = spans
        .iter()
        .find(|s| s.name == "process postproc-documents")
        .unwrap();
    let publish = spans
        .iter()
        .find(|s| s.name == "publish document.created")
        .unwrap();
    assert_eq!(process.parent_span_id, publish.span_context.span_id());
    assert!(
        process
            .links
            .iter()
            .any(|l| l.span_context.span_id() == publish.span_context.span_id())
    );

    // Every log line written inside this trace carries the tenant and the correlation ID.
    let trace_hex = spans[0].span_context.trace_id().to_string();
    let lines: Vec<serde_json::Value> = captured
        .logs
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["trace_id"] == trace_hex.as_str())
        .collect();
    assert!(!lines.is_empty(), "no log line carries the trace ID");
    let span_ids: HashSet<String> = spans
        .iter()
        .map(|s| s.span_context.span_id().to_string())
        .collect();
    for l in &lines {
        assert_eq!(l["tenant_id"], "initech", "{l}");
        assert!(l["correlation_id"].is_string(), "{l}");
        // ...and the ID of a span of this trace, to jump from the line to its span.
        let span = l["span_id"].as_str().unwrap_or_default();
        assert!(span_ids.contains(span), "{l}");
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_event_changes_nothing() {
    // A duplicate window of 1 s lets the test put the same event on the stream a second time,
    // as a relay that crashed after its PubAck would after the window.
    let stack = TestStack::start_with(|e| e.with("KEEL_NATS_DUPLICATE_WINDOW", "1s"))
        .await
        .unwrap();
    let tok_acme = stack.tenant_token("acme").await.unwrap();
    let mut docs = stack.documents().await.unwrap();
    let doc = docs
        .create_document(authed(
            pb::CreateDocumentRequest {
                title: "once".into(),
                content: "x".into(),
                idempotency_key: String::new(),
            },
            &tok_acme,
        ))
        .await
        .unwrap()
        .into_inner();
    let home = stack.shard(stack.shard_of("acme")).await.unwrap();
    eventually(WAIT, "the first delivery", || async {
        record_version(&home, "acme", &doc.id).await
    })
    .await
    .unwrap();
    assert_eq!(stats(&home, "acme").await.unwrap(), (1, 0, 0));

    // Re-publish the very message the relay sent, from the outbox row.
    let row = sqlx::query("SELECT id, payload, event_type, kind FROM inference.outbox")
        .fetch_one(&home)
        .await
        .unwrap();
    let id: uuid::Uuid = row.get("id");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let bus = keel_bus::Bus::connect(keel_bus::BusConfig::from_env(&stack.env).unwrap())
        .await
        .unwrap();
    let duplicate = bus
        .publish(&keel_bus::OutgoingEvent {
            id: id.to_string(),
            tenant: keel_tenancy::TenantId::parse("acme").unwrap(),
            kind: row.get("kind"),
            event_type: row.get("event_type"),
            schema_version: 1,
            payload: row.get::<Vec<u8>, _>("payload").into(),
            traceparent: None,
        })
        .await
        .unwrap();
    assert!(
        !duplicate,
        "the stream must store the second copy, so the consumer sees it"
    );

    // Wait until the consumer has acknowledged both copies.
    let stream_name = bus.config().stream.clone();
    eventually(WAIT, "the consumer to ack the second copy", || {
        let bus = bus.clone();
        let stream_name = stream_name.clone();
        async move {
            let mut stream = bus.jetstream().get_stream(&stream_name).await?;
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
                .get_consumer("postproc-documents")
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            let _ = stream.info().await?;
            let info = consumer.info().await?;
            Ok((info.ack_floor.stream_sequence >= 2 && info.num_ack_pending == 0).then_some(()))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        stats(&home, "acme").await.unwrap(),
        (1, 0, 0),
        "the duplicate changed nothing"
    );
    let dedupe: i64 =
        sqlx::query_scalar("SELECT count(*) FROM postproc.processed_events WHERE event_id = $1")
            .bind(id.to_string())
            .fetch_one(&home)
            .await
            .unwrap();
    assert_eq!(dedupe, 1);
    stack.shutdown().await;
}
