//! The binary refuses to start on invalid configuration: exit code 2, a message naming the key,
//! and no port bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

fn run(env: &[(&str, &str)]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_keel-gateway"))
        .env_clear()
        .env("KEEL_REDIS_URL", "redis://127.0.0.1:1")
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn missing_and_malformed_settings_are_refused_before_binding() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let ok_urls = [
        ("KEEL_AUTH_URL", "http://127.0.0.1:1"),
        ("KEEL_INFERENCE_URL", "http://127.0.0.1:2"),
    ];
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![
                ("KEEL_INFERENCE_URL", "http://127.0.0.1:2"),
                ("KEEL_GATEWAY_GRPC_ADDR", &addr),
            ],
            "KEEL_AUTH_URL is required",
        ),
        (
            vec![
                ok_urls[0],
                ("KEEL_INFERENCE_URL", "ftp://x"),
                ("KEEL_GATEWAY_GRPC_ADDR", &addr),
            ],
            "KEEL_INFERENCE_URL",
        ),
        (
            vec![
                ok_urls[0],
                ok_urls[1],
                ("KEEL_GATEWAY_GRPC_ADDR", "not-an-address"),
            ],
            "KEEL_GATEWAY_GRPC_ADDR=\"not-an-address\"",
        ),
        (
            vec![
                ok_urls[0],
                ok_urls[1],
                ("KEEL_GATEWAY_GRPC_ADDR", &addr),
                ("KEEL_SHUTDOWN_GRACE", "soon"),
            ],
            "KEEL_SHUTDOWN_GRACE",
        ),
        (
            vec![
                ok_urls[0],
                ok_urls[1],
                ("KEEL_GATEWAY_GRPC_ADDR", &addr),
                ("KEEL_REDIS_URL", "http://not-redis"),
            ],
            "KEEL_REDIS_URL",
        ),
    ];
    for (env, expect) in cases {
        let (code, stderr, took) = run(&env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert!(
            stderr.contains("invalid configuration") && stderr.contains(expect),
            "{env:?}: {stderr}"
        );
        assert!(took < Duration::from_secs(10));
        // Nothing was bound: the port is still free.
        std::net::TcpListener::bind(&addr)
            .expect("the gateway must not bind a port on invalid configuration");
    }
}
