//! `cargo xtask up`: the whole stack on this machine with a demo tenant.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::stack::{self, Profile, Stack, Stop};

/// How long the services get to report ready (first start includes migrations).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const DEMO_TENANT: &str = "demo";
const DEMO_USER: &str = "demo";

struct Svc {
    name: &'static str,
    bin: &'static str,
    grpc_key: &'static str,
    grpc_default: &'static str,
    admin_key: &'static str,
    admin_default: &'static str,
}

const SERVICES: [Svc; 4] = [
    Svc {
        name: "auth",
        bin: "keel-auth",
        grpc_key: "KEEL_AUTH_GRPC_ADDR",
        grpc_default: "127.0.0.1:50052",
        admin_key: "KEEL_AUTH_ADMIN_ADDR",
        admin_default: "127.0.0.1:9092",
    },
    Svc {
        name: "inference",
        bin: "keel-inference",
        grpc_key: "KEEL_INFERENCE_GRPC_ADDR",
        grpc_default: "127.0.0.1:50053",
        admin_key: "KEEL_INFERENCE_ADMIN_ADDR",
        admin_default: "127.0.0.1:9093",
    },
    Svc {
        name: "postproc",
        bin: "keel-postproc",
        grpc_key: "KEEL_POSTPROC_GRPC_ADDR",
        grpc_default: "127.0.0.1:50054",
        admin_key: "KEEL_POSTPROC_ADMIN_ADDR",
        admin_default: "127.0.0.1:9094",
    },
    Svc {
        name: "gateway",
        bin: "keel-gateway",
        grpc_key: "KEEL_GATEWAY_GRPC_ADDR",
        grpc_default: "127.0.0.1:50051",
        admin_key: "KEEL_GATEWAY_ADMIN_ADDR",
        admin_default: "127.0.0.1:9091",
    },
];

fn setting(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

fn http_get_status(addr: &str, path: &str) -> Option<u16> {
    let addr: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let started = Instant::now();
    let release = args.iter().any(|a| a == "--release");
    let root = crate::workspace_root();
    let tools = crate::install::ensure(&root)?;
    let stop = stack::install_signal_handler()?;

    eprintln!(
        "xtask: building the services{}",
        if release { " (release)" } else { "" }
    );
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.current_dir(&root).args(["build", "--quiet"]);
    if release {
        build.arg("--release");
    }
    for p in [
        "keel-auth",
        "keel-gateway",
        "keel-inference",
        "keel-postproc",
        "keel-cli",
    ] {
        build.args(["-p", p]);
    }
    let status = stack::run_interruptible(&mut build, &stop)?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let bin_dir = root
        .join("target")
        .join(if release { "release" } else { "debug" });

    let keel_dir = root.join(".keel");
    let stack = Stack::start(&tools, &keel_dir.join("stack"), Profile::Durable)?;
    let logs = keel_dir.join("logs");
    crate::ensure_dir(&logs)?;
    let db_urls: Vec<String> = stack
        .database_names()
        .iter()
        .map(|d| format!("{}/{d}", stack.pg_url()))
        .collect();
    let gateway_url = format!(
        "http://{}",
        setting("KEEL_GATEWAY_GRPC_ADDR", "127.0.0.1:50051")
    );
    let auth_url = format!(
        "http://{}",
        setting("KEEL_AUTH_GRPC_ADDR", "127.0.0.1:50052")
    );
    let inference_url = format!(
        "http://{}",
        setting("KEEL_INFERENCE_GRPC_ADDR", "127.0.0.1:50053")
    );
    let postproc_url = format!(
        "http://{}",
        setting("KEEL_POSTPROC_GRPC_ADDR", "127.0.0.1:50054")
    );
    let master_key = persistent_secret(&keel_dir.join("master.key"))?;
    // The operator's bootstrap credential for the admin APIs (keelctl reads the same file).
    let admin_token = persistent_secret(&keel_dir.join("admin.token"))?;
    let mut children: Vec<(&'static str, Child)> = Vec::new();
    let result = (|| -> Result<()> {
        for svc in &SERVICES {
            let log = logs.join(format!("{}.log", svc.name));
            let out = std::fs::File::create(&log)?;
            let child = Command::new(bin_dir.join(svc.bin))
                .env("KEEL_DATABASE_URLS", db_urls.join(","))
                .env("KEEL_REDIS_URL", stack.redis_url())
                .env("KEEL_NATS_URL", stack.nats_url())
                .env(svc.grpc_key, setting(svc.grpc_key, svc.grpc_default))
                .env(svc.admin_key, setting(svc.admin_key, svc.admin_default))
                .env("KEEL_AUTH_URL", &auth_url)
                .env("KEEL_INFERENCE_URL", &inference_url)
                .env("KEEL_POSTPROC_URL", &postproc_url)
                .env("KEEL_AUTH_MASTER_KEY", &master_key)
                .env("KEEL_AUTH_ADMIN_TOKEN", &admin_token)
                // A developer's stack offers keel-tiny's failure variants to try against.
                .env(
                    "KEEL_INFERENCE_FAULT_MODELS",
                    setting("KEEL_INFERENCE_FAULT_MODELS", "true"),
                )
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting {}", svc.bin))?;
            children.push((svc.name, child));
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for svc in &SERVICES {
            let admin = setting(svc.admin_key, svc.admin_default);
            loop {
                if http_get_status(&admin, "/readyz") == Some(200) {
                    break;
                }
                if let Some((_, c)) = children.iter_mut().find(|(n, _)| *n == svc.name)
                    && let Some(st) = c.try_wait()?
                {
                    bail!(
                        "{} exited ({st}); last log lines:\n{}",
                        svc.bin,
                        stack::tail(&logs.join(format!("{}.log", svc.name)))
                    );
                }
                if Instant::now() > deadline || stop.is_set() {
                    bail!(
                        "{} did not become ready within {READY_TIMEOUT:?}; see {}",
                        svc.bin,
                        logs.join(format!("{}.log", svc.name)).display()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        demo_tenant(&bin_dir, &auth_url, &gateway_url, &keel_dir)?;
        Ok(())
    })();
    if let Err(e) = result {
        stop_all(&mut children);
        return Err(e);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "
keel is up ({secs:.1}s).

  gateway   gRPC {gateway_url}   admin http://{gw_admin}  (/livez /readyz /metrics)
            OpenAI-compatible HTTP http://127.0.0.1:8080/v1 (chat/completions, embeddings, models)
  auth      gRPC {auth_url}   admin http://{auth_admin}
            OIDC issuer http://127.0.0.1:8081/t/{DEMO_TENANT} (/.well-known/openid-configuration)
  inference gRPC {inference_url}   admin http://{inf_admin}
  postproc  admin http://{pp_admin}
  postgres  {pg} (databases {dbs})   redis {redis}   nats {nats}
  logs      {logs}/<service>.log (JSON lines)

  demo tenant `{DEMO_TENANT}`, user `{DEMO_USER}` (admin), logged in: tokens in {demo}
  operator credential for the admin APIs (keelctl tenant/user): {keel_dir}/admin.token

  first call:
    target/debug/keelctl doc list
    grpcurl -plaintext -H \"authorization: Bearer $(jq -r .access_token {demo})\" \\
      -d '{{\"title\":\"hi\",\"content\":\"hello\"}}' {gw_addr} keel.v1.DocumentService/CreateDocument

Ctrl-C stops everything.",
        gw_admin = setting("KEEL_GATEWAY_ADMIN_ADDR", "127.0.0.1:9091"),
        auth_admin = setting("KEEL_AUTH_ADMIN_ADDR", "127.0.0.1:9092"),
        inf_admin = setting("KEEL_INFERENCE_ADMIN_ADDR", "127.0.0.1:9093"),
        pp_admin = setting("KEEL_POSTPROC_ADMIN_ADDR", "127.0.0.1:9094"),
        pg = stack.pg_url(),
        dbs = stack.database_names().join(", "),
        redis = stack.redis_url(),
        nats = stack.nats_url(),
        logs = logs.display(),
        demo = keel_dir.join("demo.json").display(),
        keel_dir = keel_dir.display(),
        gw_addr = gateway_url.trim_start_matches("http://"),
    );
    let code = watch(&mut children, &stop);
    eprintln!("\nxtask: stopping");
    stop_all(&mut children);
    drop(stack);
    eprintln!("xtask: stopped");
    Ok(code)
}

/// Waits for Ctrl-C, or for a service to die (then fails).
fn watch(children: &mut [(&'static str, Child)], stop: &Stop) -> ExitCode {
    loop {
        if stop.wait_timeout(Duration::from_millis(500)) {
            return ExitCode::SUCCESS;
        }
        for (name, c) in children.iter_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                eprintln!("xtask: {name} exited unexpectedly ({st}); see .keel/logs/{name}.log");
                return ExitCode::FAILURE;
            }
        }
    }
}

fn stop_all(children: &mut Vec<(&'static str, Child)>) {
    // Reverse start order: the gateway first, so no new work reaches the others.
    for (name, c) in children.iter_mut().rev() {
        stack::terminate(name, c);
    }
    children.clear();
}

/// A base64 secret of 32 random bytes kept in `path` (created on first use, mode 0600).
fn persistent_secret(path: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(s) = std::fs::read_to_string(path) {
        return Ok(s.trim().to_owned());
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let secret = base64(&bytes);
    std::fs::write(path, &secret)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(secret)
}

/// Standard base64 (no dependency for 40 lines of xtask).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn keelctl(bin: &Path, args: &[&str], stdin: Option<&str>) -> Result<std::process::Output> {
    // keelctl finds the operator credential and demo tokens under the checkout's .keel/.
    let mut child = Command::new(bin)
        .current_dir(crate::workspace_root())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running keelctl")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

fn demo_tenant(bin_dir: &Path, auth_url: &str, gateway_url: &str, keel_dir: &Path) -> Result<()> {
    let keelctl_bin = bin_dir.join("keelctl");
    let out = keelctl(
        &keelctl_bin,
        &[
            "--auth-url",
            auth_url,
            "tenant",
            "create",
            DEMO_TENANT,
            "--name",
            "Demo tenant",
            "--tier",
            "pro",
        ],
        None,
    )?;
    if !out.status.success() {
        bail!(
            "creating the demo tenant failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The demo user's password is generated once and kept with the stack's state.
    let password = persistent_secret(&keel_dir.join("demo.password"))?;
    let out = keelctl(
        &keelctl_bin,
        &[
            "--auth-url",
            auth_url,
            "user",
            "create",
            DEMO_TENANT,
            DEMO_USER,
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some(&format!("{password}\n")),
    )?;
    if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("AlreadyExists") {
        bail!(
            "creating the demo user failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let demo_file = keel_dir.join("demo.json");
    let demo = serde_json::json!({
        "tenant_id": DEMO_TENANT,
        "username": DEMO_USER,
        "password_file": keel_dir.join("demo.password"),
        "endpoints": {
            "gateway_grpc": gateway_url,
            "auth_grpc": auth_url,
        },
    });
    std::fs::write(&demo_file, serde_json::to_vec_pretty(&demo)?)?;
    // A real login: the access and refresh tokens go into demo.json.
    let out = keelctl(
        &keelctl_bin,
        &[
            "--gateway-url",
            gateway_url,
            "login",
            "--tenant",
            DEMO_TENANT,
            "--username",
            DEMO_USER,
            "--password-stdin",
            "--save",
            demo_file.to_str().unwrap_or(".keel/demo.json"),
        ],
        Some(&format!("{password}\n")),
    )?;
    if !out.status.success() {
        bail!(
            "logging the demo user in failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let demo: serde_json::Value = serde_json::from_slice(&std::fs::read(&demo_file)?)?;
    let token = demo["access_token"].as_str().unwrap_or_default().to_owned();
    // One real call through the whole path, so the banner means it works.
    let out = keelctl(
        &keelctl_bin,
        &[
            "--gateway-url",
            gateway_url,
            "--token",
            &token,
            "doc",
            "create",
            "--title",
            "Welcome to keel",
            "--content",
            "Your first document.",
            "--idempotency-key",
            "demo-welcome",
        ],
        None,
    )?;
    if !out.status.success() {
        bail!(
            "the first call through the gateway failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
