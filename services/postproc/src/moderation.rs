//! The moderation and quality pass over every answer (`InferenceCompleted.output_text`): a
//! deterministic, rule-based classifier — flagged categories and a score — stored per event and
//! listed to tenant admins. Rules, not a model: the same text always gets the same verdict, and
//! the verdict can be explained by the category names.
//!
//! Categories: `pii.email`, `pii.phone`, `pii.card` (a Luhn-valid 13–19 digit number),
//! `violence`, `self_harm`, `harassment` (word lists), and the quality signals
//! `quality.empty`, `quality.truncated` (stopped at the length limit), `quality.repetitive`
//! (few distinct words). An answer is flagged when its score reaches [`FLAG_AT`].

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use keel_bus::{Delivery, HandlerError};
use keel_proto::public as pb;
use keel_runtime::context::tenant;
use keel_store::{Shards, StoreError};
use keel_tenancy::TenantId;
use sqlx::Row;
use tonic::{Request, Response, Status};

use crate::common::{self, ShardBatch, decode_event};

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

/// One answer and its verdict.
#[derive(Debug, Clone)]
pub struct Judged {
    pub event_id: String,
    pub tenant: TenantId,
    pub model_version: String,
    pub occur_time: DateTime<Utc>,
    pub verdict: Verdict,
}

pub fn decode(d: &Delivery) -> Result<Judged, HandlerError> {
    let (m, env) = decode_event::<keel_proto::events::InferenceCompleted>(
        d,
        "keel.events.v1.InferenceCompleted",
        |m| (&m.tenant_id, &m.event_id, m.occur_time),
    )?;
    Ok(Judged {
        event_id: env.event_id,
        tenant: env.tenant,
        model_version: m.model_version.chars().take(100).collect(),
        occur_time: env.occur_time,
        verdict: classify(&m.output_text, &m.finish_reason),
    })
}

pub struct ModerationHandler;

impl ShardBatch for ModerationHandler {
    type Item = Judged;
    const BATCH: usize = MODERATION_BATCH;

    fn decode(d: &Delivery) -> Result<Judged, HandlerError> {
        decode(d)
    }

    fn tenant(item: &Judged) -> &TenantId {
        &item.tenant
    }

    async fn store(&self, pool: &sqlx::PgPool, js: Vec<Judged>) -> Result<(), StoreError> {
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

/// The gRPC edge: a tenant's verdicts, newest first.
pub struct ModerationStore {
    shards: Shards,
}

impl ModerationStore {
    pub fn new(shards: Shards) -> Self {
        ModerationStore { shards }
    }
}

#[tonic::async_trait]
impl keel_proto::postproc::moderation_store_server::ModerationStore for ModerationStore {
    async fn list_moderation_results(
        &self,
        req: Request<pb::ListModerationResultsRequest>,
    ) -> Result<Response<pb::ListModerationResultsResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let size = common::page_size(r.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let after = common::parse_time_token(&r.page_token)?;
        let unavailable = common::unavailable("moderation results");
        let mut tx = self
            .shards
            .begin(&tenant)
            .await
            .map_err(|e| unavailable(&e))?;
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
        .map_err(|e| unavailable(&e))?;
        tx.commit().await.map_err(|e| unavailable(&e))?;
        let mut results = Vec::new();
        let mut last = None;
        for row in rows.iter().take(size as usize) {
            let at: DateTime<Utc> = row.try_get("occur_time").map_err(|e| unavailable(&e))?;
            let id: String = row.try_get("event_id").map_err(|e| unavailable(&e))?;
            results.push(pb::ModerationResult {
                event_id: id.clone(),
                model_version: row.try_get("model_version").map_err(|e| unavailable(&e))?,
                occur_time: Some(common::timestamp(at)),
                categories: row
                    .try_get::<Option<Vec<String>>, _>("categories")
                    .map_err(|e| unavailable(&e))?
                    .unwrap_or_default(),
                score: row.try_get("score").map_err(|e| unavailable(&e))?,
                flagged: row.try_get("flagged").map_err(|e| unavailable(&e))?,
            });
            last = Some(common::time_token(at, &id));
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
