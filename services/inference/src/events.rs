//! Events inference announces through its outbox (relayed to JetStream): one
//! `InferenceCompleted` per model call — completed, cancelled, failed mid-stream or served from
//! the cache — for metering and post-processing, and `AuditEvent`s for model exports.

use std::collections::HashMap;

use chrono::Utc;
use keel_outbox::NewEvent;
use keel_proto::events;
use keel_store::Shards;
use keel_tenancy::TenantId;
use prost::Message;
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
}

#[derive(Clone)]
pub struct Events {
    shards: Shards,
    relay: keel_outbox::Wakeup,
}

impl Events {
    pub fn new(shards: Shards, relay: keel_outbox::Wakeup) -> Self {
        Events { shards, relay }
    }

    async fn write(
        &self,
        tenant: &TenantId,
        id: Uuid,
        kind: &'static str,
        event_type: &'static str,
        payload: Vec<u8>,
    ) -> Result<(), Error> {
        let mut tx = self.shards.begin(tenant).await?;
        keel_outbox::insert(
            &mut tx,
            NewEvent::new(id, tenant, kind, event_type, payload),
        )
        .await?;
        tx.commit().await?;
        self.relay.wake();
        Ok(())
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
