//! promtool on the committed rules: `check rules` (syntax, PromQL) and `test rules` (every
//! objective's burn scenarios fire, and only fire, the expected alerts).
//!
//! promtool comes from `cargo xtask test`, which fetches it (Debian's `promtool` package, into
//! `.keel/tools/promtool`) and passes its path in `KEEL_TEST_PROMTOOL`.

use std::path::Path;
use std::process::Command;

const PROMETHEUS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/prometheus");

fn promtool() -> String {
    std::env::var("KEEL_TEST_PROMTOOL").unwrap_or_else(|_| {
        panic!(
            "KEEL_TEST_PROMTOOL is not set: run the tests with `cargo xtask test`, which fetches promtool \
             (or set KEEL_TEST_PROMTOOL to a promtool binary)"
        )
    })
}

fn run(args: &[&str]) {
    let bin = promtool();
    let out = Command::new(&bin)
        .args(args)
        .current_dir(Path::new(PROMETHEUS_DIR))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    assert!(
        text.contains("SUCCESS"),
        "promtool {}:\n{text}",
        args.join(" ")
    );
}

#[test]
fn promtool_checks_the_rules() {
    run(&["check", "rules", "slo-rules.yml"]);
}

#[test]
fn promtool_unit_tests_pass() {
    run(&["test", "rules", "slo-rules.test.yml"]);
}
