//! The load scenarios' smoke profile (a few seconds each) against a throwaway stack: every
//! scenario runs, its thresholds hold, and its report is well formed. The full runs are
//! `cargo xtask load …` (README, "Load").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use keel_loadtest::{ALL, Options, Profile};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_scenario_passes_its_smoke_profile() {
    let stack = keel_tests::load::start_stack().await.unwrap();
    let target = keel_tests::load::target(&stack).await.unwrap();
    let mut failed = Vec::new();
    for s in ALL {
        let report = keel_loadtest::run(s, &target, Profile::Smoke, Options::default())
            .await
            .unwrap();
        eprint!("{}", report.text());
        let line = report.summary_line();
        assert!(line.starts_with(&format!("scenario={s} profile=smoke verdict=")));
        assert!(report.html().contains("<svg"));
        if !report.passed() {
            failed.push(line);
        }
    }
    stack.shutdown().await;
    assert!(failed.is_empty(), "scenarios failed: {failed:#?}");
}
