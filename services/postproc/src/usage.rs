//! Usage metering: `InferenceCompleted` events → requests and tokens per tenant, UTC day and
//! model version (the effect and the dedupe record in one transaction), and the internal
//! `keel.postproc.v1.UsageStore` that reads them back, paged, for the gateway's `GetUsage`.

use chrono::{DateTime, NaiveDate, Utc};
use keel_bus::{Delivery, HandlerError};
use keel_proto::public as pb;
use keel_runtime::context::tenant;
use keel_store::{Shards, StoreError};
use keel_tenancy::TenantId;
use sqlx::Row;
use tonic::{Request, Response, Status};

use crate::common::{self, ShardBatch, decode_event, invalid};
use crate::handler::permanent;

/// Durable consumer name.
pub const USAGE_CONSUMER: &str = "postproc-usage";
/// Rows per page, at most.
const MAX_PAGE: i32 = 1000;
/// The longest range one request may ask for.
const MAX_DAYS: i64 = 366;

/// One metered call.
#[derive(Debug, Clone, PartialEq)]
pub struct Metered {
    pub event_id: String,
    pub tenant: TenantId,
    pub day: NaiveDate,
    pub model_version: String,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub cache_hit: bool,
}

pub fn decode(d: &Delivery) -> Result<Metered, HandlerError> {
    let (m, env) = decode_event::<keel_proto::events::InferenceCompleted>(
        d,
        "keel.events.v1.InferenceCompleted",
        |m| (&m.tenant_id, &m.event_id, m.occur_time),
    )?;
    if m.model_version.is_empty() || m.model_version.len() > 100 {
        return Err(permanent("model_version is missing or too long"));
    }
    Ok(Metered {
        event_id: env.event_id,
        tenant: env.tenant,
        day: env.occur_time.date_naive(),
        model_version: m.model_version,
        input_tokens: m.input_tokens,
        output_tokens: m.output_tokens,
        cache_hit: m.cache_hit,
    })
}

/// Events metered in one transaction, at most.
pub const USAGE_BATCH: usize = 256;

pub struct UsageHandler;

impl ShardBatch for UsageHandler {
    type Item = Metered;
    const BATCH: usize = USAGE_BATCH;

    fn decode(d: &Delivery) -> Result<Metered, HandlerError> {
        decode(d)
    }

    fn tenant(item: &Metered) -> &TenantId {
        &item.tenant
    }

    /// One transaction: the dedupe records of every event in one statement, then the sums of
    /// the fresh ones, one row per (tenant, day, version).
    async fn store(&self, pool: &sqlx::PgPool, ms: Vec<Metered>) -> Result<(), StoreError> {
        let mut tx = pool.begin().await?;
        let fresh: Vec<String> = sqlx::query_scalar(
            "INSERT INTO processed_events (consumer, event_id, tenant_id)
             SELECT $1, e, t FROM UNNEST($2::text[], $3::text[]) AS x(e, t)
             ON CONFLICT DO NOTHING RETURNING event_id",
        )
        .bind(USAGE_CONSUMER)
        .bind(ms.iter().map(|m| m.event_id.as_str()).collect::<Vec<_>>())
        .bind(ms.iter().map(|m| m.tenant.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let fresh: std::collections::HashSet<String> = fresh.into_iter().collect();
        // A batch may hold the same event twice (a redelivery): count it once.
        let mut counted = std::collections::HashSet::new();
        let mut sums: std::collections::BTreeMap<(&str, NaiveDate, &str), [i64; 4]> =
            std::collections::BTreeMap::new();
        let mut out = Vec::with_capacity(ms.len());
        for m in &ms {
            let is_fresh = fresh.contains(&m.event_id) && counted.insert(m.event_id.as_str());
            out.push(is_fresh);
            if is_fresh {
                let s = sums
                    .entry((m.tenant.as_str(), m.day, m.model_version.as_str()))
                    .or_default();
                s[0] += 1;
                s[1] += i64::from(m.input_tokens);
                s[2] += i64::from(m.output_tokens);
                s[3] += i64::from(m.cache_hit);
            }
        }
        if !sums.is_empty() {
            let col = |i: usize| sums.values().map(|s| s[i]).collect::<Vec<i64>>();
            sqlx::query(
                "INSERT INTO usage_daily (tenant_id, day, model_version, requests, input_tokens, output_tokens, cache_hits)
                 SELECT * FROM UNNEST($1::text[], $2::date[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
                 ON CONFLICT (tenant_id, day, model_version) DO UPDATE
                 SET requests = usage_daily.requests + EXCLUDED.requests,
                     input_tokens = usage_daily.input_tokens + EXCLUDED.input_tokens,
                     output_tokens = usage_daily.output_tokens + EXCLUDED.output_tokens,
                     cache_hits = usage_daily.cache_hits + EXCLUDED.cache_hits",
            )
            .bind(sums.keys().map(|k| k.0).collect::<Vec<_>>())
            .bind(sums.keys().map(|k| k.1).collect::<Vec<_>>())
            .bind(sums.keys().map(|k| k.2).collect::<Vec<_>>())
            .bind(col(0))
            .bind(col(1))
            .bind(col(2))
            .bind(col(3))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let dups = out.iter().filter(|f| !**f).count();
        if dups > 0 {
            metrics::counter!("keel_consumer_duplicates_total", "consumer" => USAGE_CONSUMER)
                .increment(dups as u64);
        }
        Ok(())
    }
}

/// The gRPC edge.
pub struct UsageStore {
    shards: Shards,
}

impl UsageStore {
    pub fn new(shards: Shards) -> Self {
        UsageStore { shards }
    }
}

fn day_of(t: &Option<prost_types::Timestamp>, field: &'static str) -> Result<NaiveDate, Status> {
    let t = t.as_ref().ok_or_else(|| invalid(field, "is required"))?;
    DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32)
        .map(|d| d.date_naive())
        .ok_or_else(|| invalid(field, "is out of range"))
}

#[tonic::async_trait]
impl keel_proto::postproc::usage_store_server::UsageStore for UsageStore {
    async fn get_usage(
        &self,
        req: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let start = day_of(&r.start_time, "start_time")?;
        let end = day_of(&r.end_time, "end_time")?;
        if end <= start || (end - start).num_days() > MAX_DAYS {
            return Err(invalid(
                "end_time",
                format!("must be after start_time, at most {MAX_DAYS} days later"),
            ));
        }
        let size = common::page_size(r.page_size, MAX_PAGE, MAX_PAGE)?;
        // The page token is the last row's (day, model_version).
        let after: Option<(NaiveDate, String)> = match r.page_token.split_once('|') {
            None if r.page_token.is_empty() => None,
            Some((d, v)) => Some((
                d.parse()
                    .map_err(|_| invalid("page_token", "is not valid for this query"))?,
                v.to_owned(),
            )),
            None => return Err(invalid("page_token", "is not valid for this query")),
        };
        let unavailable = common::unavailable("usage");
        let store = |e: sqlx::Error| unavailable(&e);
        let mut tx = self
            .shards
            .begin(&tenant)
            .await
            .map_err(|e| unavailable(&e))?;
        let rows = sqlx::query(
            "SELECT day, model_version, requests, input_tokens, output_tokens FROM usage_daily
             WHERE tenant_id = $1 AND day >= $2 AND day < $3
               AND ($4::date IS NULL OR (day, model_version) > ($4, $5))
             ORDER BY day, model_version LIMIT $6",
        )
        .bind(tenant.as_str())
        .bind(start)
        .bind(end)
        .bind(after.as_ref().map(|a| a.0))
        .bind(after.as_ref().map(|a| a.1.clone()).unwrap_or_default())
        .bind(i64::from(size) + 1)
        .fetch_all(&mut *tx)
        .await
        .map_err(store)?;
        tx.commit().await.map_err(store)?;
        let mut records = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in rows.iter().take(size as usize) {
            let day: NaiveDate = row.try_get("day").map_err(store)?;
            let version: String = row.try_get("model_version").map_err(store)?;
            let n = |c: &str| -> Result<u64, Status> {
                Ok(row.try_get::<i64, _>(c).map_err(store)?.max(0) as u64)
            };
            records.push(pb::UsageRecord {
                day: day.format("%Y-%m-%d").to_string(),
                model_version: version.clone(),
                requests: n("requests")?,
                input_tokens: n("input_tokens")?,
                output_tokens: n("output_tokens")?,
            });
            last = Some(format!("{day}|{version}"));
        }
        Ok(Response::new(pb::GetUsageResponse {
            records,
            next_page_token: if rows.len() > size as usize {
                last.unwrap_or_default()
            } else {
                String::new()
            },
            tier: String::new(),
        }))
    }
}
