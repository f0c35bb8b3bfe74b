//! `keel-protocompat`: release keel's wire contracts and check the current ones against the
//! newest release. A thin shell over `keel_protocompat::released`.
//!
//! Exit codes: 0 compatible (or written), 1 a breaking change or a failure, 2 a usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use keel_protocompat::released::{self, Check};
use keel_protocompat::{Error, Finding, Version};

const USAGE: &str = "\
usage: keel-protocompat [--proto <dir>] <command>

commands:
  check               compare <dir> with its newest release in <dir>/released;
                      exit 1 on any breaking change
  snapshot <version>  write <dir>/released/<version>.binpb (MAJOR.MINOR.PATCH) from <dir>;
                      never overwrites, refuses a version that is not newer or a breaking set

<dir> defaults to the workspace's proto/";

/// The workspace's `proto/`, fixed at build time: the tool runs from the source tree
/// (`cargo run -p keel-protocompat -- check`); `--proto` points it elsewhere.
const DEFAULT_PROTO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");

enum Command {
    Help,
    Check,
    Snapshot(Version),
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<(PathBuf, Command), String> {
    let mut proto = PathBuf::from(DEFAULT_PROTO);
    let mut command = None;
    while let Some(arg) = args.next() {
        let next = match arg.as_str() {
            "-h" | "--help" => Command::Help,
            "--proto" => {
                proto = args.next().ok_or("--proto needs a directory")?.into();
                continue;
            }
            "check" => Command::Check,
            "snapshot" => {
                let version = args.next().ok_or("snapshot needs a version, e.g. 0.2.0")?;
                Command::Snapshot(version.parse().map_err(|e: Error| e.to_string())?)
            }
            other => return Err(format!("unexpected argument {other:?}")),
        };
        if command.replace(next).is_some() {
            return Err("give one command".to_owned());
        }
    }
    Ok((proto, command.ok_or("no command given")?))
}

fn print_findings(findings: &[Finding]) {
    for finding in findings {
        println!("breaking: {finding}");
    }
}

fn main() -> ExitCode {
    let (proto, command) = match parse(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(problem) => {
            eprintln!("keel-protocompat: {problem}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let proto = std::fs::canonicalize(&proto).unwrap_or(proto);
    let outcome = match command {
        Command::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Check => released::check(&proto).map(|check| match check {
            Check { against: None, .. } => {
                println!(
                    "no released contracts under {}",
                    released::dir(&proto).display()
                );
                ExitCode::SUCCESS
            }
            Check {
                against: Some(version),
                findings,
            } if findings.is_empty() => {
                println!("compatible with release {version}");
                ExitCode::SUCCESS
            }
            Check {
                against: Some(version),
                findings,
            } => {
                print_findings(&findings);
                println!(
                    "{} breaking change(s) against release {version}",
                    findings.len()
                );
                ExitCode::FAILURE
            }
        }),
        Command::Snapshot(version) => released::snapshot(&proto, version).map(|path| {
            println!("released {version}: wrote {}", path.display());
            ExitCode::SUCCESS
        }),
    };
    outcome.unwrap_or_else(|error| {
        if let Error::Breaking { findings, .. } = &error {
            print_findings(findings);
        }
        eprintln!("keel-protocompat: {error}");
        ExitCode::FAILURE
    })
}
