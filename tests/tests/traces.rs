//! One trace per model call across every hop: the gateway (admission, rate limit), auth, the
//! inference service, its cache, the model call (GenAI conventions: version, tokens, time to
//! first token), the outbox, NATS and the post-processing consumers — every span with the
//! tenant. A repeated call is a cache hit with no model call in its trace. (The document path's
//! trace: `skeleton.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use keel_proto::public as pb;
use keel_tests::{TestStack, authed, connect, eventually, telemetry};
use opentelemetry::Value;
use opentelemetry_sdk::trace::SpanData;

const WAIT: Duration = Duration::from_secs(30);

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// The finished spans of the trace whose gateway span is `root` for `tenant`, once `until` is
/// among them.
async fn trace_of(root: &str, tenant: &str, nth: usize, until: &str) -> Vec<SpanData> {
    let captured = telemetry();
    eventually(WAIT, until, || async {
        let all = captured.spans.get_finished_spans().unwrap();
        let mut roots: Vec<_> = all
            .iter()
            .filter(|s| {
                s.name == root && attr(s, "tenant.id") == Some(&Value::from(tenant.to_owned()))
            })
            .collect();
        roots.sort_by_key(|s| s.start_time);
        let Some(root) = roots.get(nth) else {
            return Ok(None);
        };
        let trace = root.span_context.trace_id();
        let spans: Vec<SpanData> = all
            .iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .cloned()
            .collect();
        Ok(spans.iter().any(|s| s.name == until).then_some(spans))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_call_is_one_trace_from_the_gateway_to_the_consumers() {
    telemetry();
    let stack = TestStack::start().await.unwrap();
    let tenant = "tracer";
    let token = stack.tenant_token(tenant).await.unwrap();
    let mut inference = pb::inference_service_client::InferenceServiceClient::new(
        connect(&stack.gateway_url()).await.unwrap(),
    );
    let ask = || pb::GenerateRequest {
        model: "keel-tiny".into(),
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: format!("trace this {}", uuid::Uuid::new_v4()),
        }],
        max_output_tokens: 6,
        temperature: 0.0,
        seed: Some(3),
        user: String::new(),
        retrieve_top_k: 0,
    };
    let request = ask();
    let first = inference
        .complete(authed(request.clone(), &token))
        .await
        .unwrap()
        .into_inner();
    let usage = first.usage.unwrap();

    let spans = trace_of(
        "keel.v1.InferenceService/Complete",
        tenant,
        0,
        "process postproc-usage",
    )
    .await;
    let names: HashSet<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    for hop in [
        "keel.v1.InferenceService/Complete",      // gateway
        "gate.authenticate",                      // admission
        "gate.limit",                             // rate limit
        "keel.auth.v1.TenantDirectory/GetTenant", // gateway → auth
        "keel.inference.v1.Generation/Complete",  // gateway → inference
        "cache.read_through",                     // inference → Redis
        "chat keel-tiny@1",                       // the model call
        "publish inference.completed",            // outbox → NATS
        "process postproc-usage",                 // NATS → metering
        "process postproc-moderation",            // NATS → moderation
    ] {
        assert!(names.contains(hop), "the trace lacks {hop}: {names:?}");
    }
    for s in &spans {
        assert_eq!(
            attr(s, "tenant.id"),
            Some(&Value::from(tenant.to_owned())),
            "span {} lacks tenant.id",
            s.name
        );
    }
    let cache = spans
        .iter()
        .find(|s| s.name == "cache.read_through")
        .unwrap();
    assert_eq!(attr(cache, "cache.result"), Some(&Value::from("miss")));
    let model = spans.iter().find(|s| s.name == "chat keel-tiny@1").unwrap();
    assert_eq!(
        attr(model, "gen_ai.operation.name"),
        Some(&Value::from("chat"))
    );
    assert_eq!(
        attr(model, "gen_ai.request.model"),
        Some(&Value::from("keel-tiny"))
    );
    assert_eq!(
        attr(model, "gen_ai.response.model"),
        Some(&Value::from("keel-tiny@1"))
    );
    assert_eq!(
        attr(model, "gen_ai.usage.input_tokens"),
        Some(&Value::I64(i64::from(usage.input_tokens)))
    );
    assert_eq!(
        attr(model, "gen_ai.usage.output_tokens"),
        Some(&Value::I64(i64::from(usage.output_tokens)))
    );
    assert!(
        matches!(attr(model, "gen_ai.server.time_to_first_token"), Some(Value::F64(t)) if *t >= 0.0),
        "{:?}",
        model.attributes
    );
    // The model call happened inside the cache miss, inside the inference server span.
    assert_eq!(model.parent_span_id, cache.span_context.span_id());
    // The consumers' spans are linked to the producer's.
    let publish = spans
        .iter()
        .find(|s| s.name == "publish inference.completed")
        .unwrap();
    for consumer in ["process postproc-usage", "process postproc-moderation"] {
        let process = spans.iter().find(|s| s.name == consumer).unwrap();
        assert!(
            process
                .links
                .iter()
                .any(|l| l.span_context.span_id() == publish.span_context.span_id()),
            "{consumer} is not linked to its producer"
        );
    }

    // The same call again: served from the cache, no model call in its trace.
    inference.complete(authed(request, &token)).await.unwrap();
    let again = trace_of(
        "keel.v1.InferenceService/Complete",
        tenant,
        1,
        "cache.read_through",
    )
    .await;
    let cache = again
        .iter()
        .find(|s| s.name == "cache.read_through")
        .unwrap();
    assert_eq!(attr(cache, "cache.result"), Some(&Value::from("hit")));
    assert_eq!(attr(cache, "cache.hit"), Some(&Value::Bool(true)));
    assert!(!again.iter().any(|s| s.name.starts_with("chat ")));
    stack.shutdown().await;
}

/// The value of the first sample of `metric` whose labels include all of `labels`.
fn sample(page: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    page.lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|want| l.contains(want)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_that_fails_half_way_counts_as_its_failure_for_its_whole_length() {
    let stack = TestStack::start_with(|e| e.with("KEEL_INFERENCE_MODEL_TIMEOUT", "1s"))
        .await
        .unwrap();
    let token = stack.tenant_token("stalls").await.unwrap();
    let mut inference = pb::inference_service_client::InferenceServiceClient::new(
        connect(&stack.gateway_url()).await.unwrap(),
    );
    let mut stream = inference
        .generate(authed(
            pb::GenerateRequest {
                model: "keel-tiny-stall".into(),
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    content: "start, then stall".into(),
                }],
                max_output_tokens: 20,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut chunks = 0;
    let st = loop {
        match stream.message().await {
            Ok(Some(_)) => chunks += 1,
            Ok(None) => panic!("the stalled stream ended cleanly"),
            Err(st) => break st,
        }
    };
    assert!(chunks >= 1, "the headers and first chunks went out");
    assert_eq!(st.code(), tonic::Code::DeadlineExceeded);
    let admin = stack.gateway.as_ref().unwrap().admin_addr();
    let page = eventually(WAIT, "the call recorded", || async {
        let (_, page) = keel_tests::admin_get(admin, "/metrics").await?;
        Ok(sample(
            &page,
            "keel_rpc_requests_total",
            &[
                r#"service="gateway""#,
                r#"method="Generate""#,
                r#"code="DEADLINE_EXCEEDED""#,
            ],
        )
        .is_some()
        .then_some(page))
    })
    .await
    .unwrap();
    assert_eq!(
        sample(
            &page,
            "keel_rpc_requests_total",
            &[
                r#"service="gateway""#,
                r#"method="Generate""#,
                r#"code="OK""#
            ],
        ),
        None,
        "the failed stream is not counted as OK"
    );
    let seconds = sample(
        &page,
        "keel_rpc_duration_seconds_sum",
        &[r#"service="gateway""#, r#"method="Generate""#],
    )
    .unwrap();
    assert!(
        seconds >= 0.9,
        "the whole stream is timed, not its headers: {seconds} s"
    );
    stack.shutdown().await;
}
