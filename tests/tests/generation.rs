//! Model calls through the gateway: keel-tiny streams deterministic tokens chunk by chunk, a
//! client that goes away stops the generation in inference, keel-embed embeds, and bad model
//! calls are refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use keel_proto::public as pb;
use keel_tests::{TestStack, admin_get, authed, connect, eventually};
use tonic::Code;

fn request(prompt: &str, max: i32, temperature: f32, seed: Option<u64>) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: "keel-tiny".into(),
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: prompt.into(),
        }],
        max_output_tokens: max,
        temperature,
        seed,
        user: String::new(),
        retrieve_top_k: 0,
    }
}

async fn generate_text(
    client: &mut pb::inference_service_client::InferenceServiceClient<tonic::transport::Channel>,
    token: &str,
    req: pb::GenerateRequest,
) -> (String, pb::GenerateChunk) {
    let mut stream = client
        .generate(authed(req, token))
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    let mut last = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        text.push_str(&chunk.text);
        if !chunk.finish_reason.is_empty() {
            last = Some(chunk);
        }
    }
    (text, last.expect("a final chunk"))
}

/// `keel_inference_generations_total{…outcome="cancelled"}` as the inference admin reports it.
async fn cancelled(stack: &TestStack) -> f64 {
    let (_, body) = admin_get(stack.inference.as_ref().unwrap().admin_addr(), "/metrics")
        .await
        .unwrap();
    body.lines()
        .filter(|l| {
            l.starts_with("keel_inference_generations_total") && l.contains("outcome=\"cancelled\"")
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keel_tiny_streams_deterministic_tokens_and_a_client_leaving_stops_it() {
    let stack = TestStack::start().await.unwrap();
    let token = stack.tenant_token("acme").await.unwrap();
    let mut client = pb::inference_service_client::InferenceServiceClient::new(
        connect(&stack.gateway_url()).await.unwrap(),
    );

    // Temperature 0, or the same seed, gives the same text; usage is reported at the end.
    let (a, last) = generate_text(
        &mut client,
        &token,
        request("tell me about keel", 12, 0.0, None),
    )
    .await;
    let (b, _) = generate_text(
        &mut client,
        &token,
        request("tell me about keel", 12, 0.0, None),
    )
    .await;
    assert_eq!(a, b);
    assert!(!a.is_empty());
    let usage = last.usage.unwrap();
    assert_eq!(usage.input_tokens, 5, "\"user: tell me about keel\"");
    assert!(usage.output_tokens >= 4 && usage.output_tokens <= 12);
    assert_eq!(last.model_version, "keel-tiny@1");
    let (s1, _) = generate_text(&mut client, &token, request("hi", 12, 0.8, Some(7))).await;
    let (s2, _) = generate_text(&mut client, &token, request("hi", 12, 0.8, Some(7))).await;
    assert_eq!(s1, s2);

    // Complete answers the same text in one message.
    let c = client
        .complete(authed(request("tell me about keel", 12, 0.0, None), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.text, a, "the completed stream was cached");
    // A call the cache cannot answer reports the model's own time to first token.
    let fresh = client
        .complete(authed(request("tell me about keel", 12, 0.5, None), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(
        fresh.time_to_first_token_ms >= 15,
        "{}",
        fresh.time_to_first_token_ms
    );

    // Chunks arrive as they are made: the first well before the whole would be done.
    let started = Instant::now();
    let mut stream = client
        .generate(authed(request("a long story", 1000, 0.0, None), &token))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.text.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "first chunk not buffered"
    );
    let _ = stream.next().await.unwrap().unwrap();
    // The client leaves: inference stops generating (counted as cancelled) within moments.
    let before = cancelled(&stack).await;
    drop(stream);
    eventually(
        Duration::from_secs(5),
        "generation cancelled upstream",
        || async { Ok((cancelled(&stack).await > before).then_some(())) },
    )
    .await
    .unwrap();
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keel_embed_and_precise_refusals() {
    let stack = TestStack::start().await.unwrap();
    let token = stack.tenant_token("acme").await.unwrap();
    let mut client = pb::inference_service_client::InferenceServiceClient::new(
        connect(&stack.gateway_url()).await.unwrap(),
    );
    let e = client
        .embed(authed(
            pb::EmbedRequest {
                model: "keel-embed".into(),
                inputs: vec![
                    "the quick brown fox".into(),
                    "the quick brown fox!".into(),
                    "quarterly revenue".into(),
                ],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.embeddings.len(), 3);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let v: Vec<&[f32]> = e.embeddings.iter().map(|e| e.values.as_slice()).collect();
    assert_eq!(v[0].len(), 64);
    assert!(dot(v[0], v[1]) > dot(v[0], v[2]));

    let st = client
        .generate(authed(
            pb::GenerateRequest {
                model: "gpt-9".into(),
                ..request("x", 5, 0.0, None)
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), keel_tests::detail(&st, "field").as_deref()),
        (Code::NotFound, Some("model"))
    );
    let st = client
        .generate(authed(request("x", 5, 3.0, None), &token))
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), keel_tests::detail(&st, "field").as_deref()),
        (Code::InvalidArgument, Some("temperature"))
    );
    // Without a token: refused at the gateway like every method.
    let st = client
        .complete(request("x", 5, 0.0, None))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_tokens_are_reserved_up_front_and_settled_to_what_was_used() {
    let stack = TestStack::start().await.unwrap();
    stack
        .directory()
        .await
        .unwrap()
        .create_tenant(keel_proto::auth::CreateTenantRequest {
            tenant_id: "small".into(),
            display_name: "Small".into(),
            tier: "free".into(),
        })
        .await
        .unwrap();
    stack
        .create_user("small", "member", &["member"])
        .await
        .unwrap();
    let (token, _) = stack.login("small", "member").await.unwrap();
    let mut client = pb::inference_service_client::InferenceServiceClient::new(
        connect(&stack.gateway_url()).await.unwrap(),
    );
    let budget = 20_000u32; // the free tier's tokens a minute

    // An estimate beyond the budget is refused before inference does any work.
    let huge = "word ".repeat((budget as usize) * 4 / 5 + 100);
    let st = client
        .complete(authed(request(&huge, 10, 0.0, None), &token))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert_eq!(keel_tests::reason(&st), "RATE_LIMITED");
    assert!(st.metadata().get("retry-after").is_some());

    // Each call reserves ~1,030 tokens (the output bound) but uses a few dozen: settled to
    // actual use, thirty of them fit in a budget that could not hold thirty reservations.
    for i in 0..30 {
        client
            .complete(authed(
                request(&format!("question {i}"), 1024, 0.0, None),
                &token,
            ))
            .await
            .unwrap_or_else(|st| panic!("call {i}: {st:?}"));
    }
    stack.shutdown().await;
}
