//! The inference service's models, against real Postgres, Redis and NATS: A/B splits, the
//! built-in failure variants, an OpenAI-compatible upstream (our own mock server) with its
//! failure modes, fallback, breaker, cancellation, the read-through cache and its storms,
//! Redis down, warm-up, and the events every call writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use keel_openai::mock::{Behaviour, MockUpstream, mock_embedding};
use keel_proto::inference as inf;
use keel_proto::public as pb;
use keel_tests::{TestStack, connect, detail, eventually, reason};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

fn for_tenant<T>(msg: T, tenant: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("keel-tenant-id", tenant.parse().unwrap());
    r
}

fn chat(model: &str, text: &str) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: model.into(),
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: text.into(),
        }],
        max_output_tokens: 8,
        temperature: 0.0,
        seed: None,
        user: String::new(),
        retrieve_top_k: 0,
    }
}

async fn generation(url: &str) -> inf::generation_client::GenerationClient<Channel> {
    inf::generation_client::GenerationClient::new(connect(url).await.unwrap())
}

/// Collects a Generate stream: the chunks, then the error that ended it (if any).
async fn collect(
    g: &mut inf::generation_client::GenerationClient<Channel>,
    tenant: &str,
    req: pb::GenerateRequest,
) -> (Vec<pb::GenerateChunk>, Option<tonic::Status>) {
    let mut stream = match g.generate(for_tenant(req, tenant)).await {
        Ok(s) => s.into_inner(),
        Err(st) => return (Vec::new(), Some(st)),
    };
    let mut chunks = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(c)) => chunks.push(c),
            Ok(None) => return (chunks, None),
            Err(st) => return (chunks, Some(st)),
        }
    }
}

/// The `InferenceCompleted` events a tenant's calls wrote to the outbox.
async fn completed_events(
    stack: &TestStack,
    tenant: &str,
) -> Vec<keel_proto::events::InferenceCompleted> {
    let shard = stack.shard(stack.shard_of(tenant)).await.unwrap();
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT payload FROM inference.outbox WHERE tenant_id = $1 AND kind = 'inference.completed' ORDER BY create_time",
    )
    .bind(tenant)
    .fetch_all(&shard)
    .await
    .unwrap();
    rows.iter()
        .map(|p| keel_proto::events::InferenceCompleted::decode(p.as_slice()).unwrap())
        .collect()
}

/// Upstream models served by `mock` (one with a fallback, one without, one for embeddings).
fn upstream_models(mock: &MockUpstream) -> String {
    let base = mock.base_url();
    format!(
        r#"
        [[model]]
        name = "up-chat"
        version = "up-chat@1"
        kind = "chat"
        provider = "openai"
        base_url = "{base}"
        upstream_model = "mock-model"
        fallback = "keel-tiny@1"
        first_token_timeout = "400ms"
        timeout = "3s"

        [[model]]
        name = "up-strict"
        version = "up-strict@1"
        kind = "chat"
        provider = "openai"
        base_url = "{base}"
        first_token_timeout = "400ms"
        timeout = "1500ms"

        [[model]]
        name = "up-embed"
        version = "up-embed@1"
        kind = "embedding"
        provider = "openai"
        base_url = "{base}"
        embedding_dimension = 8

        [[model]]
        name = "up-private"
        version = "up-private@1"
        kind = "chat"
        provider = "openai"
        base_url = "{base}"
        tenants = ["acme"]
        "#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ab_split_is_stable_per_user_and_changes_at_run_time() {
    let stack = TestStack::start().await.unwrap();
    let url = stack.inference_url();
    let mut g = generation(&url).await;
    let mut models = inf::models_client::ModelsClient::new(connect(&url).await.unwrap());
    let tenant = "acme";

    let split = models
        .set_split(for_tenant(
            inf::SetSplitRequest {
                model: "keel-tiny".into(),
                version_b: "keel-tiny@2".into(),
                percent_b: 50,
            },
            tenant,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            split.version_a.as_str(),
            split.version_b.as_str(),
            split.percent_b
        ),
        ("keel-tiny@1", "keel-tiny@2", 50)
    );

    let mut served: HashMap<String, String> = HashMap::new();
    for round in 0..2 {
        for u in 0..40 {
            let user = format!("user-{u}");
            let mut req = chat("keel-tiny", "tell me about rivers");
            req.user = user.clone();
            req.temperature = 0.7;
            req.seed = Some(round);
            let r = g
                .complete(for_tenant(req, tenant))
                .await
                .unwrap()
                .into_inner();
            let before = served.insert(user.clone(), r.model_version.clone());
            if let Some(b) = before {
                assert_eq!(
                    b, r.model_version,
                    "{user} changed version while the split held"
                );
            }
        }
    }
    let versions: HashSet<&String> = served.values().collect();
    assert_eq!(versions.len(), 2, "both versions serve: {served:?}");

    // Answers differ by version: the same request to each gives different text.
    let text = |v: &str| {
        let user = served
            .iter()
            .find(|(_, sv)| sv.as_str() == v)
            .unwrap()
            .0
            .clone();
        let mut g = g.clone();
        async move {
            let mut req = chat("keel-tiny", "same words for both");
            req.user = user;
            g.complete(for_tenant(req, tenant))
                .await
                .unwrap()
                .into_inner()
                .text
        }
    };
    assert_ne!(text("keel-tiny@1").await, text("keel-tiny@2").await);

    // The split changes at run time: everyone to B, then the split ends.
    for (percent, expect) in [(100, "keel-tiny@2"), (0, "keel-tiny@1")] {
        models
            .set_split(for_tenant(
                inf::SetSplitRequest {
                    model: "keel-tiny".into(),
                    version_b: "keel-tiny@2".into(),
                    percent_b: percent,
                },
                tenant,
            ))
            .await
            .unwrap();
        for u in 0..10 {
            let mut req = chat("keel-tiny", "hello");
            req.user = format!("user-{u}");
            let r = g
                .complete(for_tenant(req, tenant))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.model_version, expect, "at {percent}%");
        }
    }
    let got = models
        .get_split(for_tenant(
            inf::GetSplitRequest {
                model: "keel-tiny".into(),
            },
            tenant,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.percent_b, 0);
    // Another tenant never saw the split.
    let mut req = chat("keel-tiny", "hello");
    req.user = "user-1".into();
    let other = g
        .complete(for_tenant(req, "globex"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.model_version, "keel-tiny@1");

    for (bad, field) in [
        (
            inf::SetSplitRequest {
                model: "keel-tiny".into(),
                version_b: "keel-embed@1".into(),
                percent_b: 10,
            },
            "version_b",
        ),
        (
            inf::SetSplitRequest {
                model: "keel-tiny".into(),
                version_b: "keel-tiny@2".into(),
                percent_b: 101,
            },
            "percent_b",
        ),
    ] {
        let st = models.set_split(for_tenant(bad, tenant)).await.unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
        assert_eq!(detail(&st, "field").as_deref(), Some(field));
    }

    // Every call wrote an event naming the version that served it.
    let events = eventually(Duration::from_secs(10), "events", || async {
        let e = completed_events(&stack, tenant).await;
        Ok((e.len() >= 80).then_some(e))
    })
    .await
    .unwrap();
    let by_version: HashSet<&str> = events.iter().map(|e| e.model_version.as_str()).collect();
    assert!(by_version.contains("keel-tiny@1") && by_version.contains("keel-tiny@2"));
    assert!(
        events
            .iter()
            .all(|e| e.model == "keel-tiny" && e.output_tokens > 0)
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn built_in_failure_variants_map_to_precise_statuses() {
    let stack = TestStack::start_with(|e| {
        e.with("KEEL_INFERENCE_FIRST_TOKEN_TIMEOUT", "300ms")
            .with("KEEL_INFERENCE_MODEL_TIMEOUT", "1s")
    })
    .await
    .unwrap();
    let mut g = generation(&stack.inference_url()).await;
    let t = "acme";

    let started = Instant::now();
    let st = g
        .complete(for_tenant(chat("keel-tiny-timeout", "hi"), t))
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st)),
        (Code::DeadlineExceeded, "DEADLINE_EXCEEDED")
    );
    assert_eq!(detail(&st, "timeout").as_deref(), Some("first_token"));
    assert_eq!(
        detail(&st, "model_version").as_deref(),
        Some("keel-tiny-timeout@1")
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // Stalls mid-stream: the tokens so far arrive, then the whole-call timeout ends it.
    let mut req = chat("keel-tiny-stall", "hi");
    req.max_output_tokens = 20;
    let (chunks, err) = collect(&mut g, t, req).await;
    assert_eq!(chunks.len(), 3, "{chunks:?}");
    let st = err.expect("the stall ends in an error");
    assert_eq!(st.code(), Code::DeadlineExceeded);
    assert_eq!(detail(&st, "timeout").as_deref(), Some("call"));

    // Fails every third call (not cached: temperature without a seed).
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        let mut req = chat("keel-tiny-flaky", "hi");
        req.temperature = 0.5;
        outcomes.push(
            g.complete(for_tenant(req, t))
                .await
                .map(|_| Code::Ok)
                .unwrap_or_else(|st| st.code()),
        );
    }
    assert_eq!(
        outcomes,
        [
            Code::Ok,
            Code::Ok,
            Code::Unavailable,
            Code::Ok,
            Code::Ok,
            Code::Unavailable
        ]
    );

    // Slow, but it answers.
    let mut req = chat("keel-tiny-slow", "hi");
    req.max_output_tokens = 2;
    let r = g.complete(for_tenant(req, t)).await.unwrap().into_inner();
    assert!(
        r.time_to_first_token_ms >= 150,
        "{}",
        r.time_to_first_token_ms
    );

    // Requests the version cannot serve are refused by field.
    for (req, code, field) in [
        (chat("no-such-model", "hi"), Code::NotFound, "model"),
        (chat("keel-embed", "hi"), Code::InvalidArgument, "model"),
        (
            pb::GenerateRequest {
                max_output_tokens: 5000,
                ..chat("keel-tiny", "hi")
            },
            Code::InvalidArgument,
            "max_output_tokens",
        ),
        (
            pb::GenerateRequest {
                temperature: 3.0,
                ..chat("keel-tiny", "hi")
            },
            Code::InvalidArgument,
            "temperature",
        ),
    ] {
        let st = g.complete(for_tenant(req, t)).await.unwrap_err();
        assert_eq!(st.code(), code, "{st:?}");
        assert_eq!(detail(&st, "field").as_deref(), Some(field), "{st:?}");
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_openai_compatible_upstream_streams_embeds_and_is_cached() {
    let mock = MockUpstream::start().await.unwrap();
    let models = upstream_models(&mock);
    let stack = TestStack::start_with(|e| e.with("KEEL_INFERENCE_MODELS", models))
        .await
        .unwrap();
    let mut g = generation(&stack.inference_url()).await;
    let t = "acme";

    let mut req = chat("up-chat", "hello big world");
    req.max_output_tokens = 10;
    let (chunks, err) = collect(&mut g, t, req.clone()).await;
    assert!(err.is_none(), "{err:?}");
    let text: String = chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(text, "echo hello big world");
    let last = chunks.last().unwrap();
    assert_eq!(last.finish_reason, "stop");
    assert_eq!(last.model_version, "up-chat@1");
    assert_eq!(last.usage.unwrap().output_tokens, 4);
    assert_eq!(mock.calls(), 1);

    // The completed stream was cached: the same request again makes no upstream call.
    let r = g.complete(for_tenant(req, t)).await.unwrap().into_inner();
    assert_eq!(r.text, "echo hello big world");
    assert_eq!(mock.calls(), 1);

    // Not deterministic: every call goes upstream.
    for _ in 0..2 {
        let mut req = chat("up-chat", "hello");
        req.temperature = 0.8;
        g.complete(for_tenant(req, t)).await.unwrap();
    }
    assert_eq!(mock.calls(), 3);

    // Embeddings come back in order, and each text is cached on its own.
    let embed = |inputs: &[&str]| pb::EmbedRequest {
        model: "up-embed".into(),
        inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
    };
    let r = g
        .embed(for_tenant(embed(&["alpha", "beta", "gamma"]), t))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model_version, "up-embed@1");
    assert_eq!(r.embeddings[1].values, mock_embedding("beta"));
    assert_eq!(mock.calls(), 4);
    let r = g
        .embed(for_tenant(embed(&["gamma", "alpha", "delta"]), t))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.embeddings[0].values, mock_embedding("gamma"));
    assert_eq!(r.embeddings[2].values, mock_embedding("delta"));
    assert_eq!(mock.calls(), 5, "only delta was missing");
    g.embed(for_tenant(embed(&["alpha", "delta"]), t))
        .await
        .unwrap();
    assert_eq!(mock.calls(), 5, "all cached");

    // The cache is per tenant: another tenant's identical request goes upstream.
    g.embed(for_tenant(embed(&["alpha"]), "globex"))
        .await
        .unwrap();
    assert_eq!(mock.calls(), 6);

    // A model visible to some tenants only: the others neither see nor reach it.
    let mut catalog =
        inf::models_client::ModelsClient::new(connect(&stack.inference_url()).await.unwrap());
    let names = |tenant: &'static str| {
        let mut catalog = catalog.clone();
        async move {
            catalog
                .list_models(for_tenant(pb::ListModelsRequest::default(), tenant))
                .await
                .unwrap()
                .into_inner()
                .models
                .into_iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
        }
    };
    assert!(names("acme").await.contains(&"up-private".to_owned()));
    assert!(!names("globex").await.contains(&"up-private".to_owned()));
    let st = g
        .complete(for_tenant(chat("up-private", "hi"), "globex"))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    let st = catalog
        .set_split(for_tenant(
            inf::SetSplitRequest {
                model: "keel-tiny".into(),
                version_b: "up-private@1".into(),
                percent_b: 50,
            },
            "acme",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        st.code(),
        Code::InvalidArgument,
        "a split stays within one model"
    );

    let events = eventually(Duration::from_secs(10), "events", || async {
        let e = completed_events(&stack, t).await;
        Ok((e.len() >= 7).then_some(e))
    })
    .await
    .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.cache_hit && e.model_version == "up-chat@1")
    );
    assert!(
        events
            .iter()
            .any(|e| !e.cache_hit && e.model_version == "up-embed@1")
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_failures_fall_back_time_out_and_open_the_breaker() {
    let mock = MockUpstream::start().await.unwrap();
    let models = upstream_models(&mock);
    let stack = TestStack::start_with(|e| {
        e.with("KEEL_INFERENCE_MODELS", models)
            .with("KEEL_INFERENCE_BREAKER_OPEN_FOR", "1s")
    })
    .await
    .unwrap();
    let mut g = generation(&stack.inference_url()).await;
    let t = "acme";
    let varied = |model: &str| pb::GenerateRequest {
        temperature: 0.9,
        ..chat(model, "one two three four five six")
    };

    // A failing upstream with a fallback: the fallback serves, and says so.
    mock.set(Behaviour::Fail(500));
    let r = g
        .complete(for_tenant(varied("up-chat"), t))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model_version, "keel-tiny@1");
    let (chunks, err) = collect(&mut g, t, varied("up-chat")).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(chunks.last().unwrap().model_version, "keel-tiny@1");

    // A stall after the first token is past fallback: the whole-call timeout ends it.
    mock.set(Behaviour::Stall { after: 2 });
    let (chunks, err) = collect(&mut g, t, varied("up-chat")).await;
    assert_eq!(chunks.len(), 2);
    let st = err.unwrap();
    assert_eq!(st.code(), Code::DeadlineExceeded);
    assert_eq!(detail(&st, "timeout").as_deref(), Some("call"));

    // Without a fallback: precise statuses, one per failure mode.
    let strict = |behaviour: Behaviour| {
        mock.set(behaviour);
        let mut g = g.clone();
        async move { collect(&mut g, t, varied("up-strict")).await }
    };
    let (_, err) = strict(Behaviour::Fail(400)).await;
    let st = err.unwrap();
    assert_eq!(
        st.code(),
        Code::InvalidArgument,
        "the request's fault: {st:?}"
    );

    let (_, err) = strict(Behaviour::Fail(503)).await;
    let st = err.unwrap();
    assert_eq!((st.code(), reason(&st)), (Code::Unavailable, "UNAVAILABLE"));
    assert_eq!(detail(&st, "model_version").as_deref(), Some("up-strict@1"));

    let started = Instant::now();
    let (_, err) = strict(Behaviour::Hang).await;
    let st = err.unwrap();
    assert_eq!(st.code(), Code::DeadlineExceeded);
    assert_eq!(detail(&st, "timeout").as_deref(), Some("first_token"));
    assert!(started.elapsed() < Duration::from_secs(3));

    let (_, err) = strict(Behaviour::Slow(Duration::from_millis(900))).await;
    assert_eq!(err.unwrap().code(), Code::DeadlineExceeded);

    let (chunks, err) = strict(Behaviour::Drop { after: 2 }).await;
    assert_eq!(chunks.len(), 2, "what arrived before the drop is delivered");
    let st = err.unwrap();
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");

    // Four model failures in five calls: the breaker is open, calls fail fast upstream-free.
    mock.set(Behaviour::Healthy);
    let before = mock.calls();
    let (_, err) = collect(&mut g, t, varied("up-strict")).await;
    let st = err.expect("the breaker refuses");
    assert_eq!(st.code(), Code::Unavailable);
    assert!(st.message().contains("breaker"), "{st:?}");
    assert_eq!(
        mock.calls(),
        before,
        "an open breaker sends nothing upstream"
    );

    // After its pause, probes go through and it closes.
    let r = eventually(Duration::from_secs(10), "the breaker closes", || {
        let mut g = g.clone();
        async move {
            Ok(g.complete(for_tenant(varied("up-strict"), t))
                .await
                .ok()
                .map(|r| r.into_inner()))
        }
    })
    .await
    .unwrap();
    assert_eq!(r.model_version, "up-strict@1");
    for _ in 0..3 {
        g.complete(for_tenant(varied("up-strict"), t))
            .await
            .unwrap();
    }
    let events = completed_events(&stack, t).await;
    assert!(
        events
            .iter()
            .any(|e| e.fallback_from == "up-chat@1" && e.model_version == "keel-tiny@1")
    );
    assert!(events.iter().any(|e| e.finish_reason == "error"));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_cancel_stops_the_upstream_call() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_per_token(Duration::from_millis(40));
    let models = upstream_models(&mock);
    let stack = TestStack::start_with(|e| e.with("KEEL_INFERENCE_MODELS", models))
        .await
        .unwrap();
    let mut g = generation(&stack.inference_url()).await;
    let words = vec!["w"; 60].join(" ");
    let mut req = chat("up-strict", &words);
    req.max_output_tokens = 60;
    let mut stream = g
        .generate(for_tenant(req, "acme"))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        stream.message().await.unwrap().unwrap();
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_cancel = mock.sent();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(mock.sent(), after_cancel, "the upstream stopped streaming");
    assert!(after_cancel < 30, "{after_cancel} of 63 chunks were sent");
    let events = eventually(Duration::from_secs(10), "the cancel event", || async {
        let e = completed_events(&stack, "acme").await;
        Ok(e.into_iter().find(|e| e.finish_reason == "cancelled"))
    })
    .await
    .unwrap();
    assert!(events.output_tokens >= 2);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_identical_cold_requests_makes_one_provider_call() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set(Behaviour::Slow(Duration::from_millis(300)));
    let models = upstream_models(&mock);
    let stack = TestStack::start_with(|e| e.with("KEEL_INFERENCE_MODELS", models))
        .await
        .unwrap();
    let url = stack.inference_url();
    // A second replica on the same Redis: the lock there coalesces across processes.
    let (second, second_url) = stack.inference_replica(|e| e).await.unwrap();
    let channels = [
        connect(&url).await.unwrap(),
        connect(&second_url).await.unwrap(),
    ];

    let fire = |n: usize, req: pb::GenerateRequest| {
        let channels = channels.clone();
        async move {
            let calls: Vec<_> = (0..n)
                .map(|i| {
                    let mut g =
                        inf::generation_client::GenerationClient::new(channels[i % 2].clone());
                    let req = req.clone();
                    async move { g.complete(for_tenant(req, "acme")).await }
                })
                .collect();
            futures::future::join_all(calls).await
        }
    };
    let results = fire(300, chat("up-chat", "a cold prompt nobody asked before")).await;
    let texts: HashSet<String> = results
        .into_iter()
        .map(|r| r.unwrap().into_inner().text)
        .collect();
    assert_eq!(texts.len(), 1);
    assert_eq!(
        mock.calls(),
        1,
        "300 identical cold requests, one upstream call"
    );

    // The same for embeddings.
    let embeds: Vec<_> = (0..200)
        .map(|i| {
            let mut g = inf::generation_client::GenerationClient::new(channels[i % 2].clone());
            async move {
                g.embed(for_tenant(
                    pb::EmbedRequest {
                        model: "up-embed".into(),
                        inputs: vec!["a storm of one text".into()],
                    },
                    "acme",
                ))
                .await
            }
        })
        .collect();
    for r in futures::future::join_all(embeds).await {
        r.unwrap();
    }
    assert_eq!(mock.calls(), 2);

    // Then many distinct ones: each is one call.
    let distinct: Vec<_> = (0..20)
        .map(|i| {
            let mut g = inf::generation_client::GenerationClient::new(channels[i % 2].clone());
            async move {
                g.complete(for_tenant(
                    chat("up-chat", &format!("distinct {i}")),
                    "acme",
                ))
                .await
            }
        })
        .collect();
    for r in futures::future::join_all(distinct).await {
        r.unwrap();
    }
    assert_eq!(mock.calls(), 22);
    second.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_inference_keeps_serving() {
    let mut redis = keel_tests::own::Redis::start().await;
    let url = redis.url.clone();
    let stack = TestStack::start_with(|e| {
        e.with("KEEL_REDIS_URL", url)
            .with("KEEL_INFERENCE_CACHE_TIMEOUT", "100ms")
    })
    .await
    .unwrap();
    let mut g = generation(&stack.inference_url()).await;
    let first = g
        .complete(for_tenant(chat("keel-tiny", "before the outage"), "acme"))
        .await
        .unwrap()
        .into_inner();
    redis.kill();
    for i in 0..10 {
        let started = Instant::now();
        let r = g
            .complete(for_tenant(chat("keel-tiny", "before the outage"), "acme"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.text, first.text, "same answer, from the model");
        g.embed(for_tenant(
            pb::EmbedRequest {
                model: "keel-embed".into(),
                inputs: vec![format!("text {i}")],
            },
            "acme",
        ))
        .await
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(2), "round {i}");
    }
    // Still ready: the cache is not a readiness dependency.
    assert_eq!(
        keel_tests::health_status(&stack.inference_url())
            .await
            .unwrap(),
        1
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_up_prefetches_the_top_prompts_before_ready() {
    let mock = MockUpstream::start().await.unwrap();
    let models = upstream_models(&mock);
    let stack = TestStack::start_with(|e| e.with("KEEL_INFERENCE_MODELS", models))
        .await
        .unwrap();
    let mut g = generation(&stack.inference_url()).await;
    // "popular" is asked five times, "rare" once.
    for _ in 0..5 {
        g.complete(for_tenant(chat("up-chat", "popular question"), "acme"))
            .await
            .unwrap();
    }
    g.complete(for_tenant(chat("up-chat", "rare question"), "acme"))
        .await
        .unwrap();
    assert_eq!(mock.calls(), 2);

    // The cached answers expire (here: deleted); a new replica starts.
    let redis = redis_client(&stack).await;
    let prefix = stack.env.raw("KEEL_REDIS_PREFIX").unwrap().to_owned();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:acme:inference:chat:*"))
        .query_async(&mut redis.clone())
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut redis.clone())
        .await
        .unwrap();

    let (replica, replica_url) = stack
        .inference_replica(|e| e.with("KEEL_INFERENCE_PREFETCH_TOP", "1"))
        .await
        .unwrap();
    assert_eq!(
        mock.calls(),
        3,
        "ready only after prefetching the top prompt"
    );
    let mut g2 = generation(&replica_url).await;
    g2.complete(for_tenant(chat("up-chat", "popular question"), "acme"))
        .await
        .unwrap();
    assert_eq!(mock.calls(), 3, "the popular prompt was warm");
    g2.complete(for_tenant(chat("up-chat", "rare question"), "acme"))
        .await
        .unwrap();
    assert_eq!(mock.calls(), 4, "the rare one was not prefetched");
    replica.shutdown().await;
    stack.shutdown().await;
}

async fn redis_client(stack: &TestStack) -> redis::aio::MultiplexedConnection {
    let url = stack.env.raw("KEEL_REDIS_URL").unwrap().to_owned();
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}
