//! The audit log: `AuditEvent`s (from auth, and inference's model exports) → an append-only
//! log per tenant (the event ID is the key, so a redelivery adds nothing; the table refuses
//! updates and deletes), and the internal `AuditLog` service tenant admins read it through.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use keel_bus::{Delivery, Handler, HandlerError};
use keel_proto::public as pb;
use keel_runtime::context::tenant;
use keel_store::{Shards, StoreError};
use keel_tenancy::TenantId;
use prost::Message;
use sqlx::Row;
use tonic::{Request, Response, Status};

use crate::handler::{envelope, permanent, same_envelope};

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
    let header = envelope(d)?;
    if d.event_type.as_deref() != Some("keel.events.v1.AuditEvent") {
        return Err(permanent(format!(
            "unexpected event type {:?}",
            d.event_type
        )));
    }
    let m = keel_proto::events::AuditEvent::decode(d.payload.as_ref())
        .map_err(|e| permanent(format!("undecodable payload: {e}")))?;
    same_envelope(&header, &m.tenant_id, &m.event_id)?;
    if m.kind.is_empty() || m.kind.len() > 100 {
        return Err(permanent("kind is missing or too long"));
    }
    let occur_time = m
        .occur_time
        .and_then(|t| {
            DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32)
        })
        .ok_or_else(|| permanent("occur_time is missing or out of range"))?;
    Ok(Entry {
        event_id: m.event_id,
        tenant: header.0,
        kind: m.kind,
        user_id: m.user_id.chars().take(200).collect(),
        session_id: m.session_id.chars().take(200).collect(),
        occur_time,
        details: m.details.into_iter().collect(),
    })
}

pub struct AuditHandler {
    shards: Shards,
}

impl AuditHandler {
    pub fn new(shards: Shards) -> Self {
        AuditHandler { shards }
    }

    async fn append(&self, shard: usize, es: &[&Entry]) -> Result<(), StoreError> {
        let Some(pool) = self.shards.pools().get(shard) else {
            return Err(StoreError::from(sqlx::Error::PoolClosed));
        };
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

impl Handler for AuditHandler {
    fn batch_size(&self) -> usize {
        AUDIT_BATCH
    }

    async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<Result<(), HandlerError>> {
        let decoded: Vec<Result<Entry, HandlerError>> = deliveries.iter().map(decode).collect();
        let mut results: Vec<Result<(), HandlerError>> = decoded
            .iter()
            .map(|d| match d {
                Ok(_) => Ok(()),
                Err(HandlerError::Permanent(e)) => Err(HandlerError::Permanent(e.clone())),
                Err(HandlerError::Transient(e)) => Err(HandlerError::Transient(e.clone())),
            })
            .collect();
        let mut by_shard: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, d) in decoded.iter().enumerate() {
            if let Ok(e) = d {
                by_shard
                    .entry(self.shards.map().physical(&e.tenant))
                    .or_default()
                    .push(i);
            }
        }
        for (shard, idx) in by_shard {
            let es: Vec<&Entry> = idx
                .iter()
                .filter_map(|i| decoded[*i].as_ref().ok())
                .collect();
            if let Err(e) = self.append(shard, &es).await {
                for i in idx {
                    results[i] = Err(HandlerError::Transient(e.to_string()));
                }
            }
        }
        results
    }

    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(delivery))
            .await
            .pop()
            .unwrap_or_else(|| Err(HandlerError::Transient("no result".into())))
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

fn invalid(field: &'static str, problem: impl Into<String>) -> Status {
    keel_errors::status(
        keel_errors::Reason::InvalidArgument,
        format!("{field}: {}", problem.into()),
        vec![("field", field.into())],
    )
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "audit query failed");
    keel_errors::status(
        keel_errors::Reason::Unavailable,
        "the audit log is unavailable",
        vec![("dependency", "postgres".into())],
    )
}

#[tonic::async_trait]
impl keel_proto::postproc::audit_log_server::AuditLog for AuditLog {
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let size = match r.page_size {
            0 => DEFAULT_PAGE,
            n if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(invalid("page_size", format!("must be 0 to {MAX_PAGE}"))),
        };
        if r.kind.len() > 100 {
            return Err(invalid("kind", "is at most 100 characters"));
        }
        // The page token is the last entry's (occur time in microseconds, event ID).
        let after: Option<(DateTime<Utc>, String)> = match r.page_token.split_once('|') {
            None if r.page_token.is_empty() => None,
            Some((t, id)) => {
                let micros: i64 = t
                    .parse()
                    .map_err(|_| invalid("page_token", "is not valid for this query"))?;
                Some((
                    DateTime::<Utc>::from_timestamp_micros(micros)
                        .ok_or_else(|| invalid("page_token", "is not valid for this query"))?,
                    id.to_owned(),
                ))
            }
            None => return Err(invalid("page_token", "is not valid for this query")),
        };
        let mut tx = self.shards.begin(&tenant).await.map_err(unavailable)?;
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
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        let mut entries = Vec::new();
        let mut last = None;
        for row in rows.iter().take(size as usize) {
            let at: DateTime<Utc> = row.try_get("occur_time").map_err(unavailable)?;
            let id: String = row.try_get("event_id").map_err(unavailable)?;
            let details: String = row.try_get("details").map_err(unavailable)?;
            entries.push(pb::AuditEntry {
                event_id: id.clone(),
                kind: row.try_get("kind").map_err(unavailable)?,
                user_id: row.try_get("user_id").map_err(unavailable)?,
                session_id: row.try_get("session_id").map_err(unavailable)?,
                occur_time: Some(prost_types::Timestamp {
                    seconds: at.timestamp(),
                    nanos: at.timestamp_subsec_nanos() as i32,
                }),
                details: serde_json::from_str(&details).unwrap_or_default(),
            });
            last = Some(format!("{}|{id}", at.timestamp_micros()));
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
