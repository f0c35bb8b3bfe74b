//! The OpenAI-compatible HTTP surface, on the gateway's HTTP port, with the same admission as
//! gRPC (each path is checked as the gRPC method it stands for: token, tenant, scope, limits):
//!
//! * `POST /v1/chat/completions` — JSON, or server-sent events with `"stream": true` (chunks
//!   as inference makes them; a client that leaves stops the generation);
//! * `POST /v1/embeddings` — float arrays, or base64 (`"encoding_format": "base64"`, what the
//!   official SDK asks for by default);
//! * `GET /v1/models` — the models this deployment serves.
//!
//! Errors use OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use futures::StreamExt;
use keel_proto::public as pb;
use keel_proto::public::inference_service_server::InferenceService;
use keel_runtime::{Admission, Gate};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::gate::AuthGate;

pub struct OpenAi {
    gate: Arc<AuthGate>,
    /// The same edge gRPC callers use: deadlines and model-token budgets apply alike.
    inference: Arc<crate::grpc::InferenceGateway>,
    models: Arc<crate::grpc::ModelGateway>,
}

/// OpenAI's error shape, with keel's reason as the `code`.
fn error(st: &tonic::Status) -> Response {
    let reason = keel_errors::reason_of(st);
    let kind = match reason {
        keel_errors::Reason::Unauthenticated => "authentication_error",
        keel_errors::Reason::PermissionDenied | keel_errors::Reason::TenantMismatch => {
            "permission_error"
        }
        keel_errors::Reason::RateLimited => "rate_limit_exceeded",
        keel_errors::Reason::NotFound => "not_found_error",
        keel_errors::Reason::InvalidArgument => "invalid_request_error",
        _ => "api_error",
    };
    let param = {
        use tonic_types::StatusExt;
        st.get_details_error_info()
            .and_then(|i| i.metadata.get("field").cloned())
    };
    let mut r = (
        reason.http(),
        axum::Json(json!({
            "error": {
                "message": st.message(),
                "type": kind,
                "param": param,
                "code": reason.as_str(),
            }
        })),
    )
        .into_response();
    // Challenges and retry hints travel as HTTP headers too.
    for name in [
        "www-authenticate",
        "retry-after",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        if let Some(v) = st.metadata().get(name).and_then(|v| v.to_str().ok())
            && let Ok(v) = axum::http::HeaderValue::from_str(v)
        {
            r.headers_mut().insert(name, v);
        }
    }
    r
}

fn bad_request(field: &'static str, message: impl Into<String>) -> Response {
    error(&keel_errors::status(
        keel_errors::Reason::InvalidArgument,
        message,
        vec![("field", field.into())],
    ))
}

impl OpenAi {
    /// Admits the call as the gRPC method it stands for.
    async fn admit(
        &self,
        method: &str,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<(keel_runtime::Caller, Admission), Response> {
        let admission = self
            .gate
            .admit(method, headers, Some(peer))
            .await
            .map_err(|st| error(&st))?;
        let caller = admission
            .caller
            .clone()
            .ok_or_else(|| error(&tonic::Status::internal("no caller")))?;
        Ok((caller, admission))
    }
}

impl OpenAi {
    /// Admits the call, then reads its JSON body (only admitted callers get that far).
    async fn admitted_json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        headers: &HeaderMap,
        peer: SocketAddr,
        body: &[u8],
        what: &str,
    ) -> Result<(keel_runtime::Caller, Admission, T), Response> {
        let (caller, admission) = self.admit(method, headers, peer).await?;
        let req = serde_json::from_slice(body)
            .map_err(|e| bad_request("body", format!("the request is not {what}: {e}")))?;
        Ok((caller, admission, req))
    }
}

fn with_headers(mut r: Response, admission: &Admission) -> Response {
    for (k, v) in &admission.response_headers {
        r.headers_mut().insert(k.clone(), v.clone());
    }
    r
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Value,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    max_tokens: Option<i32>,
    #[serde(default)]
    max_completion_tokens: Option<i32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    user: Option<String>,
}

/// Message content is a string, or a list of parts of which the text ones count.
fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn completion_id() -> String {
    format!("chatcmpl-{:016x}", fastrand::u64(..))
}

async fn chat(
    State(api): State<Arc<OpenAi>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (caller, admission, req): (_, _, ChatRequest) = match api
        .admitted_json(
            "/keel.v1.InferenceService/Generate",
            &headers,
            peer,
            &body,
            "a chat completion",
        )
        .await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let model = req.model.clone();
    let msg = pb::GenerateRequest {
        model: req.model,
        messages: req
            .messages
            .iter()
            .map(|m| pb::ChatMessage {
                role: if m.role == "developer" {
                    "system".into()
                } else {
                    m.role.clone()
                },
                content: content_text(&m.content),
            })
            .collect(),
        max_output_tokens: req.max_completion_tokens.or(req.max_tokens).unwrap_or(0),
        temperature: req.temperature.unwrap_or(1.0),
        seed: req.seed,
        user: req.user.unwrap_or_default(),
        retrieve_top_k: 0,
    };
    let id = completion_id();
    let created = now_secs();
    if req.stream {
        let stream = match api.inference.generate(as_caller(msg, &caller)).await {
            Ok(s) => s.into_inner(),
            Err(st) => return with_headers(error(&st), &admission),
        };
        let first = std::sync::atomic::AtomicBool::new(true);
        let events = stream.map(move |chunk| {
            let data = match chunk {
                Ok(c) => {
                    let role = first.swap(false, std::sync::atomic::Ordering::Relaxed);
                    let mut delta = json!({});
                    if role {
                        delta["role"] = "assistant".into();
                    }
                    if !c.text.is_empty() {
                        delta["content"] = c.text.into();
                    }
                    let finish = (!c.finish_reason.is_empty()).then_some(c.finish_reason);
                    let mut v = json!({
                        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
                    });
                    if let Some(u) = c.usage {
                        v["usage"] = json!({
                            "prompt_tokens": u.input_tokens,
                            "completion_tokens": u.output_tokens,
                            "total_tokens": u.input_tokens + u.output_tokens,
                        });
                    }
                    v.to_string()
                }
                Err(st) => json!({ "error": { "message": st.message(), "type": "api_error" } }).to_string(),
            };
            Ok::<Event, Infallible>(Event::default().data(data))
        });
        let done = futures::stream::once(async { Ok(Event::default().data("[DONE]")) });
        return with_headers(Sse::new(events.chain(done)).into_response(), &admission);
    }
    match api.inference.complete(as_caller(msg, &caller)).await {
        Ok(r) => {
            let r = r.into_inner();
            let u = r.usage.unwrap_or_default();
            with_headers(
                axum::Json(json!({
                    "id": id, "object": "chat.completion", "created": created, "model": model,
                    "system_fingerprint": r.model_version,
                    "choices": [{
                        "index": 0,
                        "message": { "role": "assistant", "content": r.text },
                        "finish_reason": r.finish_reason,
                    }],
                    "usage": {
                        "prompt_tokens": u.input_tokens,
                        "completion_tokens": u.output_tokens,
                        "total_tokens": u.input_tokens + u.output_tokens,
                    },
                }))
                .into_response(),
                &admission,
            )
        }
        Err(st) => with_headers(error(&st), &admission),
    }
}

/// A request to the gRPC edge on behalf of an admitted caller.
fn as_caller<T>(msg: T, caller: &keel_runtime::Caller) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.extensions_mut().insert(caller.clone());
    req
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct EmbedRequest {
    model: String,
    input: EmbedInput,
    #[serde(default)]
    encoding_format: Option<String>,
}

async fn embeddings(
    State(api): State<Arc<OpenAi>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (caller, admission, req): (_, _, EmbedRequest) = match api
        .admitted_json(
            "/keel.v1.InferenceService/Embed",
            &headers,
            peer,
            &body,
            "an embeddings request",
        )
        .await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => return bad_request("encoding_format", "must be float or base64"),
    };
    let inputs = match req.input {
        EmbedInput::One(s) => vec![s],
        EmbedInput::Many(v) => v,
    };
    let model = req.model.clone();
    let msg = pb::EmbedRequest {
        model: req.model,
        inputs,
    };
    match api.inference.embed(as_caller(msg, &caller)).await {
        Ok(r) => {
            let r = r.into_inner();
            let data: Vec<Value> = r
                .embeddings
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let embedding = if base64 {
                        let bytes: Vec<u8> =
                            e.values.iter().flat_map(|f| f.to_le_bytes()).collect();
                        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                    } else {
                        json!(e.values)
                    };
                    json!({ "object": "embedding", "index": i, "embedding": embedding })
                })
                .collect();
            let tokens = r.usage.map(|u| u.input_tokens).unwrap_or(0);
            with_headers(
                axum::Json(json!({
                    "object": "list", "data": data, "model": model,
                    "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
                }))
                .into_response(),
                &admission,
            )
        }
        Err(st) => with_headers(error(&st), &admission),
    }
}

async fn list_models(
    State(api): State<Arc<OpenAi>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let (caller, admission) = match api
        .admit("/keel.v1.ModelService/ListModels", &headers, peer)
        .await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut data: Vec<Value> = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = match api
            .models
            .list(
                &caller,
                pb::ListModelsRequest {
                    page_size: 0,
                    page_token,
                },
            )
            .await
        {
            Ok(p) => p,
            Err(st) => return with_headers(error(&st), &admission),
        };
        data.extend(
            page.models.iter().map(
                |m| json!({ "id": m.name, "object": "model", "created": 0, "owned_by": "keel" }),
            ),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    with_headers(
        (
            StatusCode::OK,
            axum::Json(json!({ "object": "list", "data": data })),
        )
            .into_response(),
        &admission,
    )
}

pub fn router(
    gate: Arc<AuthGate>,
    inference: Arc<crate::grpc::InferenceGateway>,
    models: Arc<crate::grpc::ModelGateway>,
) -> Router {
    let api = Arc::new(OpenAi {
        gate,
        inference,
        models,
    });
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(list_models))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::MAX_INFERENCE_MESSAGE_BYTES,
        ))
        .with_state(api)
}
