//! The end-to-end harness: the four services started in-process, each test on its own
//! databases (two physical shards), its own JetStream stream and subject prefix, on free ports,
//! against the real PostgreSQL, Redis and nats-server that `cargo xtask test` starts.
//!
//! * [`TestStack::start`] — all four services, ready; [`TestStack::shutdown`] stops them.
//! * [`telemetry`] — the process-wide capture of spans and log lines the trace tests read.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keel_config::Env;
use keel_proto::public::document_service_client::DocumentServiceClient;
use keel_runtime::Host;
use keel_telemetry::MemorySink;
use opentelemetry_sdk::trace::InMemorySpanExporter;
use sqlx::Connection;
use tonic::transport::Channel;

/// Where the servers are, from `cargo xtask test`.
pub struct Servers {
    pub pg_url: String,
    pub redis_url: String,
    pub nats_url: String,
}

fn var(key: &str) -> String {
    #[allow(clippy::disallowed_methods)]
    let v = std::env::var(key);
    v.unwrap_or_else(|_| {
        panic!("{key} is not set: run the tests with `cargo xtask test`, which starts PostgreSQL, Redis and NATS for them")
    })
}

impl Servers {
    pub fn from_env() -> Self {
        Servers {
            pg_url: var("KEEL_TEST_PG_URL"),
            redis_url: var("KEEL_TEST_REDIS_URL"),
            nats_url: var("KEEL_TEST_NATS_URL"),
        }
    }
}

/// Captured telemetry of this test process.
pub struct Captured {
    pub spans: InMemorySpanExporter,
    pub logs: MemorySink,
}

/// Installs the global telemetry once per test binary (spans and logs kept in memory).
pub fn telemetry() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let spans = InMemorySpanExporter::default();
        let logs = MemorySink::default();
        let cfg = keel_telemetry::TelemetryConfig::from_env(
            "keel-tests",
            &Env::from_pairs([("RUST_LOG", "info,keel=debug")]),
        )
        .expect("telemetry config");
        // A binary that installed its own telemetry first (the benchmark) keeps it; then
        // nothing is captured here.
        if let Ok(handle) = keel_telemetry::TelemetryBuilder::new(cfg)
            .log_sink(std::sync::Arc::new(logs.clone()))
            .span_exporter(spans.clone())
            .install()
        {
            std::mem::forget(handle);
        }
        Captured { spans, logs }
    })
}

/// A short random ID for database, stream and prefix names.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Creates `n` fresh databases and returns their URLs.
pub async fn create_databases(servers: &Servers, id: &str, n: usize) -> Result<Vec<String>> {
    let mut conn = sqlx::PgConnection::connect(&format!("{}/postgres", servers.pg_url)).await?;
    let mut urls = Vec::new();
    for i in 0..n {
        let name = format!("{id}_{i}");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        urls.push(format!("{}/{name}", servers.pg_url));
    }
    Ok(urls)
}

pub struct TestStack {
    pub id: String,
    pub env: Env,
    pub database_urls: Vec<String>,
    pub auth: Option<Host>,
    pub inference: Option<Host>,
    pub postproc: Option<Host>,
    pub gateway: Option<Host>,
}

/// A fresh random master key (standard base64 of 32 bytes).
pub fn test_master_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = keel_token::keys::random_bytes().expect("random");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The password every test user gets.
pub const TEST_PASSWORD: &str = "correct horse battery staple";

/// A port free at the time of asking (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The environment every service of one test shares: its databases, its stream, free ports.
pub fn base_env(servers: &Servers, id: &str, database_urls: &[String]) -> Env {
    let mut env = Env::from_pairs([
        ("KEEL_DATABASE_URLS", database_urls.join(",")),
        ("KEEL_REDIS_URL", servers.redis_url.clone()),
        ("KEEL_NATS_URL", servers.nats_url.clone()),
        ("KEEL_NATS_STREAM", format!("S_{id}")),
        ("KEEL_NATS_SUBJECT_PREFIX", id.to_owned()),
        ("KEEL_REDIS_PREFIX", id.to_owned()),
        ("KEEL_READINESS_INTERVAL", "100ms".into()),
        ("KEEL_SHUTDOWN_GRACE", "5s".into()),
        ("KEEL_OUTBOX_INTERVAL", "50ms".into()),
        ("KEEL_DB_MAX_CONNECTIONS", "4".into()),
        ("KEEL_AUTH_MASTER_KEY", test_master_key()),
        ("KEEL_AUTH_HASH_CONCURRENCY", "2".into()),
        ("KEEL_AUTH_ADMIN_TOKEN", test_master_key()),
        // Every test logs in from 127.0.0.1; the per-source budget has tests of its own.
        ("KEEL_GATEWAY_ANONYMOUS_BURST", "100000".into()),
        // keel-tiny's failure variants (slow, stall, flaky, timeout) for the tests that use them.
        ("KEEL_INFERENCE_FAULT_MODELS", "true".into()),
    ]);
    // The issuer must be the URL the auth service is really reached at (OIDC discovery checks
    // it), so its HTTP port is chosen here rather than by the kernel at bind time.
    env = env.with("KEEL_GATEWAY_HTTP_ADDR", "127.0.0.1:0");
    let http_port = free_port();
    env = env
        .with("KEEL_AUTH_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .with(
            "KEEL_AUTH_ISSUER_BASE",
            format!("http://127.0.0.1:{http_port}"),
        );
    for svc in ["AUTH", "INFERENCE", "POSTPROC", "GATEWAY"] {
        env = env
            .with(format!("KEEL_{svc}_GRPC_ADDR"), "127.0.0.1:0")
            .with(format!("KEEL_{svc}_ADMIN_ADDR"), "127.0.0.1:0");
    }
    env
}

impl TestStack {
    /// All four services on fresh databases, waited until each reports SERVING.
    pub async fn start() -> Result<TestStack> {
        Self::start_with(|e| e).await
    }

    pub async fn start_with(customize: impl FnOnce(Env) -> Env) -> Result<TestStack> {
        telemetry();
        let servers = Servers::from_env();
        let id = unique("t");
        let database_urls = create_databases(&servers, &id, 2).await?;
        let env = customize(base_env(&servers, &id, &database_urls));
        let auth = keel_auth::start(keel_auth::Config::from_env(&env)?).await?;
        let inference = keel_inference::start(keel_inference::Config::from_env(&env)?).await?;
        let env = env
            .with("KEEL_AUTH_URL", format!("http://{}", auth.grpc_addr()))
            .with(
                "KEEL_INFERENCE_URL",
                format!("http://{}", inference.grpc_addr()),
            );
        let postproc = keel_postproc::start(keel_postproc::Config::from_env(&env)?).await?;
        let env = env.with(
            "KEEL_POSTPROC_URL",
            format!("http://{}", postproc.grpc_addr()),
        );
        let gateway = keel_gateway::start(keel_gateway::Config::from_env(&env)?).await?;
        for addr in [
            auth.grpc_addr(),
            inference.grpc_addr(),
            postproc.grpc_addr(),
            gateway.grpc_addr(),
        ] {
            wait_serving(&format!("http://{addr}"), Duration::from_secs(30)).await?;
        }
        Ok(TestStack {
            id,
            env,
            database_urls,
            auth: Some(auth),
            inference: Some(inference),
            postproc: Some(postproc),
            gateway: Some(gateway),
        })
    }

    /// This stack's environment for one more instance of the service whose keys start with
    /// `prefix`, on ports of its own (`<prefix>_GRPC_ADDR`, `<prefix>_ADMIN_ADDR`), then
    /// `customize`d.
    fn service_env(&self, prefix: &str, customize: impl FnOnce(Env) -> Env) -> Env {
        customize(
            self.env
                .clone()
                .with(format!("{prefix}_GRPC_ADDR"), "127.0.0.1:0")
                .with(format!("{prefix}_ADMIN_ADDR"), "127.0.0.1:0"),
        )
    }

    /// Another inference instance on this stack's databases, Redis and stream (a replica, or
    /// one restarted on a fixed address via `customize`), waited until SERVING; with its URL.
    pub async fn inference_replica(
        &self,
        customize: impl FnOnce(Env) -> Env,
    ) -> Result<(Host, String)> {
        let env = self.service_env("KEEL_INFERENCE", customize);
        let host = keel_inference::start(keel_inference::Config::from_env(&env)?).await?;
        let url = format!("http://{}", host.grpc_addr());
        wait_serving(&url, Duration::from_secs(30)).await?;
        Ok((host, url))
    }

    /// Another gateway in front of this stack's auth, inference and Redis (a replica, or one
    /// configured otherwise via `customize`: fail-closed, another upstream); with its URL. Not
    /// waited for: a test may point it at upstreams that are not serving.
    pub async fn gateway_replica(
        &self,
        customize: impl FnOnce(Env) -> Env,
    ) -> Result<(Host, String)> {
        let env = self.service_env("KEEL_GATEWAY", customize);
        let host = keel_gateway::start(keel_gateway::Config::from_env(&env)?).await?;
        let url = format!("http://{}", host.grpc_addr());
        Ok((host, url))
    }

    pub fn gateway_url(&self) -> String {
        format!(
            "http://{}",
            self.gateway.as_ref().expect("gateway running").grpc_addr()
        )
    }

    pub fn inference_url(&self) -> String {
        format!(
            "http://{}",
            self.inference
                .as_ref()
                .expect("inference running")
                .grpc_addr()
        )
    }

    pub fn auth_url(&self) -> String {
        format!(
            "http://{}",
            self.auth.as_ref().expect("auth running").grpc_addr()
        )
    }

    pub async fn documents(&self) -> Result<DocumentServiceClient<Channel>> {
        Ok(DocumentServiceClient::new(
            connect(&self.gateway_url()).await?,
        ))
    }

    /// The operator's bootstrap credential of this stack.
    pub fn admin_token(&self) -> String {
        self.env
            .raw("KEEL_AUTH_ADMIN_TOKEN")
            .expect("an admin token")
            .to_owned()
    }

    /// The auth service's admin API, called as the operator.
    pub async fn admin(&self) -> Result<AdminClient> {
        Ok(
            keel_proto::auth::identity_admin_client::IdentityAdminClient::with_interceptor(
                connect(&self.auth_url()).await?,
                bearer(&self.admin_token()),
            ),
        )
    }

    /// The tenant directory, called as the operator.
    pub async fn directory(&self) -> Result<DirectoryClient> {
        Ok(
            keel_proto::auth::tenant_directory_client::TenantDirectoryClient::with_interceptor(
                connect(&self.auth_url()).await?,
                bearer(&self.admin_token()),
            ),
        )
    }

    /// Registers a tenant in the auth directory.
    pub async fn create_tenant(&self, tenant: &str) -> Result<()> {
        self.directory()
            .await?
            .create_tenant(keel_proto::auth::CreateTenantRequest {
                tenant_id: tenant.into(),
                display_name: format!("Tenant {tenant}"),
                tier: "pro".into(),
            })
            .await?;
        Ok(())
    }

    /// Creates a user in `tenant` (which must exist) with the given roles.
    pub async fn create_user(&self, tenant: &str, username: &str, roles: &[&str]) -> Result<()> {
        self.admin()
            .await?
            .create_user(keel_proto::auth::CreateUserRequest {
                tenant_id: tenant.into(),
                username: username.into(),
                password: TEST_PASSWORD.into(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            })
            .await?;
        Ok(())
    }

    /// Registers (or updates) an OAuth client; returns the secret when one was minted.
    pub async fn put_client(&self, client: keel_proto::auth::OAuthClient) -> Result<String> {
        Ok(self
            .admin()
            .await?
            .put_client(keel_proto::auth::PutClientRequest {
                client: Some(client),
                rotate_secret: false,
            })
            .await?
            .into_inner()
            .client_secret)
    }

    /// The gateway's OpenAI-compatible HTTP address.
    pub fn gateway_http(&self) -> std::net::SocketAddr {
        self.gateway
            .as_ref()
            .expect("gateway running")
            .http_addr()
            .expect("the gateway serves HTTP")
    }

    /// The auth service's public HTTP address (the issuers live under it).
    pub fn auth_http(&self) -> std::net::SocketAddr {
        self.auth
            .as_ref()
            .expect("auth running")
            .http_addr()
            .expect("auth serves HTTP")
    }

    /// Logs a user in through the gateway; returns (access token, refresh token).
    pub async fn login(&self, tenant: &str, username: &str) -> Result<(String, String)> {
        let mut auth =
            keel_proto::public::authentication_service_client::AuthenticationServiceClient::new(
                connect(&self.gateway_url()).await?,
            );
        let r = auth
            .login(keel_proto::public::LoginRequest {
                tenant_id: tenant.into(),
                username: username.into(),
                password: TEST_PASSWORD.into(),
                client_id: "keel-tests".into(),
            })
            .await?
            .into_inner();
        Ok((r.access_token, r.refresh_token))
    }

    /// Creates the tenant and a member user, logs in, and returns the access token.
    pub async fn tenant_token(&self, tenant: &str) -> Result<String> {
        self.create_tenant(tenant).await?;
        self.create_user(tenant, "member", &["member"]).await?;
        Ok(self.login(tenant, "member").await?.0)
    }

    /// A pool on physical shard `i` with the given schema on the search path.
    pub async fn shard(&self, i: usize) -> Result<sqlx::PgPool> {
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_urls[i])
            .await?)
    }

    /// The physical shard index holding `tenant` (through the services' own shard map).
    pub fn shard_of(&self, tenant: &str) -> usize {
        let cfg = keel_store::StoreConfig::from_env(&self.env).expect("store config");
        cfg.shard_map()
            .expect("shard map")
            .physical(&keel_tenancy::TenantId::parse(tenant).expect("tenant id"))
    }

    pub async fn shutdown(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
        if let Some(p) = self.postproc.take() {
            p.shutdown().await;
        }
        if let Some(i) = self.inference.take() {
            i.shutdown().await;
        }
        if let Some(a) = self.auth.take() {
            a.shutdown().await;
        }
    }
}

pub use keel_proto::client::Bearer;

/// The Bearer interceptor for a test credential.
pub fn bearer(token: &str) -> Bearer {
    Bearer::new(token).expect("a token is ASCII")
}

pub type AdminClient = keel_proto::auth::identity_admin_client::IdentityAdminClient<
    tonic::service::interceptor::InterceptedService<Channel, Bearer>,
>;
pub type DirectoryClient = keel_proto::auth::tenant_directory_client::TenantDirectoryClient<
    tonic::service::interceptor::InterceptedService<Channel, Bearer>,
>;

pub async fn connect(url: &str) -> Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

/// The gRPC health status of a server as a whole.
pub async fn health_status(url: &str) -> Result<i32> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(connect(url).await?);
    let resp = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(resp.into_inner().status)
}

pub const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

pub async fn wait_serving(url: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if matches!(health_status(url).await, Ok(s) if s == SERVING) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not report SERVING within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `f` until it returns `Some`, or fails after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request carrying `token` as its bearer credential.
pub fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    req
}

/// The keel reason of a failed call.
pub fn reason(st: &tonic::Status) -> &'static str {
    keel_errors::reason_of(st).as_str()
}

/// `ErrorInfo.metadata[key]` of a failed call.
pub fn detail(st: &tonic::Status, key: &str) -> Option<String> {
    use tonic_types::StatusExt;
    st.get_details_error_info()?.metadata.get(key).cloned()
}

/// One HTTP response, read to the end.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header named `name`.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends one raw HTTP/1.1 request (`Connection: close`) and reads the whole response (bodies
/// with Content-Length or read to close; our servers do not chunk these small answers).
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .context("connect")?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: buf[split + 4..].to_vec(),
    })
}

/// HTTP GET (admin endpoints, JWKS), returning the status code and body.
pub async fn admin_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    let r = http_request(addr, "GET", path, &[], b"").await?;
    Ok((r.status, r.text()))
}

/// HTTP POST of a form body, returning the status code and body.
pub async fn http_post_form(
    addr: std::net::SocketAddr,
    path: &str,
    form: &str,
) -> Result<(u16, String)> {
    let r = http_request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .await?;
    Ok((r.status, r.text()))
}

pub mod faults;
pub mod load;
pub mod seed;

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Waits until at least 15 s remain in the current TOTP step, so the codes a test computes now
/// keep their meaning (current / previous / next step) while it runs, even on a slow machine;
/// returns the step.
pub async fn totp_safe_window() -> i64 {
    use keel_auth::totp;
    while unix_now() % totp::STEP_SECS > totp::STEP_SECS - 15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    totp::step_at(unix_now())
}

/// Servers of a test's own, which it may kill and restart (the shared ones must stay up for the
/// other tests). The binaries are the ones `cargo xtask test` installed.
pub mod own {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::free_port;

    fn binary(var: &str) -> String {
        #[allow(clippy::disallowed_methods)]
        std::env::var(var).unwrap_or_else(|_| panic!("{var}: run through `cargo xtask test`"))
    }

    async fn wait_port(port: u16, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "{what} did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A server process of a test's own: its pid, SIGKILL, and SIGSTOP/SIGCONT for stalls. Each
    /// server below dereferences to one (a server may override a method: PostgreSQL's backends
    /// need signals of their own).
    #[derive(Default)]
    pub struct ServerProcess {
        child: Option<Child>,
    }

    impl ServerProcess {
        /// Takes over a started `child` (SIGKILLing the one it had, if any).
        pub fn run(&mut self, child: Child) {
            self.kill();
            self.child = Some(child);
        }

        /// SIGKILL: no goodbye to clients.
        pub fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        /// The server's process ID while it runs.
        pub fn pid(&self) -> Option<u32> {
            self.child.as_ref().map(Child::id)
        }

        /// SIGSTOP: a stall (connections stay open, nothing answers) until
        /// [`ServerProcess::resume`].
        pub fn pause(&self) {
            signal(self.pid(), "-STOP");
        }

        /// SIGCONT after [`ServerProcess::pause`].
        pub fn resume(&self) {
            signal(self.pid(), "-CONT");
        }
    }

    /// `$server` (with a `process: ServerProcess` field) dereferences to its process.
    macro_rules! server_process {
        ($server:ty) => {
            impl std::ops::Deref for $server {
                type Target = ServerProcess;
                fn deref(&self) -> &ServerProcess {
                    &self.process
                }
            }
            impl std::ops::DerefMut for $server {
                fn deref_mut(&mut self) -> &mut ServerProcess {
                    &mut self.process
                }
            }
        };
    }

    /// A Redis of this test's own; restarts keep its port (and, like production's cache, not
    /// its data).
    pub struct Redis {
        process: ServerProcess,
        port: u16,
        pub url: String,
    }

    impl Redis {
        pub async fn start() -> Redis {
            let port = free_port();
            let mut r = Redis {
                process: ServerProcess::default(),
                port,
                url: format!("redis://127.0.0.1:{port}"),
            };
            r.restart().await;
            r
        }

        /// Starts it (again) on the same port.
        pub async fn restart(&mut self) {
            self.kill();
            let child = Command::new(binary("KEEL_TEST_REDIS_SERVER"))
                .args([
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .spawn()
                .expect("starting redis-server");
            self.process.child = Some(child);
            wait_port(self.port, "redis").await;
        }
    }

    server_process!(Redis);

    impl Drop for Redis {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// A nats-server with JetStream of this test's own; restarts keep its port and its store.
    pub struct Nats {
        process: ServerProcess,
        port: u16,
        store: std::path::PathBuf,
        pub url: String,
    }

    impl Nats {
        pub async fn start() -> Nats {
            let port = free_port();
            let store =
                std::env::temp_dir().join(format!("keel-test-nats-{port}-{}", std::process::id()));
            let mut n = Nats {
                process: ServerProcess::default(),
                port,
                store,
                url: format!("nats://127.0.0.1:{port}"),
            };
            n.restart().await;
            n
        }

        /// Starts it (again) on the same port with the same store.
        pub async fn restart(&mut self) {
            self.kill();
            let child = Command::new(binary("KEEL_TEST_NATS_SERVER"))
                .args([
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-sd",
                ])
                .arg(&self.store)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting nats-server");
            self.process.child = Some(child);
            wait_port(self.port, "nats-server").await;
        }
    }

    server_process!(Nats);

    impl Drop for Nats {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_dir_all(&self.store);
        }
    }

    /// A PostgreSQL cluster of this test's own (initdb'd for it); [`Postgres::kill`] SIGKILLs the postmaster and every backend at once, and
    /// [`Postgres::restart`] brings it back on the same port and data (crash recovery).
    pub struct Postgres {
        process: ServerProcess,
        port: u16,
        dir: std::path::PathBuf,
        bin: std::path::PathBuf,
        /// `(uid, gid)` to run as (root cannot run PostgreSQL).
        run_as: Option<(u32, u32)>,
        pub url: String,
    }

    fn id_of(user: &str, flag: &str) -> u32 {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .expect("running id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no user {user}"))
    }

    impl Postgres {
        pub async fn start() -> Postgres {
            use std::os::unix::process::CommandExt;
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("keel-test-pg-{port}-{}", std::process::id()));
            std::fs::create_dir_all(dir.join("data")).expect("creating the data folder");
            let user = binary("KEEL_TEST_PG_USER");
            let run_as = (!user.is_empty()).then(|| (id_of(&user, "-u"), id_of(&user, "-g")));
            if !user.is_empty() {
                let ok = Command::new("chown")
                    .args(["-R", &format!("{user}:{user}")])
                    .arg(&dir)
                    .status()
                    .expect("chown")
                    .success();
                assert!(ok, "chown {}", dir.display());
            }
            let bin = std::path::PathBuf::from(binary("KEEL_TEST_PG_BIN"));
            let mut initdb = Command::new(bin.join("initdb"));
            initdb.arg("-D").arg(dir.join("data")).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]);
            if let Some((uid, gid)) = run_as {
                initdb.uid(uid).gid(gid);
            }
            let out = initdb.output().expect("running initdb");
            assert!(
                out.status.success(),
                "initdb: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut pg = Postgres {
                process: ServerProcess::default(),
                port,
                dir,
                bin,
                run_as,
                url: format!("postgres://postgres@127.0.0.1:{port}"),
            };
            pg.restart().await;
            pg
        }

        /// Starts it (again) on the same port and data.
        pub async fn restart(&mut self) {
            use std::os::unix::process::CommandExt;
            self.kill();
            let mut cmd = Command::new(self.bin.join("postgres"));
            cmd.arg("-D")
                .arg(self.dir.join("data"))
                .args(["-p", &self.port.to_string(), "-k"])
                .arg(&self.dir)
                // A killed server must keep every commit it acknowledged, so commits wait for
                // their WAL write (no `synchronous_commit=off`, unlike the shared test server);
                // fsync may be off, since the operating system itself does not crash.
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=100",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group: a kill reaches every backend too.
                .process_group(0);
            if let Some((uid, gid)) = self.run_as {
                cmd.uid(uid).gid(gid);
            }
            self.process.child = Some(cmd.spawn().expect("starting postgres"));
            wait_port(self.port, "postgres").await;
            // The port opens before recovery ends ("the database system is starting up").
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                use sqlx::Connection;
                match sqlx::PgConnection::connect(&format!("{}/postgres", self.url)).await {
                    Ok(c) => {
                        let _ = c.close().await;
                        break;
                    }
                    Err(e) => assert!(Instant::now() < deadline, "postgres not ready: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        /// Fresh databases on it, by URL.
        pub async fn create_databases(&self, prefix: &str, n: usize) -> Vec<String> {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&format!("{}/postgres", self.url))
                .await
                .expect("connecting to the own postgres");
            let mut urls = Vec::new();
            for i in 0..n {
                let name = format!("{prefix}_{i}");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("CREATE DATABASE");
                urls.push(format!("{}/{name}", self.url));
            }
            urls
        }

        /// SIGKILL to the postmaster and all its backends: no shutdown checkpoint, connections
        /// cut mid-query.
        pub fn kill(&mut self) {
            if let Some(mut c) = self.process.child.take() {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", c.id())])
                    .status();
                let _ = c.wait();
                // Backends exit on their own signal; give the kernel a moment to reap them
                // so the shared memory is free for the restart.
                std::thread::sleep(Duration::from_millis(200));
            }
        }

        /// SIGSTOP to the postmaster, then to every process it forked (each backend is a
        /// session of its own, out of reach of a process-group signal): a stall (connections
        /// stay open, nothing answers, no new backend starts) until [`Postgres::resume`].
        pub fn pause(&self) {
            signal(self.pid(), "-STOP");
            for child in children(self.pid()) {
                // A backend may have exited since it was listed.
                let _ = Command::new("kill")
                    .args(["-STOP", &child.to_string()])
                    .status();
            }
        }

        /// SIGCONT to the postmaster's children, then to the postmaster.
        pub fn resume(&self) {
            for child in children(self.pid()) {
                let _ = Command::new("kill")
                    .args(["-CONT", &child.to_string()])
                    .status();
            }
            signal(self.pid(), "-CONT");
        }
    }

    server_process!(Postgres);

    impl Drop for Postgres {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Sends `sig` (`-STOP`, `-CONT`) to a server's process.
    fn signal(pid: Option<u32>, sig: &str) {
        let pid = pid.expect("the server is running").to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// The processes whose parent is `pid` (from `/proc/<pid>/stat`).
    fn children(pid: Option<u32>) -> Vec<u32> {
        let parent = pid.expect("the server is running").to_string();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            (ppid == parent).then_some(child)
        })
        .collect()
    }
}

/// Model-call events as inference publishes them, for tests of the metering path.
pub mod metering {
    use std::time::{SystemTime, UNIX_EPOCH};

    use prost::Message;

    /// Publishes one `InferenceCompleted` event (`input`/`output` tokens, occurred at `occur`)
    /// and returns its PubAck future.
    pub async fn publish_completion(
        bus: &keel_bus::Bus,
        tenant: &keel_tenancy::TenantId,
        input: u32,
        output: u32,
        occur: prost_types::Timestamp,
    ) -> async_nats::jetstream::context::PublishAckFuture {
        let id = uuid::Uuid::now_v7().to_string();
        let payload = keel_proto::events::InferenceCompleted {
            event_id: id.clone(),
            tenant_id: tenant.to_string(),
            model: "keel-tiny".into(),
            model_version: "keel-tiny@1".into(),
            input_tokens: input,
            output_tokens: output,
            occur_time: Some(occur),
            finish_reason: "stop".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert("Keel-Tenant-Id", tenant.as_str());
        headers.insert("Keel-Event-Type", "keel.events.v1.InferenceCompleted");
        headers.insert("Keel-Schema-Version", "1");
        bus.jetstream()
            .publish_with_headers(
                bus.subject(tenant, "inference.completed"),
                headers,
                payload.into(),
            )
            .await
            .expect("publish")
    }

    /// Publishes `n` `InferenceCompleted` events (3 tokens in, 5 out, now), spread over
    /// `tenants` tenants named `{prefix}-{i}`, and waits for every PubAck.
    pub async fn publish_completions(bus: &keel_bus::Bus, prefix: &str, tenants: usize, n: usize) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970");
        let occur = prost_types::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: 0,
        };
        let mut acks = Vec::new();
        for i in 0..n {
            let tenant = keel_tenancy::TenantId::parse(&format!("{prefix}-{}", i % tenants))
                .expect("a valid tenant");
            acks.push(publish_completion(bus, &tenant, 3, 5, occur).await);
            if acks.len() >= 2000 {
                for a in acks.drain(..) {
                    a.await.expect("PubAck");
                }
            }
        }
        for a in acks.drain(..) {
            a.await.expect("PubAck");
        }
    }

    /// `(requests metered, dedupe records of the usage consumer)` over the shards.
    pub async fn metered(pools: &[sqlx::PgPool]) -> sqlx::Result<(i64, i64)> {
        let (mut requests, mut records) = (0, 0);
        for p in pools {
            let r: Option<i64> =
                sqlx::query_scalar("SELECT sum(requests)::bigint FROM postproc.usage_daily")
                    .fetch_one(p)
                    .await?;
            let d: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM postproc.processed_events WHERE consumer = 'postproc-usage'",
            )
            .fetch_one(p)
            .await?;
            requests += r.unwrap_or(0);
            records += d;
        }
        Ok((requests, records))
    }
}
