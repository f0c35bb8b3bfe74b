//! The dead-letter stream: where a message goes when it cannot be processed — a permanent
//! failure (undecodable, unknown schema version) or a transient one that outlasted
//! `max_deliver` — before the consumer terminates it. Nothing is dropped silently: the dead
//! letter keeps the original subject, headers and payload, and adds why, by whom and after how
//! many deliveries. `keelctl dlq list|show|replay` inspects and replays them.
//!
//! Stream `<stream>_DLQ`, subjects `<prefix>.dlq.<consumer>`. A replay publishes the message to
//! its original subject with its original headers, under a new `Nats-Msg-Id` (the old one may
//! still be in the duplicate window) and the original event ID in `Keel-Event-Id`, which
//! consumers take as the event's identity, then deletes the dead letter.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::stream;

use crate::{Bus, BusError};

pub const ERROR_HEADER: &str = "Keel-Dlq-Error";
pub const CONSUMER_HEADER: &str = "Keel-Dlq-Consumer";
pub const DELIVERED_HEADER: &str = "Keel-Dlq-Delivered";
pub const SUBJECT_HEADER: &str = "Keel-Dlq-Subject";
pub const SEQUENCE_HEADER: &str = "Keel-Dlq-Stream-Sequence";
/// The event's identity when it differs from `Nats-Msg-Id` (a replay).
pub const EVENT_ID_HEADER: &str = "Keel-Event-Id";
/// How many times a dead letter has been replayed.
pub const REPLAYS_HEADER: &str = "Keel-Replays";
/// Dead letters are kept longer than events (7 days): someone has to look at them.
pub const DLQ_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Error texts kept in a header, at most (headers are not for stack traces).
const MAX_ERROR: usize = 1000;

/// A message that could not be processed, on its way to the dead-letter stream.
pub struct Failed<'a> {
    pub consumer: &'a str,
    pub original_subject: &'a str,
    pub original_headers: Option<&'a HeaderMap>,
    pub payload: bytes::Bytes,
    pub error: &'a str,
    pub delivered: i64,
    pub stream_sequence: u64,
}

/// A dead letter as read back.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream (what show and replay take).
    pub sequence: u64,
    pub consumer: String,
    pub error: String,
    pub delivered: i64,
    /// Where it was published originally.
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: bytes::Bytes,
    pub time: String,
}

impl Bus {
    pub fn dlq_stream_name(&self) -> String {
        format!("{}_DLQ", self.cfg.stream)
    }

    fn dlq_subject(&self, consumer: &str) -> String {
        format!("{}.dlq.{consumer}", self.cfg.subject_prefix)
    }

    pub async fn ensure_dlq_stream(&self) -> Result<stream::Stream, BusError> {
        self.js
            .get_or_create_stream(stream::Config {
                name: self.dlq_stream_name(),
                subjects: vec![format!("{}.dlq.>", self.cfg.subject_prefix)],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                duplicate_window: self.cfg.duplicate_window,
                max_age: DLQ_MAX_AGE,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }

    /// Stores a dead letter and returns once the server has it (PubAck).
    pub async fn dead_letter(&self, f: Failed<'_>) -> Result<(), BusError> {
        let Failed {
            consumer,
            original_subject,
            original_headers,
            payload,
            error,
            delivered,
            stream_sequence,
        } = f;
        self.ensure_dlq_stream().await?;
        let mut headers = original_headers.cloned().unwrap_or_default();
        // The event's identity travels in `Keel-Event-Id`; `Nats-Msg-Id` becomes this dead
        // letter's own, one per consumer and stream message: two consumers failing on the same
        // event each leave theirs, and one consumer dead-lettering the same message twice (a
        // term that was lost) leaves one.
        if headers.get(EVENT_ID_HEADER).is_none()
            && let Some(id) = headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned())
        {
            headers.insert(EVENT_ID_HEADER, id.as_str());
        }
        headers.insert(
            "Nats-Msg-Id",
            format!("dlq:{consumer}:{stream_sequence}").as_str(),
        );
        let error: String = error.chars().take(MAX_ERROR).collect();
        headers.insert(ERROR_HEADER, error.replace(['\r', '\n'], " ").as_str());
        headers.insert(CONSUMER_HEADER, consumer);
        headers.insert(DELIVERED_HEADER, delivered.to_string().as_str());
        headers.insert(SUBJECT_HEADER, original_subject);
        headers.insert(SEQUENCE_HEADER, stream_sequence.to_string().as_str());
        let publish = async {
            self.js
                .publish_with_headers(self.dlq_subject(consumer), headers, payload)
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))?
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))
        };
        tokio::time::timeout(self.cfg.publish_timeout, publish)
            .await
            .map_err(|_| BusError::Unavailable("dead letter not acknowledged in time".into()))??;
        Ok(())
    }

    /// Every dead letter, oldest first (at most `limit`).
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let mut stream = self.ensure_dlq_stream().await?;
        let state = stream
            .info()
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?
            .state
            .clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return Ok(out);
        }
        for seq in state.first_sequence..=state.last_sequence {
            if out.len() >= limit {
                break;
            }
            if let Some(d) = self.dead_letter_at(&stream, seq).await? {
                out.push(d);
            }
        }
        Ok(out)
    }

    async fn dead_letter_at(
        &self,
        stream: &stream::Stream,
        seq: u64,
    ) -> Result<Option<DeadLetter>, BusError> {
        let msg = match stream.get_raw_message(seq).await {
            Ok(m) => m,
            // Deleted (replayed) or never written: a gap.
            Err(e) if matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound) => {
                return Ok(None);
            }
            Err(e) => return Err(BusError::Unavailable(e.to_string())),
        };
        let get = |name: &str| {
            msg.headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        let headers = msg
            .headers
            .iter()
            .flat_map(|(k, vs)| {
                vs.iter()
                    .map(move |v| (k.to_string(), v.as_str().to_owned()))
            })
            .collect();
        Ok(Some(DeadLetter {
            sequence: seq,
            consumer: get(CONSUMER_HEADER),
            error: get(ERROR_HEADER),
            delivered: get(DELIVERED_HEADER).parse().unwrap_or(0),
            subject: get(SUBJECT_HEADER),
            headers,
            payload: msg.payload.clone(),
            time: msg.time.to_string(),
        }))
    }

    pub async fn dead_letter_by_sequence(&self, seq: u64) -> Result<Option<DeadLetter>, BusError> {
        let stream = self.ensure_dlq_stream().await?;
        self.dead_letter_at(&stream, seq).await
    }

    /// Publishes the dead letter back to its original subject (see the module's note on
    /// identity), then deletes it. Returns false when there is no such dead letter.
    pub async fn replay_dead_letter(&self, seq: u64) -> Result<bool, BusError> {
        let stream = self.ensure_dlq_stream().await?;
        let Some(d) = self.dead_letter_at(&stream, seq).await? else {
            return Ok(false);
        };
        if d.subject.is_empty() {
            return Err(BusError::Refused(format!(
                "dead letter {seq} does not name its original subject"
            )));
        }
        let mut headers = HeaderMap::new();
        let mut original_id = String::new();
        let mut replays = 0u32;
        for (k, v) in &d.headers {
            match k.as_str() {
                // A dead letter's own ID (`dlq:…`) is not the event's.
                "Nats-Msg-Id" if !v.starts_with("dlq:") => original_id = v.clone(),
                "Nats-Msg-Id" => {}
                REPLAYS_HEADER => replays = v.parse().unwrap_or(0),
                ERROR_HEADER | CONSUMER_HEADER | DELIVERED_HEADER | SUBJECT_HEADER
                | SEQUENCE_HEADER => {}
                _ => headers.append(k.as_str(), v.as_str()),
            }
        }
        let event_id = d
            .headers
            .iter()
            .find(|(k, _)| k == EVENT_ID_HEADER)
            .map(|(_, v)| v.clone())
            .unwrap_or(original_id);
        if !event_id.is_empty() && headers.get(EVENT_ID_HEADER).is_none() {
            headers.insert(EVENT_ID_HEADER, event_id.as_str());
        }
        headers.insert(
            REPLAYS_HEADER,
            replays.saturating_add(1).to_string().as_str(),
        );
        headers.insert(
            "Nats-Msg-Id",
            format!("{event_id}:replay:{}:{seq}", replays.saturating_add(1)).as_str(),
        );
        let publish = async {
            self.js
                .publish_with_headers(d.subject.clone(), headers, d.payload.clone())
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))?
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))
        };
        tokio::time::timeout(self.cfg.publish_timeout, publish)
            .await
            .map_err(|_| BusError::Unavailable("replay not acknowledged in time".into()))??;
        stream
            .delete_message(seq)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(true)
    }
}
