//! `cargo xtask` — the project's front door.
//!
//! * `cargo xtask up` — PostgreSQL, Redis and nats-server under `.keel/`, the four services, a
//!   demo tenant; prints a ready banner; Ctrl-C stops everything it started.
//! * `cargo xtask test` — an isolated stack on free ports in a temporary folder, the whole test
//!   suite against it, teardown even when tests fail.
//! * `cargo xtask stack` — only the servers, in the foreground (for running tests by hand).
//!
//! Only the standard library, `anyhow`, `ctrlc` and `serde_json`: this builds first, on a
//! fresh machine, before anything else.

mod install;
mod stack;
mod up;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result};

pub(crate) fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

const USAGE: &str = "usage: cargo xtask <command>

commands:
  up       run the whole stack locally with a demo tenant (Ctrl-C stops it)
  test     start an isolated stack and run the whole test suite against it
  stack    start only PostgreSQL, Redis and NATS and print their URLs (Ctrl-C stops them)
  bench auth   token verifications/s/core, refreshes/s and login latency (release build)
  bench gateway [--baseline BIN] [--env K=V] [--baseline-env K=V]   open-model load, direct
           vs. through the gateway: overhead, max rate, RSS, CPU per call; with a baseline,
           another gateway build (or other settings) measured in the same rounds
  bench inference [--documents N] [--rate R] [--smoke]   1M documents seeded by COPY, CRUD
           latency at a fixed rate, embeddings/s and completions/s (cold, hot), a request storm
  bench postproc [--events N] [--smoke]   the metering path, publish → usage committed, with
           one and two postproc instances: events/s, lag p50/p99, lost, duplicated
  load SCENARIO|all [--smoke] [--rate R] [--seconds S] [--peak P]   open-model load through
           the gateway (crud, stream, ramp, timeouts, backpressure, cache-storm, noisy-tenant):
           text summary, HTML report under target/loadtest/, SLO verdict
  seed [--seed N] [--ci]   synthetic tenants (one of 10,000 users and 1,000,000 documents, a
           long tail of 200 small ones) bulk-loaded with COPY on a throwaway stack
  gameday key-rotation   rotate a tenant's key under light load, then revoke the retained
           one: refreshing clients lose nothing, the old key's tokens fail cleanly at once
  gameday failover   SIGKILL and restart each service and each server under light load:
           lost, duplicated, recovery times
  chaos [--only kills,stalls,network,overload]   kills, 3-s stalls (SIGSTOP) and network
           faults (latency, slow bandwidth, blackhole, resets through fault proxies) on each
           service, server and link under steady writes and reads, then 2x the gateway's peak:
           lost, duplicated, hung, recovery, fast refusals, memory; last line faults=... verdict=
  fuzz [TARGET|all] [SECONDS] [--ci]   cargo-fuzz targets (default: every target, 60 s
           each; --ci: every target, 10 s each); fails if any crashes
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("up") => up::run(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("stack") => stack_only(),
        Some("bench") => bench(&args[1..]),
        Some("load") => load(&args[1..]),
        Some("seed") => run_stack_bin("seed", &args[1..]),
        Some("gameday") => gameday(&args[1..]),
        Some("chaos") => chaos(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            eprint!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprint!("unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask test [-- <args for cargo test>]`
fn test(extra: &[String]) -> Result<ExitCode> {
    let started = Instant::now();
    let root = workspace_root();
    let tools = install::ensure(&root)?;
    let python = install::ensure_openai_sdk(&root)?;
    let promtool = install::ensure_promtool(&root)?;
    let dir = stack::TempDir::new("keel-test")?;
    let stop = stack::install_signal_handler()?;
    let stack = stack::Stack::start(&tools, dir.path(), stack::Profile::Throwaway)?;
    eprintln!(
        "xtask: stack up in {:.1}s (postgres :{}, redis :{}, nats :{})",
        started.elapsed().as_secs_f64(),
        stack.pg_port,
        stack.redis_port,
        stack.nats_port
    );
    let extra: Vec<&String> = extra.iter().skip_while(|a| *a == "--").collect();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The crash tests run postproc as a process of its own (to SIGKILL it): build the binary
    // (`cargo test` builds bins only as test harnesses).
    let built = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "-p",
            "keel-postproc",
            "--bin",
            "keel-postproc",
        ])
        .status()
        .context("building keel-postproc")?;
    if !built.success() {
        return Ok(ExitCode::FAILURE);
    }
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root)
        .args(["test", "--workspace", "--all-targets"]);
    // The deploy checks render the Kubernetes overlays with kubectl (or kustomize), which no
    // registry this project may use provides; where neither is installed they are left out,
    // loudly (KEEL_REQUIRE_KUBECTL=1 makes that an error instead, as on CI).
    if !on_path("kubectl")
        && !on_path("kustomize")
        && std::env::var_os("KEEL_TEST_KUBECTL").is_none()
    {
        if std::env::var_os("KEEL_REQUIRE_KUBECTL").is_some() {
            anyhow::bail!(
                "KEEL_REQUIRE_KUBECTL is set and neither kubectl nor kustomize is installed"
            );
        }
        eprintln!(
            "xtask: WARNING: neither kubectl nor kustomize is installed: the deploy checks (keel-deploy-check) are SKIPPED; install kubectl 1.27+ to run them"
        );
        cmd.args(["--exclude", "keel-deploy-check"]);
    }
    cmd.args(extra)
        .envs(stack.test_env())
        .env(
            "KEEL_TEST_POSTPROC_BIN",
            target_dir(&root).join("debug/keel-postproc"),
        )
        .env("KEEL_TEST_PYTHON", &python)
        .env("KEEL_TEST_PROMTOOL", &promtool);
    let status = stack::run_interruptible(&mut cmd, &stop).context("running cargo test")?;
    drop(stack);
    let secs = started.elapsed().as_secs_f64();
    if status.success() {
        eprintln!("xtask: tests passed in {secs:.0}s (stack start, build and run)");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("xtask: tests FAILED after {secs:.0}s");
        Ok(ExitCode::FAILURE)
    }
}

/// `cargo xtask bench auth|gateway|inference|postproc [ARGS]`: the benchmark binary, in release, against a
/// throwaway stack; ARGS are passed to it.
fn bench(args: &[String]) -> Result<ExitCode> {
    let what = args.first().map(String::as_str);
    let bin = match what {
        Some("auth") => "bench_auth",
        Some("gateway") => "bench_gateway",
        Some("inference") => "bench_inference",
        Some("postproc") => "bench_postproc",
        _ => {
            eprintln!(
                "usage: cargo xtask bench auth|gateway|inference|postproc [ARGS for the benchmark]"
            );
            return Ok(ExitCode::from(2));
        }
    };
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if bin == "bench_gateway" {
        // The gateway under test runs as its own release process.
        let built = Command::new(&cargo)
            .current_dir(&root)
            .args(["build", "--quiet", "--release", "-p", "keel-gateway"])
            .status()
            .context("building the gateway")?;
        if !built.success() {
            return Ok(ExitCode::FAILURE);
        }
    }
    run_stack_bin(bin, &args[1..])
}

/// `cargo xtask load SCENARIO|all [--smoke] [...]`: `keel-loadtest` against a throwaway stack.
fn load(args: &[String]) -> Result<ExitCode> {
    if args.is_empty() {
        eprintln!(
            "usage: cargo xtask load SCENARIO|all [--smoke] [--rate R] [--seconds S] [--peak P] [--report-dir DIR]"
        );
        return Ok(ExitCode::from(2));
    }
    run_stack_bin("load", args)
}

/// `cargo xtask gameday key-rotation|failover|chaos`; failover and chaos run the services as
/// release processes, so they are built first.
fn gameday(args: &[String]) -> Result<ExitCode> {
    if matches!(args.first().map(String::as_str), Some("failover" | "chaos"))
        && !build_services_release()?
    {
        return Ok(ExitCode::FAILURE);
    }
    run_stack_bin("gameday", args)
}

/// `cargo xtask chaos`: the fault run of issue 9 (`gameday chaos`) — kills, stalls, network
/// faults through fault proxies and overload under steady load; the last line is one
/// `key=value` summary.
fn chaos(args: &[String]) -> Result<ExitCode> {
    let mut all = vec!["chaos".to_owned()];
    all.extend_from_slice(args);
    gameday(&all)
}

/// The four services in release, for the game days that run them as processes.
fn build_services_release() -> Result<bool> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["build", "--quiet", "--release"])
        .args([
            "-p",
            "keel-auth",
            "-p",
            "keel-gateway",
            "-p",
            "keel-inference",
        ])
        .args(["-p", "keel-postproc"])
        .status()
        .context("building the services")?;
    Ok(built.success())
}

/// Runs a `keel-tests` binary (release) against servers started for it, then stops them.
fn run_stack_bin(bin: &str, args: &[String]) -> Result<ExitCode> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tools = install::ensure(&root)?;
    let dir = stack::TempDir::new("keel-bench")?;
    let stop = stack::install_signal_handler()?;
    let stack = stack::Stack::start(&tools, dir.path(), stack::Profile::Throwaway)?;
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root)
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "keel-tests",
            "--bin",
            bin,
            "--",
        ])
        // Anything after the benchmark's name goes to it (`bench inference --smoke`).
        .args(args)
        .env("RUST_LOG", "error")
        .env(
            "KEEL_BENCH_GATEWAY_BIN",
            target_dir(&root).join("release/keel-gateway"),
        )
        .env("KEEL_GAMEDAY_BIN_DIR", target_dir(&root).join("release"))
        .envs(stack.test_env());
    let status = stack::run_interruptible(&mut cmd, &stop)?;
    drop(stack);
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Whether an executable of this name is on PATH.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// Where cargo puts build output (`CARGO_TARGET_DIR`, or `target/`).
fn target_dir(root: &std::path::Path) -> PathBuf {
    #[allow(clippy::disallowed_methods)]
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Fuzz targets in `fuzz/` (seed corpora committed under `fuzz/corpus/<target>`).
const FUZZ_TARGETS: &[&str] = &[
    "token_verify",
    "tenant_id",
    "authorize_request",
    "token_request",
    "upstream_stream",
    "request_validators",
    "openai_request",
    "event_decode",
    "authspec",
];

/// Seconds per target of `cargo xtask fuzz --ci`: enough for libFuzzer to replay the seeds and
/// mutate them for a while; with the build, every target stays within CI's budget for fuzzing.
const FUZZ_CI_SECONDS: u64 = 10;

/// How every target is built (the same for `build` and `run`, or cargo rebuilds): debug
/// assertions on (so integer overflow panics, as in tests), no sanitizer (keel forbids
/// `unsafe`, and AddressSanitizer's instrumentation of the services' whole dependency tree
/// costs build time and executions), and 16 codegen units instead of cargo-fuzz's 1, so the
/// two cores build in parallel (the cold build of the request validators' dependencies is
/// the bulk of `cargo xtask fuzz --ci`).
const FUZZ_BUILD_FLAGS: &[&str] = &[
    "--sanitizer",
    "none",
    "--debug-assertions",
    "--codegen-units",
    "16",
];

/// One target's run, as libFuzzer reported it.
struct FuzzRun {
    target: &'static str,
    seconds: f64,
    executions: Option<u64>,
    crashed: bool,
}

/// `cargo xtask fuzz [TARGET|all] [SECONDS]` (default: every target, 60 s each) and
/// `cargo xtask fuzz --ci` (every target, `FUZZ_CI_SECONDS` each): installs cargo-fuzz when
/// missing, builds every target once, and runs libFuzzer on the stable toolchain
/// (`RUSTC_BOOTSTRAP=1` unlocks the sanitizer flags cargo-fuzz passes). Every target runs even
/// when an earlier one crashed; the command fails if any did, naming the crash artifacts. New
/// inputs go to `fuzz/target/corpus/<target>`; the committed seeds stay as they are. The last
/// line is one `key=value` summary.
fn fuzz(args: &[String]) -> Result<ExitCode> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ci = args.iter().any(|a| a == "--ci");
    let mut targets: Vec<&'static str> = FUZZ_TARGETS.to_vec();
    let mut seconds: u64 = if ci { FUZZ_CI_SECONDS } else { 60 };
    for a in args.iter().filter(|a| *a != "--ci") {
        if let Ok(n) = a.parse::<u64>() {
            seconds = n.max(1);
        } else if let Some(t) = FUZZ_TARGETS.iter().find(|t| **t == a.as_str()) {
            targets = vec![*t];
        } else if a != "all" {
            anyhow::bail!("unknown fuzz target {a:?}; known: all, {FUZZ_TARGETS:?}");
        }
    }
    ensure_fuzz_tools(&cargo)?;
    let started = Instant::now();
    let fuzz_dir = root.join("fuzz");
    // One build of every target (the runs below then only check it is fresh).
    eprintln!("xtask: building the fuzz targets");
    let built = Command::new(&cargo)
        .current_dir(&fuzz_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "build"])
        .args(FUZZ_BUILD_FLAGS)
        .status()
        .context("cargo fuzz build")?;
    if !built.success() {
        anyhow::bail!("building the fuzz targets failed");
    }
    let build_secs = started.elapsed().as_secs_f64();
    eprintln!("xtask: fuzz targets built in {build_secs:.0}s");
    let mut runs = Vec::new();
    for t in targets {
        runs.push(fuzz_one(&cargo, &fuzz_dir, t, seconds)?);
    }
    eprintln!("xtask: fuzz summary ({seconds}s per target)");
    for r in &runs {
        eprintln!(
            "  {:<20} {:>5.0} s  {:>12} executions  {} crashes",
            r.target,
            r.seconds,
            r.executions.map_or("?".to_owned(), |n| n.to_string()),
            u32::from(r.crashed)
        );
    }
    let crashed: Vec<&str> = runs
        .iter()
        .filter(|r| r.crashed)
        .map(|r| r.target)
        .collect();
    let executions: u64 = runs.iter().filter_map(|r| r.executions).sum();
    for t in &crashed {
        eprintln!("xtask: fuzz target {t} FAILED (crash artifacts under fuzz/artifacts/{t})");
    }
    println!(
        "fuzz targets={} seconds_each={seconds} executions={executions} crashes={} build_s={build_secs:.0} total_s={:.0}",
        runs.len(),
        crashed.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(if crashed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// cargo-fuzz (`cargo install --locked`), and the C++ compiler libfuzzer-sys builds libFuzzer
/// with (`apt-get install g++` where it is missing and apt is there).
fn ensure_fuzz_tools(cargo: &str) -> Result<()> {
    if !["c++", "g++", "clang++"].iter().any(|c| on_path(c)) {
        if !on_path("apt-get") {
            anyhow::bail!("fuzzing needs a C++ compiler (g++ or clang++) to build libFuzzer");
        }
        eprintln!("xtask: installing g++ with apt-get (libFuzzer is C++)");
        let ok = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "g++"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            anyhow::bail!("apt-get install g++ failed; install a C++ compiler and retry");
        }
    }
    let have = Command::new(cargo)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("xtask: installing cargo-fuzz");
        let ok = Command::new(cargo)
            .args(["install", "cargo-fuzz", "--locked"])
            .status()?
            .success();
        if !ok {
            anyhow::bail!("cargo install cargo-fuzz failed");
        }
    }
    Ok(())
}

/// Runs one target for `seconds`, passing libFuzzer's output through and reading its final
/// statistics (`-print_final_stats=1`).
fn fuzz_one(
    cargo: &str,
    fuzz_dir: &std::path::Path,
    t: &'static str,
    seconds: u64,
) -> Result<FuzzRun> {
    use std::io::BufRead;
    let out = fuzz_dir.join("target/corpus").join(t);
    ensure_dir(&out)?;
    eprintln!("xtask: fuzzing {t} for {seconds}s");
    let started = Instant::now();
    let mut child = Command::new(cargo)
        .current_dir(fuzz_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run"])
        .args(FUZZ_BUILD_FLAGS)
        .arg(t)
        .arg(&out)
        .arg(format!("corpus/{t}"))
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            // An input that takes this long is a hang: reported like a crash.
            "-timeout=25",
            "-print_final_stats=1",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cargo fuzz run {t}"))?;
    let mut executions = None;
    if let Some(stderr) = child.stderr.take() {
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line?;
            if let Some(n) = line
                .strip_prefix("stat::number_of_executed_units:")
                .and_then(|n| n.trim().parse().ok())
            {
                executions = Some(n);
            }
            eprintln!("{line}");
        }
    }
    let status = child.wait()?;
    Ok(FuzzRun {
        target: t,
        seconds: started.elapsed().as_secs_f64(),
        executions,
        crashed: !status.success(),
    })
}

fn stack_only() -> Result<ExitCode> {
    let root = workspace_root();
    let tools = install::ensure(&root)?;
    let dir = root.join(".keel/stack");
    let stop = stack::install_signal_handler()?;
    let stack = stack::Stack::start(&tools, &dir, stack::Profile::Throwaway)?;
    for (k, v) in stack.test_env() {
        println!("export {k}={v}");
    }
    eprintln!(
        "xtask: servers running under {}; Ctrl-C stops them",
        dir.display()
    );
    stop.wait();
    drop(stack);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn ensure_dir(p: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))
}
