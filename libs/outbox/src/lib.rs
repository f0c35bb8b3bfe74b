//! The transactional outbox and its relay, shared by every service that emits events (each in
//! its own schema's `outbox` table, created by its migrations with the same shape).
//!
//! A change and the event announcing it are written in one transaction ([`insert`]). The relay
//! ([`run_relay`]) claims unsent rows with `FOR UPDATE SKIP LOCKED` (several replicas may run
//! it), publishes each with `Nats-Msg-Id` = the row ID and the producer's trace context, and
//! marks rows sent only after the PubAck. A crash between PubAck and commit re-publishes the row,
//! which JetStream's duplicate window drops; consumers dedupe on the event ID beyond it.

use std::sync::Arc;
use std::time::Duration;

use keel_bus::{Bus, OutgoingEvent};
use keel_store::Shards;
use keel_tenancy::TenantId;
use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Rows claimed per relay round and shard.
pub const DEFAULT_RELAY_BATCH: i64 = 100;
/// Poll interval when no local write woke the relay (writes by other replicas, retries).
pub const DEFAULT_RELAY_INTERVAL: Duration = Duration::from_millis(250);
/// Sent rows are kept this long for inspection, then purged (with expired idempotency keys).
const SENT_RETENTION_SECS: i64 = 24 * 3600;
/// How often the relay purges sent rows: rare, the purge is bulk work.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// One event to write, with the trace context of the code that made it (captured when it is
/// built, so a batch written later by another task still links to its producer).
pub struct NewEvent {
    id: Uuid,
    tenant: TenantId,
    kind: &'static str,
    event_type: &'static str,
    payload: Vec<u8>,
    traceparent: Option<String>,
}

impl NewEvent {
    pub fn new(
        id: Uuid,
        tenant: &TenantId,
        kind: &'static str,
        event_type: &'static str,
        payload: Vec<u8>,
    ) -> Self {
        NewEvent {
            id,
            tenant: tenant.clone(),
            kind,
            event_type,
            payload,
            traceparent: keel_telemetry::current_traceparent(),
        }
    }
}

/// Writes an event in the caller's transaction.
pub async fn insert(tx: &mut sqlx::PgConnection, ev: NewEvent) -> Result<(), sqlx::Error> {
    insert_many(tx, std::slice::from_ref(&ev)).await
}

/// Writes events in one statement (a group commit of events that need no other change).
pub async fn insert_many(tx: &mut sqlx::PgConnection, evs: &[NewEvent]) -> Result<(), sqlx::Error> {
    if evs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox (id, tenant_id, kind, event_type, schema_version, payload, traceparent)
         SELECT id, tenant_id, kind, event_type, 1, payload, traceparent
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[])
           AS e(id, tenant_id, kind, event_type, payload, traceparent)",
    )
    .bind(evs.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(evs.iter().map(|e| e.tenant.as_str()).collect::<Vec<_>>())
    .bind(evs.iter().map(|e| e.kind).collect::<Vec<_>>())
    .bind(evs.iter().map(|e| e.event_type).collect::<Vec<_>>())
    .bind(evs.iter().map(|e| e.payload.as_slice()).collect::<Vec<_>>())
    .bind(
        evs.iter()
            .map(|e| e.traceparent.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Wakes the relay right after a commit, so events leave within milliseconds, not a poll interval.
#[derive(Clone, Default)]
pub struct Wakeup(Arc<Notify>);

impl Wakeup {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub batch: i64,
    pub interval: Duration,
}

/// Runs until shutdown; each round drains every shard. Waits for the migrations first.
pub async fn run_relay(
    shards: Shards,
    bus: Bus,
    cfg: RelayConfig,
    wakeup: Wakeup,
    shutdown: CancellationToken,
) {
    let mut last_purge = std::time::Instant::now();
    // The outbox table exists once the service's readiness check has applied its migrations.
    while !shards.is_migrated() {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(cfg.interval) => {}
        }
    }
    loop {
        let mut more = false;
        for (shard, pool) in shards.pools().iter().enumerate() {
            match relay_batch(pool, &bus, cfg.batch).await {
                Ok(n) => more |= n as i64 == cfg.batch,
                Err(e) => {
                    tracing::warn!(shard, error = %e, "outbox relay round failed; will retry")
                }
            }
        }
        if last_purge.elapsed() >= PURGE_EVERY {
            last_purge = std::time::Instant::now();
            for pool in shards.pools() {
                let purged = sqlx::query(
                    "DELETE FROM outbox WHERE sent_time < now() - make_interval(secs => $1)",
                )
                .bind(SENT_RETENTION_SECS as f64)
                .execute(pool)
                .await;
                if let Err(e) = purged {
                    tracing::warn!(error = %e, "outbox purge failed");
                }
                // Idempotency keys promise replays for 24 hours; after that a key may be reused.
                let expired = sqlx::query(
                    "DELETE FROM idempotency_keys WHERE create_time < now() - interval '24 hours'",
                )
                .execute(pool)
                .await;
                if let Err(e) = expired {
                    tracing::warn!(error = %e, "idempotency key purge failed");
                }
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
        if !more {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wakeup.0.notified() => {}
                _ = tokio::time::sleep(cfg.interval) => {}
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] keel_bus::BusError),
}

/// Publishes up to `batch` unsent rows of one shard; returns how many were sent.
async fn relay_batch(pool: &sqlx::PgPool, bus: &Bus, batch: i64) -> Result<usize, RelayError> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "SELECT id, tenant_id, kind, event_type, schema_version, payload, traceparent
         FROM outbox WHERE sent_time IS NULL
         ORDER BY create_time, id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut sent: Vec<Uuid> = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: Uuid = row.try_get("id")?;
        let tenant_raw: String = row.try_get("tenant_id")?;
        let Ok(tenant) = TenantId::parse(&tenant_raw) else {
            // Rows are written only with validated tenants; a bad one is corruption. Leave it
            // unsent (visible, alerting via the backlog) rather than drop it.
            tracing::error!(outbox_id = %id, tenant = %tenant_raw, "outbox row has an invalid tenant; skipping");
            continue;
        };
        let traceparent: Option<String> = row.try_get("traceparent")?;
        let kind: String = row.try_get("kind")?;
        let span = tracing::info_span!(
            "nats.publish",
            otel.name = %format!("publish {kind}"),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "publish",
            messaging.destination.name = %bus.subject(&tenant, &kind),
            messaging.message.id = %id,
            tenant.id = tracing::field::Empty,
            correlation_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        keel_telemetry::adopt(
            &span,
            keel_telemetry::propagation::from_traceparent(traceparent.as_deref()),
            Some(tenant.as_str()),
            &id.to_string(),
        );
        let ev = OutgoingEvent {
            id: id.to_string(),
            tenant,
            kind,
            event_type: row.try_get("event_type")?,
            schema_version: u32::try_from(row.try_get::<i32, _>("schema_version")?).unwrap_or(1),
            payload: row.try_get::<Vec<u8>, _>("payload")?.into(),
            traceparent: None,
        };
        let published = async {
            let ev = OutgoingEvent {
                traceparent: keel_telemetry::current_traceparent(),
                ..ev
            };
            bus.publish(&ev).await
        }
        .instrument(span)
        .await;
        match published {
            Ok(_duplicate) => sent.push(id),
            Err(e) => {
                // Keep what was acknowledged; the rest stays unsent for the next round.
                tracing::warn!(outbox_id = %id, error = %e, "publish failed");
                break;
            }
        }
    }
    if !sent.is_empty() {
        sqlx::query("UPDATE outbox SET sent_time = now() WHERE id = ANY($1)")
            .bind(&sent)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    metrics::counter!("keel_outbox_published_total").increment(sent.len() as u64);
    Ok(sent.len())
}
