//! PostgreSQL, Redis and nats-server as child processes under one folder, on chosen ports, and
//! stopped when the [`Stack`] is dropped.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::install::Tools;

/// How long a server gets to accept connections after starting.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Physical Postgres databases of the local stack (the issue asks for M ≥ 2).
pub const PHYSICAL_SHARDS: usize = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Tests: free ports, no fsync, nothing kept.
    Throwaway,
    /// `up`: fixed ports, data kept under `.keel/` between runs.
    Durable,
}

pub struct Stack {
    pub pg_port: u16,
    pub redis_port: u16,
    pub nats_port: u16,
    pg_ctl: PathBuf,
    pg_data: PathBuf,
    pg_as_postgres: bool,
    redis_server: PathBuf,
    nats_server: PathBuf,
    children: Vec<(&'static str, Child)>,
}

/// A free TCP port on loopback (bound and released; the window for a race is tiny).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn port_from_env(key: &str, default: u16) -> Result<u16> {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{key}={v:?} is not a port")),
        Err(_) => Ok(default),
    }
}

pub fn wait_for_port(port: u16, what: &str, child: Option<&mut Child>, log: &Path) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = child;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(c) = child.as_deref_mut()
            && let Some(status) = c.try_wait()?
        {
            bail!(
                "{what} exited ({status}) before accepting connections; see {}:\n{}",
                log.display(),
                tail(log)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not accept connections on port {port} within {START_TIMEOUT:?}; see {}:\n{}",
                log.display(),
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn make_dir(p: &Path, postgres_owned: bool) -> Result<()> {
    crate::ensure_dir(p)?;
    if postgres_owned {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(p)
            .status()?;
        if !status.success() {
            bail!("chown postgres {} failed", p.display());
        }
    }
    Ok(())
}

/// Lets the `postgres` user traverse every parent of `p` (a root-only 0700 temp dir would not).
fn open_parents(p: &Path) -> Result<()> {
    let mut cur = Some(p);
    while let Some(d) = cur {
        if d == Path::new("/") {
            break;
        }
        if let Ok(meta) = std::fs::metadata(d) {
            let mode = meta.permissions().mode();
            if mode & 0o001 == 0 {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o011))?;
            }
        }
        cur = d.parent();
    }
    Ok(())
}

impl Stack {
    pub fn start(tools: &Tools, dir: &Path, profile: Profile) -> Result<Stack> {
        crate::ensure_dir(dir)?;
        let dir = dir.canonicalize()?;
        let (pg_port, redis_port, nats_port) = match profile {
            Profile::Throwaway => (free_port()?, free_port()?, free_port()?),
            Profile::Durable => (
                port_from_env("KEEL_UP_PG_PORT", 55432)?,
                port_from_env("KEEL_UP_REDIS_PORT", 56379)?,
                port_from_env("KEEL_UP_NATS_PORT", 54222)?,
            ),
        };
        let mut stack = Stack {
            pg_port,
            redis_port,
            nats_port,
            pg_ctl: tools.pg_bin.join("pg_ctl"),
            pg_data: dir.join("postgres/data"),
            pg_as_postgres: tools.pg_as_postgres,
            redis_server: tools.redis_server.clone(),
            nats_server: tools.nats_server.clone(),
            children: Vec::new(),
        };
        stack.start_postgres(tools, &dir, profile)?;
        stack.start_redis(tools, &dir, profile)?;
        stack.start_nats(tools, &dir)?;
        if profile == Profile::Durable {
            stack.create_databases(tools)?;
        }
        Ok(stack)
    }

    fn pg_command(&self, bin: &Path) -> Command {
        if self.pg_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }

    fn start_postgres(&mut self, tools: &Tools, dir: &Path, profile: Profile) -> Result<()> {
        let root = dir.join("postgres");
        let sock = root.join("sock");
        if tools.pg_as_postgres {
            open_parents(dir)?;
        }
        make_dir(&root, tools.pg_as_postgres)?;
        make_dir(&sock, tools.pg_as_postgres)?;
        if !self.pg_data.join("PG_VERSION").is_file() {
            make_dir(&self.pg_data, tools.pg_as_postgres)?;
            let out = self
                .pg_command(&tools.pg_bin.join("initdb"))
                .arg("-D")
                .arg(&self.pg_data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
                .output()
                .context("running initdb")?;
            if !out.status.success() {
                bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let mut opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=400 -c shared_buffers=128MB",
            self.pg_port,
            sock.display()
        );
        if profile == Profile::Throwaway {
            // Throwaway test clusters only: durability off for speed.
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let log = self.pg_data.join("server.log");
        let out = self
            .pg_command(&self.pg_ctl)
            .arg("-D")
            .arg(&self.pg_data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .stdin(Stdio::null())
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "PostgreSQL did not start: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                tail(&log)
            );
        }
        wait_for_port(self.pg_port, "PostgreSQL", None, &log)
    }

    fn spawn(&mut self, name: &'static str, mut cmd: Command, log: &Path) -> Result<()> {
        let out = File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Own process group: a terminal Ctrl-C reaches xtask, which stops servers in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name, child));
        Ok(())
    }

    fn start_redis(&mut self, tools: &Tools, dir: &Path, profile: Profile) -> Result<()> {
        let data = dir.join("redis");
        crate::ensure_dir(&data)?;
        let mut cmd = Command::new(&tools.redis_server);
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            &self.redis_port.to_string(),
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&data);
        match profile {
            Profile::Throwaway => cmd.args(["--appendonly", "no"]),
            Profile::Durable => cmd.args(["--appendonly", "yes", "--appendfsync", "everysec"]),
        };
        let log = data.join("redis.log");
        self.spawn("redis", cmd, &log)?;
        let child = self.children.last_mut().map(|(_, c)| c);
        wait_for_port(self.redis_port, "Redis", child, &log)
    }

    fn start_nats(&mut self, tools: &Tools, dir: &Path) -> Result<()> {
        let data = dir.join("nats");
        crate::ensure_dir(&data)?;
        let mut cmd = Command::new(&tools.nats_server);
        cmd.args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.nats_port.to_string(),
            "-sd",
        ])
        .arg(&data);
        let log = data.join("nats.log");
        self.spawn("nats", cmd, &log)?;
        let child = self.children.last_mut().map(|(_, c)| c);
        wait_for_port(self.nats_port, "nats-server", child, &log)
    }

    /// The databases of the local stack, one per physical shard.
    fn create_databases(&self, tools: &Tools) -> Result<()> {
        for name in self.database_names() {
            let exists = Command::new(tools.pg_bin.join("psql"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.pg_port.to_string(),
                    "-U",
                    "postgres",
                    "-tAc",
                ])
                .arg(format!(
                    "SELECT 1 FROM pg_database WHERE datname = '{name}'"
                ))
                .output()?;
            if String::from_utf8_lossy(&exists.stdout).trim() == "1" {
                continue;
            }
            let out = Command::new(tools.pg_bin.join("psql"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.pg_port.to_string(),
                    "-U",
                    "postgres",
                    "-c",
                ])
                .arg(format!("CREATE DATABASE {name}"))
                .output()?;
            if !out.status.success() {
                bail!(
                    "CREATE DATABASE {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }

    pub fn database_names(&self) -> Vec<String> {
        (0..PHYSICAL_SHARDS).map(|i| format!("keel_{i}")).collect()
    }

    pub fn pg_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.pg_port)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    /// What the test harness reads to reach the servers.
    pub fn test_env(&self) -> Vec<(String, String)> {
        vec![
            ("KEEL_TEST_PG_URL".into(), self.pg_url()),
            ("KEEL_TEST_REDIS_URL".into(), self.redis_url()),
            ("KEEL_TEST_NATS_URL".into(), self.nats_url()),
            // For tests that run (and kill) a Redis of their own.
            (
                "KEEL_TEST_REDIS_SERVER".into(),
                self.redis_server.display().to_string(),
            ),
            // For tests that stop and restart a nats-server of their own.
            (
                "KEEL_TEST_NATS_SERVER".into(),
                self.nats_server.display().to_string(),
            ),
            // For tests that kill and restart a PostgreSQL of their own (as `postgres` when
            // running as root: initdb refuses root).
            (
                "KEEL_TEST_PG_BIN".into(),
                self.pg_ctl
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            (
                "KEEL_TEST_PG_USER".into(),
                if self.pg_as_postgres { "postgres" } else { "" }.into(),
            ),
        ]
    }
}

/// Sends SIGTERM, waits, then SIGKILL.
pub fn terminate(name: &str, child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("xtask: {name} did not stop within {STOP_TIMEOUT:?}; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (name, child) in self.children.iter_mut().rev() {
            terminate(name, child);
        }
        let _ = self
            .pg_command(&self.pg_ctl)
            .arg("-D")
            .arg(&self.pg_data)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A temporary folder removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let p = base.join(format!("{prefix}-{}-{nanos}", std::process::id()));
        crate::ensure_dir(&p)?;
        Ok(TempDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Set by Ctrl-C / SIGTERM.
#[derive(Clone)]
pub struct Stop(Arc<(Mutex<bool>, Condvar)>);

impl Stop {
    pub fn is_set(&self) -> bool {
        self.0.0.lock().map(|g| *g).unwrap_or(true)
    }

    /// Blocks until Ctrl-C or SIGTERM.
    pub fn wait(&self) {
        let (lock, cv) = &*self.0;
        let Ok(mut g) = lock.lock() else { return };
        while !*g {
            g = match cv.wait(g) {
                Ok(g) => g,
                Err(_) => return,
            };
        }
    }

    pub fn wait_timeout(&self, d: Duration) -> bool {
        let (lock, cv) = &*self.0;
        let Ok(g) = lock.lock() else { return true };
        match cv.wait_timeout_while(g, d, |set| !*set) {
            Ok((g, _)) => *g,
            Err(_) => true,
        }
    }
}

pub fn install_signal_handler() -> Result<Stop> {
    let stop = Stop(Arc::new((Mutex::new(false), Condvar::new())));
    let s = stop.clone();
    ctrlc::set_handler(move || {
        let (lock, cv) = &*s.0;
        if let Ok(mut g) = lock.lock() {
            *g = true;
        }
        cv.notify_all();
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

/// Runs a command to completion, or kills it when Ctrl-C arrives.
pub fn run_interruptible(cmd: &mut Command, stop: &Stop) -> Result<ExitStatus> {
    let mut child = cmd.spawn()?;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if stop.wait_timeout(Duration::from_millis(100)) {
            terminate("cargo", &mut child);
            bail!("interrupted");
        }
    }
}
