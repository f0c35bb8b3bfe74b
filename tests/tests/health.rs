//! Readiness follows the dependencies; liveness does not; shutdown is clean.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keel_tests::{
    SERVING, Servers, TestStack, admin_get, base_env, create_databases, eventually, health_status,
    telemetry, unique,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_turns_serving_only_once_postgres_answers() {
    telemetry();
    let servers = Servers::from_env();
    let id = unique("t");
    // The databases do not exist yet: Postgres refuses every connection to them.
    let urls: Vec<String> = (0..2)
        .map(|i| format!("{}/{id}_{i}", servers.pg_url))
        .collect();
    let env = base_env(&servers, &id, &urls);
    let app = keel_inference::start(keel_inference::Config::from_env(&env).unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", app.grpc_addr());

    // Readiness rounds (100 ms apart) run until NATS answers and the warm-up is done; Postgres
    // never answers, so
    // it stays NOT_SERVING and says why.
    let admin = app.admin_addr();
    let (code, body) = eventually(
        Duration::from_secs(20),
        "the other checks to pass",
        || async {
            let (code, body) = admin_get(admin, "/readyz").await?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            Ok(
                (v["checks"]["nats"] == "ok" && v["checks"]["warm-up"] == "ok")
                    .then_some((code, v)),
            )
        },
    )
    .await
    .unwrap();
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_ne!(body["checks"]["postgres"], "ok", "{body}");
    assert_ne!(health_status(&url).await.unwrap(), SERVING);
    assert_eq!(
        admin_get(app.admin_addr(), "/livez").await.unwrap().0,
        200,
        "liveness must not depend on Postgres"
    );

    // Once the databases exist, migrations run and the service turns SERVING by itself.
    create_databases(&servers, &id, 2).await.unwrap();
    eventually(Duration::from_secs(20), "SERVING", || async {
        Ok((health_status(&url).await? == SERVING).then_some(()))
    })
    .await
    .unwrap();
    let (code, _) = admin_get(app.admin_addr(), "/readyz").await.unwrap();
    assert_eq!(code, 200);
    let (code, metrics) = admin_get(app.admin_addr(), "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("keel_ready"), "{metrics}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_is_not_ready_while_its_upstreams_are_down() {
    telemetry();
    let servers = Servers::from_env();
    let id = unique("t");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let env = base_env(&servers, &id, &[format!("{}/none", servers.pg_url)])
        .with("KEEL_AUTH_URL", format!("http://{closed}"))
        .with("KEEL_INFERENCE_URL", format!("http://{closed}"));
    let gw = keel_gateway::start(keel_gateway::Config::from_env(&env).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_ne!(
        health_status(&format!("http://{}", gw.grpc_addr()))
            .await
            .unwrap(),
        SERVING
    );
    let (code, body) = admin_get(gw.admin_addr(), "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_is_graceful_and_releases_the_ports() {
    let stack = TestStack::start().await.unwrap();
    let addrs = [
        stack.gateway.as_ref().unwrap().grpc_addr(),
        stack.inference.as_ref().unwrap().grpc_addr(),
        stack.auth.as_ref().unwrap().grpc_addr(),
        stack.postproc.as_ref().unwrap().admin_addr(),
    ];
    let started = std::time::Instant::now();
    stack.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    for a in addrs {
        assert!(
            tokio::net::TcpStream::connect(a).await.is_err(),
            "{a} still accepts connections"
        );
    }
}

/// `keel-postproc healthcheck` (what container health checks run): 0 while the process it
/// checks serves, 1 once it is gone, 2 on bad configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_healthcheck_subcommand_asks_the_service_itself() {
    #[allow(clippy::disallowed_methods)]
    let bin = std::env::var("KEEL_TEST_POSTPROC_BIN")
        .expect("KEEL_TEST_POSTPROC_BIN: run through `cargo xtask test`");
    let mut stack = TestStack::start().await.unwrap();
    stack.postproc.take().unwrap().shutdown().await;
    let grpc = keel_tests::free_port();
    let env: Vec<(String, String)> = stack
        .env
        .clone()
        .with("KEEL_POSTPROC_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .with(
            "KEEL_POSTPROC_ADMIN_ADDR",
            format!("127.0.0.1:{}", keel_tests::free_port()),
        )
        .with("RUST_LOG", "error")
        .pairs()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let check = |env: &[(String, String)]| {
        std::process::Command::new(&bin)
            .arg("healthcheck")
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap()
    };
    let mut server = std::process::Command::new(&bin)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let passed = eventually(Duration::from_secs(30), "healthcheck to pass", || async {
        Ok(check(&env).status.success().then_some(()))
    })
    .await;
    if let Err(e) = passed {
        let last = check(&env);
        panic!("{e}: {}", String::from_utf8_lossy(&last.stderr));
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let gone = check(&env);
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
    let mut bad = env.clone();
    bad.push(("KEEL_POSTPROC_GRPC_ADDR".into(), "not an address".into()));
    assert_eq!(check(&bad).status.code(), Some(2));
    stack.shutdown().await;
}
