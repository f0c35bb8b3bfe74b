//! TOTP MFA, step-up and session endings through the gateway (auth.md,
//! ASVS 6.5.1, 7.2.4, 7.4.3).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keel_auth::totp;
use keel_proto::public as pb;
use keel_tests::{TEST_PASSWORD, TestStack, authed, connect, eventually};
use tonic::Code;
use tonic::transport::Channel;

type Auth = pb::authentication_service_client::AuthenticationServiceClient<Channel>;

async fn login(auth: &mut Auth, user: &str) -> pb::LoginResponse {
    auth.login(pb::LoginRequest {
        tenant_id: "acme".into(),
        username: user.into(),
        password: TEST_PASSWORD.into(),
        client_id: "t".into(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn verify(
    auth: &mut Auth,
    mfa_token: &str,
    code: &str,
) -> Result<pb::LoginResponse, tonic::Status> {
    auth.verify_mfa(pb::VerifyMfaRequest {
        mfa_token: mfa_token.into(),
        code: code.into(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn works(stack: &TestStack, token: &str) -> bool {
    let mut docs = stack.documents().await.unwrap();
    docs.list_documents(authed(pb::ListDocumentsRequest::default(), token))
        .await
        .is_ok()
}

async fn wait_dead(stack: &TestStack, token: &str) {
    eventually(Duration::from_secs(10), "the session to end", || async {
        Ok((!works(stack, token).await).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn totp_enrolment_each_code_once_recovery_codes_step_up_and_session_endings() {
    let stack = TestStack::start().await.unwrap();
    stack.create_tenant("acme").await.unwrap();
    stack.create_user("acme", "root", &["admin"]).await.unwrap();
    let mut auth = Auth::new(connect(&stack.gateway_url()).await.unwrap());

    // Two password sessions; enrolment happens in the first.
    let first = login(&mut auth, "root").await;
    let other = login(&mut auth, "root").await;
    assert!(!first.mfa_required && works(&stack, &other.access_token).await);
    let enrolled = auth
        .enroll_mfa(authed(pb::EnrollMfaRequest {}, &first.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(
        enrolled
            .otpauth_uri
            .starts_with("otpauth://totp/keel%20acme:root?secret="),
        "{}",
        enrolled.otpauth_uri
    );
    let secret = totp::base32_decode(&enrolled.secret).unwrap();
    assert_eq!(secret.len(), totp::SECRET_BYTES);

    // Confirm with the previous step's code (so the current one is still fresh afterwards).
    let step = keel_tests::totp_safe_window().await;
    let code = |s: i64| totp::code(totp::Alg::Sha1, &secret, s, totp::DIGITS);
    let wrong = ["000000", "111111", "222222"]
        .into_iter()
        .find(|w| *w != code(step) && *w != code(step - 1))
        .unwrap();
    let st = auth
        .confirm_mfa(authed(
            pb::ConfirmMfaRequest { code: wrong.into() },
            &first.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        st.code(),
        Code::Unauthenticated,
        "a wrong code does not confirm"
    );
    let recovery = auth
        .confirm_mfa(authed(
            pb::ConfirmMfaRequest {
                code: code(step - 1),
            },
            &first.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    assert_eq!(recovery.len(), 10);
    // ASVS 7.4.3: enabling MFA ended the other session, not this one.
    wait_dead(&stack, &other.access_token).await;
    assert!(works(&stack, &first.access_token).await);

    // The password alone no longer yields tokens.
    let a = login(&mut auth, "root").await;
    let b = login(&mut auth, "root").await;
    assert!(a.mfa_required && a.access_token.is_empty() && !a.mfa_token.is_empty());
    // the same fresh code, presented in two logins at once: exactly one succeeds.
    let (ra, rb) = tokio::join!(
        async {
            Auth::new(connect(&stack.gateway_url()).await.unwrap())
                .verify_mfa(pb::VerifyMfaRequest {
                    mfa_token: a.mfa_token.clone(),
                    code: code(step),
                })
                .await
        },
        async {
            Auth::new(connect(&stack.gateway_url()).await.unwrap())
                .verify_mfa(pb::VerifyMfaRequest {
                    mfa_token: b.mfa_token.clone(),
                    code: code(step),
                })
                .await
        },
    );
    assert_eq!(
        ra.is_ok() as u8 + rb.is_ok() as u8,
        1,
        "one code, one acceptance"
    );
    let mfa_session = ra.or(rb).unwrap().into_inner();
    // Replays and older steps are refused in a new login too; step+1 and step-2 never match.
    let c = login(&mut auth, "root").await;
    for bad in [code(step), code(step - 1), code(step - 2), code(step + 1)] {
        assert_eq!(
            verify(&mut auth, &c.mfa_token, &bad)
                .await
                .unwrap_err()
                .code(),
            Code::Unauthenticated,
            "{bad}"
        );
    }
    // A recovery code works once (ASVS 6.5.1), and completes the parked login.
    let via_recovery = verify(&mut auth, &c.mfa_token, &recovery[0]).await.unwrap();
    assert!(!via_recovery.access_token.is_empty());
    let d = login(&mut auth, "root").await;
    assert!(verify(&mut auth, &d.mfa_token, &recovery[0]).await.is_err());
    // An MFA token completes one login only.
    assert!(verify(&mut auth, &c.mfa_token, &recovery[1]).await.is_err());

    // with acr=mfa and a fresh auth_time, model export passes the gate and streams the
    // artefact, whose digest comes with the last chunk; the export is audited.
    let mut models = pb::model_service_client::ModelServiceClient::new(
        connect(&stack.gateway_url()).await.unwrap(),
    );
    let export = || pb::ExportModelRequest {
        name: "keel-tiny".into(),
        version: "keel-tiny@1".into(),
    };
    let mut stream = models
        .export_model(authed(export(), &mfa_session.access_token))
        .await
        .unwrap()
        .into_inner();
    let (mut artefact, mut digest) = (Vec::new(), String::new());
    while let Some(chunk) = stream.message().await.unwrap() {
        assert_eq!(chunk.offset, artefact.len() as u64);
        artefact.extend_from_slice(&chunk.data);
        digest = chunk.sha256;
    }
    {
        use sha2::Digest;
        assert_eq!(digest, hex_lower(&sha2::Sha256::digest(&artefact)));
    }
    let manifest: serde_json::Value = serde_json::from_slice(&artefact).unwrap();
    assert_eq!(manifest["version"], "keel-tiny@1");
    assert!(manifest["vocabulary"].as_array().unwrap().len() > 10);
    let shard = stack.shard(stack.shard_of("acme")).await.unwrap();
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inference.outbox WHERE tenant_id = 'acme' AND kind = 'audit.model.exported'",
    )
    .fetch_one(&shard)
    .await
    .unwrap();
    assert_eq!(audited, 1, "the export is audited");

    // Step-up: a new session with a new ID; the old one ends (ASVS 7.2.4).
    let stepped = auth
        .step_up(authed(
            pb::StepUpRequest {
                code: recovery[2].clone(),
            },
            &via_recovery.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(stepped.refresh_token, via_recovery.refresh_token);
    wait_dead(&stack, &via_recovery.access_token).await;
    assert!(works(&stack, &stepped.access_token).await);

    // Disabling MFA needs a factor, and ends every other session.
    assert!(
        auth.disable_mfa(authed(
            pb::DisableMfaRequest { code: "123".into() },
            &stepped.access_token
        ))
        .await
        .is_err()
    );
    auth.disable_mfa(authed(
        pb::DisableMfaRequest {
            code: recovery[3].clone(),
        },
        &stepped.access_token,
    ))
    .await
    .unwrap();
    wait_dead(&stack, &mfa_session.access_token).await;
    assert!(works(&stack, &stepped.access_token).await);
    assert!(
        !login(&mut auth, "root").await.mfa_required,
        "MFA is off again"
    );

    // Sign out everywhere ends this session too.
    let ended = auth
        .sign_out_everywhere(authed(
            pb::SignOutEverywhereRequest {},
            &stepped.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .sessions_ended;
    assert!(ended >= 2, "{ended}");
    wait_dead(&stack, &stepped.access_token).await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r31_wrong_codes_are_limited_per_user() {
    let stack = TestStack::start().await.unwrap();
    stack.create_tenant("acme").await.unwrap();
    stack.create_user("acme", "bob", &["member"]).await.unwrap();
    let mut auth = Auth::new(connect(&stack.gateway_url()).await.unwrap());
    let s = login(&mut auth, "bob").await;
    let secret = totp::base32_decode(
        &auth
            .enroll_mfa(authed(pb::EnrollMfaRequest {}, &s.access_token))
            .await
            .unwrap()
            .into_inner()
            .secret,
    )
    .unwrap();
    let step = keel_tests::totp_safe_window().await;
    auth.confirm_mfa(authed(
        pb::ConfirmMfaRequest {
            code: totp::code(totp::Alg::Sha1, &secret, step - 1, 6),
        },
        &s.access_token,
    ))
    .await
    .unwrap();
    let parked = login(&mut auth, "bob").await;
    let right = totp::code(totp::Alg::Sha1, &secret, step, 6);
    let previous = totp::code(totp::Alg::Sha1, &secret, step - 1, 6);
    let wrong = ["000000", "111111", "222222"]
        .into_iter()
        .find(|w| *w != right && *w != previous)
        .unwrap();
    for _ in 0..10 {
        assert!(verify(&mut auth, &parked.mfa_token, wrong).await.is_err());
    }
    // The limit is reached: even the right code is refused now.
    assert!(verify(&mut auth, &parked.mfa_token, &right).await.is_err());
    stack.shutdown().await;
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
