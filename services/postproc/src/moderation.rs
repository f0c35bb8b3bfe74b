//! The moderation and quality pass over every answer (`InferenceCompleted.output_text`): a
//! deterministic, rule-based classifier — flagged categories and a score — stored per event and
//! listed to tenant admins. Rules, not a model: the same text always gets the same verdict, and
//! the verdict can be explained by the category names.
//!
//! Categories: `pii.email`, `pii.phone`, `pii.card` (a Luhn-valid 13–19 digit number),
//! `violence`, `self_harm`, `harassment` (word lists), and the quality signals
//! `quality.empty`, `quality.truncated` (stopped at the length limit), `quality.repetitive`
//! (few distinct words). An answer is flagged when its score reaches [`FLAG_AT`].

use std::collections::{BTreeMap, HashSet};

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

pub const MODERATION_CONSUMER: &str = "postproc-moderation";
pub const MODERATION_BATCH: usize = 256;
/// Scores at or above this flag the answer.
pub const FLAG_AT: f32 = 0.5;
const DEFAULT_PAGE: i32 = 100;
const MAX_PAGE: i32 = 500;

const VIOLENCE: &[&str] = &[
    "kill", "killed", "killing", "murder", "shoot", "shooting", "stab", "bomb", "attack", "weapon",
];
const SELF_HARM: &[&str] = &["suicide", "suicidal", "self-harm", "overdose"];
const HARASSMENT: &[&str] = &["idiot", "stupid", "loser", "moron", "worthless"];

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub categories: Vec<&'static str>,
    pub score: f32,
}

impl Verdict {
    pub fn flagged(&self) -> bool {
        self.score >= FLAG_AT
    }
}

fn weight(category: &str) -> f32 {
    match category {
        "self_harm" => 0.9,
        "pii.card" => 0.8,
        "pii.email" | "pii.phone" => 0.6,
        "violence" => 0.5,
        "harassment" => 0.4,
        "quality.empty" => 0.3,
        _ => 0.2,
    }
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Runs of digits, allowing up to two spaces, dashes, dots or parentheses between digits.
fn digit_runs(text: &str) -> Vec<Vec<u8>> {
    let mut runs = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut gap = 0;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            cur.push(d as u8);
            gap = 0;
        } else if matches!(c, ' ' | '-' | '.' | '(' | ')' | '+') && !cur.is_empty() && gap < 2 {
            gap += 1;
        } else if !cur.is_empty() {
            runs.push(std::mem::take(&mut cur));
            gap = 0;
        }
    }
    if !cur.is_empty() {
        runs.push(cur);
    }
    runs
}

fn looks_like_email(word: &str) -> bool {
    let w = word.trim_matches(|c: char| !c.is_alphanumeric());
    match w.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && domain
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
        }
        None => false,
    }
}

/// Classifies one answer. `finish_reason` "length" means it was cut at the limit.
pub fn classify(text: &str, finish_reason: &str) -> Verdict {
    let mut cats: Vec<&'static str> = Vec::new();
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '@' || c == '.'))
        .map(|w| w.trim_matches('.'))
        .filter(|w| !w.is_empty())
        .collect();
    if text.split_whitespace().any(looks_like_email) {
        cats.push("pii.email");
    }
    let runs = digit_runs(text);
    if runs.iter().any(|r| (13..=19).contains(&r.len()) && luhn(r)) {
        cats.push("pii.card");
    } else if runs.iter().any(|r| (9..=15).contains(&r.len())) {
        cats.push("pii.phone");
    }
    let has = |list: &[&str]| words.iter().any(|w| list.contains(w));
    if has(VIOLENCE) {
        cats.push("violence");
    }
    if has(SELF_HARM) || lower.contains("kill myself") || lower.contains("hurt myself") {
        cats.push("self_harm");
    }
    if has(HARASSMENT) {
        cats.push("harassment");
    }
    if text.trim().is_empty() {
        cats.push("quality.empty");
    }
    if finish_reason == "length" {
        cats.push("quality.truncated");
    }
    if words.len() >= 8 {
        let distinct: HashSet<&&str> = words.iter().collect();
        if (distinct.len() as f32) / (words.len() as f32) < 0.3 {
            cats.push("quality.repetitive");
        }
    }
    let score = cats.iter().map(|c| weight(c)).sum::<f32>().min(1.0);
    Verdict {
        categories: cats,
        score,
    }
}

#[derive(Debug, Clone)]
struct Judged {
    event_id: String,
    tenant: TenantId,
    model_version: String,
    occur_time: DateTime<Utc>,
    verdict: Verdict,
}

fn decode(d: &Delivery) -> Result<Judged, HandlerError> {
    let header = envelope(d)?;
    if d.event_type.as_deref() != Some("keel.events.v1.InferenceCompleted") {
        return Err(permanent(format!(
            "unexpected event type {:?}",
            d.event_type
        )));
    }
    let m = keel_proto::events::InferenceCompleted::decode(d.payload.as_ref())
        .map_err(|e| permanent(format!("undecodable payload: {e}")))?;
    same_envelope(&header, &m.tenant_id, &m.event_id)?;
    let occur_time = m
        .occur_time
        .and_then(|t| {
            DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32)
        })
        .ok_or_else(|| permanent("occur_time is missing or out of range"))?;
    Ok(Judged {
        event_id: m.event_id,
        tenant: header.0,
        model_version: m.model_version.chars().take(100).collect(),
        occur_time,
        verdict: classify(&m.output_text, &m.finish_reason),
    })
}

pub struct ModerationHandler {
    shards: Shards,
}

impl ModerationHandler {
    pub fn new(shards: Shards) -> Self {
        ModerationHandler { shards }
    }

    async fn store(&self, shard: usize, js: &[&Judged]) -> Result<(), StoreError> {
        let Some(pool) = self.shards.pools().get(shard) else {
            return Err(StoreError::from(sqlx::Error::PoolClosed));
        };
        let cats: Vec<String> = js.iter().map(|j| j.verdict.categories.join(",")).collect();
        sqlx::query(
            "INSERT INTO moderation_results (tenant_id, event_id, model_version, occur_time, categories, score, flagged)
             SELECT t, e, v, o, COALESCE(string_to_array(NULLIF(c, ''), ','), '{}'), s, f
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::real[], $7::bool[])
               AS x(t, e, v, o, c, s, f)
             ON CONFLICT (tenant_id, event_id) DO NOTHING",
        )
        .bind(js.iter().map(|j| j.tenant.as_str()).collect::<Vec<_>>())
        .bind(js.iter().map(|j| j.event_id.as_str()).collect::<Vec<_>>())
        .bind(js.iter().map(|j| j.model_version.as_str()).collect::<Vec<_>>())
        .bind(js.iter().map(|j| j.occur_time).collect::<Vec<_>>())
        .bind(cats)
        .bind(js.iter().map(|j| j.verdict.score).collect::<Vec<_>>())
        .bind(js.iter().map(|j| j.verdict.flagged()).collect::<Vec<_>>())
        .execute(pool)
        .await?;
        Ok(())
    }
}

impl Handler for ModerationHandler {
    fn batch_size(&self) -> usize {
        MODERATION_BATCH
    }

    async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<Result<(), HandlerError>> {
        let decoded: Vec<Result<Judged, HandlerError>> = deliveries.iter().map(decode).collect();
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
            if let Ok(j) = d {
                by_shard
                    .entry(self.shards.map().physical(&j.tenant))
                    .or_default()
                    .push(i);
            }
        }
        for (shard, idx) in by_shard {
            let js: Vec<&Judged> = idx
                .iter()
                .filter_map(|i| decoded[*i].as_ref().ok())
                .collect();
            if let Err(e) = self.store(shard, &js).await {
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

/// The gRPC edge: a tenant's verdicts, newest first.
pub struct ModerationStore {
    shards: Shards,
}

impl ModerationStore {
    pub fn new(shards: Shards) -> Self {
        ModerationStore { shards }
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
    tracing::error!(error = %e, "moderation query failed");
    keel_errors::status(
        keel_errors::Reason::Unavailable,
        "moderation results are unavailable",
        vec![("dependency", "postgres".into())],
    )
}

#[tonic::async_trait]
impl keel_proto::postproc::moderation_store_server::ModerationStore for ModerationStore {
    async fn list_moderation_results(
        &self,
        req: Request<pb::ListModerationResultsRequest>,
    ) -> Result<Response<pb::ListModerationResultsResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let size = match r.page_size {
            0 => DEFAULT_PAGE,
            n if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(invalid("page_size", format!("must be 0 to {MAX_PAGE}"))),
        };
        let after: Option<(DateTime<Utc>, String)> = match r.page_token.split_once('|') {
            None if r.page_token.is_empty() => None,
            Some((t, id)) => Some((
                t.parse::<i64>()
                    .ok()
                    .and_then(DateTime::<Utc>::from_timestamp_micros)
                    .ok_or_else(|| invalid("page_token", "is not valid for this query"))?,
                id.to_owned(),
            )),
            None => return Err(invalid("page_token", "is not valid for this query")),
        };
        let mut tx = self.shards.begin(&tenant).await.map_err(unavailable)?;
        let rows = sqlx::query(
            "SELECT event_id, model_version, occur_time, categories, score, flagged
             FROM moderation_results
             WHERE tenant_id = $1 AND (NOT $2 OR flagged)
               AND ($3::timestamptz IS NULL OR (occur_time, event_id) < ($3, $4))
             ORDER BY occur_time DESC, event_id DESC LIMIT $5",
        )
        .bind(tenant.as_str())
        .bind(r.flagged_only)
        .bind(after.as_ref().map(|a| a.0))
        .bind(after.as_ref().map(|a| a.1.clone()).unwrap_or_default())
        .bind(i64::from(size) + 1)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        let mut results = Vec::new();
        let mut last = None;
        for row in rows.iter().take(size as usize) {
            let at: DateTime<Utc> = row.try_get("occur_time").map_err(unavailable)?;
            let id: String = row.try_get("event_id").map_err(unavailable)?;
            results.push(pb::ModerationResult {
                event_id: id.clone(),
                model_version: row.try_get("model_version").map_err(unavailable)?,
                occur_time: Some(prost_types::Timestamp {
                    seconds: at.timestamp(),
                    nanos: at.timestamp_subsec_nanos() as i32,
                }),
                categories: row
                    .try_get::<Option<Vec<String>>, _>("categories")
                    .map_err(unavailable)?
                    .unwrap_or_default(),
                score: row.try_get("score").map_err(unavailable)?,
                flagged: row.try_get("flagged").map_err(unavailable)?,
            });
            last = Some(format!("{}|{id}", at.timestamp_micros()));
        }
        Ok(Response::new(pb::ListModerationResultsResponse {
            results,
            next_page_token: if rows.len() > size as usize {
                last.unwrap_or_default()
            } else {
                String::new()
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn categories_are_found_and_scored() {
        let v = classify(
            "write to jane.doe@example.com or call +1 (415) 555-0100",
            "stop",
        );
        assert_eq!(v.categories, vec!["pii.email", "pii.phone"]);
        assert!(v.flagged());
        let v = classify("card 4111 1111 1111 1111 expires soon", "stop");
        assert_eq!(v.categories, vec!["pii.card"]);
        assert!(
            classify("I will kill the process", "stop")
                .categories
                .contains(&"violence")
        );
        assert!(classify("thinking about suicide", "stop").flagged());
        let clean = classify("the river flows to the sea", "stop");
        assert!(clean.categories.is_empty() && !clean.flagged());
        assert_eq!(classify("   ", "stop").categories, vec!["quality.empty"]);
        assert_eq!(
            classify("data data data data data data data data data", "length").categories,
            vec!["quality.truncated", "quality.repetitive"]
        );
        assert!(
            !classify("version 1.2.3 of 2024", "stop")
                .categories
                .contains(&"pii.phone")
        );
    }

    proptest! {
        #[test]
        fn any_text_gets_a_bounded_repeatable_verdict(text in ".{0,400}", fin in "stop|length") {
            let a = classify(&text, &fin);
            prop_assert_eq!(&a, &classify(&text, &fin));
            prop_assert!((0.0..=1.0).contains(&a.score));
        }
    }
}
