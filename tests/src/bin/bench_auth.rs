//! `cargo xtask bench auth`: token verifications per second on one core (warm key cache),
//! refreshes per second and login latency at the chosen argon2id parameters, against the real
//! services and servers. The last line is one `key=value` summary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keel_proto::public as pb;
use keel_tests::{TEST_PASSWORD, TestStack, connect};
use keel_token::{
    AccessClaims, KeyRecord, KeySource, KeyState, SigningKey, SystemClock, TokenError, Verifier,
};

struct Keys(HashMap<String, KeyRecord>);

impl KeySource for Keys {
    fn key(&self, kid: &str) -> Result<Option<KeyRecord>, TokenError> {
        Ok(self.0.get(kid).cloned())
    }
}

/// Distinct tokens in the cached-path working set (sessions presenting their token repeatedly).
const WORKING_SET: usize = 1_000;

/// Verifications per second on this thread (one core), median of five 1-second rounds:
/// (full verification every time, the gateway's path through its verified-token cache over
/// [`WORKING_SET`] distinct tokens).
fn verify_per_second() -> (f64, f64) {
    let tenant = keel_tenancy::TenantId::parse("bench").unwrap();
    let key = SigningKey::generate(&tenant).unwrap();
    let now = SystemClock.now_secs();
    let claims = AccessClaims {
        iss: keel_token::issuer(keel_token::DEFAULT_ISSUER_BASE, &tenant),
        sub: "user".into(),
        aud: keel_token::audience(&tenant),
        client_id: "bench".into(),
        iat: now,
        exp: now + 300,
        nbf: None,
        jti: "j".into(),
        scope: "account documents:read documents:write inference models:read usage:read".into(),
        tenant_id: tenant.to_string(),
        tier: "pro".into(),
        sid: "s".into(),
        acr: "pwd".into(),
        amr: vec!["pwd".into()],
        auth_time: now,
    };
    let token = keel_token::sign(&claims, &key);
    let tokens: Vec<String> = (0..WORKING_SET)
        .map(|i| {
            keel_token::sign(
                &AccessClaims {
                    jti: format!("j{i}"),
                    sid: format!("s{i}"),
                    ..claims.clone()
                },
                &key,
            )
        })
        .collect();
    let keys = Keys(HashMap::from([(
        key.kid.clone(),
        KeyRecord {
            kid: key.kid.clone(),
            tenant: tenant.clone(),
            public: key.public(),
            state: KeyState::Active,
            valid_from: now - 10,
            verify_until: None,
        },
    )]));
    let verifier = Verifier {
        issuer_base: keel_token::DEFAULT_ISSUER_BASE,
        clock: &SystemClock,
    };
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_secs(1) {
            for _ in 0..100 {
                verifier.verify(&token, &keys).unwrap();
            }
            n += 100;
        }
        rounds.push(n as f64 / started.elapsed().as_secs_f64());
    }
    let full = median(&mut rounds);
    let cache = keel_token::VerifiedCache::default();
    let mut rounds = Vec::new();
    let mut i = 0usize;
    for _ in 0..5 {
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_secs(1) {
            for _ in 0..100 {
                cache
                    .verify(&verifier, &tokens[i % WORKING_SET], &keys)
                    .unwrap();
                i += 1;
            }
            n += 100;
        }
        rounds.push(n as f64 / started.elapsed().as_secs_f64());
    }
    (full, median(&mut rounds))
}

/// The Ed25519 signature check alone (`verify_strict`), to show where a verification's time goes.
fn signature_per_second() -> f64 {
    use ed25519_dalek::Signer;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let msg = vec![b'x'; 600];
    let sig = key.sign(&msg);
    let public = key.verifying_key();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        for _ in 0..100 {
            public.verify_strict(&msg, &sig).unwrap();
        }
        n += 100;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

trait NowSecs {
    fn now_secs(&self) -> i64;
}

impl NowSecs for SystemClock {
    fn now_secs(&self) -> i64 {
        keel_token::Clock::now(self)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // Production-like telemetry (warnings to stdout, no span capture), installed before the
    // test harness would install its capturing one.
    let cfg = keel_telemetry::TelemetryConfig::from_env(
        "keel-bench",
        &keel_config::Env::from_pairs([("RUST_LOG", "warn")]),
    )
    .unwrap();
    let _telemetry = keel_telemetry::init(cfg).unwrap();
    let (full, verify) = verify_per_second();
    println!(
        "token verification, the gateway's path (verified-token cache, {WORKING_SET} distinct tokens, expiry and key re-checked per hit): {verify:.0} per second on one core (median of 5 rounds)"
    );
    println!(
        "token verification, full every time (warm key cache): {full:.0} per second on one core (median of 5 rounds)"
    );
    let signature = signature_per_second();
    println!("  of which the Ed25519 verify_strict alone: {signature:.0} per second on one core");

    // The production pool size (the test harness uses a smaller one).
    let pool = keel_store::DEFAULT_MAX_CONNECTIONS.to_string();
    let stack = TestStack::start_with(|e| e.with("KEEL_DB_MAX_CONNECTIONS", pool))
        .await
        .unwrap();
    stack.create_tenant("bench").await.unwrap();
    stack
        .create_user("bench", "user", &["member"])
        .await
        .unwrap();
    let url = stack.gateway_url();
    let mut auth = pb::authentication_service_client::AuthenticationServiceClient::new(
        connect(&url).await.unwrap(),
    );
    let login = pb::LoginRequest {
        tenant_id: "bench".into(),
        username: "user".into(),
        password: TEST_PASSWORD.into(),
        client_id: "bench".into(),
    };
    let mut latencies = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..30 {
        let started = Instant::now();
        let r = auth.login(login.clone()).await.unwrap().into_inner();
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        if i < 8 {
            sessions.push(r.refresh_token);
        }
    }
    let login_p50 = median(&mut latencies.clone());
    latencies.sort_by(|a, b| a.total_cmp(b));
    let login_p95 = latencies[(latencies.len() * 95 / 100).min(latencies.len() - 1)];
    println!(
        "login: p50 {login_p50:.1} ms, p95 {login_p95:.1} ms over 30 sequential logins (argon2id m={} KiB, t={}, p={})",
        keel_auth::passwords::M_COST_KIB,
        keel_auth::passwords::T_COST,
        keel_auth::passwords::P_COST
    );

    // Refresh: 8 concurrent chains for 3 seconds, each using its latest token.
    let deadline = Instant::now() + Duration::from_secs(3);
    let started = Instant::now();
    let workers = sessions.into_iter().map(|mut rt| {
        let url = url.clone();
        async move {
            let mut c = pb::authentication_service_client::AuthenticationServiceClient::new(
                connect(&url).await.unwrap(),
            );
            let mut n = 0u64;
            while Instant::now() < deadline {
                rt = c
                    .refresh(pb::RefreshRequest {
                        refresh_token: rt,
                        client_id: "bench".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .refresh_token;
                n += 1;
            }
            n
        }
    });
    let total: u64 = futures::future::join_all(workers).await.into_iter().sum();
    let refresh = total as f64 / started.elapsed().as_secs_f64();
    println!("refresh: {refresh:.0} per second (8 concurrent chains, 3 s, through the gateway)");
    stack.shutdown().await;
    println!(
        "verify_per_s_core={verify:.0} refresh_per_s={refresh:.0} login_p50_ms={login_p50:.1} verify_uncached_per_s_core={full:.0}"
    );
}
