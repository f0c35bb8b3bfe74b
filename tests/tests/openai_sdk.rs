//! The official OpenAI Python SDK (installed by `cargo xtask test`), pointed at the gateway,
//! completes a streamed chat, a plain one and an embeddings call, lists models and gets the
//! SDK's own NotFoundError for an unknown model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_tests::TestStack;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_openai_sdk_works_unmodified_against_the_gateway() {
    #[allow(clippy::disallowed_methods)]
    let python = std::env::var("KEEL_TEST_PYTHON")
        .expect("KEEL_TEST_PYTHON is not set: run the tests with `cargo xtask test`, which installs the OpenAI SDK");
    let stack = TestStack::start().await.unwrap();
    let token = stack.tenant_token("acme").await.unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/openai_sdk.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env_clear()
        .env(
            "OPENAI_BASE_URL",
            format!("http://{}/v1", stack.gateway_http()),
        )
        .env("OPENAI_API_KEY", &token)
        .env("OPENAI_MAX_RETRIES", "0")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "the SDK failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(seen["chunks"].as_u64().unwrap() >= 2, "{seen}");
    assert!(!seen["streamed_text"].as_str().unwrap().is_empty());
    assert_eq!(
        seen["streamed_text"], seen["plain_text"],
        "temperature 0: the same text"
    );
    assert!(seen["finish_reason"].is_string());
    assert_eq!(seen["embedding_dims"], serde_json::json!([64, 64]));
    assert!(
        seen["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "keel-tiny")
    );
    assert_eq!(seen["missing_model_error"], "NotFoundError");
    stack.shutdown().await;
}
