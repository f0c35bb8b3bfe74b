//! Usage metering end to end: model calls through the gateway → InferenceCompleted events
//! (outbox → JetStream) → post-processing's usage table (once per event) → GetUsage through the
//! gateway, with the tenant's tier.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use keel_proto::public as pb;
use keel_tests::{TestStack, authed, connect, eventually};

fn ts(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_calls_are_metered_once_and_readable_through_the_gateway() {
    let stack = TestStack::start().await.unwrap();
    let token = stack.tenant_token("acme").await.unwrap();
    let other = stack.tenant_token("globex").await.unwrap();
    let channel = connect(&stack.gateway_url()).await.unwrap();
    let mut inference = pb::inference_service_client::InferenceServiceClient::new(channel.clone());
    let mut usage = pb::usage_service_client::UsageServiceClient::new(channel);
    let request = |text: &str| pb::GenerateRequest {
        model: "keel-tiny".into(),
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: text.into(),
        }],
        max_output_tokens: 6,
        ..Default::default()
    };
    let mut output = 0u64;
    for text in ["one two", "three four", "one two"] {
        let r = inference
            .complete(authed(request(text), &token))
            .await
            .unwrap()
            .into_inner();
        output += u64::from(r.usage.unwrap().output_tokens);
    }
    inference
        .embed(authed(
            pb::EmbedRequest {
                model: "keel-embed".into(),
                inputs: vec!["a b c".into()],
            },
            &token,
        ))
        .await
        .unwrap();

    let now = SystemTime::now();
    let range = |page_size: i32, page_token: String| pb::GetUsageRequest {
        start_time: Some(ts(now - Duration::from_secs(86_400))),
        end_time: Some(ts(now + Duration::from_secs(86_400))),
        page_size,
        page_token,
    };
    let got = eventually(Duration::from_secs(20), "usage metered", || {
        let mut usage = usage.clone();
        let req = range(0, String::new());
        let token = token.clone();
        async move {
            let r = usage.get_usage(authed(req, &token)).await?.into_inner();
            let requests: u64 = r.records.iter().map(|x| x.requests).sum();
            Ok((requests == 4).then_some(r))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        got.tier, "pro",
        "the tier the test harness gives its tenants"
    );
    let tiny = got
        .records
        .iter()
        .find(|r| r.model_version == "keel-tiny@1")
        .unwrap();
    assert_eq!(tiny.requests, 3, "the cached third call is metered too");
    assert_eq!(tiny.output_tokens, output);
    assert_eq!(
        tiny.input_tokens, 9,
        "\"user: one two\" ×2 and \"user: three four\""
    );
    let embed = got
        .records
        .iter()
        .find(|r| r.model_version == "keel-embed@1")
        .unwrap();
    assert_eq!((embed.requests, embed.input_tokens), (1, 3));

    // Paging: one record a page, in (day, version) order, ending with an empty token.
    let first = usage
        .get_usage(authed(range(1, String::new()), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.records.len(), 1);
    assert!(!first.next_page_token.is_empty());
    let second = usage
        .get_usage(authed(range(1, first.next_page_token.clone()), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.records.len(), 1);
    assert_ne!(
        second.records[0].model_version,
        first.records[0].model_version
    );
    assert!(second.next_page_token.is_empty());

    // Another tenant sees only its own (nothing).
    let theirs = usage
        .get_usage(authed(range(0, String::new()), &other))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.records.is_empty());

    // Stays exact: waiting longer changes nothing (each event counted once).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = usage
        .get_usage(authed(range(0, String::new()), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.records, got.records);
    stack.shutdown().await;
}
