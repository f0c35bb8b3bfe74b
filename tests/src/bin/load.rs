//! `cargo xtask load SCENARIO|all [--smoke] [--rate R] [--seconds S] [--peak P]
//! [--report-dir DIR]`: one scenario of `keel-loadtest` (or all of them) against a throwaway
//! stack (servers by xtask, the four services in this process). Prints each scenario's text
//! summary, writes its HTML report, and ends with one `key=value` line; exits non-zero when a
//! threshold fails.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;

use keel_loadtest::{ALL, Options, Profile};

fn parse(args: &[String]) -> Result<(Vec<String>, Profile, Options, PathBuf), String> {
    let mut scenarios = Vec::new();
    let mut profile = Profile::Full;
    let mut opts = Options::default();
    let mut dir = PathBuf::from("target/loadtest");
    let mut it = args.iter();
    let num = |v: Option<&String>, name: &str| -> Result<f64, String> {
        v.and_then(|s| s.parse::<f64>().ok())
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| format!("{name} needs a positive number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => profile = Profile::Smoke,
            "--rate" => opts.rate = Some(num(it.next(), "--rate")?),
            "--seconds" => opts.seconds = Some(num(it.next(), "--seconds")?),
            "--peak" => opts.peak = Some(num(it.next(), "--peak")?),
            "--report-dir" => {
                dir = PathBuf::from(it.next().ok_or("--report-dir needs a folder")?);
            }
            "all" => scenarios.extend(ALL.iter().map(|s| (*s).to_owned())),
            s if ALL.contains(&s) => scenarios.push(s.to_owned()),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; scenarios: all, {}",
                    ALL.join(", ")
                ));
            }
        }
    }
    if scenarios.is_empty() {
        return Err(format!("name a scenario: all, {}", ALL.join(", ")));
    }
    Ok((scenarios, profile, opts, dir))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (scenarios, profile, opts, dir) = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = keel_telemetry::TelemetryConfig::from_env(
        "keel-load",
        &keel_config::Env::from_pairs([("RUST_LOG", "error")]),
    )
    .map_err(anyhow::Error::from)
    .and_then(|cfg| keel_telemetry::init(cfg).map_err(anyhow::Error::from));
    let _telemetry = match telemetry {
        Ok(t) => t,
        Err(e) => {
            eprintln!("load: telemetry: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("load: starting the stack and preparing tenants, users and documents");
    let stack = match keel_tests::load::start_stack().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("load: the stack did not start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let target = match keel_tests::load::target(&stack).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("load: preparing the target failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("load: {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let mut lines = Vec::new();
    let mut failed = 0;
    for s in &scenarios {
        eprintln!("load: running {s} ({})", profile.name());
        let report = match keel_loadtest::run(s, &target, profile, opts).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("load: {s}: {e:#}");
                failed += 1;
                continue;
            }
        };
        print!("{}", report.text());
        let path = dir.join(format!("{s}-{}.html", profile.name()));
        match std::fs::write(&path, report.html()) {
            Ok(()) => println!("  report: {}", path.display()),
            Err(e) => eprintln!("load: writing {}: {e}", path.display()),
        }
        if !report.passed() {
            failed += 1;
        }
        lines.push(report.summary_line());
    }
    stack.shutdown().await;
    for l in &lines {
        println!("{l}");
    }
    if scenarios.len() > 1 {
        println!(
            "scenarios={} passed={} failed={failed} verdict={}",
            scenarios.len(),
            scenarios.len() - failed,
            if failed == 0 { "pass" } else { "fail" }
        );
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
