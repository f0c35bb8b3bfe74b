//! The server-side request layer, outermost on every keel gRPC server:
//!
//! 1. extracts the caller's W3C trace context from the request headers;
//! 2. opens the `grpc.server` span (OTel RPC conventions) as its child, with the tenant (when
//!    the server trusts `keel-tenant-id`), the correlation ID (the caller's, or a new one) and
//!    the trace ID, so every log line inside the call carries them;
//! 3. runs the call with the correlation ID in a task-local for outgoing calls;
//! 4. when the server has a [`Gate`] (the public gateway), admits or refuses the call before it
//!    reaches a handler, and hands the admitted [`Caller`] to the handler in the request
//!    extensions — so no handler can forget authentication;
//! 5. records RED metrics when a call *ends* (its body included, so a stream's code is the
//!    one in its trailers and its duration the whole stream's):
//!    `keel_rpc_requests_total{service,method,code}`, `keel_rpc_duration_seconds{service,method}`
//!    and `keel_rpc_in_flight{service}`;
//! 6. bounds the calls in flight (`max_in_flight`), shedding the excess at once with
//!    `UNAVAILABLE` and `retry-after`. A call holds its slot until its response *body* ends
//!    or is dropped, so a streamed answer counts for as long as it streams (not only until its
//!    headers), and the gauge says the same.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use keel_tenancy::{CORRELATION_HEADER, GRPC_TENANT_HEADER, TenantId};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::context::{CORRELATION_ID, sanitize_correlation};

/// Who is calling, as established by a [`Gate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: TenantId,
    /// The token's subject (user or client).
    pub subject: String,
    pub scopes: Vec<String>,
    /// The tenant's contract tier, as the token states it (limits depend on it).
    pub tier: String,
}

/// Time a handler spent waiting on downstream calls, put in the response extensions so the
/// layer can report its own server's overhead (`keel_rpc_overhead_seconds`) and a
/// `server-timing` header (`total;dur=…, upstream;dur=…`, milliseconds).
#[derive(Debug, Clone, Copy)]
pub struct DownstreamTime(pub std::time::Duration);

/// When the server took the call, in the request's extensions: handlers give upstream calls
/// what is left of the client's deadline, not the whole of it again after the gate's work.
#[derive(Debug, Clone, Copy)]
pub struct CallStarted(pub Instant);

/// What a gate decided for an admitted call.
#[derive(Debug, Default)]
pub struct Admission {
    /// `Some` for a tenant's call; `None` for an ungated method (health, reflection) or an
    /// anonymous one (login flows).
    pub caller: Option<Caller>,
    /// Headers (gRPC response metadata) to add to the response, e.g. rate-limit state.
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

pub type GateFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Admission, tonic::Status>> + Send + 'a>>;

/// Admission control in front of every method of a server.
pub trait Gate: Send + Sync + 'static {
    /// Admits the call (see [`Admission`]) or refuses it with the status to answer. `peer` is
    /// the client's address, when the transport knows it.
    fn admit<'a>(
        &'a self,
        path: &'a str,
        headers: &'a http::HeaderMap,
        peer: Option<std::net::SocketAddr>,
    ) -> GateFuture<'a>;
}

#[derive(Clone)]
pub struct RequestLayer {
    service: &'static str,
    trust_tenant_header: bool,
    gate: Option<Arc<dyn Gate>>,
    /// Load shedding: calls beyond this many in flight are refused at once (never queued).
    in_flight: Option<Arc<tokio::sync::Semaphore>>,
}

impl RequestLayer {
    pub fn new(
        service: &'static str,
        trust_tenant_header: bool,
        gate: Option<Arc<dyn Gate>>,
        max_in_flight: Option<usize>,
    ) -> Self {
        RequestLayer {
            service,
            trust_tenant_header,
            gate,
            in_flight: max_in_flight.map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
        }
    }
}

/// tonic refuses a request it cannot decode with bare statuses: OUT_OF_RANGE for an over-large
/// message, INTERNAL for bytes that are not the method's protobuf message (malformed wire data,
/// a string field that is not UTF-8). Both are the client's fault; give them the reason and
/// field every other refusal carries (INVALID_ARGUMENT, field `message`, plus `limit_bytes` or
/// `cause: malformed`), so a client can tell its bad input from our failure.
fn precise_refusal<RB: Default>(r: http::Response<RB>) -> http::Response<RB> {
    let h = r.headers();
    let code = h.get("grpc-status").and_then(|v| v.to_str().ok());
    if !matches!(code, Some("11" | "13")) {
        return r;
    }
    let Some(st) = tonic::Status::from_header_map(h) else {
        return r;
    };
    let said = st.message();
    if st.code() == tonic::Code::OutOfRange && said.contains("message length too large") {
        let limit = said
            .rsplit("limit is:")
            .next()
            .and_then(|t| t.split_whitespace().next())
            .unwrap_or("")
            .to_owned();
        return keel_errors::status(
            keel_errors::Reason::InvalidArgument,
            format!("the request is too large: at most {limit} bytes"),
            vec![("field", "message".into()), ("limit_bytes", limit)],
        )
        .into_http::<RB>();
    }
    // tonic's own refusal carries no details; an INTERNAL relayed from a downstream hop does
    // (its reason), and stays what it is.
    if st.code() == tonic::Code::Internal
        && st.details().is_empty()
        && said.starts_with("failed to decode Protobuf message")
    {
        // prost's own words name the field and the fault ("Document.title: invalid string
        // value: data is not UTF-8 encoded"); they hold no data of the request.
        let detail = said
            .trim_start_matches("failed to decode Protobuf message")
            .trim_start_matches(':')
            .trim();
        return keel_errors::status(
            keel_errors::Reason::InvalidArgument,
            format!("the request is not a valid message for this method: {detail}"),
            vec![("field", "message".into()), ("cause", "malformed".into())],
        )
        .into_http::<RB>();
    }
    r
}

/// Health and reflection answer even when the server sheds load.
fn exempt_from_shedding(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

impl<S> Layer<S> for RequestLayer {
    type Service = RequestService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestService {
            inner,
            cfg: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestService<S> {
    inner: S,
    cfg: RequestLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One call's place in the server: the in-flight permit (when bounded) and the gauge, both
/// released when the call's response body is done or dropped.
struct CallSlot {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    gauge: metrics::Gauge,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// How a call ended, recorded when its response body is done with: the code (from the
/// headers of a trailers-only answer, else from the trailers; a body dropped before its
/// trailers is a call the client cancelled) and the whole duration, streamed body included —
/// so a stream that fails half-way counts as the failure it is.
struct CallEnd {
    service: &'static str,
    method: String,
    started: Instant,
    code: Option<tonic::Code>,
    /// The `grpc.server` span, kept open until the call ends.
    span: tracing::Span,
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        self.span.record("rpc.grpc.status_code", code as i32);
        let method = std::mem::take(&mut self.method);
        metrics::counter!("keel_rpc_requests_total", "service" => self.service, "method" => method.clone(), "code" => code_name(code)).increment(1);
        metrics::histogram!("keel_rpc_duration_seconds", "service" => self.service, "method" => method)
            .record(self.started.elapsed().as_secs_f64());
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// A response body that keeps its call's [`CallSlot`] until it is finished with, and records
/// how the call ended ([`CallEnd`]).
struct SlotBody<B> {
    inner: B,
    end: CallEnd,
    _slot: CallSlot,
}

impl<B: http_body::Body + Unpin> http_body::Body for SlotBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.end.code = Some(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.end.code = Some(tonic::Code::Internal),
            Poll::Ready(None) if self.end.code.is_none() => {
                self.end.code = Some(tonic::Code::Unknown);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S, B, RB> Service<http::Request<B>> for RequestService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: http_body::Body<Data = tonic::codegen::Bytes> + Default + Unpin + Send + 'static,
    RB::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let (rpc_service, rpc_method) = split_path(&path);
        let headers = req.headers();
        let tenant = if self.cfg.trust_tenant_header {
            headers
                .get(GRPC_TENANT_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| TenantId::parse(s).ok())
        } else {
            None
        };
        let correlation = headers
            .get(CORRELATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(sanitize_correlation)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let parent = keel_telemetry::propagation::extract_http(headers);
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %rpc_service,
            rpc.method = %rpc_method,
            rpc.grpc.status_code = tracing::field::Empty,
            tenant.id = tracing::field::Empty,
            correlation_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        keel_telemetry::adopt(
            &span,
            parent,
            tenant.as_ref().map(TenantId::as_str),
            &correlation,
        );

        // The standard tower dance: call the clone that was driven to readiness.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let service = self.cfg.service;
        let gate = self.cfg.gate.clone();
        let slot = match &self.cfg.in_flight {
            Some(sem) if !exempt_from_shedding(&path) => match sem.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    metrics::counter!("keel_rpc_shed_total", "service" => service).increment(1);
                    let mut st = keel_errors::status(
                        keel_errors::Reason::Unavailable,
                        "the server is at capacity; retry shortly",
                        vec![("cause", "overloaded".into())],
                    );
                    st.metadata_mut()
                        .insert("retry-after", tonic::metadata::MetadataValue::from(1u32));
                    return Box::pin(std::future::ready(Ok(st.into_http::<tonic::body::Body>())));
                }
            },
            _ => None,
        };
        let method = rpc_method.to_owned();
        let fut = async move {
            let started = Instant::now();
            let in_flight = metrics::gauge!("keel_rpc_in_flight", "service" => service);
            in_flight.increment(1.0);
            let slot = CallSlot {
                _permit: slot,
                gauge: in_flight,
            };
            let mut req = req;
            req.extensions_mut().insert(CallStarted(started));
            let peer = req
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|i| i.remote_addr());
            let admitted = match &gate {
                None => Ok(Admission::default()),
                Some(g) => g.admit(req.uri().path(), req.headers(), peer).await,
            };
            let mut extra_headers = Vec::new();
            let res = match admitted {
                Err(status) => Ok(status.into_http::<RB>()),
                Ok(Admission {
                    caller: None,
                    response_headers,
                }) => {
                    extra_headers = response_headers;
                    inner.call(req).await
                }
                Ok(Admission {
                    caller: Some(caller),
                    response_headers,
                }) => {
                    extra_headers = response_headers;
                    // A child span carrying the verified tenant in its context, so every span
                    // below it (handlers, outgoing calls) is stamped with `tenant.id`.
                    let server_span = tracing::Span::current();
                    server_span.record("tenant.id", caller.tenant.as_str());
                    let span = tracing::info_span!(
                        "call",
                        tenant.id = tracing::field::Empty,
                        correlation_id = tracing::field::Empty,
                        trace_id = tracing::field::Empty,
                        span_id = tracing::field::Empty,
                    );
                    keel_telemetry::adopt(
                        &span,
                        server_span.context(),
                        Some(caller.tenant.as_str()),
                        &crate::context::correlation_id().unwrap_or_default(),
                    );
                    req.extensions_mut().insert(caller);
                    inner.call(req).instrument(span).await
                }
            };
            let total = started.elapsed();
            let res = res.map(precise_refusal::<RB>);
            let res = res.map(|mut r| {
                for (k, v) in extra_headers {
                    r.headers_mut().append(k, v);
                }
                if let Some(DownstreamTime(down)) = r.extensions().get::<DownstreamTime>().copied()
                {
                    let own = total.saturating_sub(down);
                    metrics::histogram!("keel_rpc_overhead_seconds", "service" => service)
                        .record(own.as_secs_f64());
                    if let Ok(v) = http::HeaderValue::from_str(&format!(
                        "total;dur={:.3}, upstream;dur={:.3}",
                        total.as_secs_f64() * 1000.0,
                        down.as_secs_f64() * 1000.0
                    )) {
                        r.headers_mut().insert("server-timing", v);
                    }
                }
                r
            });
            let mut end = CallEnd {
                service,
                method,
                started,
                code: None,
                span: tracing::Span::current(),
            };
            match res {
                Ok(r) => {
                    // Errors before the body are "trailers-only": grpc-status is in the
                    // headers. Otherwise the code comes with the trailers, after the body.
                    end.code = grpc_status(r.headers());
                    Ok(r.map(|body| {
                        tonic::body::Body::new(SlotBody {
                            inner: body,
                            end,
                            _slot: slot,
                        })
                    }))
                }
                Err(e) => {
                    end.code = Some(tonic::Code::Unknown);
                    Err(e)
                }
            }
        };
        Box::pin(CORRELATION_ID.scope(correlation, fut.instrument(span)))
    }
}

fn split_path(path: &str) -> (&str, &str) {
    let p = path.trim_start_matches('/');
    p.rsplit_once('/').unwrap_or((p, ""))
}

/// Stable, low-cardinality label values.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/keel.v1.DocumentService/GetDocument"),
            ("keel.v1.DocumentService", "GetDocument")
        );
        assert_eq!(split_path("/weird"), ("weird", ""));
    }
}
