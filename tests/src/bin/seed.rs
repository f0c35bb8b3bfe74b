//! `cargo xtask seed [--seed N] [--ci]`: synthetic tenants with realistic cardinalities on a
//! throwaway stack — one large tenant of 10,000 users and 1,000,000 documents and a long tail of
//! 200 small ones (`--ci`: scaled down), spread over the shards by the services' own shard map,
//! bulk-loaded with `COPY`. Tenants are created through the auth directory (so they have keys
//! and tiers); users and documents are copied. Deterministic from the seed. A progress bar on
//! stderr; then checks that a seeded user can log in through the gateway and read a seeded
//! document; the last line is `tenants=… users=… documents=… seconds=… verdict=…`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use keel_tests::TestStack;
use keel_tests::seed::{Plan, Rng, Scale, copy_corpus, copy_users, document_ids};

/// The target for the full size.
const TARGET: Duration = Duration::from_secs(60);
/// Tenants created through the directory at once.
const TENANT_CONCURRENCY: usize = 8;

fn bar(label: &str, done: u64, total: u64) {
    let width = 30;
    let filled = (done * width / total.max(1)).min(width) as usize;
    eprint!(
        "\r  {label:<10} [{}{}] {done}/{total}   ",
        "#".repeat(filled),
        " ".repeat(width as usize - filled)
    );
    let _ = std::io::stderr().flush();
}

/// Draws a bar for `counter` until `total` or until told to stop.
async fn with_bar<T>(
    label: &str,
    total: u64,
    counter: Arc<AtomicU64>,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = tick.tick() => bar(label, counter.load(Ordering::Relaxed), total),
        }
    };
    bar(label, counter.load(Ordering::Relaxed), total);
    eprintln!();
    out
}

async fn run(seed: u64, scale: Scale) -> Result<bool> {
    let stack = TestStack::start_with(|e| {
        e.with(
            "KEEL_DB_MAX_CONNECTIONS",
            keel_store::DEFAULT_MAX_CONNECTIONS.to_string(),
        )
        .with("RUST_LOG", "error")
    })
    .await?;
    let plan = Plan::new(seed, scale);
    eprintln!(
        "seed {seed}: {} tenants, {} users, {} documents over {} shards",
        plan.tenants.len(),
        plan.users(),
        plan.documents(),
        stack.database_urls.len()
    );
    let started = Instant::now();

    // Tenants, through the directory.
    let created = Arc::new(AtomicU64::new(0));
    let directory = stack.directory().await?;
    let tenants = futures::stream::iter(plan.tenants.iter().map(|t| {
        let mut directory = directory.clone();
        let created = created.clone();
        async move {
            directory
                .create_tenant(keel_proto::auth::CreateTenantRequest {
                    tenant_id: t.id.clone(),
                    display_name: format!("Synthetic {}", t.id),
                    tier: t.tier.into(),
                })
                .await
                .with_context(|| format!("creating tenant {}", t.id))?;
            created.fetch_add(1, Ordering::Relaxed);
            anyhow::Ok(())
        }
    }));
    let results: Vec<Result<()>> = with_bar(
        "tenants",
        plan.tenants.len() as u64,
        created.clone(),
        futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
            tenants,
            TENANT_CONCURRENCY,
        )),
    )
    .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;

    // Users, one COPY per shard, all with one synthetic password's hash.
    let hash: Arc<str> = keel_auth::passwords::Hasher::new(1)
        .map_err(anyhow::Error::msg)?
        .hash(keel_tests::TEST_PASSWORD.into())
        .await
        .map_err(anyhow::Error::msg)?
        .into();
    let mut per_shard: BTreeMap<usize, Vec<(Arc<str>, usize)>> = BTreeMap::new();
    for t in &plan.tenants {
        per_shard
            .entry(stack.shard_of(&t.id))
            .or_default()
            .push((Arc::from(t.id.as_str()), t.users));
    }
    let users_done = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for (s, tenants) in per_shard {
        set.spawn(copy_users(
            stack.database_urls[s].clone(),
            tenants,
            hash.clone(),
            seed ^ 0x5553_4552 ^ s as u64,
            users_done.clone(),
        ));
    }
    let users = with_bar(
        "users",
        plan.users() as u64,
        users_done.clone(),
        async move {
            let mut n = 0u64;
            while let Some(r) = set.join_next().await {
                n += r??;
            }
            anyhow::Ok(n)
        },
    )
    .await?;

    // Documents: IDs from the seed, COPY streams per shard.
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let mut rng = Rng(seed);
    let corpus: Vec<_> = plan
        .tenants
        .iter()
        .map(|t| {
            (
                Arc::from(t.id.as_str()),
                stack.shard_of(&t.id),
                Arc::new(document_ids(&mut rng, t.documents, now_ms)),
            )
        })
        .collect();
    let docs_done = Arc::new(AtomicU64::new(0));
    let documents = with_bar(
        "documents",
        plan.documents() as u64,
        docs_done.clone(),
        copy_corpus(&stack.database_urls, &corpus, seed, docs_done.clone()),
    )
    .await?;
    for url in &stack.database_urls {
        let pool = sqlx::PgPool::connect(url).await?;
        sqlx::query("ANALYZE auth.users").execute(&pool).await?;
        sqlx::query("ANALYZE inference.documents")
            .execute(&pool)
            .await?;
        pool.close().await;
    }
    let seconds = started.elapsed().as_secs_f64();

    // The seeded data is real to the services: a synthetic user logs in through the gateway
    // and reads a seeded document of its tenant.
    let large = &plan.tenants[0];
    let (token, _) = stack
        .login(&large.id, &format!("user-{}", large.users - 1))
        .await
        .context("a seeded user logging in")?;
    let some_doc = corpus[0].2[corpus[0].2.len() / 2].hyphenated().to_string();
    let doc = stack
        .documents()
        .await?
        .get_document(keel_tests::authed(
            keel_proto::public::GetDocumentRequest { id: some_doc },
            &token,
        ))
        .await
        .context("reading a seeded document")?
        .into_inner();
    eprintln!(
        "checked: user-{} of {} logged in and read {:?}",
        large.users - 1,
        large.id,
        doc.title
    );
    let complete = users as usize == plan.users() && documents as usize == plan.documents();
    let top10: f64 = plan.tenants.iter().take(10).map(|t| t.activity).sum();
    let in_time = seconds < TARGET.as_secs_f64() || scale.large_documents < 1_000_000;
    stack.shutdown().await;
    println!(
        "tenants={} users={users} documents={documents} seconds={seconds:.1} activity_top10_share={top10:.2} target_s={} verdict={}",
        plan.tenants.len(),
        TARGET.as_secs(),
        if complete && in_time { "pass" } else { "fail" }
    );
    Ok(complete && in_time)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seed = 1u64;
    let mut scale = Scale::FULL;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ci" | "--smoke" => scale = Scale::CI,
            "--seed" => match it.next().and_then(|v| v.parse().ok()) {
                Some(s) => seed = s,
                None => {
                    eprintln!("seed: --seed needs a number");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("seed: unknown argument {other:?}; usage: seed [--seed N] [--ci]");
                return ExitCode::from(2);
            }
        }
    }
    match run(seed, scale).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("seed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
