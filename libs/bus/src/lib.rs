//! NATS JetStream for keel: the event stream's declaration, publishing that waits for the
//! stream's acknowledgement, and the consumer runner that acknowledges a message only after its
//! handler's effect has committed.
//!
//! * [`BusConfig`] / [`Bus::connect`] — the client (it keeps reconnecting in the background).
//! * [`Bus::ensure_stream`] — declares the stream (idempotent).
//! * [`Bus::publish`] — one [`OutgoingEvent`] with `Nats-Msg-Id`, tenant, type and trace headers;
//!   returns once the stream has stored it.
//! * [`run_consumer`] — a durable pull consumer driving a [`Handler`] until shutdown.
//!
//! Subjects are `<prefix>.events.<tenant>.<kind>`, so one consumer can follow one kind of event
//! for every tenant (`<prefix>.events.*.document.created`) and the tenant is visible to routing.

pub mod consumer;
pub mod dlq;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use keel_config::{ConfigError, Env};
use keel_errors::{KeelError, Reason};
use keel_tenancy::{NATS_TENANT_HEADER, TenantId};

pub use consumer::{ConsumerSpec, Delivery, Handler, HandlerError, run_consumer};

/// Header naming the payload's protobuf message (e.g. `keel.events.v1.DocumentCreated`).
pub const EVENT_TYPE_HEADER: &str = "Keel-Event-Type";
/// Header with the payload's schema version; consumers refuse versions they do not know.
pub const SCHEMA_VERSION_HEADER: &str = "Keel-Schema-Version";
/// A durable consumer's backlog, as the server reports it.
#[derive(Debug, Clone)]
pub struct ConsumerState {
    pub name: String,
    pub pending: u64,
    pub ack_pending: u64,
}

/// Window in which JetStream drops a re-published `Nats-Msg-Id`: longer than any relay retry
/// loop, so a relay that crashed between PubAck and marking the row sent publishes no duplicate.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long events stay in the stream: long enough to replay a day-long consumer outage.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a publish waits for the PubAck before the caller treats it as failed and retries.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("NATS unavailable: {0}")]
    Unavailable(String),
    #[error("JetStream refused: {0}")]
    Refused(String),
}

impl KeelError for BusError {
    fn reason(&self) -> Reason {
        match self {
            BusError::Unavailable(_) => Reason::Unavailable,
            BusError::Refused(_) => Reason::Internal,
        }
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        vec![("dependency", "nats".into())]
    }
}

#[derive(Debug, Clone)]
pub struct BusConfig {
    pub url: String,
    /// The stream's name (tests use one per test for isolation).
    pub stream: String,
    /// First subject token; the stream captures `<prefix>.events.>`.
    pub subject_prefix: String,
    pub publish_timeout: Duration,
    /// JetStream's de-duplication window for `Nats-Msg-Id`.
    pub duplicate_window: Duration,
}

impl BusConfig {
    /// `KEEL_NATS_URL`, `KEEL_NATS_STREAM` (default `KEEL_EVENTS`), `KEEL_NATS_SUBJECT_PREFIX`
    /// (default `keel`).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let cfg = BusConfig {
            url: env.url("KEEL_NATS_URL", &["nats", "tls"])?,
            stream: env.or("KEEL_NATS_STREAM", "KEEL_EVENTS".to_owned())?,
            subject_prefix: env.or("KEEL_NATS_SUBJECT_PREFIX", "keel".to_owned())?,
            publish_timeout: env.duration("KEEL_NATS_PUBLISH_TIMEOUT", DEFAULT_PUBLISH_TIMEOUT)?,
            duplicate_window: env
                .duration("KEEL_NATS_DUPLICATE_WINDOW", DEFAULT_DUPLICATE_WINDOW)?,
        };
        let token_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !token_ok(&cfg.stream) {
            return Err(ConfigError::Invalid {
                key: "KEEL_NATS_STREAM".into(),
                shown: format!("{:?}", cfg.stream),
                problem: "use letters, digits, '_' and '-' only".into(),
            });
        }
        if !token_ok(&cfg.subject_prefix) {
            return Err(ConfigError::Invalid {
                key: "KEEL_NATS_SUBJECT_PREFIX".into(),
                shown: format!("{:?}", cfg.subject_prefix),
                problem: "must be one subject token: letters, digits, '_' and '-'".into(),
            });
        }
        Ok(cfg)
    }
}

/// An event ready to publish.
#[derive(Debug, Clone)]
pub struct OutgoingEvent {
    /// Unique event ID; becomes `Nats-Msg-Id`.
    pub id: String,
    pub tenant: TenantId,
    /// Subject suffix, e.g. `document.created`.
    pub kind: String,
    /// Full protobuf message name of the payload.
    pub event_type: String,
    pub schema_version: u32,
    pub payload: bytes::Bytes,
    /// The producer's W3C context, so the consumer's span joins the producer's trace.
    pub traceparent: Option<String>,
}

/// A connected client plus its JetStream context.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    cfg: BusConfig,
}

impl Bus {
    /// Connects; when the server is not up yet the client keeps retrying in the background and
    /// calls fail UNAVAILABLE until it is.
    pub async fn connect(cfg: BusConfig) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("keel")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(cfg.url.as_str())
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let js = jetstream::new(client.clone());
        Ok(Bus { client, js, cfg })
    }

    pub fn config(&self) -> &BusConfig {
        &self.cfg
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// `<prefix>.events.<tenant>.<kind>`.
    pub fn subject(&self, tenant: &TenantId, kind: &str) -> String {
        format!("{}.events.{tenant}.{kind}", self.cfg.subject_prefix)
    }

    /// The filter that matches one kind of event (a subject pattern such as `document.*`) for
    /// every tenant.
    pub fn kind_filter(&self, kind: &str) -> String {
        format!("{}.events.*.{kind}", self.cfg.subject_prefix)
    }

    /// Declares the event stream (creating it, or returning the existing one).
    pub async fn ensure_stream(&self) -> Result<stream::Stream, BusError> {
        self.js
            .get_or_create_stream(stream::Config {
                name: self.cfg.stream.clone(),
                subjects: vec![format!("{}.events.>", self.cfg.subject_prefix)],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                duplicate_window: self.cfg.duplicate_window,
                max_age: DEFAULT_MAX_AGE,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }

    /// Publishes and waits for the PubAck. Returns whether JetStream recognised the message as a
    /// duplicate of one already stored (same `Nats-Msg-Id` within the window).
    pub async fn publish(&self, ev: &OutgoingEvent) -> Result<bool, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", ev.id.as_str());
        headers.insert(NATS_TENANT_HEADER, ev.tenant.as_str());
        headers.insert(EVENT_TYPE_HEADER, ev.event_type.as_str());
        headers.insert(
            SCHEMA_VERSION_HEADER,
            ev.schema_version.to_string().as_str(),
        );
        let cx = keel_telemetry::propagation::from_traceparent(ev.traceparent.as_deref());
        keel_telemetry::propagation::inject_nats(&cx, &mut headers);
        let subject = self.subject(&ev.tenant, &ev.kind);
        let publish = async {
            let ack = self
                .js
                .publish_with_headers(subject, headers, ev.payload.clone())
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))?;
            ack.await.map_err(|e| {
                use async_nats::jetstream::context::PublishErrorKind as K;
                match e.kind() {
                    K::TimedOut | K::BrokenPipe | K::StreamNotFound => {
                        BusError::Unavailable(e.to_string())
                    }
                    _ => BusError::Refused(e.to_string()),
                }
            })
        };
        let ack = tokio::time::timeout(self.cfg.publish_timeout, publish)
            .await
            .map_err(|_| BusError::Unavailable("publish timed out waiting for PubAck".into()))??;
        Ok(ack.duplicate)
    }

    /// Checks the connection and that JetStream answers.
    /// Every durable consumer of the event stream with its backlog: what is not yet delivered
    /// and what is delivered but not acknowledged.
    pub async fn consumer_states(&self) -> Result<Vec<ConsumerState>, BusError> {
        use futures::TryStreamExt;
        let stream = self.ensure_stream().await?;
        stream
            .consumers()
            .map_err(|e| BusError::Unavailable(e.to_string()))
            .map_ok(|info| ConsumerState {
                name: info.name,
                pending: info.num_pending,
                ack_pending: info.num_ack_pending as u64,
            })
            .try_collect()
            .await
    }

    pub async fn ping(&self) -> Result<(), BusError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(BusError::Unavailable("not connected".into()));
        }
        tokio::time::timeout(Duration::from_secs(2), self.js.query_account())
            .await
            .map_err(|_| BusError::Unavailable("JetStream did not answer".into()))?
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validates_names() {
        let base = Env::from_pairs([("KEEL_NATS_URL", "nats://127.0.0.1:4222")]);
        let cfg = BusConfig::from_env(&base).unwrap();
        assert_eq!(cfg.stream, "KEEL_EVENTS");
        assert_eq!(cfg.subject_prefix, "keel");
        assert!(
            BusConfig::from_env(&base.clone().with("KEEL_NATS_SUBJECT_PREFIX", "a.b")).is_err()
        );
        assert!(BusConfig::from_env(&base.clone().with("KEEL_NATS_STREAM", "x y")).is_err());
        assert!(BusConfig::from_env(&Env::from_pairs([("KEEL_NATS_URL", "http://x")])).is_err());
    }
}
