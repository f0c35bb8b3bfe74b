//! What the consumers and stores of post-processing share: decoding an event with its envelope
//! checks, committing a batch per shard, and the statuses and page tokens of the read APIs.

use std::collections::BTreeMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use keel_bus::{Delivery, Handler, HandlerError};
use keel_store::{Shards, StoreError};
use keel_tenancy::TenantId;
use tonic::Status;

use crate::handler::{envelope, permanent, same_envelope};

/// The parts of an event every consumer checks.
pub struct Envelope {
    pub tenant: TenantId,
    pub event_id: String,
    pub occur_time: DateTime<Utc>,
}

/// Decodes an event of type `event_type` and checks it against its headers: known schema
/// version, payload tenant and event ID equal to the headers', an occur time in range.
/// `parts` reads (tenant ID, event ID, occur time) from the payload.
pub fn decode_event<M: prost::Message + Default>(
    d: &Delivery,
    event_type: &str,
    parts: impl Fn(&M) -> (&str, &str, Option<prost_types::Timestamp>),
) -> Result<(M, Envelope), HandlerError> {
    let header = envelope(d)?;
    if d.event_type.as_deref() != Some(event_type) {
        return Err(permanent(format!(
            "unexpected event type {:?}",
            d.event_type
        )));
    }
    let m = M::decode(d.payload.as_ref())
        .map_err(|e| permanent(format!("undecodable payload: {e}")))?;
    let (tenant_id, event_id, occur) = parts(&m);
    same_envelope(&header, tenant_id, event_id)?;
    let occur_time = occur
        .and_then(|t| {
            DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32)
        })
        .ok_or_else(|| permanent("occur_time is missing or out of range"))?;
    let event_id = event_id.to_owned();
    Ok((
        m,
        Envelope {
            tenant: header.0,
            event_id,
            occur_time,
        },
    ))
}

/// Handles a batch: decodes every delivery, groups what decoded by the tenant's physical shard,
/// and stores each group with `store` (one transaction each). One result per delivery: a
/// decode error as it is, a failed store as a transient error for its whole group.
pub async fn per_shard<T, Fut>(
    shards: &Shards,
    deliveries: &[Delivery],
    decode: impl Fn(&Delivery) -> Result<T, HandlerError>,
    tenant: impl Fn(&T) -> &TenantId,
    store: impl Fn(usize, Vec<T>) -> Fut,
) -> Vec<Result<(), HandlerError>>
where
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut results: Vec<Result<(), HandlerError>> = Vec::with_capacity(deliveries.len());
    let mut groups: BTreeMap<usize, (Vec<usize>, Vec<T>)> = BTreeMap::new();
    for (i, d) in deliveries.iter().enumerate() {
        match decode(d) {
            Ok(t) => {
                let g = groups.entry(shards.map().physical(tenant(&t))).or_default();
                g.0.push(i);
                g.1.push(t);
                results.push(Ok(()));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    for (shard, (idx, items)) in groups {
        if let Err(e) = store(shard, items).await {
            for i in idx {
                results[i] = Err(HandlerError::Transient(e.to_string()));
            }
        }
    }
    results
}

/// The one result of a batch of one.
pub fn only(mut results: Vec<Result<(), HandlerError>>) -> Result<(), HandlerError> {
    results
        .pop()
        .unwrap_or_else(|| Err(HandlerError::Transient("no result".into())))
}

pub fn invalid(field: &'static str, problem: impl Into<String>) -> Status {
    keel_errors::status(
        keel_errors::Reason::InvalidArgument,
        format!("{field}: {}", problem.into()),
        vec![("field", field.into())],
    )
}

/// A store failure, logged; the client learns only that `what` is unavailable.
pub fn unavailable(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> Status {
    move |e| {
        tracing::error!(error = %e, what, "query failed");
        keel_errors::status(
            keel_errors::Reason::Unavailable,
            format!("{what} is unavailable"),
            vec![("dependency", "postgres".into())],
        )
    }
}

/// `page_size` 0 means `default`; otherwise 1 to `max`.
pub fn page_size(requested: i32, default: i32, max: i32) -> Result<i32, Status> {
    match requested {
        0 => Ok(default),
        n if (1..=max).contains(&n) => Ok(n),
        _ => Err(invalid("page_size", format!("must be 0 to {max}"))),
    }
}

/// Newest-first pages continue after `<occur time in µs>|<event ID>`.
pub fn parse_time_token(token: &str) -> Result<Option<(DateTime<Utc>, String)>, Status> {
    let bad = || invalid("page_token", "is not valid for this query");
    match token.split_once('|') {
        None if token.is_empty() => Ok(None),
        Some((t, id)) => Ok(Some((
            t.parse::<i64>()
                .ok()
                .and_then(DateTime::<Utc>::from_timestamp_micros)
                .ok_or_else(bad)?,
            id.to_owned(),
        ))),
        None => Err(bad()),
    }
}

pub fn time_token(at: DateTime<Utc>, event_id: &str) -> String {
    format!("{}|{event_id}", at.timestamp_micros())
}

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// A consumer whose effects are rows written in one transaction per shard: it says how to
/// decode an event, whose tenant it is, and how to store one shard's group; [`Batched`] makes
/// it a [`Handler`].
pub trait ShardBatch: Send + Sync + 'static {
    type Item: Send + Sync;
    /// Messages handled together, at most.
    const BATCH: usize;
    fn decode(d: &Delivery) -> Result<Self::Item, HandlerError>;
    fn tenant(item: &Self::Item) -> &TenantId;
    /// Stores one shard's group (idempotent on the event IDs).
    fn store(
        &self,
        pool: &sqlx::PgPool,
        items: Vec<Self::Item>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The [`Handler`] of a [`ShardBatch`], over the shards it writes to.
pub struct Batched<S> {
    shards: Shards,
    inner: S,
}

impl<S: ShardBatch> Batched<S> {
    pub fn new(shards: Shards, inner: S) -> Self {
        Batched { shards, inner }
    }
}

impl<S: ShardBatch> Handler for Batched<S> {
    fn batch_size(&self) -> usize {
        S::BATCH
    }

    async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<Result<(), HandlerError>> {
        per_shard(
            &self.shards,
            deliveries,
            S::decode,
            S::tenant,
            |shard, items| async move {
                let pool = self
                    .shards
                    .pools()
                    .get(shard)
                    .ok_or_else(|| StoreError::from(sqlx::Error::PoolClosed))?;
                self.inner.store(pool, items).await
            },
        )
        .await
    }

    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        only(self.handle_batch(std::slice::from_ref(delivery)).await)
    }
}
