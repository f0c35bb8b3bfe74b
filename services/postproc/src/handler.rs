//! Document events → document records and per-tenant counters, effectively once: the effect and
//! the dedupe record commit in one transaction on the tenant's shard, then the runner acks.

use keel_bus::{Delivery, Handler, HandlerError};
use keel_store::{Shards, StoreError};
use keel_tenancy::TenantId;
use prost::Message;
use uuid::Uuid;

/// Durable consumer name (its position survives restarts).
pub const DOCUMENTS_CONSUMER: &str = "postproc-documents";
/// The schema versions of document events this code understands.
const KNOWN_SCHEMA_VERSIONS: &[&str] = &["1"];

/// A decoded document event (domain form).
#[derive(Debug, Clone, PartialEq)]
pub enum DocumentEvent {
    Created {
        document_id: Uuid,
        version: i64,
        title: String,
        content_bytes: i64,
    },
    Updated {
        document_id: Uuid,
        version: i64,
        title: String,
        content_bytes: i64,
    },
    Deleted {
        document_id: Uuid,
        version: i64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub event_id: String,
    pub tenant: TenantId,
    pub event: DocumentEvent,
}

pub fn permanent(msg: impl Into<String>) -> HandlerError {
    HandlerError::Permanent(msg.into())
}

/// Decodes and cross-checks a delivery: headers and payload must agree on tenant and event ID.
/// The envelope every event carries in its headers: a known schema version, the tenant and
/// the event ID. Returns (tenant, event ID).
pub fn envelope(d: &Delivery) -> Result<(TenantId, String), HandlerError> {
    let version = d.schema_version.as_deref().unwrap_or("");
    if !KNOWN_SCHEMA_VERSIONS.contains(&version) {
        return Err(permanent(format!("unknown schema version {version:?}")));
    }
    let header_tenant = d
        .tenant
        .clone()
        .ok_or_else(|| permanent("missing or invalid Keel-Tenant-Id header"))?;
    let header_id = d
        .event_id
        .clone()
        .ok_or_else(|| permanent("missing Nats-Msg-Id header"))?;
    Ok((header_tenant, header_id))
}

/// The payload must name the tenant and event ID its headers name.
pub fn same_envelope(
    header: &(TenantId, String),
    tenant_id: &str,
    event_id: &str,
) -> Result<(), HandlerError> {
    if tenant_id != header.0.as_str() {
        return Err(permanent(
            "payload tenant differs from the Keel-Tenant-Id header",
        ));
    }
    if event_id != header.1 {
        return Err(permanent("payload event_id differs from Nats-Msg-Id"));
    }
    Ok(())
}

pub fn decode(d: &Delivery) -> Result<Decoded, HandlerError> {
    let (header_tenant, header_id) = envelope(d)?;
    let bad = |e: prost::DecodeError| permanent(format!("undecodable payload: {e}"));
    let uuid = |s: &str| {
        Uuid::try_parse(s).map_err(|_| permanent(format!("document_id {s:?} is not a UUID")))
    };
    let (event_id, tenant_id, event) = match d.event_type.as_deref() {
        Some("keel.events.v1.DocumentCreated") => {
            let m = keel_proto::events::DocumentCreated::decode(d.payload.as_ref()).map_err(bad)?;
            let ev = DocumentEvent::Created {
                document_id: uuid(&m.document_id)?,
                version: m.version,
                title: m.title,
                content_bytes: m.content_bytes,
            };
            (m.event_id, m.tenant_id, ev)
        }
        Some("keel.events.v1.DocumentUpdated") => {
            let m = keel_proto::events::DocumentUpdated::decode(d.payload.as_ref()).map_err(bad)?;
            let ev = DocumentEvent::Updated {
                document_id: uuid(&m.document_id)?,
                version: m.version,
                title: m.title,
                content_bytes: m.content_bytes,
            };
            (m.event_id, m.tenant_id, ev)
        }
        Some("keel.events.v1.DocumentDeleted") => {
            let m = keel_proto::events::DocumentDeleted::decode(d.payload.as_ref()).map_err(bad)?;
            let ev = DocumentEvent::Deleted {
                document_id: uuid(&m.document_id)?,
                version: m.version,
            };
            (m.event_id, m.tenant_id, ev)
        }
        other => return Err(permanent(format!("unexpected event type {other:?}"))),
    };
    let header = (header_tenant, header_id);
    same_envelope(&header, &tenant_id, &event_id)?;
    let (header_tenant, _) = header;
    Ok(Decoded {
        event_id,
        tenant: header_tenant,
        event,
    })
}

pub struct DocumentHandler {
    shards: Shards,
    indexer: Option<crate::indexer::Indexer>,
}

impl DocumentHandler {
    /// `indexer`: keeps the retrieval index in step (none: records only).
    pub fn new(shards: Shards, indexer: Option<crate::indexer::Indexer>) -> Self {
        DocumentHandler { shards, indexer }
    }

    /// Brings the document's chunks up to date (idempotent; before the local effect, so a
    /// failure here is retried with the event).
    async fn index(&self, d: &Decoded) -> Result<(), HandlerError> {
        let Some(indexer) = &self.indexer else {
            return Ok(());
        };
        let result = match &d.event {
            DocumentEvent::Created { document_id, .. }
            | DocumentEvent::Updated { document_id, .. } => {
                indexer.index(&d.tenant, *document_id).await.map(|_| ())
            }
            DocumentEvent::Deleted { document_id, .. } => {
                indexer.remove(&d.tenant, *document_id).await
            }
        };
        // Whatever inference answered, the event is kept and retried (bounded by max_deliver):
        // an index that lags is better than an event lost.
        result.map_err(|e| HandlerError::Transient(e.to_string()))
    }

    /// Applies the event; returns false when it had already been applied (a duplicate).
    #[tracing::instrument(name = "postproc.apply", skip_all, fields(db.system = "postgresql", event_id = %d.event_id))]
    pub async fn apply(&self, d: &Decoded) -> Result<bool, StoreError> {
        let mut tx = self.shards.begin(&d.tenant).await?;
        let fresh = sqlx::query(
            "INSERT INTO processed_events (consumer, event_id, tenant_id) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(DOCUMENTS_CONSUMER)
        .bind(&d.event_id)
        .bind(d.tenant.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tx.rollback().await?;
            return Ok(false);
        }
        let t = d.tenant.as_str();
        match &d.event {
            DocumentEvent::Created {
                document_id,
                version,
                title,
                content_bytes,
            }
            | DocumentEvent::Updated {
                document_id,
                version,
                title,
                content_bytes,
            } => {
                // Events of one document may arrive out of order after redeliveries: keep the
                // highest version.
                sqlx::query(
                    "INSERT INTO document_records (tenant_id, document_id, version, title, content_bytes, last_event_id)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (tenant_id, document_id) DO UPDATE
                     SET version = EXCLUDED.version, title = EXCLUDED.title,
                         content_bytes = EXCLUDED.content_bytes, last_event_id = EXCLUDED.last_event_id,
                         update_time = now()
                     WHERE document_records.version < EXCLUDED.version AND NOT document_records.deleted",
                )
                .bind(t)
                .bind(document_id)
                .bind(version)
                .bind(title)
                .bind(content_bytes)
                .bind(&d.event_id)
                .execute(&mut *tx)
                .await?;
            }
            DocumentEvent::Deleted {
                document_id,
                version,
            } => {
                sqlx::query(
                    "INSERT INTO document_records (tenant_id, document_id, version, title, content_bytes, deleted, last_event_id)
                     VALUES ($1, $2, $3, '', 0, true, $4)
                     ON CONFLICT (tenant_id, document_id) DO UPDATE
                     SET deleted = true, last_event_id = EXCLUDED.last_event_id, update_time = now()",
                )
                .bind(t)
                .bind(document_id)
                .bind(version)
                .bind(&d.event_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        let column = match d.event {
            DocumentEvent::Created { .. } => "created",
            DocumentEvent::Updated { .. } => "updated",
            DocumentEvent::Deleted { .. } => "deleted",
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO tenant_document_stats (tenant_id, {column}) VALUES ($1, 1)
             ON CONFLICT (tenant_id) DO UPDATE SET {column} = tenant_document_stats.{column} + 1"
        )))
        .bind(t)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

impl Handler for DocumentHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let decoded = decode(delivery)?;
        self.index(&decoded).await?;
        match self.apply(&decoded).await {
            Ok(true) => {
                tracing::info!(event_id = %decoded.event_id, "document event applied");
                Ok(())
            }
            Ok(false) => {
                metrics::counter!("keel_consumer_duplicates_total", "consumer" => DOCUMENTS_CONSUMER).increment(1);
                tracing::info!(event_id = %decoded.event_id, "duplicate event ignored");
                Ok(())
            }
            // An outage, or anything unexpected from the database: retry (bounded by
            // max_deliver) rather than lose the event on a bug we can fix and replay.
            Err(e) => Err(HandlerError::Transient(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(event_type: &str, payload: Vec<u8>, tenant: &str, id: &str) -> Delivery {
        Delivery {
            subject: format!("keel.events.{tenant}.document.created"),
            event_id: Some(id.into()),
            tenant: TenantId::parse(tenant).ok(),
            event_type: Some(event_type.into()),
            schema_version: Some("1".into()),
            payload: payload.into(),
            delivered: 1,
            stream_sequence: 1,
        }
    }

    fn created(tenant: &str, id: &str) -> Vec<u8> {
        keel_proto::events::DocumentCreated {
            event_id: id.into(),
            tenant_id: tenant.into(),
            document_id: Uuid::nil().to_string(),
            version: 1,
            title: "t".into(),
            content_bytes: 3,
            occur_time: None,
        }
        .encode_to_vec()
    }

    #[test]
    fn decodes_a_well_formed_event() {
        let d = delivery(
            "keel.events.v1.DocumentCreated",
            created("acme", "e1"),
            "acme",
            "e1",
        );
        let got = decode(&d).unwrap();
        assert_eq!(got.event_id, "e1");
        assert!(matches!(
            got.event,
            DocumentEvent::Created { version: 1, .. }
        ));
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let is_permanent = |d: Delivery| matches!(decode(&d), Err(HandlerError::Permanent(_)));
        assert!(is_permanent(delivery(
            "keel.events.v1.DocumentCreated",
            created("acme", "e1"),
            "globex",
            "e1"
        )));
        assert!(is_permanent(delivery(
            "keel.events.v1.DocumentCreated",
            created("acme", "e2"),
            "acme",
            "e1"
        )));
        assert!(is_permanent(delivery(
            "keel.events.v1.Nope",
            created("acme", "e1"),
            "acme",
            "e1"
        )));
        assert!(is_permanent(delivery(
            "keel.events.v1.DocumentCreated",
            vec![0xff, 0xff, 0xff],
            "acme",
            "e1"
        )));
        let mut d = delivery(
            "keel.events.v1.DocumentCreated",
            created("acme", "e1"),
            "acme",
            "e1",
        );
        d.schema_version = Some("2".into());
        assert!(is_permanent(d));
        let mut d = delivery(
            "keel.events.v1.DocumentCreated",
            created("acme", "e1"),
            "acme",
            "e1",
        );
        d.tenant = None;
        assert!(is_permanent(d));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            for t in ["keel.events.v1.DocumentCreated", "keel.events.v1.DocumentUpdated", "keel.events.v1.DocumentDeleted"] {
                let _ = decode(&delivery(t, bytes.clone(), "acme", "e1"));
            }
        }
    }
}
