//! The audit log: `AuditEvent`s (from auth, and inference's model exports) → an append-only
//! log per tenant (the event ID is the key, so a redelivery adds nothing; the table refuses
//! updates and deletes), and the internal `AuditLog` service tenant admins read it through.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use keel_bus::{Delivery, HandlerError};
use keel_proto::public as pb;
use keel_runtime::context::tenant;
use keel_store::{Shards, StoreError};
use keel_tenancy::TenantId;
use sqlx::Row;
use tonic::{Request, Response, Status};

use crate::common::{self, ShardBatch, decode_event, invalid};
use crate::handler::permanent;

pub const AUDIT_CONSUMER: &str = "postproc-audit";
pub const AUDIT_BATCH: usize = 256;
const DEFAULT_PAGE: i32 = 100;
const MAX_PAGE: i32 = 500;

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub event_id: String,
    pub tenant: TenantId,
    pub kind: String,
    pub user_id: String,
    pub session_id: String,
    pub occur_time: DateTime<Utc>,
    pub details: BTreeMap<String, String>,
}

pub fn decode(d: &Delivery) -> Result<Entry, HandlerError> {
    let (m, env) =
        decode_event::<keel_proto::events::AuditEvent>(d, "keel.events.v1.AuditEvent", |m| {
            (&m.tenant_id, &m.event_id, m.occur_time)
        })?;
    if m.kind.is_empty() || m.kind.len() > 100 {
        return Err(permanent("kind is missing or too long"));
    }
    Ok(Entry {
        event_id: env.event_id,
        tenant: env.tenant,
        kind: m.kind,
        user_id: m.user_id.chars().take(200).collect(),
        session_id: m.session_id.chars().take(200).collect(),
        occur_time: env.occur_time,
        details: m.details.into_iter().collect(),
    })
}

pub struct AuditHandler;

impl ShardBatch for AuditHandler {
    type Item = Entry;
    const BATCH: usize = AUDIT_BATCH;

    fn decode(d: &Delivery) -> Result<Entry, HandlerError> {
        decode(d)
    }

    fn tenant(item: &Entry) -> &TenantId {
        &item.tenant
    }

    async fn store(&self, pool: &sqlx::PgPool, es: Vec<Entry>) -> Result<(), StoreError> {
        let details: Vec<String> = es
            .iter()
            .map(|e| serde_json::to_string(&e.details).unwrap_or_else(|_| "{}".into()))
            .collect();
        sqlx::query(
            "INSERT INTO audit_log (tenant_id, event_id, kind, user_id, session_id, occur_time, details)
             SELECT t, e, k, u, s, o, d::jsonb
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[])
               AS x(t, e, k, u, s, o, d)
             ON CONFLICT (tenant_id, event_id) DO NOTHING",
        )
        .bind(es.iter().map(|e| e.tenant.as_str()).collect::<Vec<_>>())
        .bind(es.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>())
        .bind(es.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
        .bind(es.iter().map(|e| e.user_id.as_str()).collect::<Vec<_>>())
        .bind(es.iter().map(|e| e.session_id.as_str()).collect::<Vec<_>>())
        .bind(es.iter().map(|e| e.occur_time).collect::<Vec<_>>())
        .bind(details)
        .execute(pool)
        .await?;
        Ok(())
    }
}

/// The gRPC edge.
pub struct AuditLog {
    shards: Shards,
}

impl AuditLog {
    pub fn new(shards: Shards) -> Self {
        AuditLog { shards }
    }
}

#[tonic::async_trait]
impl keel_proto::postproc::audit_log_server::AuditLog for AuditLog {
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let size = common::page_size(r.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        if r.kind.len() > 100 {
            return Err(invalid("kind", "is at most 100 characters"));
        }
        let after = common::parse_time_token(&r.page_token)?;
        let unavailable = common::unavailable("the audit log");
        let mut tx = self
            .shards
            .begin(&tenant)
            .await
            .map_err(|e| unavailable(&e))?;
        let rows = sqlx::query(
            "SELECT event_id, kind, user_id, session_id, occur_time, details::text AS details
             FROM audit_log
             WHERE tenant_id = $1
               AND ($2 = '' OR kind = $2 OR kind LIKE $2 || '.%')
               AND ($3::timestamptz IS NULL OR (occur_time, event_id) < ($3, $4))
             ORDER BY occur_time DESC, event_id DESC LIMIT $5",
        )
        .bind(tenant.as_str())
        .bind(&r.kind)
        .bind(after.as_ref().map(|a| a.0))
        .bind(after.as_ref().map(|a| a.1.clone()).unwrap_or_default())
        .bind(i64::from(size) + 1)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| unavailable(&e))?;
        tx.commit().await.map_err(|e| unavailable(&e))?;
        let mut entries = Vec::new();
        let mut last = None;
        for row in rows.iter().take(size as usize) {
            let at: DateTime<Utc> = row.try_get("occur_time").map_err(|e| unavailable(&e))?;
            let id: String = row.try_get("event_id").map_err(|e| unavailable(&e))?;
            let details: String = row.try_get("details").map_err(|e| unavailable(&e))?;
            entries.push(pb::AuditEntry {
                event_id: id.clone(),
                kind: row.try_get("kind").map_err(|e| unavailable(&e))?,
                user_id: row.try_get("user_id").map_err(|e| unavailable(&e))?,
                session_id: row.try_get("session_id").map_err(|e| unavailable(&e))?,
                occur_time: Some(common::timestamp(at)),
                details: serde_json::from_str(&details).unwrap_or_default(),
            });
            last = Some(common::time_token(at, &id));
        }
        Ok(Response::new(pb::ListAuditEventsResponse {
            entries,
            next_page_token: if rows.len() > size as usize {
                last.unwrap_or_default()
            } else {
                String::new()
            },
        }))
    }
}
