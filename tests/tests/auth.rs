//! Authentication end to end through the gateway, against real Postgres, Redis and NATS. Test
//! names cite the requirement IDs of shared/reference/auth.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keel_proto::public as pb;
use keel_tests::{TEST_PASSWORD, TestStack, authed, connect, eventually, reason};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

async fn auth_client(
    stack: &TestStack,
) -> pb::authentication_service_client::AuthenticationServiceClient<tonic::transport::Channel> {
    pb::authentication_service_client::AuthenticationServiceClient::new(
        connect(&stack.gateway_url()).await.unwrap(),
    )
}

/// A login to acme through the gateway on a fresh connection, with one extra metadata entry
/// when given (what a client or an ingress says about the source address).
async fn login_with(
    url: &str,
    username: String,
    password: &str,
    metadata: Option<(&'static str, String)>,
) -> Result<tonic::Response<pb::LoginResponse>, tonic::Status> {
    let mut c = pb::authentication_service_client::AuthenticationServiceClient::new(
        connect(url).await.unwrap(),
    );
    let mut req = tonic::Request::new(pb::LoginRequest {
        tenant_id: "acme".into(),
        username,
        password: password.into(),
        client_id: "t".into(),
    });
    if let Some((key, value)) = metadata {
        req.metadata_mut().insert(key, value.parse().unwrap());
    }
    c.login(req).await
}

async fn refresh(stack: &TestStack, rt: &str) -> Result<(String, String), tonic::Status> {
    let r = auth_client(stack)
        .await
        .refresh(pb::RefreshRequest {
            refresh_token: rt.into(),
            client_id: "keel-tests".into(),
        })
        .await?
        .into_inner();
    Ok((r.access_token, r.refresh_token))
}

async fn list(stack: &TestStack, token: &str) -> Result<(), tonic::Status> {
    let mut docs = stack.documents().await.unwrap();
    docs.list_documents(authed(pb::ListDocumentsRequest::default(), token))
        .await
        .map(|_| ())
}

async fn wait_refused(stack: &TestStack, token: &str, what: &str) {
    eventually(WAIT, what, || async {
        Ok(match list(stack, token).await {
            Err(st) if st.code() == Code::Unauthenticated => Some(()),
            _ => None,
        })
    })
    .await
    .unwrap();
}

async fn setup(stack: &TestStack) -> (String, String) {
    stack.create_tenant("acme").await.unwrap();
    stack
        .create_user("acme", "alice", &["member"])
        .await
        .unwrap();
    stack.login("acme", "alice").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r4_refresh_reuse_revokes_the_family_and_its_access_tokens() {
    let stack = TestStack::start().await.unwrap();
    let (at1, rt1) = setup(&stack).await;
    list(&stack, &at1).await.unwrap();
    let (at2, rt2) = refresh(&stack, &rt1).await.unwrap();
    assert_ne!(rt1, rt2, "refresh tokens rotate on every use");
    list(&stack, &at2).await.unwrap();

    // The attacker (or the victim) presents the old token again.
    let st = refresh(&stack, &rt1).await.unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    // Everything of the family is dead: the successor and the access tokens of the session.
    assert_eq!(
        refresh(&stack, &rt2).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    wait_refused(&stack, &at2, "the session's access tokens to be refused").await;
    assert_eq!(
        list(&stack, &at1).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r5_concurrent_redemptions_of_one_refresh_token_yield_at_most_one_success() {
    let stack = TestStack::start().await.unwrap();
    let (_, rt) = setup(&stack).await;
    let attempts = (0..24).map(|_| {
        let rt = rt.clone();
        let url = stack.gateway_url();
        async move {
            let mut c = pb::authentication_service_client::AuthenticationServiceClient::new(
                connect(&url).await.unwrap(),
            );
            c.refresh(pb::RefreshRequest {
                refresh_token: rt,
                client_id: String::new(),
            })
            .await
            .is_ok()
        }
    });
    let wins = futures::future::join_all(attempts)
        .await
        .into_iter()
        .filter(|ok| *ok)
        .count();
    assert!(wins <= 1, "{wins} parallel redemptions succeeded");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r40_each_login_is_a_new_session_and_logout_ends_only_its_own() {
    let stack = TestStack::start().await.unwrap();
    let (at1, rt1) = setup(&stack).await;
    let (at2, _rt2) = stack.login("acme", "alice").await.unwrap();
    let sid = |t: &str| {
        use base64::Engine;
        let claims = t.split('.').nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap();
        v["sid"].as_str().unwrap().to_owned()
    };
    assert_ne!(sid(&at1), sid(&at2));
    auth_client(&stack)
        .await
        .logout(pb::LogoutRequest {
            refresh_token: rt1.clone(),
        })
        .await
        .unwrap();
    // ASVS 7.4.1 / attack row 27: the logged-out session's access token stops working within a second.
    wait_refused(&stack, &at1, "the logged-out access token to be refused").await;
    assert_eq!(
        refresh(&stack, &rt1).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    list(&stack, &at2).await.unwrap();
    // RFC 7009 style: logging out an unknown token is not an error.
    auth_client(&stack)
        .await
        .logout(pb::LogoutRequest {
            refresh_token: "rt1.acme.nope".into(),
        })
        .await
        .unwrap();
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r50_failures_are_limited_per_account_even_in_parallel_and_delays_grow() {
    let stack = TestStack::start().await.unwrap();
    setup(&stack).await;
    let pool = stack.shard(stack.shard_of("acme")).await.unwrap();
    let login = |password: &'static str| {
        let url = stack.gateway_url();
        async move {
            let mut c = pb::authentication_service_client::AuthenticationServiceClient::new(
                connect(&url).await.unwrap(),
            );
            c.login(pb::LoginRequest {
                tenant_id: "acme".into(),
                username: "alice".into(),
                password: password.into(),
                client_id: "t".into(),
            })
            .await
        }
    };
    // Epoch seconds: the database clock, and the account's lock (None when unlocked).
    let db_now = || async {
        sqlx::query_scalar::<_, f64>("SELECT EXTRACT(EPOCH FROM now())::float8")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let locked = || async {
        sqlx::query_scalar::<_, Option<f64>>("SELECT EXTRACT(EPOCH FROM locked_until)::float8 FROM auth.users WHERE username = 'alice'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let unlock = || async {
        sqlx::query("UPDATE auth.users SET locked_until = NULL WHERE username = 'alice'")
            .execute(&pool)
            .await
            .unwrap();
    };
    // Four free failures; the fifth locks for 1 s, the sixth for 2 s: delays grow.
    for _ in 0..4 {
        assert_eq!(
            login("wrong password!!").await.unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(locked().await, None);
    }
    // The lock is "failure time + delay" (whole seconds): bounded by the clock before and after
    // the attempt, however slow the machine is.
    for delay in [1.0, 2.0] {
        unlock().await;
        let before = db_now().await;
        login("wrong password!!").await.unwrap_err();
        let after = db_now().await;
        let until = locked().await.expect("locked");
        assert!(
            until >= before - 1.0 + delay && until <= after + delay,
            "delay {delay}: {before} .. {after} -> {until}"
        );
    }
    // While locked, even the right password is refused, the same way.
    sqlx::query(
        "UPDATE auth.users SET locked_until = now() + interval '1 minute' WHERE username = 'alice'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        login(TEST_PASSWORD).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    unlock().await;
    login(TEST_PASSWORD).await.expect("unlocked");
    let failures: i32 =
        sqlx::query_scalar("SELECT failed_logins FROM auth.users WHERE username = 'alice'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(failures, 0, "success resets the count");

    // At 97 consecutive failures, 12 parallel guesses: the count stops at the limit of 100.
    sqlx::query(
        "UPDATE auth.users SET failed_logins = 97, locked_until = NULL WHERE username = 'alice'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let guesses = futures::future::join_all((0..12).map(|_| login("wrong password!!"))).await;
    assert!(guesses.iter().all(|r| r.is_err()));
    let failures: i32 =
        sqlx::query_scalar("SELECT failed_logins FROM auth.users WHERE username = 'alice'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(failures, 100, "parallel attempts must not exceed the limit");
    sqlx::query("UPDATE auth.users SET locked_until = NULL WHERE username = 'alice'")
        .execute(&pool)
        .await
        .unwrap();
    assert!(
        login(TEST_PASSWORD).await.is_err(),
        "past 100 failures the account stays locked"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn asvs_6_3_8_failures_do_not_reveal_which_part_was_wrong() {
    let stack = TestStack::start().await.unwrap();
    setup(&stack).await;
    let mut c = auth_client(&stack).await;
    let mut seen = Vec::new();
    for (tenant, user, password) in [
        ("acme", "alice", "wrong password!!"),
        ("acme", "nobody", TEST_PASSWORD),
        ("ghost", "alice", TEST_PASSWORD),
        ("acme", "alice", ""),
    ] {
        let st = c
            .login(pb::LoginRequest {
                tenant_id: tenant.into(),
                username: user.into(),
                password: password.into(),
                client_id: "t".into(),
            })
            .await
            .unwrap_err();
        seen.push((st.code(), reason(&st), st.message().to_owned()));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    assert_eq!(seen[0].0, Code::Unauthenticated);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r60_model_export_answers_with_the_rfc_9470_challenge() {
    let stack = TestStack::start().await.unwrap();
    stack.create_tenant("acme").await.unwrap();
    stack
        .create_user("acme", "admin", &["admin"])
        .await
        .unwrap();
    stack
        .create_user("acme", "member", &["member"])
        .await
        .unwrap();
    let (admin, _) = stack.login("acme", "admin").await.unwrap();
    let (member, _) = stack.login("acme", "member").await.unwrap();
    let mut models = pb::model_service_client::ModelServiceClient::new(
        connect(&stack.gateway_url()).await.unwrap(),
    );
    let req = || pb::ExportModelRequest {
        name: "keel-tiny".into(),
        version: "1".into(),
    };
    let st = models
        .export_model(authed(req(), &member))
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st)),
        (Code::PermissionDenied, "PERMISSION_DENIED"),
        "members lack models:export"
    );
    let st = models
        .export_model(authed(req(), &admin))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    let challenge = st
        .metadata()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        challenge.contains("error=\"insufficient_user_authentication\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("acr_values=\"mfa\"") && challenge.contains("max_age=300"),
        "{challenge}"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row_29_key_rotation_rehearsal_through_the_gateway() {
    let stack = TestStack::start().await.unwrap();
    let (old_token, _) = setup(&stack).await;
    list(&stack, &old_token).await.unwrap();
    let mut admin = stack.admin().await.unwrap();
    let kid = |t: &str| keel_token::peek_kid(t).unwrap();
    let old_kid = kid(&old_token);

    // A pending key is published but does not sign yet.
    let pending = admin
        .rotate_signing_key(keel_proto::auth::RotateSigningKeyRequest {
            tenant_id: "acme".into(),
            activate_after_seconds: 3600,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pending.state, "pending");
    let mut keys = keel_proto::auth::key_directory_client::KeyDirectoryClient::new(
        connect(&stack.auth_url()).await.unwrap(),
    );
    let published = keys
        .list_verification_keys(keel_proto::auth::ListVerificationKeysRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert!(
        published
            .iter()
            .any(|k| k.kid == pending.kid && k.state == "pending")
    );
    assert!(
        published
            .iter()
            .any(|k| k.kid == old_kid && k.state == "active")
    );

    // Rotate now: new tokens carry a kid the gateway has never seen (it fetches it), old tokens
    // keep working while their key is retained.
    let now_key = admin
        .rotate_signing_key(keel_proto::auth::RotateSigningKeyRequest {
            tenant_id: "acme".into(),
            activate_after_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now_key.state, "active");
    let (new_token, _) = eventually(WAIT, "tokens signed by the new key", || async {
        let t = stack.login("acme", "alice").await?;
        Ok((kid(&t.0) == now_key.kid).then_some(t))
    })
    .await
    .unwrap();
    list(&stack, &new_token)
        .await
        .expect("unknown kid fetched from auth");
    list(&stack, &old_token)
        .await
        .expect("retained key still verifies");

    // Revoking the old key refuses its tokens promptly.
    admin
        .revoke_signing_key(keel_proto::auth::RevokeSigningKeyRequest { kid: old_kid })
        .await
        .unwrap();
    wait_refused(
        &stack,
        &old_token,
        "tokens of the revoked key to be refused",
    )
    .await;
    list(&stack, &new_token).await.unwrap();
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_tenant_publishes_its_own_jwks_with_public_keys_only() {
    let stack = TestStack::start().await.unwrap();
    let (token, _) = setup(&stack).await;
    let http = stack.auth.as_ref().unwrap().http_addr().unwrap();
    let (code, body) = keel_tests::admin_get(http, "/t/acme/jwks.json")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let jwks: serde_json::Value = serde_json::from_str(&body).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    let kid = keel_token::peek_kid(&token).unwrap();
    let key = keys
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the signing key is published");
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    assert!(
        keys.iter().all(|k| k.get("d").is_none()),
        "no private material"
    );
    // Another tenant's issuer publishes its own keys (its first, made on demand), never acme's.
    stack.create_tenant("globex").await.unwrap();
    let (code, body) = keel_tests::admin_get(http, "/t/globex/jwks.json")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let globex: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(globex["keys"].as_array().unwrap().len(), 1);
    assert!(!body.contains(&kid));
    // Unknown or malformed issuers are 404.
    for path in [
        "/t/nobody/jwks.json",
        "/t/..%2F..%2Fetc/jwks.json",
        "/t/ACME/jwks.json",
    ] {
        let (code, body) = keel_tests::admin_get(http, path).await.unwrap();
        assert_eq!(code, 404, "{path}: {body}");
        assert!(!body.contains(&kid), "{path}");
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn security_events_reach_jetstream_as_audit_events_with_the_tenant_header() {
    use futures::StreamExt;
    use prost::Message;
    let stack = TestStack::start().await.unwrap();
    let (_, rt1) = setup(&stack).await;
    let mut c = auth_client(&stack).await;
    c.login(pb::LoginRequest {
        tenant_id: "acme".into(),
        username: "alice".into(),
        password: "not the password".into(),
        client_id: "t".into(),
    })
    .await
    .unwrap_err();
    let (_, _rt2) = refresh(&stack, &rt1).await.unwrap();
    refresh(&stack, &rt1).await.unwrap_err(); // reuse

    let bus = keel_bus::Bus::connect(keel_bus::BusConfig::from_env(&stack.env).unwrap())
        .await
        .unwrap();
    let stream = bus
        .jetstream()
        .get_stream(&bus.config().stream)
        .await
        .unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: format!("{}.events.acme.audit.>", bus.config().subject_prefix),
            ..Default::default()
        })
        .await
        .unwrap();
    let wanted = ["session.started", "login.failed", "refresh.reuse_detected"];
    let mut kinds: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !wanted.iter().all(|w| kinds.iter().any(|k| k == w))
        && std::time::Instant::now() < deadline
    {
        let mut batch = consumer
            .fetch()
            .max_messages(50)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(m)) = batch.next().await {
            assert_eq!(
                m.headers
                    .as_ref()
                    .and_then(|h| h.get("Keel-Tenant-Id"))
                    .map(|v| v.as_str()),
                Some("acme")
            );
            let ev = keel_proto::events::AuditEvent::decode(m.payload.as_ref()).unwrap();
            assert_eq!(ev.tenant_id, "acme");
            kinds.push(ev.kind);
            m.ack().await.unwrap();
        }
    }
    for k in wanted {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_and_refreshes_do_not_starve_a_small_pool() {
    // Two connections per shard: a transaction that waited for a second connection would
    // deadlock here until the acquire timeout.
    let stack = TestStack::start_with(|e| e.with("KEEL_DB_MAX_CONNECTIONS", "2"))
        .await
        .unwrap();
    stack.create_tenant("acme").await.unwrap();
    stack
        .create_user("acme", "alice", &["member"])
        .await
        .unwrap();
    let chains = (0..8).map(|_| async {
        let (_, mut rt) = stack.login("acme", "alice").await.unwrap();
        for _ in 0..3 {
            rt = refresh(&stack, &rt).await.unwrap().1;
        }
    });
    tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(chains))
        .await
        .expect("no starvation");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn asvs_7_4_changing_the_password_or_disabling_the_user_ends_sessions() {
    let stack = TestStack::start().await.unwrap();
    let (first, _) = setup(&stack).await;
    let (second, _) = stack.login("acme", "alice").await.unwrap();
    let mut c = auth_client(&stack).await;
    let change = |current: &str, new: &str| pb::ChangePasswordRequest {
        current_password: current.into(),
        new_password: new.into(),
    };
    // The current password is re-verified; the new one must meet the policy.
    assert_eq!(
        c.change_password(authed(
            change("wrong password!!", "a brand new passphrase"),
            &first
        ))
        .await
        .unwrap_err()
        .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        c.change_password(authed(change(TEST_PASSWORD, "short"), &first))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let ended = c
        .change_password(authed(
            change(TEST_PASSWORD, "a brand new passphrase"),
            &first,
        ))
        .await
        .unwrap()
        .into_inner()
        .other_sessions_ended;
    assert_eq!(ended, 1);
    wait_refused(&stack, &second, "the other session to end").await;
    list(&stack, &first).await.expect("this session goes on");
    assert_eq!(
        c.login(pb::LoginRequest {
            tenant_id: "acme".into(),
            username: "alice".into(),
            password: TEST_PASSWORD.into(),
            client_id: "t".into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::Unauthenticated,
        "the old password no longer works"
    );
    // An operator disables the user: every session ends and logins are refused.
    let mut admin = stack.admin().await.unwrap();
    admin
        .disable_user(keel_proto::auth::DisableUserRequest {
            tenant_id: "acme".into(),
            username: "alice".into(),
        })
        .await
        .unwrap();
    wait_refused(&stack, &first, "every session to end").await;
    assert!(
        c.login(pb::LoginRequest {
            tenant_id: "acme".into(),
            username: "alice".into(),
            password: "a brand new passphrase".into(),
            client_id: "t".into()
        })
        .await
        .is_err()
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_logins_are_limited_per_source_address_too() {
    let stack = TestStack::start().await.unwrap();
    setup(&stack).await;
    let url = stack.gateway_url();
    let attempt = |user: String, password: &'static str, spoof: bool| {
        let url = url.clone();
        async move {
            let claimed = spoof.then(|| ("keel-client-ip", "203.0.113.7".to_owned()));
            login_with(&url, user, password, claimed).await
        }
    };
    // Guesses spread over many usernames (so no single account locks) from one address, a few
    // at a time (this test is about the limit, not about overload).
    for batch in 0..10 {
        let guesses =
            (0..5).map(|i| attempt(format!("user{batch}-{i}"), "not the password", false));
        for r in futures::future::join_all(guesses).await {
            assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
        }
    }
    // Now this address is refused, even with the right password, and saying it is another
    // address changes nothing (the gateway takes the address from the connection).
    for spoof in [false, true] {
        let st = attempt("alice".into(), TEST_PASSWORD, spoof)
            .await
            .unwrap_err();
        assert_eq!(
            (st.code(), reason(&st)),
            (Code::ResourceExhausted, "RATE_LIMITED"),
            "spoof={spoof}"
        );
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_apis_admit_the_operator_and_tenant_admins_for_their_own_tenant_only() {
    use keel_proto::auth as apb;
    let stack = TestStack::start().await.unwrap();
    stack.create_tenant("acme").await.unwrap();
    stack.create_tenant("globex").await.unwrap();
    stack.create_user("acme", "boss", &["admin"]).await.unwrap();
    stack
        .create_user("acme", "pleb", &["member"])
        .await
        .unwrap();
    let (boss, _) = stack.login("acme", "boss").await.unwrap();
    let (pleb, _) = stack.login("acme", "pleb").await.unwrap();
    let channel = keel_tests::connect(&stack.auth_url()).await.unwrap();
    let user = |tenant: &str, name: &str| apb::CreateUserRequest {
        tenant_id: tenant.into(),
        username: name.into(),
        password: keel_tests::TEST_PASSWORD.into(),
        roles: vec!["member".into()],
    };
    let tenant = |id: &str| apb::CreateTenantRequest {
        tenant_id: id.into(),
        display_name: id.into(),
        tier: "free".into(),
    };

    // No credential, or a wrong one: UNAUTHENTICATED.
    let mut anon = apb::identity_admin_client::IdentityAdminClient::new(channel.clone());
    let st = anon.create_user(user("acme", "x1")).await.unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    let mut dir = apb::tenant_directory_client::TenantDirectoryClient::with_interceptor(
        channel.clone(),
        keel_tests::bearer("not-the-operator-token-but-long-enough-0123456789"),
    );
    let st = dir.create_tenant(tenant("evil")).await.unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);

    // A member of the tenant: PERMISSION_DENIED.
    let mut as_pleb = apb::identity_admin_client::IdentityAdminClient::with_interceptor(
        channel.clone(),
        keel_tests::bearer(&pleb),
    );
    let st = as_pleb.create_user(user("acme", "x2")).await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);

    // The tenant's admin: their own tenant yes, another tenant or the directory no.
    let mut as_boss = apb::identity_admin_client::IdentityAdminClient::with_interceptor(
        channel.clone(),
        keel_tests::bearer(&boss),
    );
    as_boss.create_user(user("acme", "x3")).await.unwrap();
    let st = as_boss.create_user(user("globex", "x4")).await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    let mut boss_dir = apb::tenant_directory_client::TenantDirectoryClient::with_interceptor(
        channel.clone(),
        keel_tests::bearer(&boss),
    );
    let st = boss_dir.create_tenant(tenant("mine")).await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);

    // The operator may do everything.
    stack
        .directory()
        .await
        .unwrap()
        .create_tenant(tenant("initech"))
        .await
        .unwrap();
    stack
        .admin()
        .await
        .unwrap()
        .create_user(user("globex", "x5"))
        .await
        .unwrap();
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_list_and_revoke_their_sessions_and_admins_end_them_all() {
    let stack = TestStack::start().await.unwrap();
    let (first, _) = setup(&stack).await;
    let (second, _) = stack.login("acme", "alice").await.unwrap();
    stack.create_user("acme", "bob", &["member"]).await.unwrap();
    let (bobs, _) = stack.login("acme", "bob").await.unwrap();
    let mut auth = auth_client(&stack).await;
    let sessions = auth
        .list_sessions(authed(pb::ListSessionsRequest {}, &first))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(sessions.iter().filter(|s| s.current).count(), 1);
    let other = sessions.iter().find(|s| !s.current).unwrap();
    assert_eq!(other.acr, "pwd");

    // Someone else's session cannot be named.
    let bob_sessions = auth
        .list_sessions(authed(pb::ListSessionsRequest {}, &bobs))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let st = auth
        .revoke_session(authed(
            pb::RevokeSessionRequest {
                session_id: bob_sessions[0].session_id.clone(),
            },
            &first,
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    list(&stack, &bobs).await.unwrap();

    // Revoking the other session ends its tokens, not this one's.
    auth.revoke_session(authed(
        pb::RevokeSessionRequest {
            session_id: other.session_id.clone(),
        },
        &first,
    ))
    .await
    .unwrap();
    wait_refused(&stack, &second, "the revoked session's token").await;
    list(&stack, &first).await.unwrap();

    // ASVS 7.4.5: an admin ends every session of a user.
    let ended = stack
        .admin()
        .await
        .unwrap()
        .end_user_sessions(keel_proto::auth::EndUserSessionsRequest {
            tenant_id: "acme".into(),
            username: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .sessions_ended;
    assert_eq!(ended, 1);
    wait_refused(&stack, &first, "every session of the user").await;
    list(&stack, &bobs).await.unwrap();
    stack.shutdown().await;
}

/// An auth replica on a manual clock over the stack's databases, with the given refresh
/// lifetimes; returns it and its Authentication client.
async fn replica_on(
    stack: &TestStack,
    clock: std::sync::Arc<keel_token::ManualClock>,
    idle: &str,
    absolute: &str,
) -> (
    keel_runtime::Host,
    keel_proto::auth::authentication_client::AuthenticationClient<tonic::transport::Channel>,
) {
    let env = stack
        .env
        .clone()
        .with("KEEL_AUTH_GRPC_ADDR", "127.0.0.1:0")
        .with("KEEL_AUTH_ADMIN_ADDR", "127.0.0.1:0")
        .with("KEEL_AUTH_HTTP_ADDR", "127.0.0.1:0")
        .with("KEEL_AUTH_REFRESH_IDLE_TTL", idle)
        .with("KEEL_AUTH_REFRESH_ABSOLUTE_TTL", absolute);
    let host = keel_auth::start_with_clock(keel_auth::Config::from_env(&env).unwrap(), clock)
        .await
        .unwrap();
    let client = keel_proto::auth::authentication_client::AuthenticationClient::new(
        connect(&format!("http://{}", host.grpc_addr()))
            .await
            .unwrap(),
    );
    (host, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r7_r41_r42_refresh_families_die_when_idle_and_at_their_absolute_lifetime() {
    use keel_token::Clock;
    let stack = TestStack::start().await.unwrap();
    stack.create_tenant("acme").await.unwrap();
    stack
        .create_user("acme", "alice", &["member"])
        .await
        .unwrap();
    let clock = std::sync::Arc::new(keel_token::ManualClock::at(keel_token::SystemClock.now()));
    let (replica, mut auth) = replica_on(&stack, clock.clone(), "1h", "3h").await;
    let login = || pb::LoginRequest {
        tenant_id: "acme".into(),
        username: "alice".into(),
        password: TEST_PASSWORD.into(),
        client_id: "keel-tests".into(),
    };
    let refresh = |rt: String| pb::RefreshRequest {
        refresh_token: rt,
        client_id: "keel-tests".into(),
    };

    // Idle: each use extends the family by the idle lifetime; a longer pause ends it.
    let mut rt = auth
        .login(login())
        .await
        .unwrap()
        .into_inner()
        .refresh_token;
    for _ in 0..2 {
        clock.advance(59 * 60);
        rt = auth
            .refresh(refresh(rt))
            .await
            .unwrap()
            .into_inner()
            .refresh_token;
    }
    clock.advance(61 * 60);
    let st = auth.refresh(refresh(rt)).await.unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated, "idle for longer than 1h");

    // Absolute: used every 50 minutes, the family still ends 3h after login.
    let mut rt = auth
        .login(login())
        .await
        .unwrap()
        .into_inner()
        .refresh_token;
    for _ in 0..3 {
        clock.advance(50 * 60);
        rt = auth
            .refresh(refresh(rt))
            .await
            .unwrap()
            .into_inner()
            .refresh_token;
    }
    clock.advance(31 * 60);
    let st = auth.refresh(refresh(rt)).await.unwrap_err();
    assert_eq!(
        st.code(),
        Code::Unauthenticated,
        "3h after login, however active"
    );
    replica.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admins_change_a_users_roles_and_the_scopes_follow_at_refresh() {
    let stack = TestStack::start().await.unwrap();
    let (_, rt) = setup(&stack).await;
    let mut admin = stack.admin().await.unwrap();
    let set = |roles: &[&str]| keel_proto::auth::SetUserRolesRequest {
        tenant_id: "acme".into(),
        username: "alice".into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
    };
    let st = admin.set_user_roles(set(&["root"])).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    let u = admin
        .set_user_roles(set(&["admin"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.roles, vec!["admin"]);
    let (at, _) = refresh(&stack, &rt).await.unwrap();
    let payload = at.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert!(
        claims["scope"].as_str().unwrap().contains("models:export"),
        "{claims}"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_login_budget() {
    // The test's connections come from 127.0.0.1: that is the "ingress" here.
    let stack = TestStack::start_with(|e| {
        e.with("KEEL_GATEWAY_TRUSTED_PROXIES", "127.0.0.1/32, ::1")
            .with("KEEL_GATEWAY_ANONYMOUS_BURST", "4")
            .with("KEEL_GATEWAY_ANONYMOUS_RATE", "0.1")
    })
    .await
    .unwrap();
    setup(&stack).await;
    let url = stack.gateway_url();
    let login = |forwarded_for: &'static str| {
        let url = url.clone();
        async move {
            // What the ingress appends; a client's own forged entry sits to its left.
            let chain = format!("198.51.100.99, {forwarded_for}");
            login_with(
                &url,
                "alice".into(),
                TEST_PASSWORD,
                Some(("x-forwarded-for", chain)),
            )
            .await
        }
    };
    // One client spends its budget (the stack's own setup logged in directly, not through a
    // forwarded address)...
    let mut refused = None;
    for _ in 0..8 {
        if let Err(st) = login("203.0.113.1").await {
            refused = Some(st);
            break;
        }
    }
    let st = refused.expect("the first client is limited");
    assert_eq!(
        (st.code(), reason(&st)),
        (Code::ResourceExhausted, "RATE_LIMITED")
    );
    // ...while another client behind the same proxy still logs in, and the forged entry the
    // first one could put in front changes nothing for it.
    login("203.0.113.2").await.unwrap();
    assert_eq!(
        login("203.0.113.1").await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    stack.shutdown().await;
}
