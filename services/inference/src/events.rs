//! Events inference announces through its outbox (relayed to JetStream): one
//! `InferenceCompleted` per model call — completed, cancelled, failed mid-stream or served from
//! the cache — for metering and post-processing, and `AuditEvent`s for model exports.
//!
//! These events change nothing else, so they need no transaction of their own: a writer per
//! shard takes whatever has queued while its last write was in flight and inserts it in one
//! statement (group commit). A caller still waits for its event to be committed before it
//! answers, so nothing answered goes unrecorded; under load, one transaction carries dozens.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use keel_outbox::NewEvent;
use keel_proto::events;
use keel_runtime::Tasks;
use keel_store::Shards;
use keel_tenancy::TenantId;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::Error;
use crate::documents::timestamp;

/// One model call, as metered.
#[derive(Debug, Clone)]
pub struct Completed {
    pub model: String,
    pub model_version: String,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub time_to_first_token_ms: u32,
    pub duration_ms: u32,
    /// "stop", "length", "cancelled", "error".
    pub finish_reason: String,
    pub cache_hit: bool,
    pub fallback_from: Option<String>,
    /// The answer's text (the first [`OUTPUT_TEXT_CHARS`] characters; empty for embeddings).
    pub output_text: String,
}

/// Answer text an event carries, at most: enough for the moderation and quality pass, small
/// enough for the stream.
pub const OUTPUT_TEXT_CHARS: usize = 4096;

/// Appends `more` to `text` up to [`OUTPUT_TEXT_CHARS`] characters.
pub fn keep_text(text: &mut String, more: &str) {
    let room = OUTPUT_TEXT_CHARS.saturating_sub(text.chars().count());
    text.extend(more.chars().take(room));
}

/// Events queued per shard before callers wait for room (each caller waits for its commit
/// anyway, so this bounds memory, not latency).
const QUEUE: usize = 4096;
/// Events written in one statement, at most.
const MAX_BATCH: usize = 512;

struct Queued {
    event: NewEvent,
    done: oneshot::Sender<bool>,
}

#[derive(Clone)]
pub struct Events {
    shards: Shards,
    queues: Arc<Vec<mpsc::Sender<Queued>>>,
}

impl Events {
    /// Starts one writer per physical shard, owned by `tasks` (at shutdown a writer stops
    /// taking new events and writes what is queued).
    pub fn start(shards: Shards, relay: keel_outbox::Wakeup, tasks: &Tasks) -> Self {
        let mut queues = Vec::new();
        for pool in shards.pools() {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.push(tx);
            tasks.spawn(
                "inference-events",
                writer(pool.clone(), rx, relay.clone(), tasks.token()),
            );
        }
        Events {
            shards,
            queues: Arc::new(queues),
        }
    }

    async fn write(
        &self,
        tenant: &TenantId,
        id: Uuid,
        kind: &'static str,
        event_type: &'static str,
        payload: Vec<u8>,
    ) -> Result<(), Error> {
        let (done, committed) = oneshot::channel();
        let queue = self
            .queues
            .get(self.shards.map().physical(tenant))
            .ok_or_else(|| Error::Unavailable("no event writer for the shard".into()))?;
        queue
            .send(Queued {
                event: NewEvent::new(id, tenant, kind, event_type, payload),
                done,
            })
            .await
            .map_err(|_| Error::Unavailable("the event writer has stopped".into()))?;
        match committed.await {
            Ok(true) => Ok(()),
            _ => Err(Error::Unavailable("the event could not be recorded".into())),
        }
    }

    /// Writes the call's event. A failure is logged and counted, not returned: the caller has
    /// its answer, and the metering gap is visible in `keel_inference_events_failed_total`.
    pub async fn completed(&self, tenant: &TenantId, c: Completed) {
        let id = Uuid::now_v7();
        let payload = events::InferenceCompleted {
            event_id: id.to_string(),
            tenant_id: tenant.to_string(),
            model: c.model,
            model_version: c.model_version,
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            time_to_first_token_ms: c.time_to_first_token_ms,
            duration_ms: c.duration_ms,
            finish_reason: c.finish_reason,
            occur_time: Some(timestamp(Utc::now())),
            cache_hit: c.cache_hit,
            fallback_from: c.fallback_from.unwrap_or_default(),
            output_text: c.output_text,
        }
        .encode_to_vec();
        if let Err(e) = self
            .write(
                tenant,
                id,
                "inference.completed",
                "keel.events.v1.InferenceCompleted",
                payload,
            )
            .await
        {
            metrics::counter!("keel_inference_events_failed_total").increment(1);
            tracing::error!(error = %e, "could not record an inference event");
        }
    }

    /// The audit event of a model export; the export does not start unless it is written.
    pub async fn exported(
        &self,
        tenant: &TenantId,
        subject: &str,
        version: &str,
    ) -> Result<(), Error> {
        let id = Uuid::now_v7();
        let payload = events::AuditEvent {
            event_id: id.to_string(),
            tenant_id: tenant.to_string(),
            kind: "model.exported".into(),
            user_id: subject.chars().take(200).collect(),
            session_id: String::new(),
            occur_time: Some(timestamp(Utc::now())),
            details: HashMap::from([("model_version".to_owned(), version.to_owned())]),
        }
        .encode_to_vec();
        self.write(
            tenant,
            id,
            "audit.model.exported",
            "keel.events.v1.AuditEvent",
            payload,
        )
        .await
    }
}

/// One shard's writer: each round takes what has queued (up to [`MAX_BATCH`]) and commits it
/// in one statement, then tells every caller.
async fn writer(
    pool: sqlx::PgPool,
    mut rx: mpsc::Receiver<Queued>,
    relay: keel_outbox::Wakeup,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let first = tokio::select! {
            q = rx.recv() => match q {
                Some(q) => q,
                None => return,
            },
            _ = stop.cancelled() => {
                // Take nothing new; write what is already queued, then end.
                rx.close();
                match rx.recv().await {
                    Some(q) => q,
                    None => return,
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let mut events = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        for q in batch {
            events.push(q.event);
            waiters.push(q.done);
        }
        let result = async {
            let mut tx = pool.begin().await?;
            keel_outbox::insert_many(&mut tx, &events).await?;
            tx.commit().await
        }
        .await;
        metrics::histogram!("keel_inference_event_batch_size").record(events.len() as f64);
        let ok = match result {
            Ok(()) => {
                relay.wake();
                true
            }
            Err(e) => {
                tracing::error!(error = %e, events = events.len(), "writing inference events failed");
                false
            }
        };
        for w in waiters {
            let _ = w.send(ok);
        }
    }
}
