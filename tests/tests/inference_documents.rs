//! Documents on the tenant's shard: row-level security holds even against a query that forgets
//! its tenant, and with NATS down writes still succeed and the outbox drains when it returns —
//! nothing lost, nothing duplicated downstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keel_proto::inference::document_store_client::DocumentStoreClient;
use keel_proto::public as pb;
use keel_tests::{TestStack, connect, eventually};
use sqlx::Row;
use tonic::transport::Channel;

fn for_tenant<T>(msg: T, tenant: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("keel-tenant-id", tenant.parse().unwrap());
    r
}

async fn create(store: &mut DocumentStoreClient<Channel>, tenant: &str, title: &str) -> String {
    store
        .create_document(for_tenant(
            pb::CreateDocumentRequest {
                title: title.into(),
                content: format!("content of {title}"),
                ..Default::default()
            },
            tenant,
        ))
        .await
        .unwrap()
        .into_inner()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row_level_security_confines_a_tenant_transaction_to_its_tenant() {
    let stack = TestStack::start().await.unwrap();
    // Two tenants on the same physical shard.
    let a = "rls-a";
    let b = (0..200)
        .map(|i| format!("rls-b{i}"))
        .find(|b| stack.shard_of(b) == stack.shard_of(a))
        .unwrap();
    let mut store = DocumentStoreClient::new(connect(&stack.inference_url()).await.unwrap());
    for i in 0..3 {
        create(&mut store, a, &format!("a{i}")).await;
    }
    let b_doc = create(&mut store, &b, "b0").await;

    // The service's own tenant transactions, with queries that forget `WHERE tenant_id`.
    let cfg = keel_store::StoreConfig::from_env(&stack.env).unwrap();
    let shards = keel_store::Shards::connect_lazy(&cfg, keel_inference::SCHEMA)
        .unwrap()
        .with_tenant_role(keel_inference::TENANT_ROLE);
    let tenant_a = keel_tenancy::TenantId::parse(a).unwrap();
    let mut tx = shards.begin(&tenant_a).await.unwrap();
    let seen: Vec<String> = sqlx::query("SELECT tenant_id FROM documents")
        .fetch_all(&mut *tx)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("tenant_id"))
        .collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|t| t == a));
    let updated = sqlx::query("UPDATE documents SET title = 'overwritten'")
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(updated, 3, "only the tenant's own rows");
    let deleted = sqlx::query("DELETE FROM documents WHERE id = $1::uuid")
        .bind(&b_doc)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(deleted, 0, "another tenant's row is invisible, even by ID");
    let err = sqlx::query(
        "INSERT INTO documents (tenant_id, id, title, content, version) VALUES ($1, gen_random_uuid(), 'x', 'y', 1)",
    )
    .bind(&b)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("row-level security"),
        "writing as another tenant is refused: {err}"
    );
    tx.rollback().await.ok();

    // The tenant's reads through the service still see what they should.
    let got = store
        .get_document(for_tenant(pb::GetDocumentRequest { id: b_doc.clone() }, &b))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.title, "b0");
    let st = store
        .get_document(for_tenant(pb::GetDocumentRequest { id: b_doc }, a))
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::NotFound);
    shards.close().await;
    stack.shutdown().await;
}

async fn effects(stack: &TestStack, tenant: &str) -> i64 {
    let pool = stack.shard(stack.shard_of(tenant)).await.unwrap();
    let n: Option<i64> = sqlx::query_scalar(
        "SELECT created FROM postproc.tenant_document_stats WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_optional(&pool)
    .await
    .unwrap();
    pool.close().await;
    n.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_nats_down_writes_succeed_and_the_backlog_drains_exactly_once() {
    let mut nats = keel_tests::own::Nats::start().await;
    let url = nats.url.clone();
    let stack = TestStack::start_with(|e| e.with("KEEL_NATS_URL", url))
        .await
        .unwrap();
    let tenant = "outage";
    let mut store = DocumentStoreClient::new(connect(&stack.inference_url()).await.unwrap());
    for i in 0..10 {
        create(&mut store, tenant, &format!("before {i}")).await;
    }
    eventually(
        Duration::from_secs(20),
        "the first ten processed",
        || async { Ok((effects(&stack, tenant).await == 10).then_some(())) },
    )
    .await
    .unwrap();

    nats.kill();
    for i in 0..10 {
        create(&mut store, tenant, &format!("during {i}")).await;
    }
    let pool = stack.shard(stack.shard_of(tenant)).await.unwrap();
    let unsent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inference.outbox WHERE tenant_id = $1 AND sent_time IS NULL",
    )
    .bind(tenant)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(unsent, 10, "accepted, waiting in the outbox");

    nats.restart().await;
    eventually(Duration::from_secs(60), "the backlog drained", || async {
        Ok((effects(&stack, tenant).await == 20).then_some(()))
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(20), "the outbox empty", || async {
        let unsent: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inference.outbox WHERE tenant_id = $1 AND sent_time IS NULL",
        )
        .bind(tenant)
        .fetch_one(&pool)
        .await?;
        Ok((unsent == 0).then_some(()))
    })
    .await
    .unwrap();

    // Every outbox row published exactly once (the twenty document events and the events of
    // the indexer's embedding calls), and twenty document effects.
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inference.outbox WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&pool)
            .await
            .unwrap();
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream_name = stack.env.raw("KEEL_NATS_STREAM").unwrap().to_owned();
    let mut stream = js.get_stream(&stream_name).await.unwrap();
    let info = stream.info().await.unwrap();
    assert!(rows >= 20);
    assert_eq!(info.state.messages, rows as u64, "{:?}", info.state);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(effects(&stack, tenant).await, 20, "no double effect");
    pool.close().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generate_can_add_the_most_similar_chunks_of_the_tenants_documents() {
    use keel_proto::inference as inf;
    let stack = TestStack::start().await.unwrap();
    let url = stack.inference_url();
    let mut retrieval = inf::retrieval_client::RetrievalClient::new(connect(&url).await.unwrap());
    let mut g = inf::generation_client::GenerationClient::new(connect(&url).await.unwrap());
    let embed = |t: &str| keel_inference::models::embed(t);
    let doc = |i: u32| format!("0190b3c4-0000-7000-8000-00000000000{i}");
    let texts = [
        "rivers carry water from the mountains to the sea",
        "quarterly revenue grew in europe and asia",
        "the tenant pays for the enterprise tier yearly",
    ];
    for (i, t) in texts.iter().enumerate() {
        let applied = retrieval
            .put_chunks(for_tenant(
                inf::PutChunksRequest {
                    document_id: doc(i as u32),
                    document_version: 2,
                    model_version: "keel-embed@1".into(),
                    chunks: vec![inf::Chunk {
                        index: 0,
                        text: (*t).into(),
                        embedding: embed(t),
                    }],
                },
                "acme",
            ))
            .await
            .unwrap()
            .into_inner()
            .applied;
        assert!(applied);
    }
    // An older version arriving late changes nothing.
    let stale = retrieval
        .put_chunks(for_tenant(
            inf::PutChunksRequest {
                document_id: doc(0),
                document_version: 1,
                model_version: "keel-embed@1".into(),
                chunks: vec![inf::Chunk {
                    index: 0,
                    text: "stale".into(),
                    embedding: embed("stale"),
                }],
            },
            "acme",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!stale.applied);
    // Another tenant's chunks are never found.
    retrieval
        .put_chunks(for_tenant(
            inf::PutChunksRequest {
                document_id: doc(9),
                document_version: 1,
                model_version: "keel-embed@1".into(),
                chunks: vec![inf::Chunk {
                    index: 0,
                    text: "rivers and water and the sea".into(),
                    embedding: embed("rivers and water and the sea"),
                }],
            },
            "globex",
        ))
        .await
        .unwrap();

    let found = retrieval
        .search(for_tenant(
            inf::SearchRequest {
                query: "where does river water go".into(),
                top_k: 2,
            },
            "acme",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.matches.len(), 2);
    assert_eq!(found.matches[0].document_id, doc(0), "{:?}", found.matches);
    assert!(found.matches[0].score > found.matches[1].score);

    // Generate with retrieval: the context changes the prompt (and so the answer).
    let request = |k: u32| pb::GenerateRequest {
        model: "keel-tiny".into(),
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: "where does river water go".into(),
        }],
        max_output_tokens: 8,
        retrieve_top_k: k,
        ..Default::default()
    };
    let plain = g
        .complete(for_tenant(request(0), "acme"))
        .await
        .unwrap()
        .into_inner();
    let grounded = g
        .complete(for_tenant(request(1), "acme"))
        .await
        .unwrap()
        .into_inner();
    let words = |s: &str| s.split_whitespace().count() as u32;
    assert_eq!(
        grounded.usage.unwrap().input_tokens,
        plain.usage.unwrap().input_tokens
            + words(texts[0])
            + words("Context from the tenant's documents:")
            + 1
            + 1,
        "the best chunk (and its header and reference) joined the prompt"
    );
    let st = g
        .complete(for_tenant(request(9), "acme"))
        .await
        .unwrap_err();
    assert_eq!(
        keel_tests::detail(&st, "field").as_deref(),
        Some("retrieve_top_k")
    );

    retrieval
        .delete_chunks(for_tenant(
            inf::DeleteChunksRequest {
                document_id: doc(0),
            },
            "acme",
        ))
        .await
        .unwrap();
    let found = retrieval
        .search(for_tenant(
            inf::SearchRequest {
                query: "where does river water go".into(),
                top_k: 3,
            },
            "acme",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.matches.len(), 2);
    assert!(found.matches.iter().all(|m| m.document_id != doc(0)));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postproc_keeps_the_retrieval_index_in_step_with_the_documents() {
    use keel_proto::inference as inf;
    let stack = TestStack::start().await.unwrap();
    let url = stack.inference_url();
    let mut store = DocumentStoreClient::new(connect(&url).await.unwrap());
    let retrieval = inf::retrieval_client::RetrievalClient::new(connect(&url).await.unwrap());
    let tenant = "indexed";
    let long: String = (0..300).map(|i| format!("glacier{i} ")).collect();
    let doc = store
        .create_document(for_tenant(
            pb::CreateDocumentRequest {
                title: "Glaciers".into(),
                content: long,
                ..Default::default()
            },
            tenant,
        ))
        .await
        .unwrap()
        .into_inner();
    let search = |q: &'static str| {
        let mut retrieval = retrieval.clone();
        async move {
            retrieval
                .search(for_tenant(
                    inf::SearchRequest {
                        query: q.into(),
                        top_k: 8,
                    },
                    tenant,
                ))
                .await
                .unwrap()
                .into_inner()
                .matches
        }
    };
    let found = eventually(Duration::from_secs(20), "the document indexed", || async {
        let m = search("glacier12 glacier13").await;
        Ok((!m.is_empty()).then_some(m))
    })
    .await
    .unwrap();
    assert!(found.iter().all(|m| m.document_id == doc.id));
    // 300 words + the title in chunks of 120 overlapping by 20: three chunks.
    let indices: std::collections::BTreeSet<u32> = found.iter().map(|m| m.chunk_index).collect();
    assert_eq!(indices.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);

    store
        .update_document(for_tenant(
            pb::UpdateDocumentRequest {
                id: doc.id.clone(),
                title: "Deserts".into(),
                content: "dunes of sand under a hot sun".into(),
                expected_version: 1,
            },
            tenant,
        ))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the index follows the update",
        || async {
            let m = search("dunes of sand").await;
            Ok((m.len() == 1 && m[0].text.contains("dunes")).then_some(()))
        },
    )
    .await
    .unwrap();

    store
        .delete_document(for_tenant(
            pb::DeleteDocumentRequest {
                id: doc.id.clone(),
                expected_version: 0,
            },
            tenant,
        ))
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the chunks removed", || async {
        Ok(search("dunes of sand").await.is_empty().then_some(()))
    })
    .await
    .unwrap();
    stack.shutdown().await;
}
