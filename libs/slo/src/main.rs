//! `keel-slo`: regenerates the SLO rules, their promtool tests, the runbook and the dashboards
//! under `<root>/deploy/` (`write`), or lists the stale ones (`check`). A thin shell over
//! `keel_slo::{write, stale}`.
//!
//! Exit codes: 0 written (or up to date), 1 stale files or a failure, 2 a usage error.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: keel-slo <command> <repository root>

commands:
  write   regenerate deploy/prometheus/slo-rules.yml, slo-rules.test.yml, slo-runbook.md
          and deploy/grafana/<service>.json from libs/slo
  check   list the generated files that differ from what libs/slo generates; exit 1 if any";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, root) = match args.as_slice() {
        [c, root] if c == "write" || c == "check" => (c.as_str(), PathBuf::from(root)),
        [h] if h == "-h" || h == "--help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("keel-slo: expected a command and a repository root\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let outcome = if command == "write" {
        keel_slo::write(&root).map(|changed| {
            for path in &changed {
                println!("wrote {}", path.display());
            }
            if changed.is_empty() {
                println!("up to date");
            }
            ExitCode::SUCCESS
        })
    } else {
        keel_slo::stale(&root).map(|stale| {
            for path in &stale {
                println!("stale: {}", path.display());
            }
            if stale.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        })
    };
    outcome.unwrap_or_else(|error| {
        eprintln!("keel-slo: {error}");
        ExitCode::FAILURE
    })
}
