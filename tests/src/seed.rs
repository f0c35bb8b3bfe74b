//! Synthetic data, bulk-loaded: deterministic word soup for titles and contents, time-ordered
//! document IDs, and `COPY` streams into the shards (`inference.documents`, `auth.users`).
//! Shared by `cargo xtask seed` (`bin/seed.rs`) and `cargo xtask bench inference`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;
use uuid::Uuid;

/// Concurrent `COPY` streams per shard database (2 cores: more only queue in Postgres).
pub const COPY_STREAMS_PER_SHARD: usize = 2;
/// Bytes buffered before each `CopyData` send.
pub const COPY_CHUNK: usize = 1 << 20;
/// Documents' creation times spread over the year before the run (v7 IDs follow them).
pub const HISTORY_MS: u64 = 365 * 24 * 3600 * 1000;

/// splitmix64: cheap, seedable, good enough to pick requests and words.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

pub const WORDS: &[&str] = &[
    "customer",
    "invoice",
    "quarterly",
    "revenue",
    "forecast",
    "shipment",
    "warehouse",
    "contract",
    "renewal",
    "support",
    "ticket",
    "escalation",
    "onboarding",
    "migration",
    "database",
    "latency",
    "incident",
    "review",
    "roadmap",
    "release",
    "feature",
    "pricing",
    "discount",
    "partner",
    "integration",
    "security",
    "audit",
    "compliance",
    "policy",
    "budget",
    "hiring",
    "team",
    "meeting",
    "notes",
    "summary",
    "action",
    "items",
    "owner",
    "deadline",
    "priority",
    "customer's",
    "request",
    "feedback",
    "survey",
    "results",
    "market",
    "analysis",
    "competitor",
    "launch",
    "campaign",
    "email",
    "draft",
    "approved",
    "pending",
    "blocked",
    "resolved",
    "the",
    "a",
    "for",
    "with",
    "and",
    "of",
    "to",
    "in",
    "next",
    "last",
    "week",
    "month",
    "region",
    "europe",
    "north",
    "america",
    "asia",
    "report",
    "plan",
    "update",
    "status",
    "risk",
    "mitigation",
    "vendor",
    "procurement",
    "legal",
    "signed",
    "terms",
];

pub fn title(rng: &mut Rng) -> String {
    let n = 3 + rng.below(4);
    let mut t = String::with_capacity(48);
    for i in 0..n {
        if i > 0 {
            t.push(' ');
        }
        let w = WORDS[rng.below(WORDS.len())];
        if i == 0 {
            let mut c = w.chars();
            if let Some(f) = c.next() {
                t.extend(f.to_uppercase());
                t.push_str(c.as_str());
            }
        } else {
            t.push_str(w);
        }
    }
    t
}

/// About 200 bytes of sentences (no tab, newline or backslash: safe in COPY text format).
pub fn content(rng: &mut Rng) -> String {
    let target = 170 + rng.below(60);
    let mut s = String::with_capacity(target + 24);
    let mut left = 0;
    while s.len() < target {
        let w = WORDS[rng.below(WORDS.len())];
        if left == 0 {
            // A new sentence of 6 to 13 words.
            if !s.is_empty() {
                s.push_str(". ");
            }
            left = 6 + rng.below(8);
            let mut c = w.chars();
            if let Some(f) = c.next() {
                s.extend(f.to_uppercase());
                s.push_str(c.as_str());
            }
        } else {
            s.push(' ');
            s.push_str(w);
        }
        left -= 1;
    }
    s.push('.');
    s
}

/// `YYYY-MM-DD HH:MM:SS.mmm+00` of a Unix time in milliseconds (proleptic Gregorian, UTC).
pub fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}+00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

pub fn unix_ms(id: &Uuid) -> u64 {
    let b = id.as_bytes();
    u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// `n` version-7 IDs with creation times over the [`HISTORY_MS`] before `now_ms`, sorted.
pub fn document_ids(rng: &mut Rng, n: usize, now_ms: u64) -> Vec<Uuid> {
    let mut v: Vec<Uuid> = (0..n)
        .map(|_| {
            let ms = now_ms - 1 - (rng.next_u64() % HISTORY_MS);
            let mut random = [0u8; 10];
            random[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            random[8..].copy_from_slice(&rng.next_u64().to_le_bytes()[..2]);
            uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid()
        })
        .collect();
    v.sort_unstable();
    v
}

/// A run of one tenant's IDs: (tenant, its IDs, the range to load).
pub type Piece = (Arc<str>, Arc<Vec<Uuid>>, std::ops::Range<usize>);

/// One `COPY … FROM STDIN` in text format: `next_row` appends one line per call and returns
/// false when there is none left; lines go to the server in [`COPY_CHUNK`] pieces, each counted
/// in `progress`. Returns the rows copied.
async fn copy_text(
    url: &str,
    statement: &'static str,
    progress: &AtomicU64,
    mut next_row: impl FnMut(&mut String) -> bool,
) -> sqlx::Result<u64> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let mut copy = conn.copy_in_raw(statement).await?;
    let mut buf = String::with_capacity(COPY_CHUNK + 4096);
    while next_row(&mut buf) {
        progress.fetch_add(1, Ordering::Relaxed);
        if buf.len() >= COPY_CHUNK {
            copy.send(std::mem::take(&mut buf).into_bytes()).await?;
            buf.reserve(COPY_CHUNK + 4096);
        }
    }
    if !buf.is_empty() {
        copy.send(buf.into_bytes()).await?;
    }
    copy.finish().await
}

/// One `COPY` stream of documents: the given pieces, in order. Returns the rows copied.
pub async fn copy_documents(
    url: String,
    pieces: Vec<Piece>,
    seed: u64,
    progress: Arc<AtomicU64>,
) -> sqlx::Result<u64> {
    let mut rng = Rng(seed);
    let mut rows = pieces
        .into_iter()
        .flat_map(|(tenant, ids, range)| range.map(move |i| (tenant.clone(), ids[i])));
    copy_text(
        &url,
        "COPY inference.documents (tenant_id, id, title, content, version, create_time, update_time) FROM STDIN",
        &progress,
        |buf| {
            let Some((tenant, id)) = rows.next() else {
                return false;
            };
            let ts = timestamp(unix_ms(&id));
            buf.push_str(&tenant);
            buf.push('\t');
            buf.push_str(&id.hyphenated().to_string());
            buf.push('\t');
            buf.push_str(&title(&mut rng));
            buf.push('\t');
            buf.push_str(&content(&mut rng));
            buf.push_str("\t1\t");
            buf.push_str(&ts);
            buf.push('\t');
            buf.push_str(&ts);
            buf.push('\n');
            true
        },
    )
    .await
}

/// One tenant's documents to load: (tenant, its shard index, its IDs).
pub type TenantCorpus = (Arc<str>, usize, Arc<Vec<Uuid>>);

/// Cuts each shard's tenants' documents into [`COPY_STREAMS_PER_SHARD`] contiguous runs and
/// copies them all at once. `tenants` is (tenant, shard index, its IDs). Returns rows copied.
pub async fn copy_corpus(
    urls: &[String],
    tenants: &[TenantCorpus],
    seed: u64,
    progress: Arc<AtomicU64>,
) -> sqlx::Result<u64> {
    let mut streams = Vec::new();
    for (s, _) in urls.iter().enumerate() {
        let mine: Vec<_> = tenants.iter().filter(|t| t.1 == s).collect();
        let rows: usize = mine.iter().map(|t| t.2.len()).sum();
        let per = rows.div_ceil(COPY_STREAMS_PER_SHARD).max(1);
        let mut current = Vec::new();
        let mut room = per;
        for (tenant, _, ids) in mine {
            let mut at = 0;
            while at < ids.len() {
                let take = room.min(ids.len() - at);
                current.push((tenant.clone(), ids.clone(), at..at + take));
                at += take;
                room -= take;
                if room == 0 {
                    streams.push((s, std::mem::take(&mut current)));
                    room = per;
                }
            }
        }
        if !current.is_empty() {
            streams.push((s, current));
        }
    }
    let mut set = tokio::task::JoinSet::new();
    for (i, (s, pieces)) in streams.into_iter().enumerate() {
        set.spawn(copy_documents(
            urls[s].clone(),
            pieces,
            seed + i as u64,
            progress.clone(),
        ));
    }
    let mut copied = 0;
    while let Some(n) = set.join_next().await {
        copied += n.map_err(|e| sqlx::Error::Protocol(format!("copy task: {e}")))??;
    }
    Ok(copied)
}

/// One `COPY` of users into `auth.users` on a shard: `(tenant, how many)`, usernames
/// `user-<n>`, IDs and roles deterministic from `seed`, every one with the same password hash
/// (synthetic users share one password; hashing 10,000 with Argon2 would take minutes and
/// prove nothing). Returns rows copied.
pub async fn copy_users(
    url: String,
    tenants: Vec<(Arc<str>, usize)>,
    password_hash: Arc<str>,
    seed: u64,
    progress: Arc<AtomicU64>,
) -> sqlx::Result<u64> {
    let mut rng = Rng(seed);
    let mut rows = tenants
        .into_iter()
        .flat_map(|(tenant, n)| (0..n).map(move |u| (tenant.clone(), u)));
    copy_text(
        &url,
        "COPY auth.users (tenant_id, user_id, username, password_hash, roles) FROM STDIN",
        &progress,
        |buf| {
            let Some((tenant, u)) = rows.next() else {
                return false;
            };
            let mut random = [0u8; 16];
            random[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            random[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
            let id = uuid::Builder::from_random_bytes(random).into_uuid();
            // One in fifty is an admin, as in a real organisation.
            let roles = if rng.below(50) == 0 {
                "{admin,member}"
            } else {
                "{member}"
            };
            buf.push_str(&tenant);
            buf.push('\t');
            buf.push_str(&id.hyphenated().to_string());
            buf.push_str(&format!("\tuser-{u}\t"));
            buf.push_str(&password_hash);
            buf.push('\t');
            buf.push_str(roles);
            buf.push('\n');
            true
        },
    )
    .await
}

/// One synthetic tenant of a [`Plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPlan {
    pub id: String,
    pub tier: &'static str,
    pub users: usize,
    pub documents: usize,
    /// Its share of the traffic (all tenants' shares sum to 1): Zipf, s = 1.2.
    pub activity: f64,
}

/// What `cargo xtask seed` creates: large tenants, then a long tail of small ones whose users
/// and documents fall off as a power law. Deterministic from the seed (it shuffles the tail's
/// sizes and names a little, never the totals' order of magnitude).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub tenants: Vec<TenantPlan>,
}

/// Sizes of a plan.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub large: usize,
    pub large_users: usize,
    pub large_documents: usize,
    pub tail: usize,
}

impl Scale {
    /// The size: one large tenant of 10,000 users and 1,000,000 documents, and a tail
    /// of 200 small tenants.
    pub const FULL: Scale = Scale {
        large: 1,
        large_users: 10_000,
        large_documents: 1_000_000,
        tail: 200,
    };
    /// Scaled down for CI.
    pub const CI: Scale = Scale {
        large: 1,
        large_users: 500,
        large_documents: 20_000,
        tail: 20,
    };
}

impl Plan {
    pub fn new(seed: u64, scale: Scale) -> Plan {
        let mut rng = Rng(seed);
        let mut tenants = Vec::new();
        for l in 0..scale.large {
            tenants.push(TenantPlan {
                id: format!("large-{l}"),
                tier: "enterprise",
                users: scale.large_users,
                documents: scale.large_documents,
                activity: 0.0,
            });
        }
        for k in 1..=scale.tail {
            // Power-law sizes with ±25 % noise from the seed.
            let noise = 0.75 + (rng.below(501) as f64) / 1000.0;
            let users = ((scale.large_users as f64 / 20.0) / k as f64 * noise).max(1.0) as usize;
            let documents = ((scale.large_documents as f64 / 50.0) / (k as f64).powf(1.1) * noise)
                .max(5.0) as usize;
            tenants.push(TenantPlan {
                id: format!("tail-{k:04}-{:04x}", rng.below(0x10000)),
                tier: if k <= scale.tail / 10 { "pro" } else { "free" },
                users,
                documents,
                activity: 0.0,
            });
        }
        let weights: Vec<f64> = (1..=tenants.len())
            .map(|r| 1.0 / (r as f64).powf(1.2))
            .collect();
        let sum: f64 = weights.iter().sum();
        for (t, w) in tenants.iter_mut().zip(weights) {
            t.activity = w / sum;
        }
        Plan { tenants }
    }

    pub fn users(&self) -> usize {
        self.tenants.iter().map(|t| t.users).sum()
    }

    pub fn documents(&self) -> usize {
        self.tenants.iter().map(|t| t.documents).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_deterministic_from_its_seed() {
        assert_eq!(Plan::new(7, Scale::CI), Plan::new(7, Scale::CI));
        assert_ne!(Plan::new(7, Scale::CI), Plan::new(8, Scale::CI));
    }

    #[test]
    fn the_full_plan_has_the_large_tenant_and_a_long_tail() {
        let p = Plan::new(1, Scale::FULL);
        assert_eq!(p.tenants.len(), 201);
        assert_eq!(p.tenants[0].users, 10_000);
        assert_eq!(p.tenants[0].documents, 1_000_000);
        let tail = &p.tenants[1..];
        assert!(tail.iter().all(|t| t.users >= 1 && t.documents >= 5));
        assert!(tail[0].documents > 10 * tail[199].documents, "skewed");
        let activity: f64 = p.tenants.iter().map(|t| t.activity).sum();
        assert!((activity - 1.0).abs() < 1e-9);
        assert!(p.tenants[0].activity > p.tenants[1].activity);
        let ids: std::collections::HashSet<_> = p.tenants.iter().map(|t| &t.id).collect();
        assert_eq!(ids.len(), p.tenants.len(), "unique tenant IDs");
    }

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00.000+00");
        assert_eq!(timestamp(951_782_400_123), "2000-02-29 00:00:00.123+00");
        assert_eq!(timestamp(1_767_225_599_999), "2025-12-31 23:59:59.999+00");
    }
}
