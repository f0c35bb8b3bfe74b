//! The gateway in front of a failing inference: retries only for idempotent calls (counted at
//! a DocumentStore of our own that fails on command), and a circuit breaker that opens, fails
//! fast, and closes again once inference recovers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use keel_proto::inference::document_store_server::{DocumentStore, DocumentStoreServer};
use keel_proto::public as pb;
use keel_tests::{TestStack, authed, connect, eventually};
use tonic::{Code, Request, Response, Status};

/// Inference's DocumentStore, answering UNAVAILABLE while told to fail (or for the next
/// `fail_next` calls), and counting every call it receives.
#[derive(Default)]
struct Flaky {
    calls: AtomicU32,
    fail_next: AtomicU32,
    failing: AtomicBool,
    /// Each call takes this long (ms).
    delay_ms: std::sync::atomic::AtomicU64,
    /// The most calls seen in progress at once.
    in_progress: AtomicU32,
    peak: AtomicU32,
}

impl Flaky {
    async fn answer<T: Default>(&self) -> Result<Response<T>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_progress.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.in_progress.fetch_sub(1, Ordering::SeqCst);
        let one_off = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if one_off || self.failing.load(Ordering::SeqCst) {
            return Err(Status::unavailable("injected failure"));
        }
        Ok(Response::new(T::default()))
    }
}

#[derive(Clone)]
struct Store(Arc<Flaky>);

#[tonic::async_trait]
impl DocumentStore for Store {
    async fn create_document(
        &self,
        _: Request<pb::CreateDocumentRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        self.0.answer().await
    }
    async fn get_document(
        &self,
        _: Request<pb::GetDocumentRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        self.0.answer().await
    }
    async fn list_documents(
        &self,
        _: Request<pb::ListDocumentsRequest>,
    ) -> Result<Response<pb::ListDocumentsResponse>, Status> {
        self.0.answer().await
    }
    async fn update_document(
        &self,
        _: Request<pb::UpdateDocumentRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        self.0.answer().await
    }
    async fn delete_document(
        &self,
        _: Request<pb::DeleteDocumentRequest>,
    ) -> Result<Response<pb::DeleteDocumentResponse>, Status> {
        self.0.answer().await
    }
}

/// The stack, plus a second gateway whose inference is the flaky store.
async fn setup() -> (TestStack, keel_runtime::Host, Arc<Flaky>, String) {
    setup_with(|e| e).await
}

async fn setup_with(
    customize: impl FnOnce(keel_config::Env) -> keel_config::Env,
) -> (TestStack, keel_runtime::Host, Arc<Flaky>, String) {
    let stack = TestStack::start().await.unwrap();
    let token = stack.tenant_token("acme").await.unwrap();
    let flaky = Arc::new(Flaky::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(DocumentStoreServer::new(Store(flaky.clone())))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(server);
    let gateway = keel_gateway::start(
        keel_gateway::Config::from_env(&customize(
            stack
                .env
                .clone()
                .with("KEEL_GATEWAY_GRPC_ADDR", "127.0.0.1:0")
                .with("KEEL_GATEWAY_ADMIN_ADDR", "127.0.0.1:0")
                .with("KEEL_INFERENCE_URL", format!("http://{addr}"))
                .with("KEEL_GATEWAY_BREAKER_MIN_CALLS", "10")
                .with("KEEL_GATEWAY_BREAKER_OPEN_FOR", "500ms"),
        ))
        .unwrap(),
    )
    .await
    .unwrap();
    (stack, gateway, flaky, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_idempotent_calls_are_retried_and_writes_without_a_key_never() {
    let (stack, gateway, flaky, token) = setup().await;
    let mut docs = pb::document_service_client::DocumentServiceClient::new(
        connect(&format!("http://{}", gateway.grpc_addr()))
            .await
            .unwrap(),
    );
    let calls = || flaky.calls.swap(0, Ordering::SeqCst);

    // A read rides out one failure, and its trace says so (a span event).
    flaky.fail_next.store(1, Ordering::SeqCst);
    docs.get_document(authed(pb::GetDocumentRequest { id: "x".into() }, &token))
        .await
        .unwrap();
    assert_eq!(calls(), 2, "retried once");
    let retried = eventually(
        Duration::from_secs(10),
        "the retry in the trace",
        || async {
            Ok(keel_tests::telemetry()
                .spans
                .get_finished_spans()
                .unwrap()
                .into_iter()
                .find(|s| s.events.iter().any(|e| e.name == "retrying")))
        },
    )
    .await
    .unwrap();
    let event = retried
        .events
        .iter()
        .find(|e| e.name == "retrying")
        .unwrap();
    assert!(
        event
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "retry.attempt")
    );

    // A create without an idempotency key is never retried.
    flaky.fail_next.store(1, Ordering::SeqCst);
    let create = |key: &str| pb::CreateDocumentRequest {
        title: "t".into(),
        content: "c".into(),
        idempotency_key: key.into(),
    };
    let st = docs
        .create_document(authed(create(""), &token))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unavailable);
    assert_eq!(
        calls(),
        1,
        "a write without an idempotency key is sent once"
    );

    // With a key it is safe to repeat.
    flaky.fail_next.store(1, Ordering::SeqCst);
    docs.create_document(authed(create("k1"), &token))
        .await
        .unwrap();
    assert_eq!(calls(), 2);

    // Updates and deletes carry no key: never retried.
    flaky.fail_next.store(1, Ordering::SeqCst);
    let st = docs
        .delete_document(authed(
            pb::DeleteDocumentRequest {
                id: "x".into(),
                expected_version: 0,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unavailable);
    assert_eq!(calls(), 1);

    // Attempts are bounded: a read against a dead store is tried three times, not forever.
    flaky.failing.store(true, Ordering::SeqCst);
    let st = docs
        .get_document(authed(pb::GetDocumentRequest { id: "x".into() }, &token))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unavailable);
    assert_eq!(calls(), 3);
    gateway.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_breaker_opens_on_failures_fails_fast_and_closes_when_inference_recovers() {
    let (stack, gateway, flaky, token) = setup().await;
    let mut docs = pb::document_service_client::DocumentServiceClient::new(
        connect(&format!("http://{}", gateway.grpc_addr()))
            .await
            .unwrap(),
    );
    let update = || {
        authed(
            pb::UpdateDocumentRequest {
                id: "x".into(),
                title: "t".into(),
                content: "c".into(),
                expected_version: 1,
            },
            &token,
        )
    };
    flaky.failing.store(true, Ordering::SeqCst);
    // Writes (sent once each) until the breaker has seen enough failures to open.
    let mut open_reason = None;
    for _ in 0..30 {
        let st = docs.update_document(update()).await.unwrap_err();
        assert_eq!(st.code(), Code::Unavailable);
        if st.message().contains("circuit open") {
            open_reason = Some(keel_tests::detail(&st, "dependency"));
            break;
        }
    }
    assert_eq!(
        open_reason,
        Some(Some("inference".into())),
        "the breaker opened"
    );
    // Open: refused at the gateway, inference is left alone.
    let before = flaky.calls.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert!(docs.update_document(update()).await.is_err());
    }
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        before,
        "no calls while open"
    );

    // Inference recovers: after the pause, probes succeed and the breaker closes.
    flaky.failing.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(10), "breaker closed", || async {
        let mut docs = docs.clone();
        let mut ok = 0;
        for _ in 0..5 {
            if docs.update_document(update()).await.is_ok() {
                ok += 1;
            }
        }
        Ok((ok == 5).then_some(()))
    })
    .await
    .unwrap();
    gateway.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn beyond_its_in_flight_bound_the_gateway_refuses_at_once_instead_of_queueing() {
    let (stack, gateway, flaky, token) =
        setup_with(|e| e.with("KEEL_GATEWAY_MAX_IN_FLIGHT", "4")).await;
    flaky.delay_ms.store(400, Ordering::SeqCst);
    let url = format!("http://{}", gateway.grpc_addr());
    let calls = (0..12).map(|_| {
        let url = url.clone();
        let token = token.clone();
        async move {
            let mut docs = pb::document_service_client::DocumentServiceClient::new(
                connect(&url).await.unwrap(),
            );
            let started = std::time::Instant::now();
            let r = docs
                .list_documents(authed(pb::ListDocumentsRequest::default(), &token))
                .await;
            (r.map(|_| ()), started.elapsed())
        }
    });
    // Health is asked while the calls are in flight.
    let (results, health) = tokio::join!(futures::future::join_all(calls), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        keel_tests::health_status(&url).await
    });
    let served = results.iter().filter(|(r, _)| r.is_ok()).count();
    let shed: Vec<_> = results
        .iter()
        .filter_map(|(r, t)| r.as_ref().err().map(|st| (st, *t)))
        .collect();
    assert!((1..=4).contains(&served), "served {served}");
    assert_eq!(served + shed.len(), 12);
    for (st, took) in &shed {
        assert_eq!(st.code(), Code::Unavailable);
        assert_eq!(
            keel_tests::detail(st, "cause").as_deref(),
            Some("overloaded")
        );
        assert!(
            *took < Duration::from_millis(300),
            "refused at once, not queued: {took:?}"
        );
    }
    assert!(flaky.peak.load(Ordering::SeqCst) <= 4);
    // Health still answered while the server shed load (NOT_SERVING here: the flaky store has
    // no health service, but the answer came).
    assert!(health.is_ok(), "{health:?}");
    gateway.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_requests_are_refused_precisely_before_any_work() {
    let (stack, gateway, flaky, token) = setup().await;
    let url = format!("http://{}", gateway.grpc_addr());
    let mut docs =
        pb::document_service_client::DocumentServiceClient::new(connect(&url).await.unwrap());
    let st = docs
        .create_document(authed(
            pb::CreateDocumentRequest {
                title: "big".into(),
                content: "x".repeat(keel_gateway::MAX_DOCUMENT_MESSAGE_BYTES + 1),
                idempotency_key: String::new(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    assert_eq!(keel_tests::detail(&st, "field").as_deref(), Some("message"));
    assert_eq!(
        keel_tests::detail(&st, "limit_bytes"),
        Some(keel_gateway::MAX_DOCUMENT_MESSAGE_BYTES.to_string())
    );
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        0,
        "inference never saw it"
    );
    let mut auth = pb::authentication_service_client::AuthenticationServiceClient::new(
        connect(&url).await.unwrap(),
    );
    let st = auth
        .login(pb::LoginRequest {
            tenant_id: "acme".into(),
            username: "member".into(),
            password: "p".repeat(keel_gateway::MAX_AUTH_MESSAGE_BYTES + 1),
            client_id: "keel-tests".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    gateway.shutdown().await;
    stack.shutdown().await;
}

/// Model calls have their own breaker at the gateway. A failing *model* (inference answers,
/// naming the model version) never opens it — other models keep working — while a failing
/// *inference service* does, and it closes again when inference is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_model_breaker_opens_for_a_failing_inference_not_for_a_failing_model() {
    use keel_openai::mock::{Behaviour, MockUpstream};
    let mock = MockUpstream::start().await.unwrap();
    mock.set(Behaviour::Fail(503));
    let models = format!(
        r#"
        [[model]]
        name = "up-down"
        version = "up-down@1"
        kind = "chat"
        provider = "openai"
        base_url = "{}"
        "#,
        mock.base_url()
    );
    let port = keel_tests::free_port();
    let stack = TestStack::start_with(|e| {
        e.with("KEEL_INFERENCE_MODELS", models)
            .with("KEEL_GATEWAY_BREAKER_MIN_CALLS", "10")
            .with("KEEL_GATEWAY_BREAKER_OPEN_FOR", "500ms")
    })
    .await
    .unwrap();
    let token = stack.tenant_token("acme").await.unwrap();
    let start_inference = || async {
        stack
            .inference_replica(|e| e.with("KEEL_INFERENCE_GRPC_ADDR", format!("127.0.0.1:{port}")))
            .await
            .unwrap()
            .0
    };
    let own_inference = start_inference().await;
    let (gateway, gateway_url) = stack
        .gateway_replica(|e| e.with("KEEL_INFERENCE_URL", format!("http://127.0.0.1:{port}")))
        .await
        .unwrap();
    let mut client = pb::inference_service_client::InferenceServiceClient::new(
        connect(&gateway_url).await.unwrap(),
    );
    let request = |model: &str| {
        authed(
            pb::GenerateRequest {
                model: model.into(),
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    content: "hello".into(),
                }],
                max_output_tokens: 4,
                temperature: 0.5,
                ..Default::default()
            },
            &token,
        )
    };

    // A failing model: each call fails precisely, naming the version; the gateway's breaker
    // stays closed and another model still answers.
    for _ in 0..25 {
        let st = client.complete(request("up-down")).await.unwrap_err();
        assert_eq!(st.code(), Code::Unavailable, "{st:?}");
        assert!(!st.message().contains("circuit open"), "{st:?}");
        assert_eq!(
            keel_tests::detail(&st, "model_version").as_deref(),
            Some("up-down@1")
        );
    }
    client.complete(request("keel-tiny")).await.unwrap();

    // A failing inference service: the breaker opens and refuses at the gateway.
    own_inference.shutdown().await;
    let mut opened = false;
    for _ in 0..40 {
        let st = client.complete(request("keel-tiny")).await.unwrap_err();
        assert_eq!(st.code(), Code::Unavailable, "{st:?}");
        if st.message().contains("circuit open") {
            opened = true;
            break;
        }
    }
    assert!(opened, "the model breaker opened");

    // Inference comes back on the same address: probes pass and the breaker closes.
    let own_inference = start_inference().await;
    eventually(Duration::from_secs(20), "model breaker closed", || async {
        let mut client = client.clone();
        let mut ok = 0;
        for _ in 0..5 {
            if client.complete(request("keel-tiny")).await.is_ok() {
                ok += 1;
            }
        }
        Ok((ok == 5).then_some(()))
    })
    .await
    .unwrap();
    gateway.shutdown().await;
    own_inference.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_answer_holds_its_in_flight_slot_until_it_ends() {
    let stack = TestStack::start_with(|e| e.with("KEEL_GATEWAY_MAX_IN_FLIGHT", "2"))
        .await
        .unwrap();
    let token = stack.tenant_token("streams").await.unwrap();
    let ch = connect(&stack.gateway_url()).await.unwrap();
    let mut inference = pb::inference_service_client::InferenceServiceClient::new(ch.clone());
    let slow = || {
        authed(
            pb::GenerateRequest {
                model: "keel-tiny-slow".into(),
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    content: "a long answer please".into(),
                }],
                max_output_tokens: 200,
                ..Default::default()
            },
            &token,
        )
    };
    // Two answers streaming: their headers and first chunks are out, their bodies are not.
    let mut a = inference.generate(slow()).await.unwrap().into_inner();
    let mut b = inference.generate(slow()).await.unwrap().into_inner();
    a.message().await.unwrap().unwrap();
    b.message().await.unwrap().unwrap();
    let mut docs = pb::document_service_client::DocumentServiceClient::new(ch);
    let st = docs
        .list_documents(authed(pb::ListDocumentsRequest::default(), &token))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert_eq!(
        keel_tests::detail(&st, "cause").as_deref(),
        Some("overloaded")
    );
    // The client goes away: the slots come back.
    drop((a, b));
    eventually(Duration::from_secs(10), "slots released", || async {
        let mut docs = docs.clone();
        Ok(docs
            .list_documents(authed(pb::ListDocumentsRequest::default(), &token))
            .await
            .ok()
            .map(|_| ()))
    })
    .await
    .unwrap();
    stack.shutdown().await;
}
