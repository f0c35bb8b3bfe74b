//! `cargo xtask seed --ci` (the scaled-down size) end to end: tenants through the directory,
//! users and documents by COPY over the shards, a seeded user logging in and reading a seeded
//! document; the summary line is the plan's, and the same seed gives the same plan.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_tests::seed::{Plan, Scale};

#[test]
fn the_ci_seed_loads_its_plan_and_the_data_is_usable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seed"))
        .args(["--ci", "--seed", "3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap();
    let plan = Plan::new(3, Scale::CI);
    assert!(
        last.starts_with(&format!(
            "tenants={} users={} documents={} seconds=",
            plan.tenants.len(),
            plan.users(),
            plan.documents()
        )),
        "{last}"
    );
    assert!(last.ends_with("verdict=pass"), "{last}");
}
