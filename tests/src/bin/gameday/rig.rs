//! What the failover and chaos game days share: the whole stack as operating-system processes
//! (PostgreSQL, Redis and nats-server of the game day's own, the four services from their
//! release binaries), optionally with a [`FaultProxy`] on each link; a tenant and a user's
//! token; the client load (idempotent writes retried under the same key, and reads of
//! acknowledged documents), every call of which is recorded with its code and duration; what
//! one fault cost ([`Window`]); and the final accounting of lost, duplicated and unprocessed
//! writes.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keel_config::Env;
use keel_faultproxy::FaultProxy;
use keel_proto::public as pb;
use keel_tests::own::ServerProcess;
use keel_tests::{authed, bearer, connect, free_port, own, unique, wait_serving};
use tonic::transport::{Channel, Endpoint};

/// The services, in the order they are started.
pub const SERVICES: [&str; 4] = ["auth", "inference", "postproc", "gateway"];
/// Everything a fault may hit: the services and the servers.
pub const PARTS: [&str; 7] = [
    "postproc",
    "inference",
    "auth",
    "gateway",
    "redis",
    "nats",
    "postgres",
];
/// Every client call's deadline (sent as `grpc-timeout`, enforced by the client too).
pub const DEADLINE: Duration = Duration::from_secs(5);
/// A call still unanswered this long after its deadline has hung: it is cut off and counted.
pub const HANG_SLACK: Duration = Duration::from_secs(1);
/// A write is retried (same idempotency key) for this long before the client gives up.
pub const GIVE_UP: Duration = Duration::from_secs(60);
/// A part must be serving writes again within this after the fault ends.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
/// Pause between one acknowledged write and the writer's next.
const WRITE_EVERY: Duration = Duration::from_millis(50);
/// Pause before retrying a failed write.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// One service as an operating-system process.
pub struct Service {
    pub name: &'static str,
    bin: PathBuf,
    env: Vec<(String, String)>,
    grpc: u16,
    pub log: PathBuf,
    /// Its process while it runs (SIGKILL, SIGSTOP/SIGCONT, pid).
    pub process: ServerProcess,
}

impl Service {
    pub fn start(&mut self) -> Result<()> {
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
        self.process.run(child);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.process.kill();
    }
}

/// The port of a `scheme://host:port[/path]` URL.
fn port_of(url: &str) -> Result<u16> {
    let authority = url.split("://").nth(1).unwrap_or(url);
    let host_port = authority.split('/').next().unwrap_or(authority);
    host_port
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {url}"))
}

/// The same URL with another port.
fn with_port(url: &str, port: u16) -> Result<String> {
    let old = port_of(url)?;
    Ok(url.replacen(&format!(":{old}"), &format!(":{port}"), 1))
}

/// The release binaries `cargo xtask gameday failover` and `cargo xtask chaos` built.
fn bin_dir() -> Result<PathBuf> {
    #[allow(clippy::disallowed_methods)]
    let dir = std::env::var("KEEL_GAMEDAY_BIN_DIR").context(
        "KEEL_GAMEDAY_BIN_DIR: run through `cargo xtask gameday failover` or `cargo xtask chaos`",
    )?;
    Ok(PathBuf::from(dir))
}

/// How to start a [`Rig`].
#[derive(Default)]
pub struct Options {
    /// A [`FaultProxy`] on each link: the gateway to auth and to inference, and every service
    /// to PostgreSQL, Redis and NATS.
    pub proxies: bool,
    /// Settings for every service, over the defaults.
    pub settings: Vec<(&'static str, String)>,
}

/// A link with a fault proxy on it.
pub struct Link {
    pub name: &'static str,
    pub proxy: FaultProxy,
}

/// The whole stack as processes.
pub struct Rig {
    /// Logs of the services (removed after a passing run).
    pub dir: PathBuf,
    pub pg: own::Postgres,
    pub redis: own::Redis,
    pub nats: own::Nats,
    /// The shard databases, reached directly (never through a proxy).
    pub database_urls: Vec<String>,
    /// The services' common settings.
    pub env: Env,
    pub services: Vec<Service>,
    pub links: Vec<Link>,
}

impl Rig {
    /// Starts the servers, the proxies (if asked) and the four services, each waited until it
    /// reports SERVING.
    pub async fn start(opts: Options) -> Result<Rig> {
        let bins = bin_dir()?;
        let dir = std::env::temp_dir().join(unique("keel-gameday-"));
        std::fs::create_dir_all(&dir)?;
        let pg = own::Postgres::start().await;
        let redis = own::Redis::start().await;
        let nats = own::Nats::start().await;
        let id = unique("g");
        let database_urls = pg.create_databases(&id, 2).await;
        let ports: BTreeMap<&str, (u16, u16)> = SERVICES
            .into_iter()
            .map(|s| (s, (free_port(), free_port())))
            .collect();
        let url = |s: &str| format!("http://127.0.0.1:{}", ports[s].0);
        let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

        // What the services are told to connect to: the servers, or proxies in front of them.
        let mut links = Vec::new();
        let (mut servers_pg, mut servers_redis, mut servers_nats) =
            (pg.url.clone(), redis.url.clone(), nats.url.clone());
        let mut db_urls = database_urls.clone();
        let (mut auth_url, mut inference_url) = (url("auth"), url("inference"));
        if opts.proxies {
            let mut proxy = async |name: &'static str, upstream: &str| -> Result<u16> {
                let p = FaultProxy::start(local(port_of(upstream)?)).await?;
                let port = p.addr().port();
                links.push(Link { name, proxy: p });
                Ok(port)
            };
            let port = proxy("gateway→auth", &auth_url).await?;
            auth_url = with_port(&auth_url, port)?;
            let port = proxy("gateway→inference", &inference_url).await?;
            inference_url = with_port(&inference_url, port)?;
            let port = proxy("services→postgres", &servers_pg).await?;
            servers_pg = with_port(&servers_pg, port)?;
            db_urls = db_urls
                .iter()
                .map(|u| with_port(u, port))
                .collect::<Result<_>>()?;
            let port = proxy("services→redis", &servers_redis).await?;
            servers_redis = with_port(&servers_redis, port)?;
            let port = proxy("services→nats", &servers_nats).await?;
            servers_nats = with_port(&servers_nats, port)?;
        }
        let servers = keel_tests::Servers {
            pg_url: servers_pg,
            redis_url: servers_redis,
            nats_url: servers_nats,
        };
        let auth_http = free_port();
        let mut env = keel_tests::base_env(&servers, &id, &db_urls)
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
        for (k, v) in opts.settings {
            env = env.with(k, v);
        }
        let pairs = |env: &Env| -> Vec<(String, String)> {
            env.pairs()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        };
        // Only the gateway goes through the proxies to auth and inference (postproc reads
        // documents from inference directly).
        let gateway_env = env
            .clone()
            .with("KEEL_AUTH_URL", auth_url)
            .with("KEEL_INFERENCE_URL", inference_url);
        let mut services: Vec<Service> = SERVICES
            .into_iter()
            .map(|name| Service {
                name,
                bin: bins.join(format!("keel-{name}")),
                env: pairs(if name == "gateway" {
                    &gateway_env
                } else {
                    &env
                }),
                grpc: ports[name].0,
                log: dir.join(format!("{name}.log")),
                process: ServerProcess::default(),
            })
            .collect();
        for s in &mut services {
            s.start()?;
            wait_serving(&s.url(), Duration::from_secs(60))
                .await
                .with_context(|| format!("{} did not start (log: {})", s.name, s.log.display()))?;
        }
        Ok(Rig {
            dir,
            pg,
            redis,
            nats,
            database_urls,
            env,
            services,
            links,
        })
    }

    pub fn service(&self, name: &str) -> Result<&Service> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no service {name}"))
    }

    fn service_mut(&mut self, name: &str) -> Result<&mut Service> {
        self.services
            .iter_mut()
            .find(|s| s.name == name)
            .with_context(|| format!("no service {name}"))
    }

    pub fn url(&self, service: &str) -> Result<String> {
        Ok(self.service(service)?.url())
    }

    /// SIGKILL to a part (a service, or `redis`, `nats`, `postgres`).
    pub fn kill(&mut self, part: &str) -> Result<()> {
        match part {
            "redis" => self.redis.kill(),
            "nats" => self.nats.kill(),
            "postgres" => self.pg.kill(),
            s => self.service_mut(s)?.process.kill(),
        }
        Ok(())
    }

    /// Starts a killed part again (servers: waited until they accept connections).
    pub async fn restart(&mut self, part: &str) -> Result<()> {
        match part {
            "redis" => self.redis.restart().await,
            "nats" => self.nats.restart().await,
            "postgres" => self.pg.restart().await,
            s => self.service_mut(s)?.start()?,
        }
        Ok(())
    }

    /// SIGKILL to a part, `down` later a restart: what it cost the clients of `load`.
    pub async fn kill_and_restart(
        &mut self,
        load: &Load,
        part: &str,
        down: Duration,
    ) -> Result<Window> {
        let injected = Instant::now();
        self.kill(part)?;
        tokio::time::sleep(down).await;
        let ended = Instant::now();
        self.restart(part).await?;
        Ok(load.window(injected, ended).await)
    }

    /// SIGSTOP to a part (for PostgreSQL, the postmaster and every backend).
    pub fn pause(&self, part: &str) -> Result<()> {
        match part {
            "redis" => self.redis.pause(),
            "nats" => self.nats.pause(),
            "postgres" => self.pg.pause(),
            s => self.service(s)?.process.pause(),
        }
        Ok(())
    }

    /// SIGCONT after [`Rig::pause`].
    pub fn resume(&self, part: &str) -> Result<()> {
        match part {
            "redis" => self.redis.resume(),
            "nats" => self.nats.resume(),
            "postgres" => self.pg.resume(),
            s => self.service(s)?.process.resume(),
        }
        Ok(())
    }

    fn admin_token(&self) -> String {
        self.env
            .raw("KEEL_AUTH_ADMIN_TOKEN")
            .unwrap_or_default()
            .to_owned()
    }

    /// Creates a tenant in auth's directory.
    pub async fn create_tenant(&self, tenant: &str, tier: &str) -> Result<()> {
        keel_proto::auth::tenant_directory_client::TenantDirectoryClient::with_interceptor(
            connect(&self.url("auth")?).await?,
            bearer(&self.admin_token()),
        )
        .create_tenant(keel_proto::auth::CreateTenantRequest {
            tenant_id: tenant.into(),
            display_name: format!("Game day {tenant}"),
            tier: tier.into(),
        })
        .await?;
        Ok(())
    }

    /// Creates a member of the tenant, logs it in through the gateway and returns its access
    /// token.
    pub async fn user_token(&self, tenant: &str, user: &str) -> Result<String> {
        keel_proto::auth::identity_admin_client::IdentityAdminClient::with_interceptor(
            connect(&self.url("auth")?).await?,
            bearer(&self.admin_token()),
        )
        .create_user(keel_proto::auth::CreateUserRequest {
            tenant_id: tenant.into(),
            username: user.into(),
            password: keel_tests::TEST_PASSWORD.into(),
            roles: vec!["member".into()],
        })
        .await?;
        Ok(
            pb::authentication_service_client::AuthenticationServiceClient::new(
                connect(&self.url("gateway")?).await?,
            )
            .login(pb::LoginRequest {
                tenant_id: tenant.into(),
                username: user.into(),
                password: keel_tests::TEST_PASSWORD.into(),
                client_id: "gameday".into(),
            })
            .await?
            .into_inner()
            .access_token,
        )
    }

    /// Every acknowledged write of `tenant` stored, and counted once by post-processing
    /// (waiting up to 90 s for it to catch up); prints one line.
    pub async fn account(&self, tenant: &str, load: &Load) -> Result<Accounting> {
        let acked: Vec<String> = lock(&load.acked).iter().map(|a| a.id.clone()).collect();
        let distinct: HashSet<&String> = acked.iter().collect();
        let shard = keel_store::StoreConfig::from_env(&self.env)?
            .shard_map()?
            .physical(&keel_tenancy::TenantId::parse(tenant)?);
        let pool = sqlx::PgPool::connect(&self.database_urls[shard]).await?;
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inference.documents WHERE tenant_id = $1 AND id = ANY($2::uuid[])",
        )
        .bind(tenant)
        .bind(distinct.iter().map(|s| s.as_str()).collect::<Vec<_>>())
        .fetch_one(&pool)
        .await?;
        let counted = || async {
            let c: Option<i64> = sqlx::query_scalar(
                "SELECT created FROM postproc.tenant_document_stats WHERE tenant_id = $1",
            )
            .bind(tenant)
            .fetch_optional(&pool)
            .await?;
            anyhow::Ok(c.unwrap_or(0))
        };
        // Post-processing catches up (its consumers were hit too).
        let deadline = Instant::now() + Duration::from_secs(90);
        let caught_up = loop {
            let c = counted().await?;
            if c >= stored || Instant::now() > deadline {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        // Anything counted twice would show up now.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let counted = counted().await?.max(caught_up);
        let all_docs: i64 =
            sqlx::query_scalar("SELECT count(*) FROM inference.documents WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_one(&pool)
                .await?;
        pool.close().await;
        let a = Accounting {
            lost: distinct.len() as i64 - stored,
            duplicated: (counted - all_docs).max(0),
            unprocessed: (all_docs - counted).max(0),
            gave_up: load.gave_up.load(Ordering::Relaxed),
        };
        println!(
            "writes: {} acknowledged ({} distinct), {stored} stored of those, {all_docs} documents in all, {counted} counted by post-processing; {} failed attempts, {} writes given up",
            acked.len(),
            distinct.len(),
            load.failed_writes.load(Ordering::Relaxed),
            a.gave_up
        );
        if acked.len() != distinct.len() {
            bail!("an idempotency key was acknowledged twice with different documents");
        }
        Ok(a)
    }

    /// Stops the services; on a passing run, removes their logs.
    pub fn finish(&mut self, pass: bool) {
        for s in &mut self.services {
            s.process.kill();
        }
        if pass {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            println!("service logs kept in {}", self.dir.display());
        }
    }
}

/// The final accounting of the writes.
pub struct Accounting {
    /// Acknowledged but not stored.
    pub lost: i64,
    /// Counted by post-processing more often than there are documents.
    pub duplicated: i64,
    /// Documents post-processing never counted.
    pub unprocessed: i64,
    pub gave_up: u64,
}

impl Accounting {
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.unprocessed == 0 && self.gave_up == 0
    }
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Write,
    Read,
}

/// One client call as the client saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub op: Op,
    pub start: Instant,
    pub took: Duration,
    /// `OK`, the gRPC code's name, `CLIENT_DEADLINE` (the client's own timer fired: tonic's
    /// CANCELLED "Timeout expired"), `BROKEN_CONNECTION` (the connection failed mid-call) or
    /// `HUNG` (no answer even [`HANG_SLACK`] after the deadline).
    pub code: &'static str,
    /// The keel reason of a failure the server answered (empty otherwise).
    pub reason: &'static str,
}

impl Call {
    /// `CODE`, or `CODE(REASON)` when the reason says more.
    pub fn kind(&self) -> String {
        if self.reason.is_empty() || self.reason == self.code {
            self.code.to_owned()
        } else {
            format!("{}({})", self.code, self.reason)
        }
    }

    fn end(&self) -> Instant {
        self.start + self.took
    }
}

/// An acknowledged write.
pub struct Ack {
    pub id: String,
    /// When the attempt that was acknowledged began.
    pub sent: Instant,
    pub at: Instant,
}

/// What the clients saw.
#[derive(Default)]
pub struct Load {
    pub calls: Mutex<Vec<Call>>,
    pub acked: Mutex<Vec<Ack>>,
    pub write_attempts: AtomicU64,
    pub failed_writes: AtomicU64,
    pub gave_up: AtomicU64,
    /// Per kind of failure ([`Call::kind`]): how many, and the first message seen.
    pub failures: Mutex<BTreeMap<String, (u64, String)>>,
}

/// The label of a failed call's status: its code's name, or what the client itself saw.
pub fn code_label(st: &tonic::Status) -> &'static str {
    if st.code() == tonic::Code::Cancelled && st.message() == "Timeout expired" {
        "CLIENT_DEADLINE"
    } else if keel_errors::is_transport_failure(st) {
        // The connection to the gateway broke mid-call (tonic: UNKNOWN "transport error").
        "BROKEN_CONNECTION"
    } else {
        keel_loadtest::engine::code_name(st.code())
    }
}

/// A channel to the gateway with the client's deadlines: connecting, and each call.
pub fn channel(url: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(DEADLINE)
        .timeout(DEADLINE)
        .connect_lazy())
}

impl Load {
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// Runs one call under [`DEADLINE`] plus [`HANG_SLACK`] and records it.
    pub async fn call<T>(
        &self,
        op: Op,
        fut: impl Future<Output = Result<T, tonic::Status>>,
    ) -> Option<T> {
        let start = Instant::now();
        let (code, reason, message, out) =
            match tokio::time::timeout(DEADLINE + HANG_SLACK, fut).await {
                Ok(Ok(v)) => ("OK", "", String::new(), Some(v)),
                Ok(Err(st)) => {
                    let code = code_label(&st);
                    let reason = if code == "CLIENT_DEADLINE" || code == "BROKEN_CONNECTION" {
                        ""
                    } else {
                        keel_tests::reason(&st)
                    };
                    (code, reason, st.message().to_owned(), None)
                }
                Err(_) => ("HUNG", "", "no answer".to_owned(), None),
            };
        let call = Call {
            op,
            start,
            took: start.elapsed(),
            code,
            reason,
        };
        if code != "OK" {
            lock(&self.failures)
                .entry(call.kind())
                .or_insert((0, message))
                .0 += 1;
        }
        lock(&self.calls).push(call);
        out
    }

    /// Creates documents one after another, each with its own idempotency key
    /// (`<prefix>-<n>`), retrying a failed write under the same key for up to [`GIVE_UP`].
    pub async fn writer(
        self: Arc<Self>,
        gateway: String,
        token: String,
        prefix: String,
        stop: Arc<AtomicBool>,
    ) {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let key = format!("{prefix}-{n}");
            let first = Instant::now();
            loop {
                self.write_attempts.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let attempt = async {
                    // A new connection per attempt: a restarted gateway is found at once.
                    let ch =
                        channel(&gateway).map_err(|e| tonic::Status::internal(e.to_string()))?;
                    let mut req = authed(
                        pb::CreateDocumentRequest {
                            title: format!("write {n}"),
                            content: format!("written through faults, number {n}"),
                            idempotency_key: key.clone(),
                        },
                        &token,
                    );
                    req.set_timeout(DEADLINE);
                    pb::document_service_client::DocumentServiceClient::new(ch)
                        .create_document(req)
                        .await
                        .map(|r| r.into_inner().id)
                };
                match self.call(Op::Write, attempt).await {
                    Some(id) => {
                        lock(&self.acked).push(Ack {
                            id,
                            sent,
                            at: Instant::now(),
                        });
                        break;
                    }
                    None if first.elapsed() < GIVE_UP && !stop.load(Ordering::Relaxed) => {
                        self.failed_writes.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                    None => {
                        self.gave_up.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            tokio::time::sleep(WRITE_EVERY).await;
        }
    }

    /// Reads acknowledged documents back (GetDocument) every `every`, whether or not earlier
    /// reads have answered (open model), over one long-lived channel.
    pub async fn reader(
        self: Arc<Self>,
        gateway: String,
        token: String,
        every: Duration,
        stop: Arc<AtomicBool>,
    ) -> Result<()> {
        let ch = channel(&gateway)?;
        let mut tick = tokio::time::interval(every);
        let mut reads = tokio::task::JoinSet::new();
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            while reads.try_join_next().is_some() {}
            let id = {
                let acked = lock(&self.acked);
                if acked.is_empty() {
                    continue;
                }
                i = i.wrapping_add(7919);
                acked[i % acked.len()].id.clone()
            };
            let (load, ch, token) = (self.clone(), ch.clone(), token.clone());
            reads.spawn(async move {
                let mut req = authed(pb::GetDocumentRequest { id }, &token);
                req.set_timeout(DEADLINE);
                load.call(
                    Op::Read,
                    pb::document_service_client::DocumentServiceClient::new(ch).get_document(req),
                )
                .await;
            });
        }
        while reads.join_next().await.is_some() {}
        Ok(())
    }

    /// What a fault injected at `injected` and ended at `ended` cost: waits for the first write
    /// sent after `ended` to be acknowledged (at most [`RECOVERY_LIMIT`]), then one more second,
    /// and gathers every call that ended after `injected`.
    pub async fn window(&self, injected: Instant, ended: Instant) -> Window {
        let recovered = loop {
            let first = lock(&self.acked)
                .iter()
                .filter(|a| a.sent >= ended)
                .map(|a| a.at.duration_since(ended))
                .min();
            if first.is_some() {
                break first;
            }
            if ended.elapsed() > RECOVERY_LIMIT {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let calls: Vec<Call> = lock(&self.calls)
            .iter()
            .filter(|c| c.end() >= injected)
            .cloned()
            .collect();
        // The longest a writer waited between acknowledgements around the fault.
        let acks: Vec<Instant> = {
            let acked = lock(&self.acked);
            let from = acked
                .iter()
                .rposition(|a| a.at < injected)
                .unwrap_or_default();
            acked[from..].iter().map(|a| a.at).collect()
        };
        let gap = acks
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .max()
            .unwrap_or_default();
        Window {
            down: ended.duration_since(injected),
            recovered,
            calls,
            gap,
        }
    }
}

/// What one fault cost the clients.
pub struct Window {
    /// From the fault's injection to its end (restart, SIGCONT, proxy back to normal).
    pub down: Duration,
    /// From the end of the fault to the first acknowledged write sent after it.
    pub recovered: Option<Duration>,
    /// Every call that ended after the injection.
    pub calls: Vec<Call>,
    /// The longest wait between acknowledged writes around the fault.
    pub gap: Duration,
}

impl Window {
    pub fn of(&self, op: Op) -> impl Iterator<Item = &Call> {
        self.calls.iter().filter(move |c| c.op == op)
    }

    pub fn failed(&self) -> impl Iterator<Item = &Call> {
        self.calls.iter().filter(|c| c.code != "OK")
    }

    /// Failed calls by code: `UNAVAILABLE×3 CLIENT_DEADLINE×1`, or `-`.
    pub fn codes(&self) -> String {
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        for c in self.failed() {
            *by.entry(c.kind()).or_default() += 1;
        }
        if by.is_empty() {
            return "-".into();
        }
        by.iter()
            .map(|(c, n)| format!("{c}×{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn longest(&self) -> Duration {
        self.calls.iter().map(|c| c.took).max().unwrap_or_default()
    }

    pub fn hung(&self) -> usize {
        self.calls.iter().filter(|c| c.code == "HUNG").count()
    }

    /// `0.12s after the end`, or `NOT within 60s`.
    pub fn recovery(&self, after: &str) -> String {
        match self.recovered {
            Some(d) => format!("{:.2}s after {after}", d.as_secs_f64()),
            None => format!("NOT within {}s", RECOVERY_LIMIT.as_secs()),
        }
    }
}
