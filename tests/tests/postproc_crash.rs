//! Post-processing killed with SIGKILL in the middle of its work loses nothing and counts
//! nothing twice: what it had not acked is redelivered after the ack wait to the instance that
//! replaces it (and to a second instance sharing the consumer), and every effect is keyed by
//! its event ID.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_tests::metering::{metered, publish_completions};
use keel_tests::{TestStack, free_port};

const EVENTS: usize = 20_000;
const TENANTS: usize = 8;

/// The postproc binary `cargo xtask test` builds (`KEEL_TEST_POSTPROC_BIN`).
fn postproc_binary() -> std::path::PathBuf {
    #[allow(clippy::disallowed_methods)]
    let bin = std::env::var("KEEL_TEST_POSTPROC_BIN")
        .map(std::path::PathBuf::from)
        .expect("KEEL_TEST_POSTPROC_BIN: run through `cargo xtask test`");
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

/// A postproc process with the stack's configuration.
fn spawn(stack: &TestStack) -> Child {
    let mut cmd = Command::new(postproc_binary());
    cmd.env_clear()
        .envs(stack.env.pairs())
        .env(
            "KEEL_POSTPROC_GRPC_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "KEEL_POSTPROC_ADMIN_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("KEEL_POSTPROC_ACK_WAIT", "2s")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_batch_loses_nothing_and_counts_nothing_twice() {
    let mut stack = TestStack::start_with(|e| e.with("KEEL_POSTPROC_ACK_WAIT", "2s"))
        .await
        .unwrap();
    // Only the processes of this test consume.
    stack.postproc.take().unwrap().shutdown().await;
    let mut pools = Vec::new();
    for i in 0..stack.database_urls.len() {
        pools.push(stack.shard(i).await.unwrap());
    }
    let bus = keel_bus::Bus::connect(keel_bus::BusConfig::from_env(&stack.env).unwrap())
        .await
        .unwrap();
    bus.ensure_stream().await.unwrap();
    publish_completions(&bus, "crash", TENANTS, EVENTS).await;

    // The first instance works through the backlog; it is killed part-way.
    let mut first = spawn(&stack);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (n, _) = metered(&pools).await.unwrap();
        if n >= (EVENTS / 5) as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first instance made no progress ({n})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let (at_kill, _) = metered(&pools).await.unwrap();
    assert!(at_kill < EVENTS as i64, "killed before the end ({at_kill})");

    // Two instances take over the same durable consumer; what the first had in hand comes back
    // after the ack wait.
    let mut second = spawn(&stack);
    let mut third = spawn(&stack);
    let deadline = Instant::now() + Duration::from_secs(90);
    let (requests, records) = loop {
        let (n, d) = metered(&pools).await.unwrap();
        if n >= EVENTS as i64 || Instant::now() > deadline {
            break (n, d);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Let any redelivery still in flight land, then count again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (requests_after, records_after) = metered(&pools).await.unwrap();
    for c in [&mut second, &mut third] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert_eq!(
        requests, EVENTS as i64,
        "every event metered (killed at {at_kill})"
    );
    assert_eq!(records, EVENTS as i64);
    assert_eq!(
        (requests_after, records_after),
        (EVENTS as i64, EVENTS as i64),
        "and none twice"
    );
    stack.shutdown().await;
}
