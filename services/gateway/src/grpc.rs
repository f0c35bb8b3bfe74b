//! `keel.v1.DocumentService` at the edge: each call arrives admitted (the [`Caller`] is in the
//! request extensions, put there by the gate) and is forwarded to inference's `DocumentStore`
//! (same messages) on behalf of the caller's tenant, with our deadline. Errors keep their reason across the
//! hop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_resilience::{Breaker, RetryBudget, RetryPolicy};
use tracing::Instrument;

use keel_proto::inference::document_store_client::DocumentStoreClient;
use keel_proto::public as pb;
use keel_runtime::Caller;
use keel_runtime::context::outgoing;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub struct DocumentGateway {
    inference: DocumentStoreClient<Channel>,
    timeout: Duration,
    breaker: Arc<Breaker>,
    budget: RetryBudget,
    policy: RetryPolicy,
}

impl DocumentGateway {
    pub fn new(inference: Channel, timeout: Duration, breaker: Arc<Breaker>) -> Self {
        DocumentGateway {
            inference: DocumentStoreClient::new(inference),
            timeout,
            breaker,
            // Retries add at most 20 % to the traffic, plus 10 a second (so a quiet gateway can
            // still ride out one blip).
            budget: RetryBudget::new(0.2, 10.0),
            policy: RetryPolicy::default(),
        }
    }

    /// Forwards one call to inference on behalf of the caller's tenant, with the client's
    /// deadline (or ours, when shorter) over all attempts, through the breaker; retried only
    /// when `idempotent`.
    async fn forward<M, R, F, Fut>(
        &self,
        req: Request<M>,
        idempotent: bool,
        call: F,
    ) -> Result<Response<R>, Status>
    where
        M: Clone,
        F: Fn(DocumentStoreClient<Channel>, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        let tenant = caller(&req)?.tenant.clone();
        let deadline = Instant::now() + time_allowed(&req, self.timeout);
        let msg = req.into_inner();
        let waited = std::sync::Mutex::new(Duration::ZERO);
        let result = keel_resilience::call(
            &self.breaker,
            &self.budget,
            &self.policy,
            idempotent,
            || {
                keel_errors::status(
                    keel_errors::Reason::Unavailable,
                    "inference is failing; calls are refused for a few seconds (circuit open)",
                    vec![("dependency", "inference".into())],
                )
            },
            || {
                let mut up = outgoing(msg.clone(), &tenant);
                up.set_timeout(deadline.saturating_duration_since(Instant::now()));
                let fut = call(self.inference.clone(), up);
                let waited = &waited;
                async move {
                    let started = Instant::now();
                    let r = fut.await;
                    if let Ok(mut w) = waited.lock() {
                        *w += started.elapsed();
                    }
                    r
                }
                .instrument(tracing::info_span!(
                    "downstream",
                    peer.service = "inference"
                ))
            },
        )
        .await
        .map_err(keel_errors::forward);
        let waited = waited.lock().map(|w| *w).unwrap_or_default();
        result.map(|mut r| {
            // Backoff pauses count as the gateway's own time; only waiting on inference is not.
            r.extensions_mut()
                .insert(keel_runtime::DownstreamTime(waited));
            r
        })
    }
}

fn caller<T>(req: &Request<T>) -> Result<&Caller, Status> {
    req.extensions().get::<Caller>().ok_or_else(|| {
        // The gate admits every routed method with a caller; reaching here is a wiring bug.
        keel_errors::status(keel_errors::Reason::Internal, "internal error", Vec::new())
    })
}

/// The time a call may take upstream: what is left of the client's deadline (it started when
/// the call arrived, before the gate's work), or ours when that is shorter.
fn time_allowed<T>(req: &Request<T>, ours: Duration) -> Duration {
    let spent = req
        .extensions()
        .get::<keel_runtime::CallStarted>()
        .map_or(Duration::ZERO, |s| s.0.elapsed());
    req.metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(ours, |d| d.saturating_sub(spent).min(ours))
}

/// `grpc-timeout` is `<digits><unit>` with unit H, M, S, m, u or n.
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl pb::document_service_server::DocumentService for DocumentGateway {
    async fn create_document(
        &self,
        req: Request<pb::CreateDocumentRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        // A create is retried only with an idempotency key: without one a retry could create
        // the document twice.
        let idempotent = !req.get_ref().idempotency_key.is_empty();
        self.forward(req, idempotent, |mut c, r| async move {
            c.create_document(r).await
        })
        .await
    }

    async fn get_document(
        &self,
        req: Request<pb::GetDocumentRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        self.forward(req, true, |mut c, r| async move { c.get_document(r).await })
            .await
    }

    async fn list_documents(
        &self,
        req: Request<pb::ListDocumentsRequest>,
    ) -> Result<Response<pb::ListDocumentsResponse>, Status> {
        self.forward(
            req,
            true,
            |mut c, r| async move { c.list_documents(r).await },
        )
        .await
    }

    async fn update_document(
        &self,
        req: Request<pb::UpdateDocumentRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        self.forward(
            req,
            false,
            |mut c, r| async move { c.update_document(r).await },
        )
        .await
    }

    async fn delete_document(
        &self,
        req: Request<pb::DeleteDocumentRequest>,
    ) -> Result<Response<pb::DeleteDocumentResponse>, Status> {
        self.forward(
            req,
            false,
            |mut c, r| async move { c.delete_document(r).await },
        )
        .await
    }
}

/// `keel.v1.InferenceService` at the edge, forwarded to inference's `Generation` on behalf of
/// the caller's tenant. Generate streams chunk by chunk as inference produces them; when the
/// client goes away, the upstream stream is dropped with it, which stops the generation.
///
/// Model tokens count against the tenant's per-minute budget: an estimate is reserved before
/// the call (prompt characters / 4, plus the output bound), and settled to the model's own
/// count when it ends — or, for a cancelled stream, to what was produced.
pub struct InferenceGateway {
    inference: keel_proto::inference::generation_client::GenerationClient<Channel>,
    timeout: Duration,
    limiter: Arc<crate::limits::Limiter>,
    tasks: keel_runtime::Tasks,
    /// Model calls have a breaker of their own (a slow model is not a slow document store);
    /// they are never retried: a generation is not idempotent in cost.
    breaker: Breaker,
    budget: RetryBudget,
}

/// Generations run longer than CRUD calls: this bounds one when the client sets no deadline.
pub const DEFAULT_GENERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Output tokens reserved when a request names no bound.
pub const DEFAULT_OUTPUT_RESERVE: u32 = 256;

/// A reservation of model tokens, to settle once usage is known.
struct Reservation {
    keys: Vec<(String, crate::limits::Rate)>,
    estimate: u32,
    input_estimate: u32,
}

/// The output tokens to reserve: the request's bound, or the default when it names none.
fn output_reserve(m: &pb::GenerateRequest) -> u32 {
    if m.max_output_tokens > 0 {
        m.max_output_tokens as u32
    } else {
        DEFAULT_OUTPUT_RESERVE
    }
}

fn estimate_input(messages: &[pb::ChatMessage]) -> u32 {
    messages
        .iter()
        .map(|m| (m.content.len() / 4) as u32 + 1)
        .sum()
}

impl InferenceGateway {
    /// `breaker`: the gateway's breaker settings; model calls get a breaker of their own with
    /// them. It guards against an unhealthy inference service: a model's own failure (a
    /// status naming its `model_version`) does not count, inference's per-version breakers
    /// handle those.
    pub fn new(
        inference: Channel,
        limiter: Arc<crate::limits::Limiter>,
        tasks: keel_runtime::Tasks,
        breaker: keel_resilience::BreakerConfig,
    ) -> Self {
        InferenceGateway {
            inference: keel_proto::inference::generation_client::GenerationClient::new(inference),
            timeout: DEFAULT_GENERATION_TIMEOUT,
            limiter,
            tasks,
            breaker: Breaker::new(
                "models",
                keel_resilience::BreakerConfig {
                    // Generations are long by nature; only errors count.
                    slow_call: Duration::MAX,
                    ..breaker
                },
            ),
            budget: RetryBudget::new(0.0, 0.0),
        }
    }

    fn upstream<T>(&self, req: Request<T>) -> Result<Request<T>, Status> {
        let tenant = caller(&req)?.tenant.clone();
        let allowed = time_allowed(&req, self.timeout);
        let mut up = outgoing(req.into_inner(), &tenant);
        up.set_timeout(allowed);
        Ok(up)
    }

    /// Reserves `input + output` tokens from the caller's tenant, or refuses the call.
    async fn reserve<T>(
        &self,
        req: &Request<T>,
        input: u32,
        output: u32,
    ) -> Result<Reservation, Status> {
        let c = caller(req)?;
        let keys = self.limiter.token_keys(&c.tenant, &c.tier);
        let estimate = input.saturating_add(output);
        let (decision, _) = self.limiter.check(&keys, estimate).await.map_err(|_| {
            keel_errors::status(
                keel_errors::Reason::Unavailable,
                "the rate limiter is unavailable; retry shortly",
                vec![("dependency", "redis".into())],
            )
        })?;
        match decision {
            crate::limits::Decision::Allowed { .. } => Ok(Reservation {
                keys,
                estimate,
                input_estimate: input,
            }),
            crate::limits::Decision::Denied { retry_after, limit } => {
                let ms = retry_after.as_millis().max(1) as u64;
                let mut st = keel_errors::status(
                    keel_errors::Reason::RateLimited,
                    format!(
                        "the tenant's model-token budget ({limit} a minute) cannot cover about {estimate} tokens now; retry after {ms} ms"
                    ),
                    vec![
                        ("retry_after_ms", ms.to_string()),
                        ("estimated_tokens", estimate.to_string()),
                    ],
                );
                st.metadata_mut().insert(
                    "retry-after",
                    (retry_after.as_secs_f64().ceil().max(1.0) as u64).into(),
                );
                Err(st)
            }
        }
    }

    fn settle(&self, r: Reservation, used: u32) {
        settle(&self.limiter, &self.tasks, r, used);
    }

    /// One model call through the breaker, sent exactly once.
    async fn once<M, T, F, Fut>(&self, up: Request<M>, call: F) -> Result<T, Status>
    where
        F: FnOnce(
            keel_proto::inference::generation_client::GenerationClient<Channel>,
            Request<M>,
        ) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut pending = Some((up, call));
        self.guarded(|| {
            let p = pending.take();
            let client = self.inference.clone();
            async move {
                match p {
                    Some((up, call)) => call(client, up).await,
                    None => Err(Status::internal("a model call is never sent twice")),
                }
            }
        })
        .await
    }

    /// One model call through the breaker (never retried).
    async fn guarded<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        keel_resilience::call(
            &self.breaker,
            &self.budget,
            &RetryPolicy::default(),
            false,
            || {
                keel_errors::status(
                    keel_errors::Reason::Unavailable,
                    "the model is failing; calls are refused for a few seconds (circuit open)",
                    vec![("dependency", "inference".into())],
                )
            },
            call,
        )
        .await
    }
}

/// Settles a reservation to what was used (in the background: the answer does not wait).
fn settle(
    limiter: &Arc<crate::limits::Limiter>,
    tasks: &keel_runtime::Tasks,
    r: Reservation,
    used: u32,
) {
    let limiter = limiter.clone();
    tasks.spawn("token-settle", async move {
        if used < r.estimate {
            limiter.refund(&r.keys, r.estimate - used).await;
        } else if used > r.estimate {
            // Spent already: charge the difference, whatever the bucket says.
            let _ = limiter.check(&r.keys, used - r.estimate).await;
        }
    });
}

type ChunkStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::GenerateChunk, Status>> + Send + 'static>,
>;

/// Settles a streamed generation's reservation when it ends, however it ends.
struct StreamSettlement {
    gateway: Option<(Arc<crate::limits::Limiter>, keel_runtime::Tasks)>,
    reservation: Option<Reservation>,
    chunks: u32,
    used: Option<u32>,
}

impl Drop for StreamSettlement {
    fn drop(&mut self) {
        if let (Some((limiter, tasks)), Some(r)) = (self.gateway.take(), self.reservation.take()) {
            // Cancelled (or failed) mid-stream: the prompt plus what was produced.
            let used = self.used.unwrap_or(r.input_estimate + self.chunks);
            settle(&limiter, &tasks, r, used);
        }
    }
}

#[tonic::async_trait]
impl pb::inference_service_server::InferenceService for InferenceGateway {
    type GenerateStream = ChunkStream;

    async fn generate(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let m = req.get_ref();
        let output = output_reserve(m);
        let reservation = self
            .reserve(&req, estimate_input(&m.messages), output)
            .await?;
        let up = self.upstream(req)?;
        let stream = match self
            .once(up, |mut c, r| async move { c.generate(r).await })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(st) => {
                self.settle(reservation, 0);
                return Err(keel_errors::forward(st));
            }
        };
        let settlement = StreamSettlement {
            gateway: Some((self.limiter.clone(), self.tasks.clone())),
            reservation: Some(reservation),
            chunks: 0,
            used: None,
        };
        use futures::StreamExt;
        let out = futures::stream::unfold((stream, settlement), |(mut stream, mut s)| async move {
            let item = stream.next().await?;
            let item = item.map_err(keel_errors::forward).inspect(|c| {
                if !c.text.is_empty() {
                    s.chunks += 1;
                }
                if let Some(u) = &c.usage {
                    s.used = Some(u.input_tokens + u.output_tokens);
                }
            });
            Some((item, (stream, s)))
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn complete(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let m = req.get_ref();
        let output = output_reserve(m);
        let reservation = self
            .reserve(&req, estimate_input(&m.messages), output)
            .await?;
        let up = self.upstream(req)?;
        match self
            .once(up, |mut c, r| async move { c.complete(r).await })
            .await
        {
            Ok(r) => {
                let used = r
                    .get_ref()
                    .usage
                    .as_ref()
                    .map_or(reservation.estimate, |u| u.input_tokens + u.output_tokens);
                self.settle(reservation, used);
                Ok(r)
            }
            Err(st) => {
                self.settle(reservation, 0);
                Err(keel_errors::forward(st))
            }
        }
    }

    async fn embed(
        &self,
        req: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let input: u32 = req
            .get_ref()
            .inputs
            .iter()
            .map(|t| (t.len() / 4) as u32 + 1)
            .sum();
        let reservation = self.reserve(&req, input, 0).await?;
        let up = self.upstream(req)?;
        match self
            .once(up, |mut c, r| async move { c.embed(r).await })
            .await
        {
            Ok(r) => {
                let used = r.get_ref().usage.as_ref().map_or(input, |u| u.input_tokens);
                self.settle(reservation, used);
                Ok(r)
            }
            Err(st) => {
                self.settle(reservation, 0);
                Err(keel_errors::forward(st))
            }
        }
    }
}

/// `keel.v1.ModelService`: the tenant's models and the (step-up) export of a built-in model,
/// forwarded to inference's `Models` with the admitted subject for the audit record.
pub struct ModelGateway {
    models: keel_proto::inference::models_client::ModelsClient<Channel>,
    timeout: Duration,
}

/// An export streams a few kilobytes to megabytes; this bounds it when the client sets none.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(60);

impl ModelGateway {
    pub fn new(inference: Channel, timeout: Duration) -> Self {
        ModelGateway {
            models: keel_proto::inference::models_client::ModelsClient::new(inference),
            timeout,
        }
    }

    /// The models the caller's tenant may call (shared with the OpenAI-compatible surface).
    pub async fn list(
        &self,
        caller: &Caller,
        req: pb::ListModelsRequest,
    ) -> Result<pb::ListModelsResponse, Status> {
        let mut up = outgoing(req, &caller.tenant);
        up.set_timeout(self.timeout);
        self.models
            .clone()
            .list_models(up)
            .await
            .map(Response::into_inner)
            .map_err(keel_errors::forward)
    }
}

type ExportStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::ExportModelChunk, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl pb::model_service_server::ModelService for ModelGateway {
    type ExportModelStream = ExportStream;

    async fn list_models(
        &self,
        req: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let caller = caller(&req)?.clone();
        Ok(Response::new(self.list(&caller, req.into_inner()).await?))
    }

    async fn export_model(
        &self,
        req: Request<pb::ExportModelRequest>,
    ) -> Result<Response<Self::ExportModelStream>, Status> {
        use futures::StreamExt;
        let caller = caller(&req)?.clone();
        let allowed = time_allowed(&req, DEFAULT_EXPORT_TIMEOUT);
        let mut up = outgoing(
            keel_proto::inference::ExportModelCall {
                request: Some(req.into_inner()),
                subject: caller.subject.clone(),
            },
            &caller.tenant,
        );
        up.set_timeout(allowed);
        let stream = self
            .models
            .clone()
            .export_model(up)
            .await
            .map_err(keel_errors::forward)?
            .into_inner()
            .map(|r| r.map_err(keel_errors::forward));
        Ok(Response::new(stream.boxed()))
    }
}

/// `keel.v1.UsageService`, `keel.v1.AuditService` and `keel.v1.ModerationService`: what
/// post-processing keeps for the caller's tenant — its metered usage (with the tier from the
/// token to compare it against), its audit log and the verdicts on its answers.
pub struct PostprocGateway {
    postproc: Option<Channel>,
    timeout: Duration,
}

impl PostprocGateway {
    pub fn new(postproc: Option<Channel>, timeout: Duration) -> Self {
        PostprocGateway { postproc, timeout }
    }

    /// The channel and the upstream request on behalf of the caller's tenant.
    fn upstream<T>(&self, req: Request<T>) -> Result<(Channel, Request<T>, Caller), Status> {
        let caller = caller(&req)?.clone();
        let Some(channel) = self.postproc.clone() else {
            return Err(keel_errors::status(
                keel_errors::Reason::NotImplemented,
                "this deployment does not serve it (KEEL_POSTPROC_URL is not set)",
                Vec::new(),
            ));
        };
        let allowed = time_allowed(&req, self.timeout);
        let mut up = outgoing(req.into_inner(), &caller.tenant);
        up.set_timeout(allowed);
        Ok((channel, up, caller))
    }
}

#[tonic::async_trait]
impl pb::usage_service_server::UsageService for PostprocGateway {
    async fn get_usage(
        &self,
        req: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let (channel, up, caller) = self.upstream(req)?;
        let mut r = keel_proto::postproc::usage_store_client::UsageStoreClient::new(channel)
            .get_usage(up)
            .await
            .map_err(keel_errors::forward)?
            .into_inner();
        r.tier = caller.tier;
        Ok(Response::new(r))
    }
}

#[tonic::async_trait]
impl pb::moderation_service_server::ModerationService for PostprocGateway {
    async fn list_moderation_results(
        &self,
        req: Request<pb::ListModerationResultsRequest>,
    ) -> Result<Response<pb::ListModerationResultsResponse>, Status> {
        let (channel, up, _) = self.upstream(req)?;
        keel_proto::postproc::moderation_store_client::ModerationStoreClient::new(channel)
            .list_moderation_results(up)
            .await
            .map_err(keel_errors::forward)
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for PostprocGateway {
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let (channel, up, _) = self.upstream(req)?;
        keel_proto::postproc::audit_log_client::AuditLogClient::new(channel)
            .list_audit_events(up)
            .await
            .map_err(keel_errors::forward)
    }
}

/// `keel.v1.AuthenticationService`: the login flows, forwarded to auth (anonymous routes: the
/// gate admits them without a caller).
pub struct AuthenticationGateway {
    auth: keel_proto::auth::authentication_client::AuthenticationClient<Channel>,
    timeout: Duration,
    trusted_proxies: crate::forwarded::TrustedProxies,
}

impl AuthenticationGateway {
    pub fn new(
        auth: Channel,
        timeout: Duration,
        trusted_proxies: crate::forwarded::TrustedProxies,
    ) -> Self {
        AuthenticationGateway {
            auth: keel_proto::auth::authentication_client::AuthenticationClient::new(auth),
            timeout,
            trusted_proxies,
        }
    }

    /// The upstream request. The caller's `authorization` travels along: auth verifies the token
    /// itself for the account methods.
    fn upstream<T>(&self, req: Request<T>) -> Request<T> {
        let auth = req.metadata().get("authorization").cloned();
        let mut up = Request::new(req.into_inner());
        up.set_timeout(self.timeout);
        if let Some(a) = auth {
            up.metadata_mut().insert("authorization", a);
        }
        keel_telemetry::propagation::inject_grpc(up.metadata_mut());
        up
    }
}

#[tonic::async_trait]
impl pb::authentication_service_server::AuthenticationService for AuthenticationGateway {
    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        // The source address from the transport, or from `x-forwarded-for` when a trusted
        // proxy sent it (a client cannot set `keel-client-ip`: only `authorization` is copied
        // from its request).
        let source = self
            .trusted_proxies
            .client(
                req.remote_addr().map(|a| a.ip()),
                &req.metadata().clone().into_headers(),
            )
            .map(|ip| ip.to_string());
        let mut up = self.upstream(req);
        if let Some(ip) = source.and_then(|ip| tonic::metadata::MetadataValue::try_from(ip).ok()) {
            up.metadata_mut().insert("keel-client-ip", ip);
        }
        self.auth
            .clone()
            .login(up)
            .await
            .map_err(keel_errors::forward)
    }

    async fn verify_mfa(
        &self,
        req: Request<pb::VerifyMfaRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        self.auth
            .clone()
            .verify_mfa(self.upstream(req))
            .await
            .map_err(keel_errors::forward)
    }

    async fn enroll_mfa(
        &self,
        req: Request<pb::EnrollMfaRequest>,
    ) -> Result<Response<pb::EnrollMfaResponse>, Status> {
        self.auth
            .clone()
            .enroll_mfa(self.upstream(req))
            .await
            .map_err(keel_errors::forward)
    }

    async fn confirm_mfa(
        &self,
        req: Request<pb::ConfirmMfaRequest>,
    ) -> Result<Response<pb::ConfirmMfaResponse>, Status> {
        self.auth
            .clone()
            .confirm_mfa(self.upstream(req))
            .await
            .map_err(keel_errors::forward)
    }

    async fn disable_mfa(
        &self,
        req: Request<pb::DisableMfaRequest>,
    ) -> Result<Response<pb::DisableMfaResponse>, Status> {
        self.auth
            .clone()
            .disable_mfa(self.upstream(req))
            .await
            .map_err(keel_errors::forward)
    }

    async fn step_up(
        &self,
        req: Request<pb::StepUpRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        self.auth
            .clone()
            .step_up(self.upstream(req))
            .await
            .map_err(keel_errors::forward)
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        self.auth
            .clone()
            .change_password(self.upstream(req))
            .await
            .map_err(keel_errors::forward)
    }

    async fn sign_out_everywhere(
        &self,
        req: Request<pb::SignOutEverywhereRequest>,
    ) -> Result<Response<pb::SignOutEverywhereResponse>, Status> {
        self.auth
            .clone()
            .sign_out_everywhere(self.upstream(req))
            .await
            .map_err(keel_errors::forward)
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        self.auth
            .clone()
            .list_sessions(self.upstream(req))
            .await
            .map_err(keel_errors::forward)
    }

    async fn revoke_session(
        &self,
        req: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        self.auth
            .clone()
            .revoke_session(self.upstream(req))
            .await
            .map_err(keel_errors::forward)
    }

    async fn refresh(
        &self,
        req: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        self.auth
            .clone()
            .refresh(self.upstream(req))
            .await
            .map_err(keel_errors::forward)
    }

    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        self.auth
            .clone()
            .logout(self.upstream(req))
            .await
            .map_err(keel_errors::forward)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_calls_get_what_is_left_of_the_clients_deadline() {
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("grpc-timeout", "3S".parse().unwrap());
        // No start recorded: the whole deadline, capped by ours.
        assert_eq!(
            time_allowed(&req, Duration::from_secs(5)),
            Duration::from_secs(3)
        );
        assert_eq!(
            time_allowed(&req, Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        // Two seconds already spent in the gateway: at most one left.
        req.extensions_mut().insert(keel_runtime::CallStarted(
            std::time::Instant::now() - Duration::from_secs(2),
        ));
        let left = time_allowed(&req, Duration::from_secs(5));
        assert!(
            left <= Duration::from_secs(1) && left > Duration::from_millis(900),
            "{left:?}"
        );
        // All of it spent: nothing left, the upstream call fails at once.
        req.extensions_mut().insert(keel_runtime::CallStarted(
            std::time::Instant::now() - Duration::from_secs(4),
        ));
        assert_eq!(time_allowed(&req, Duration::from_secs(5)), Duration::ZERO);
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout("99999999999999999999H"), None);
    }
}
