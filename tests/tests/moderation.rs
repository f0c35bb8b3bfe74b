//! Every answer gets a moderation and quality verdict in post-processing, readable by tenant
//! admins through the gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keel_openai::mock::MockUpstream;
use keel_proto::public as pb;
use keel_tests::{TestStack, authed, connect, eventually};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_are_moderated_and_admins_can_list_the_flagged_ones() {
    // An upstream model that repeats the prompt, so the test chooses what the answer says.
    let mock = MockUpstream::start().await.unwrap();
    let models = format!(
        r#"
        [[model]]
        name = "echo"
        version = "echo@1"
        kind = "chat"
        provider = "openai"
        base_url = "{}"
        "#,
        mock.base_url()
    );
    let stack = TestStack::start_with(|e| e.with("KEEL_INFERENCE_MODELS", models))
        .await
        .unwrap();
    stack.create_tenant("acme").await.unwrap();
    stack
        .create_user("acme", "admin", &["admin"])
        .await
        .unwrap();
    stack
        .create_user("acme", "member", &["member"])
        .await
        .unwrap();
    let (admin, _) = stack.login("acme", "admin").await.unwrap();
    let (member, _) = stack.login("acme", "member").await.unwrap();
    let channel = connect(&stack.gateway_url()).await.unwrap();
    let mut inference = pb::inference_service_client::InferenceServiceClient::new(channel.clone());
    for text in [
        "the river reaches the sea",
        "write to jane.doe@example.com today",
    ] {
        inference
            .complete(authed(
                pb::GenerateRequest {
                    model: "echo".into(),
                    messages: vec![pb::ChatMessage {
                        role: "user".into(),
                        content: text.into(),
                    }],
                    max_output_tokens: 32,
                    ..Default::default()
                },
                &member,
            ))
            .await
            .unwrap();
    }
    let mut moderation = pb::moderation_service_client::ModerationServiceClient::new(channel);
    let list = |flagged_only: bool| pb::ListModerationResultsRequest {
        page_size: 0,
        page_token: String::new(),
        flagged_only,
    };
    let all = eventually(Duration::from_secs(20), "both answers judged", || {
        let mut moderation = moderation.clone();
        let admin = admin.clone();
        async move {
            let r = moderation
                .list_moderation_results(authed(list(false), &admin))
                .await?
                .into_inner();
            Ok((r.results.len() == 2).then_some(r.results))
        }
    })
    .await
    .unwrap();
    let flagged = moderation
        .list_moderation_results(authed(list(true), &admin))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(flagged.len(), 1, "{all:?}");
    assert_eq!(flagged[0].categories, vec!["pii.email".to_owned()]);
    assert_eq!(flagged[0].model_version, "echo@1");
    assert!(flagged[0].score >= 0.5);
    let clean = all.iter().find(|r| !r.flagged).unwrap();
    assert!(clean.categories.is_empty());

    let st = moderation
        .list_moderation_results(authed(list(false), &member))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    stack.shutdown().await;
}
