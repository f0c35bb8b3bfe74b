//! The metrics an operator needs are present after ordinary traffic, and every `keel_` family
//! is named by one convention: snake case, counters end in `_total`, gauges never do, and
//! histograms end in their unit (or say they count a size).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use keel_proto::public as pb;
use keel_tests::{TestStack, admin_get, authed, connect, eventually};

/// Families that must exist after a document write, model calls and their post-processing:
/// RED per RPC, USE per pool and queue, the gen-AI figures, breakers and the cache.
const REQUIRED: &[&str] = &[
    "keel_rpc_requests_total",
    "keel_rpc_duration_seconds",
    "keel_rpc_in_flight",
    "keel_db_pool_connections",
    "keel_db_pool_max_connections",
    "keel_redis_pool_connections",
    "keel_redis_pool_max_connections",
    "keel_redis_pool_waiting",
    "keel_nats_consumer_pending",
    "keel_nats_consumer_ack_pending",
    "keel_consumer_messages_total",
    "keel_consumer_duration_seconds",
    "keel_breaker_state",
    "keel_inference_cache_total",
    "keel_inference_model_calls_total",
    "keel_inference_tokens_total",
    "keel_inference_time_to_first_token_seconds",
    "keel_inference_time_per_output_token_seconds",
    "keel_ready",
];

/// `# TYPE name kind` lines of a Prometheus page.
fn families(page: &str) -> BTreeMap<String, String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        })
        .collect()
}

fn naming_problem(name: &str, kind: &str) -> Option<String> {
    let snake = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.contains("__")
        && !name.ends_with('_');
    if !snake {
        return Some("not snake case".into());
    }
    match kind {
        "counter" if !name.ends_with("_total") => Some("a counter must end in _total".into()),
        "gauge" if name.ends_with("_total") => Some("a gauge must not end in _total".into()),
        "histogram" | "summary"
            if !["_seconds", "_bytes", "_tokens", "_size", "_ratio"]
                .iter()
                .any(|u| name.ends_with(u)) =>
        {
            Some("a histogram must end in its unit".into())
        }
        _ => None,
    }
}

#[test]
fn the_naming_rule_catches_what_it_should() {
    assert!(naming_problem("keel_rpc_requests_total", "counter").is_none());
    assert!(naming_problem("keel_rpc_requests", "counter").is_some());
    assert!(naming_problem("keel_pool_total", "gauge").is_some());
    assert!(naming_problem("keel_rpc_duration", "histogram").is_some());
    assert!(naming_problem("keel_rpc_duration_seconds", "histogram").is_none());
    assert!(naming_problem("keel_RPC", "gauge").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_metrics_are_present_and_named_by_one_convention() {
    let stack = TestStack::start().await.unwrap();
    let token = stack.tenant_token("metered").await.unwrap();
    let ch = connect(&stack.gateway_url()).await.unwrap();
    pb::document_service_client::DocumentServiceClient::new(ch.clone())
        .create_document(authed(
            pb::CreateDocumentRequest {
                title: "measured".into(),
                content: "a document to count".into(),
                idempotency_key: String::new(),
            },
            &token,
        ))
        .await
        .unwrap();
    let mut inference = pb::inference_service_client::InferenceServiceClient::new(ch);
    for _ in 0..2 {
        inference
            .complete(authed(
                pb::GenerateRequest {
                    model: "keel-tiny".into(),
                    messages: vec![pb::ChatMessage {
                        role: "user".into(),
                        content: "count my tokens".into(),
                    }],
                    max_output_tokens: 8,
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap();
    }
    let admin = stack.gateway.as_ref().unwrap().admin_addr();
    let page = eventually(Duration::from_secs(30), "every family recorded", || async {
        let (_, page) = admin_get(admin, "/metrics").await?;
        let have = families(&page);
        Ok(REQUIRED
            .iter()
            .all(|f| have.contains_key(*f))
            .then_some(page))
    })
    .await;
    let page = match page {
        Ok(p) => p,
        Err(e) => {
            let (_, last) = admin_get(admin, "/metrics").await.unwrap();
            let have = families(&last);
            let missing: Vec<_> = REQUIRED
                .iter()
                .filter(|f| !have.contains_key(**f))
                .collect();
            panic!("{e}; missing {missing:?}");
        }
    };
    let problems: Vec<String> = families(&page)
        .iter()
        .filter(|(name, _)| name.starts_with("keel_"))
        .filter_map(|(name, kind)| {
            naming_problem(name, kind).map(|p| format!("{name} ({kind}): {p}"))
        })
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    // Per-shard pool gauges name their shard and schema.
    assert!(
        page.lines()
            .any(|l| l.starts_with("keel_db_pool_connections{")
                && l.contains(r#"schema="inference""#)
                && l.contains(r#"shard="1""#)),
        "no per-shard pool gauge"
    );
    stack.shutdown().await;
}
