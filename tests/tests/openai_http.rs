//! The OpenAI-compatible HTTP surface of the gateway: chat completions (JSON and server-sent
//! events), embeddings (float and base64), models, and errors in OpenAI's shape — with the same
//! admission as gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use keel_tests::{TestStack, http_request};
use serde_json::{Value, json};

async fn post(
    stack: &TestStack,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> keel_tests::HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    http_request(
        stack.gateway_http(),
        "POST",
        path,
        &headers,
        body.to_string().as_bytes(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_completions_embeddings_and_models_speak_openai() {
    let stack = TestStack::start().await.unwrap();
    let token = stack.tenant_token("acme").await.unwrap();
    let chat = json!({
        "model": "keel-tiny",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        "max_tokens": 8,
        "temperature": 0,
    });
    let r = post(&stack, "/v1/chat/completions", Some(&token), chat.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-ratelimit-remaining").is_some());
    let c = r.json();
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["choices"][0]["message"]["role"], "assistant");
    let text = c["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!text.is_empty());
    assert!(c["usage"]["completion_tokens"].as_u64().unwrap() <= 8);

    // Streamed: the same text, as server-sent events ending with [DONE].
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let r = post(&stack, "/v1/chat/completions", Some(&token), streamed).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let body = r.text();
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let mut joined = String::new();
    let mut finish = None;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            joined.push_str(t);
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    assert_eq!(joined, text);
    assert!(finish.is_some());

    // Embeddings, as floats and as base64 little-endian f32 (the SDK's default).
    let r = post(
        &stack,
        "/v1/embeddings",
        Some(&token),
        json!({"model": "keel-embed", "input": ["a cat", "a cat!"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let floats = r.json()["data"][0]["embedding"].as_array().unwrap().len();
    assert_eq!(floats, 64);
    let r = post(
        &stack,
        "/v1/embeddings",
        Some(&token),
        json!({"model": "keel-embed", "input": "a cat", "encoding_format": "base64"}),
    )
    .await;
    let b64 = r.json()["data"][0]["embedding"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
            .len(),
        64 * 4
    );

    let r = http_request(
        stack.gateway_http(),
        "GET",
        "/v1/models",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "keel-tiny")
    );

    // Errors in OpenAI's shape: no token, an unknown model, a malformed body.
    let r = post(&stack, "/v1/chat/completions", None, chat.clone()).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    assert!(r.header("www-authenticate").is_some());
    let mut unknown = chat.clone();
    unknown["model"] = json!("gpt-9");
    let r = post(&stack, "/v1/chat/completions", Some(&token), unknown).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "model");
    let r = post(
        &stack,
        "/v1/chat/completions",
        Some(&token),
        json!({"messages": 3}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    stack.shutdown().await;
}
