//! `cargo xtask gameday failover`: the whole stack as separate processes — PostgreSQL, Redis
//! and nats-server of the game day's own, the four services from their release binaries —
//! under a light, steady load of document writes through the gateway. Each service and each
//! server in turn is killed with SIGKILL and restarted. The client retries a failed write
//! with the same idempotency key, as a careful client would. Afterwards: every write the
//! gateway acknowledged must be stored (lost = acknowledged but missing), post-processing must
//! have counted each stored document exactly once (duplicated = counted more than once), and
//! each fault gets its recovery time (from the restart to the next acknowledged write). The
//! report ends with `faults=… requests=… lost=… duplicated=… max_recovery_s=… verdict=…`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keel_proto::public as pb;
use keel_tests::{authed, bearer, connect, free_port, own, unique, wait_serving};
use tokio::sync::Mutex;

/// One write every this long (light load).
const EVERY: Duration = Duration::from_millis(50);
/// How long a fault lasts before the restart.
const DOWN: Duration = Duration::from_secs(2);
/// A write is retried (same idempotency key) for this long before the client gives up.
const GIVE_UP: Duration = Duration::from_secs(60);
/// A restarted part must be serving writes again within this.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
const TENANT: &str = "failover";

/// One service as an operating-system process.
struct Service {
    name: &'static str,
    bin: PathBuf,
    env: Vec<(String, String)>,
    grpc: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the writer saw.
#[derive(Default)]
struct Writes {
    requests: AtomicU64,
    failed_attempts: AtomicU64,
    gave_up: AtomicU64,
    /// Document IDs the gateway acknowledged, with when.
    acked: Mutex<Vec<(String, Instant)>>,
}

async fn writer(gateway: String, token: String, writes: Arc<Writes>, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("failover-{n}");
        let first = Instant::now();
        loop {
            writes.requests.fetch_add(1, Ordering::Relaxed);
            let attempt = async {
                let mut docs = pb::document_service_client::DocumentServiceClient::new(
                    connect(&gateway).await?,
                );
                let mut req = authed(
                    pb::CreateDocumentRequest {
                        title: format!("write {n}"),
                        content: format!("written through faults, number {n}"),
                        idempotency_key: key.clone(),
                    },
                    &token,
                );
                req.set_timeout(Duration::from_secs(5));
                anyhow::Ok(docs.create_document(req).await?.into_inner().id)
            };
            match attempt.await {
                Ok(id) => {
                    writes.acked.lock().await.push((id, Instant::now()));
                    break;
                }
                Err(_) if first.elapsed() < GIVE_UP && !stop.load(Ordering::Relaxed) => {
                    writes.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => {
                    writes.gave_up.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// The release binaries `cargo xtask gameday failover` built.
fn bin_dir() -> Result<PathBuf> {
    #[allow(clippy::disallowed_methods)]
    let dir = std::env::var("KEEL_GAMEDAY_BIN_DIR")
        .context("KEEL_GAMEDAY_BIN_DIR: run through `cargo xtask gameday failover`")?;
    Ok(PathBuf::from(dir))
}

pub async fn run() -> Result<bool> {
    let bins = bin_dir()?;
    let dir = std::env::temp_dir().join(unique("keel-gameday-"));
    std::fs::create_dir_all(&dir)?;
    let mut pg = own::Postgres::start().await;
    let mut redis = own::Redis::start().await;
    let mut nats = own::Nats::start().await;
    let id = unique("g");
    let urls = pg.create_databases(&id, 2).await;
    let servers = keel_tests::Servers {
        pg_url: pg.url.clone(),
        redis_url: redis.url.clone(),
        nats_url: nats.url.clone(),
    };
    let base = keel_tests::base_env(&servers, &id, &urls);
    let ports: BTreeMap<&str, (u16, u16)> = ["auth", "inference", "postproc", "gateway"]
        .into_iter()
        .map(|s| (s, (free_port(), free_port())))
        .collect();
    let auth_http = free_port();
    let url = |s: &str| format!("http://127.0.0.1:{}", ports[s].0);
    let mut env = base
        .with("KEEL_AUTH_URL", url("auth"))
        .with("KEEL_INFERENCE_URL", url("inference"))
        .with("KEEL_POSTPROC_URL", url("postproc"))
        .with("KEEL_AUTH_HTTP_ADDR", format!("127.0.0.1:{auth_http}"))
        .with(
            "KEEL_AUTH_ISSUER_BASE",
            format!("http://127.0.0.1:{auth_http}"),
        )
        .with(
            "KEEL_GATEWAY_HTTP_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .with("KEEL_POSTPROC_ACK_WAIT", "5s")
        .with("RUST_LOG", "warn");
    for (s, (grpc, admin)) in &ports {
        let up = s.to_uppercase();
        env = env
            .with(format!("KEEL_{up}_GRPC_ADDR"), format!("127.0.0.1:{grpc}"))
            .with(
                format!("KEEL_{up}_ADMIN_ADDR"),
                format!("127.0.0.1:{admin}"),
            );
    }
    let pairs: Vec<(String, String)> = env
        .pairs()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut services: Vec<Service> = ["auth", "inference", "postproc", "gateway"]
        .into_iter()
        .map(|name| Service {
            name,
            bin: bins.join(format!("keel-{name}")),
            env: pairs.clone(),
            grpc: ports[name].0,
            log: dir.join(format!("{name}.log")),
            child: None,
        })
        .collect();
    for s in &mut services {
        s.start()?;
        wait_serving(&s.url(), Duration::from_secs(60))
            .await
            .with_context(|| format!("{} did not start (log: {})", s.name, s.log.display()))?;
    }
    let gateway = url("gateway");
    println!(
        "stack up: 4 services as processes, own postgres, redis, nats; logs in {}",
        dir.display()
    );

    // A tenant and a writer.
    let admin_token = env
        .raw("KEEL_AUTH_ADMIN_TOKEN")
        .unwrap_or_default()
        .to_owned();
    let auth_ch = connect(&url("auth")).await?;
    keel_proto::auth::tenant_directory_client::TenantDirectoryClient::with_interceptor(
        auth_ch.clone(),
        bearer(&admin_token),
    )
    .create_tenant(keel_proto::auth::CreateTenantRequest {
        tenant_id: TENANT.into(),
        display_name: "Failover".into(),
        tier: "enterprise".into(),
    })
    .await?;
    keel_proto::auth::identity_admin_client::IdentityAdminClient::with_interceptor(
        auth_ch,
        bearer(&admin_token),
    )
    .create_user(keel_proto::auth::CreateUserRequest {
        tenant_id: TENANT.into(),
        username: "writer".into(),
        password: keel_tests::TEST_PASSWORD.into(),
        roles: vec!["member".into()],
    })
    .await?;
    let token = pb::authentication_service_client::AuthenticationServiceClient::new(
        connect(&gateway).await?,
    )
    .login(pb::LoginRequest {
        tenant_id: TENANT.into(),
        username: "writer".into(),
        password: keel_tests::TEST_PASSWORD.into(),
        client_id: "gameday".into(),
    })
    .await?
    .into_inner()
    .access_token;
    let writes = Arc::new(Writes::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(writer(
        gateway.clone(),
        token.clone(),
        writes.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The faults, one at a time.
    let parts = [
        "postproc",
        "inference",
        "auth",
        "gateway",
        "redis",
        "nats",
        "postgres",
    ];
    let mut recoveries = Vec::new();
    for part in parts {
        let before = writes.acked.lock().await.len();
        let errors_before = writes.failed_attempts.load(Ordering::Relaxed);
        let killed = Instant::now();
        match part {
            "redis" => redis.kill(),
            "nats" => nats.kill(),
            "postgres" => pg.kill(),
            s => services
                .iter_mut()
                .find(|x| x.name == s)
                .map(Service::kill)
                .unwrap_or_default(),
        }
        tokio::time::sleep(DOWN).await;
        let restarted = Instant::now();
        match part {
            "redis" => redis.restart().await,
            "nats" => nats.restart().await,
            "postgres" => pg.restart().await,
            s => {
                let svc = services
                    .iter_mut()
                    .find(|x| x.name == s)
                    .context("no such service")?;
                svc.start()?;
            }
        }
        // Recovered: a write acknowledged after the restart.
        let recovered = loop {
            let acked = writes.acked.lock().await;
            if let Some((_, at)) = acked.iter().skip(before).find(|(_, at)| *at > restarted) {
                break Some(at.duration_since(restarted));
            }
            drop(acked);
            if restarted.elapsed() > RECOVERY_LIMIT {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let failed_now = writes.failed_attempts.load(Ordering::Relaxed);
        // What the client felt: the longest wait between acknowledged writes around the fault.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let gap = {
            let acked = writes.acked.lock().await;
            let times: Vec<Instant> = acked
                .iter()
                .skip(before.saturating_sub(1))
                .map(|(_, at)| *at)
                .collect();
            times
                .windows(2)
                .map(|w| w[1].duration_since(w[0]))
                .max()
                .unwrap_or_default()
        };
        println!(
            "fault {part:<9} killed for {:.1}s; failed attempts {} (of {failed_now} so far); longest wait between acknowledged writes {:.2}s; recovered {}",
            restarted.duration_since(killed).as_secs_f64(),
            failed_now - errors_before,
            gap.as_secs_f64(),
            match recovered {
                Some(d) => format!("{:.2}s after the restart", d.as_secs_f64()),
                None => format!("NOT within {}s", RECOVERY_LIMIT.as_secs()),
            }
        );
        recoveries.push((part, recovered));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}

    // What was acknowledged is stored, and post-processing counted each exactly once.
    let acked: Vec<String> = writes
        .acked
        .lock()
        .await
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    let distinct: HashSet<&String> = acked.iter().collect();
    let shard = keel_store::StoreConfig::from_env(&env)?
        .shard_map()?
        .physical(&keel_tenancy::TenantId::parse(TENANT)?);
    let pool = sqlx::PgPool::connect(&urls[shard]).await?;
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inference.documents WHERE tenant_id = $1 AND id = ANY($2::uuid[])",
    )
    .bind(TENANT)
    .bind(distinct.iter().map(|s| s.as_str()).collect::<Vec<_>>())
    .fetch_one(&pool)
    .await?;
    let lost = distinct.len() as i64 - stored;
    // Post-processing catches up (its consumers were killed too).
    let deadline = Instant::now() + Duration::from_secs(90);
    let counted = loop {
        let c: Option<i64> = sqlx::query_scalar(
            "SELECT created FROM postproc.tenant_document_stats WHERE tenant_id = $1",
        )
        .bind(TENANT)
        .fetch_optional(&pool)
        .await?;
        let c = c.unwrap_or(0);
        if c >= stored || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counted_after: Option<i64> = sqlx::query_scalar(
        "SELECT created FROM postproc.tenant_document_stats WHERE tenant_id = $1",
    )
    .bind(TENANT)
    .fetch_optional(&pool)
    .await?;
    let counted_after = counted_after.unwrap_or(0).max(counted);
    let all_docs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inference.documents WHERE tenant_id = $1")
            .bind(TENANT)
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    for s in &mut services {
        s.kill();
    }
    let duplicated = (counted_after - all_docs).max(0);
    let unprocessed = (all_docs - counted_after).max(0);
    let max_recovery = recoveries
        .iter()
        .map(|(_, r)| r.map_or(f64::INFINITY, |d| d.as_secs_f64()))
        .fold(0.0f64, f64::max);
    let requests = writes.requests.load(Ordering::Relaxed);
    let gave_up = writes.gave_up.load(Ordering::Relaxed);
    println!(
        "writes: {} acknowledged ({} distinct), {} stored of those, {all_docs} documents in all, {counted_after} counted by post-processing; {} failed attempts, {gave_up} writes given up",
        acked.len(),
        distinct.len(),
        stored,
        writes.failed_attempts.load(Ordering::Relaxed)
    );
    if acked.len() != distinct.len() {
        bail!("an idempotency key was acknowledged twice with different documents");
    }
    let pass = lost == 0
        && duplicated == 0
        && unprocessed == 0
        && gave_up == 0
        && recoveries.iter().all(|(_, r)| r.is_some());
    println!(
        "faults={} requests={requests} lost={lost} duplicated={duplicated} unprocessed={unprocessed} gave_up={gave_up} max_recovery_s={max_recovery:.2} verdict={}",
        recoveries.len(),
        if pass { "pass" } else { "fail" }
    );
    if pass {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(pass)
}
