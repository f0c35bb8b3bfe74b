//! The consumer runner: a durable pull consumer with explicit acks, driving a [`Handler`].
//!
//! Contract with handlers: `Ok(())` means the effect (and its dedupe record) has committed, and
//! only then is the message acknowledged. A crash before the ack means redelivery, so handlers
//! must be idempotent on [`Delivery::event_id`]. `Transient` failures are retried later with
//! capped exponential backoff and jitter; `Permanent` ones, and transient ones on their last
//! delivery (`max_deliver`), go to the dead-letter stream ([`crate::dlq`]) and only once it
//! has them are they terminated — nothing is dropped silently. While a handler works, the
//! runner sends in-progress acks every third of the ack wait, so long work is not redelivered.
//!
//! The server is told to allow one delivery more than `max_deliver`. That reserved delivery
//! only happens when the last real attempt was never settled (the worker was killed, or hung
//! past the ack wait); the runner then dead-letters the message without handling it again,
//! instead of the server silently giving up on it (a poison message that crashes its worker
//! ends in the dead-letter stream, not in a crash loop or in limbo).
//!
//! At shutdown the runner stops pulling, finishes the batch in hand, and naks (without delay)
//! what had already arrived but was not started, so another instance takes it at once rather
//! than after the ack wait.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures::StreamExt;
use keel_tenancy::{NATS_TENANT_HEADER, TenantId};
use opentelemetry::trace::TraceContextExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{Bus, BusError, EVENT_TYPE_HEADER, SCHEMA_VERSION_HEADER};

/// Redeliver when a handler has not acked within this time (the handler may extend it with
/// in-progress acks for long work).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages handed out but not yet acked: the backpressure bound on one consumer.
pub const DEFAULT_MAX_ACK_PENDING: i64 = 256;
/// Deliveries before the server stops redelivering.
pub const DEFAULT_MAX_DELIVER: i64 = 10;
/// Backoff for transient failures: the first retry after about this long...
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// ...doubling up to this cap.
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Pause before re-subscribing after the message stream failed (server restart, network).
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Durable name: the consumer's position survives restarts of this process.
    pub durable: String,
    pub filter_subject: String,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    pub max_deliver: i64,
}

impl ConsumerSpec {
    pub fn new(durable: impl Into<String>, filter_subject: impl Into<String>) -> Self {
        ConsumerSpec {
            durable: durable.into(),
            filter_subject: filter_subject.into(),
            ack_wait: DEFAULT_ACK_WAIT,
            max_ack_pending: DEFAULT_MAX_ACK_PENDING,
            max_deliver: DEFAULT_MAX_DELIVER,
        }
    }
}

/// One received message, decoded from its headers.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subject: String,
    /// The dedupe key: `Keel-Event-Id` when set (a replayed dead letter), else `Nats-Msg-Id`.
    pub event_id: Option<String>,
    pub tenant: Option<TenantId>,
    pub event_type: Option<String>,
    pub schema_version: Option<String>,
    pub payload: bytes::Bytes,
    /// 1 on first delivery.
    pub delivered: i64,
    pub stream_sequence: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying later (a dependency is down).
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed (undecodable, unknown schema).
    #[error("permanent: {0}")]
    Permanent(String),
}

pub trait Handler: Send + Sync + 'static {
    fn handle(&self, delivery: &Delivery) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Messages handled together, at most (1: one at a time). A handler that can commit many
    /// effects in one transaction says how many; the runner then hands it whatever has
    /// arrived, up to this, in one [`Handler::handle_batch`] call.
    fn batch_size(&self) -> usize {
        1
    }

    /// One result per delivery, in order. The default handles them one by one.
    fn handle_batch(
        &self,
        deliveries: &[Delivery],
    ) -> impl Future<Output = Vec<Result<(), HandlerError>>> + Send {
        async move {
            let mut out = Vec::with_capacity(deliveries.len());
            for d in deliveries {
                out.push(self.handle(d).await);
            }
            out
        }
    }
}

/// Runs until `shutdown` fires. Between messages it checks for shutdown, so the message in hand
/// is finished and acknowledged before returning; what has arrived but was not started is
/// nakked for another instance.
pub async fn run_consumer<H: Handler>(
    bus: &Bus,
    spec: ConsumerSpec,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    while !shutdown.is_cancelled() {
        let consumer = match declare(bus, &spec).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(consumer = %spec.durable, error = %e, "consumer not declared yet, retrying");
                sleep_or_cancel(RESUBSCRIBE_DELAY * 2, &shutdown).await;
                continue;
            }
        };
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer = %spec.durable, error = %e, "subscribe failed, retrying");
                sleep_or_cancel(RESUBSCRIBE_DELAY, &shutdown).await;
                continue;
            }
        };
        tracing::info!(consumer = %spec.durable, filter = %spec.filter_subject, "consumer running");
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    release_buffered(&spec, &mut messages).await;
                    return Ok(());
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(msg)) if handler.batch_size() > 1 => {
                    // Take what has already arrived, without waiting for more.
                    let mut batch = vec![msg];
                    while batch.len() < handler.batch_size() {
                        match futures::FutureExt::now_or_never(messages.next()) {
                            Some(Some(Ok(m))) => batch.push(m),
                            _ => break,
                        }
                    }
                    process_batch(bus, &spec, &handler, batch).await;
                }
                Some(Ok(msg)) => process(bus, &spec, &handler, msg).await,
                Some(Err(e)) => {
                    tracing::warn!(consumer = %spec.durable, error = %e, "message stream error");
                    // Heartbeat misses and similar are reported but the stream continues.
                    continue;
                }
                None => {
                    tracing::warn!(consumer = %spec.durable, "message stream ended, re-subscribing");
                    sleep_or_cancel(RESUBSCRIBE_DELAY, &shutdown).await;
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Naks, without delay, every message already delivered to this runner but not started.
async fn release_buffered(spec: &ConsumerSpec, messages: &mut pull::Stream) {
    let mut released = 0u64;
    while let Some(Some(Ok(m))) = futures::FutureExt::now_or_never(messages.next()) {
        if let Err(e) = m.ack_with(AckKind::Nak(None)).await {
            tracing::warn!(consumer = %spec.durable, error = %e, "nak at shutdown failed; redelivery after ack_wait");
        }
        released += 1;
    }
    if released > 0 {
        tracing::info!(consumer = %spec.durable, released, "released unstarted messages at shutdown");
        metrics::counter!("keel_consumer_messages_total", "consumer" => spec.durable.clone(), "outcome" => "released")
            .increment(released);
    }
}

/// The reserved delivery (see the module's note): the last real attempt was never settled.
fn unsettled_last_attempt(spec: &ConsumerSpec, delivery: &Delivery) -> Option<HandlerError> {
    (delivery.delivered > spec.max_deliver).then(|| {
        HandlerError::Transient(format!(
            "delivery {} of at most {} was never settled (the worker was killed or stalled past the ack wait); not handled again",
            delivery.delivered - 1,
            spec.max_deliver
        ))
    })
}

async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

async fn declare(
    bus: &Bus,
    spec: &ConsumerSpec,
) -> Result<async_nats::jetstream::consumer::Consumer<pull::Config>, BusError> {
    let stream = bus.ensure_stream().await?;
    stream
        .get_or_create_consumer(
            &spec.durable,
            pull::Config {
                durable_name: Some(spec.durable.clone()),
                filter_subject: spec.filter_subject.clone(),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                ack_wait: spec.ack_wait,
                max_ack_pending: spec.max_ack_pending,
                // One reserved delivery: see the module's note.
                max_deliver: spec.max_deliver.saturating_add(1),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))
}

fn header(msg: &async_nats::jetstream::Message, name: &str) -> Option<String> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
}

/// Capped exponential backoff with equal jitter: half fixed, half random.
pub fn backoff(delivered: i64) -> Duration {
    let exp = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    let full = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_CAP);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

fn delivery_of(msg: &async_nats::jetstream::Message) -> Delivery {
    let (delivered, stream_sequence) = msg
        .info()
        .map(|i| (i.delivered, i.stream_sequence))
        .unwrap_or((1, 0));
    let tenant_raw = header(msg, NATS_TENANT_HEADER);
    Delivery {
        subject: msg.subject.to_string(),
        event_id: header(msg, crate::dlq::EVENT_ID_HEADER).or_else(|| header(msg, "Nats-Msg-Id")),
        tenant: tenant_raw.as_deref().and_then(|t| TenantId::parse(t).ok()),
        event_type: header(msg, EVENT_TYPE_HEADER),
        schema_version: header(msg, SCHEMA_VERSION_HEADER),
        payload: msg.payload.clone(),
        delivered,
        stream_sequence,
    }
}

/// The consumer span of one message, parented on and linked to its producer's.
fn span_of(
    spec: &ConsumerSpec,
    msg: &async_nats::jetstream::Message,
    delivery: &Delivery,
) -> tracing::Span {
    let parent = msg
        .headers
        .as_ref()
        .map(keel_telemetry::propagation::extract_nats)
        .unwrap_or_default();
    let producer = parent.span().span_context().clone();
    let span = tracing::info_span!(
        "nats.process",
        otel.name = %format!("process {}", spec.durable),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = %delivery.subject,
        messaging.consumer.group.name = %spec.durable,
        messaging.message.id = delivery.event_id.as_deref().unwrap_or(""),
        messaging.delivery_count = delivery.delivered,
        tenant.id = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let correlation = delivery.event_id.clone().unwrap_or_default();
    keel_telemetry::adopt(
        &span,
        parent,
        delivery.tenant.as_ref().map(TenantId::as_str),
        &correlation,
    );
    if producer.is_valid() {
        span.add_link(producer);
    }
    span
}

async fn process<H: Handler>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &H,
    msg: async_nats::jetstream::Message,
) {
    let delivery = delivery_of(&msg);
    let span = span_of(spec, &msg, &delivery);
    let started = Instant::now();
    let result = match unsettled_last_attempt(spec, &delivery) {
        Some(e) => Err(e),
        None => {
            in_progress(
                spec,
                std::slice::from_ref(&msg),
                handler.handle(&delivery).instrument(span.clone()),
            )
            .await
        }
    };
    settle(bus, spec, &msg, &delivery, &span, result).await;
    metrics::histogram!("keel_consumer_duration_seconds", "consumer" => spec.durable.clone())
        .record(started.elapsed().as_secs_f64());
}

/// Hands the batch to the handler at once, then settles each message as [`process`] would.
async fn process_batch<H: Handler>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &H,
    msgs: Vec<async_nats::jetstream::Message>,
) {
    let (msgs, exhausted): (Vec<_>, Vec<_>) = msgs
        .into_iter()
        .partition(|m| unsettled_last_attempt(spec, &delivery_of(m)).is_none());
    for m in exhausted {
        let d = delivery_of(&m);
        let span = span_of(spec, &m, &d);
        let why = unsettled_last_attempt(spec, &d).map_or(Ok(()), Err);
        settle(bus, spec, &m, &d, &span, why).await;
    }
    if msgs.is_empty() {
        return;
    }
    let deliveries: Vec<Delivery> = msgs.iter().map(delivery_of).collect();
    let spans: Vec<tracing::Span> = msgs
        .iter()
        .zip(&deliveries)
        .map(|(m, d)| span_of(spec, m, d))
        .collect();
    let batch_span = tracing::info_span!(
        "nats.process_batch",
        otel.name = %format!("process {} batch", spec.durable),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.batch.message_count = deliveries.len(),
    );
    for s in &spans {
        if let Some(id) = s.id() {
            batch_span.follows_from(id);
        }
    }
    let started = Instant::now();
    let results = in_progress(
        spec,
        &msgs,
        handler.handle_batch(&deliveries).instrument(batch_span),
    )
    .await;
    metrics::histogram!("keel_consumer_batch_size", "consumer" => spec.durable.clone())
        .record(deliveries.len() as f64);
    let mut results = results.into_iter();
    let settles = msgs
        .iter()
        .zip(&deliveries)
        .zip(&spans)
        .map(|((m, d), span)| {
            let result = results.next().unwrap_or_else(|| {
                Err(HandlerError::Transient("the handler gave no result".into()))
            });
            settle(bus, spec, m, d, span, result)
        });
    futures::future::join_all(settles).await;
    metrics::histogram!("keel_consumer_duration_seconds", "consumer" => spec.durable.clone())
        .record(started.elapsed().as_secs_f64());
}

/// Runs `work` while telling the server, every third of the ack wait, that `msgs` are still
/// being worked on (`+WPI`), so long work is not redelivered to another instance meanwhile.
/// A crashed instance stops telling, and its messages come back after the ack wait.
async fn in_progress<T>(
    spec: &ConsumerSpec,
    msgs: &[async_nats::jetstream::Message],
    work: impl Future<Output = T>,
) -> T {
    let every = (spec.ack_wait / 3).max(Duration::from_millis(100));
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tokio::time::sleep(every) => {
                for m in msgs {
                    if let Err(e) = m.ack_with(AckKind::Progress).await {
                        tracing::warn!(error = %e, "in-progress ack failed");
                    }
                }
                metrics::counter!("keel_consumer_progress_acks_total", "consumer" => spec.durable.clone())
                    .increment(msgs.len() as u64);
            }
        }
    }
}

/// Acks after success; naks transient failures with backoff; dead-letters permanent ones and
/// those out of deliveries, then terminates them.
async fn settle(
    bus: &Bus,
    spec: &ConsumerSpec,
    msg: &async_nats::jetstream::Message,
    delivery: &Delivery,
    span: &tracing::Span,
    result: Result<(), HandlerError>,
) {
    let delivered = delivery.delivered;
    let stream_sequence = delivery.stream_sequence;
    let outcome = match &result {
        Ok(()) => match msg.double_ack().await {
            Ok(()) => "acked",
            Err(e) => {
                // The effect committed; a redelivery will be recognised as a duplicate.
                tracing::warn!(parent: span, error = %e, "ack not confirmed");
                "ack_unconfirmed"
            }
        },
        Err(HandlerError::Transient(e)) if delivered < spec.max_deliver => {
            let delay = backoff(delivered);
            tracing::warn!(parent: span, error = %e, delivered, retry_in_ms = delay.as_millis() as u64, "transient failure, will retry");
            if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(parent: span, error = %e, "nak failed; redelivery after ack_wait");
            }
            "retried"
        }
        Err(HandlerError::Transient(e) | HandlerError::Permanent(e)) => {
            let why = match &result {
                Err(HandlerError::Permanent(_)) => format!("permanent: {e}"),
                _ => format!("gave up after {delivered} deliveries: {e}"),
            };
            match bus
                .dead_letter(crate::dlq::Failed {
                    consumer: &spec.durable,
                    original_subject: &delivery.subject,
                    original_headers: msg.headers.as_ref(),
                    payload: msg.payload.clone(),
                    error: &why,
                    delivered,
                    stream_sequence,
                })
                .await
            {
                Ok(()) => {
                    tracing::error!(parent: span, error = %why, delivered, stream_sequence, "message dead-lettered, terminating it");
                    if let Err(e) = msg.ack_with(AckKind::Term).await {
                        tracing::warn!(parent: span, error = %e, "term failed");
                    }
                    "dead_lettered"
                }
                Err(dlq) => {
                    // Not stored anywhere yet: keep it in the stream and try again later.
                    let delay = backoff(delivered);
                    tracing::error!(parent: span, error = %why, dlq_error = %dlq, "dead-lettering failed; message kept for retry");
                    if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                        tracing::warn!(parent: span, error = %e, "nak failed; redelivery after ack_wait");
                    }
                    "retried"
                }
            }
        }
    };
    metrics::counter!("keel_consumer_messages_total", "consumer" => spec.durable.clone(), "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for d in 1..40 {
            let b = backoff(d);
            let exp = u32::try_from((d - 1).clamp(0, 16)).unwrap();
            let full = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_CAP);
            assert!(b >= full / 2 && b <= full, "delivered={d} backoff={b:?}");
        }
        assert!(backoff(100) <= BACKOFF_CAP);
        assert!(backoff(-5) <= BACKOFF_BASE);
    }
}
