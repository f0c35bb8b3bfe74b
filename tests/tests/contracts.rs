//! The public contract, RPC by RPC, through the gateway: for every method of `keel.v1` one
//! call that succeeds (the response's shape, and the rate-limit metadata every authenticated
//! answer carries) and one that fails (its gRPC code and machine-readable reason). A last
//! check compares the methods exercised with the methods the compiled contract declares, so
//! adding an RPC without a contract case here fails the tests. And since this run walks every
//! credential flow, the log lines it produced are searched for the credentials it used: no
//! token, password, TOTP secret or recovery code may reach a log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use keel_auth::totp;
use keel_proto::public as pb;
use keel_tests::{TEST_PASSWORD, TestStack, authed, connect, reason};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

type Auth = pb::authentication_service_client::AuthenticationServiceClient<Channel>;

/// What the run has exercised: paths with a success case, and with a failure case.
#[derive(Default)]
struct Coverage {
    ok: BTreeSet<String>,
    err: BTreeSet<String>,
}

impl Coverage {
    /// A success of an authenticated method: it carries the caller's rate-limit state.
    fn ok<T>(&mut self, path: &str, r: &tonic::Response<T>) {
        self.ok_anonymous(path);
        let md = r.metadata();
        for key in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(md.get(key).is_some(), "{path}: no {key} in {md:?}");
        }
    }

    fn ok_anonymous(&mut self, path: &str) {
        self.ok.insert(format!("/keel.v1.{path}"));
    }

    fn err<T: std::fmt::Debug>(
        &mut self,
        path: &str,
        r: Result<T, tonic::Status>,
        code: Code,
        why: &str,
    ) -> tonic::Status {
        let st = r.expect_err(path);
        assert_eq!(st.code(), code, "{path}: {st:?}");
        assert_eq!(reason(&st), why, "{path}: {st:?}");
        self.err.insert(format!("/keel.v1.{path}"));
        st
    }
}

/// Every method of package `keel.v1`, as `/keel.v1.Service/Method`, from the compiled contract.
fn declared() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(keel_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = BTreeSet::new();
    for f in set.file.iter().filter(|f| f.package() == "keel.v1") {
        for s in &f.service {
            for m in &s.method {
                out.insert(format!("/keel.v1.{}/{}", s.name(), m.name()));
            }
        }
    }
    out
}

fn login_request(user: &str) -> pb::LoginRequest {
    pb::LoginRequest {
        tenant_id: "acme".into(),
        username: user.into(),
        password: TEST_PASSWORD.into(),
        client_id: "contracts".into(),
    }
}

async fn login(auth: &mut Auth, user: &str) -> pb::LoginResponse {
    auth.login(login_request(user)).await.unwrap().into_inner()
}

fn a_wrong_code(right: &[String]) -> String {
    ["000000", "111111", "222222", "333333"]
        .into_iter()
        .find(|w| !right.iter().any(|r| r == w))
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_public_rpc_keeps_its_contract() {
    let stack = TestStack::start().await.unwrap();
    stack.create_tenant("acme").await.unwrap();
    for (user, roles) in [
        ("admin", &["admin"][..]),
        ("member", &["member"][..]),
        ("mfa", &["admin"][..]),
        ("leaver", &["member"][..]),
        ("changer", &["member"][..]),
    ] {
        stack.create_user("acme", user, roles).await.unwrap();
    }
    let ch = connect(&stack.gateway_url()).await.unwrap();
    let mut auth = Auth::new(ch.clone());
    let mut c = Coverage::default();

    // --- AuthenticationService: password flows.
    let r = auth.login(login_request("member")).await.unwrap();
    c.ok_anonymous("AuthenticationService/Login");
    let member = r.into_inner();
    assert!(!member.mfa_required && member.mfa_token.is_empty());
    assert!(!member.access_token.is_empty() && !member.refresh_token.is_empty());
    assert_eq!(member.token_type, "Bearer");
    assert!(member.expires_in_seconds > 0);
    let mut wrong = login_request("member");
    wrong.password = "not the password at all".into();
    c.err(
        "AuthenticationService/Login",
        auth.login(wrong).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );

    let refreshed = auth
        .refresh(pb::RefreshRequest {
            refresh_token: member.refresh_token.clone(),
            client_id: "contracts".into(),
        })
        .await
        .unwrap()
        .into_inner();
    c.ok_anonymous("AuthenticationService/Refresh");
    assert_ne!(refreshed.refresh_token, member.refresh_token, "rotated");
    assert!(!refreshed.access_token.is_empty());
    c.err(
        "AuthenticationService/Refresh",
        auth.refresh(pb::RefreshRequest {
            refresh_token: "not-a-refresh-token".into(),
            client_id: "contracts".into(),
        })
        .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    let member_token = refreshed.access_token.clone();

    let ephemeral = login(&mut auth, "member").await;
    auth.logout(pb::LogoutRequest {
        refresh_token: ephemeral.refresh_token,
    })
    .await
    .unwrap();
    c.ok_anonymous("AuthenticationService/Logout");
    // An unknown or empty token is not an error (RFC 7009: nothing to revoke is success);
    // a request beyond the method's size cap is.
    auth.logout(pb::LogoutRequest {
        refresh_token: String::new(),
    })
    .await
    .unwrap();
    c.err(
        "AuthenticationService/Logout",
        auth.logout(pb::LogoutRequest {
            refresh_token: "x".repeat(256 * 1024),
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );

    // --- Sessions.
    let r = auth
        .list_sessions(authed(pb::ListSessionsRequest {}, &member_token))
        .await
        .unwrap();
    c.ok("AuthenticationService/ListSessions", &r);
    let sessions = r.into_inner().sessions;
    assert!(
        sessions.iter().filter(|s| s.current).count() == 1,
        "{sessions:?}"
    );
    assert!(
        sessions
            .iter()
            .all(|s| !s.session_id.is_empty() && s.auth_time.is_some())
    );
    c.err(
        "AuthenticationService/ListSessions",
        auth.list_sessions(authed(pb::ListSessionsRequest {}, "not.a.token"))
            .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    let other = login(&mut auth, "member").await;
    let others = auth
        .list_sessions(authed(pb::ListSessionsRequest {}, &other.access_token))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let other_sid = others
        .iter()
        .find(|s| s.current)
        .unwrap()
        .session_id
        .clone();
    let r = auth
        .revoke_session(authed(
            pb::RevokeSessionRequest {
                session_id: other_sid,
            },
            &member_token,
        ))
        .await
        .unwrap();
    c.ok("AuthenticationService/RevokeSession", &r);
    c.err(
        "AuthenticationService/RevokeSession",
        auth.revoke_session(authed(
            pb::RevokeSessionRequest {
                session_id: "no-such-session".into(),
            },
            &member_token,
        ))
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );

    let leaver_a = login(&mut auth, "leaver").await;
    let _leaver_b = login(&mut auth, "leaver").await;
    let r = auth
        .sign_out_everywhere(authed(
            pb::SignOutEverywhereRequest {},
            &leaver_a.access_token,
        ))
        .await
        .unwrap();
    c.ok("AuthenticationService/SignOutEverywhere", &r);
    assert!(r.into_inner().sessions_ended >= 2);
    c.err(
        "AuthenticationService/SignOutEverywhere",
        auth.sign_out_everywhere(authed(pb::SignOutEverywhereRequest {}, ""))
            .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );

    let changer = login(&mut auth, "changer").await;
    let _changer_other = login(&mut auth, "changer").await;
    c.err(
        "AuthenticationService/ChangePassword",
        auth.change_password(authed(
            pb::ChangePasswordRequest {
                current_password: "not the current password".into(),
                new_password: "a brand new long passphrase".into(),
            },
            &changer.access_token,
        ))
        .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    let r = auth
        .change_password(authed(
            pb::ChangePasswordRequest {
                current_password: TEST_PASSWORD.into(),
                new_password: "a brand new long passphrase".into(),
            },
            &changer.access_token,
        ))
        .await
        .unwrap();
    c.ok("AuthenticationService/ChangePassword", &r);
    assert!(r.into_inner().other_sessions_ended >= 1);

    // --- MFA: enrol, confirm, verify a login, step up, export (step-up only), disable.
    let mfa = login(&mut auth, "mfa").await;
    let r = auth
        .enroll_mfa(authed(pb::EnrollMfaRequest {}, &mfa.access_token))
        .await
        .unwrap();
    c.ok("AuthenticationService/EnrollMfa", &r);
    let enrolled = r.into_inner();
    assert!(enrolled.otpauth_uri.starts_with("otpauth://totp/"));
    let secret = totp::base32_decode(&enrolled.secret).unwrap();
    c.err(
        "AuthenticationService/EnrollMfa",
        auth.enroll_mfa(authed(pb::EnrollMfaRequest {}, "")).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    let step = keel_tests::totp_safe_window().await;
    let code = |s: i64| totp::code(totp::Alg::Sha1, &secret, s, totp::DIGITS);
    let fresh = [code(step - 1), code(step), code(step + 1)];
    c.err(
        "AuthenticationService/ConfirmMfa",
        auth.confirm_mfa(authed(
            pb::ConfirmMfaRequest {
                code: a_wrong_code(&fresh),
            },
            &mfa.access_token,
        ))
        .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    let r = auth
        .confirm_mfa(authed(
            pb::ConfirmMfaRequest {
                code: code(step - 1),
            },
            &mfa.access_token,
        ))
        .await
        .unwrap();
    c.ok("AuthenticationService/ConfirmMfa", &r);
    let recovery = r.into_inner().recovery_codes;
    assert_eq!(recovery.len(), 10);

    let pending = login(&mut auth, "mfa").await;
    assert!(pending.mfa_required && pending.access_token.is_empty());
    c.err(
        "AuthenticationService/VerifyMfa",
        auth.verify_mfa(pb::VerifyMfaRequest {
            mfa_token: pending.mfa_token.clone(),
            code: a_wrong_code(&fresh),
        })
        .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    let verified = auth
        .verify_mfa(pb::VerifyMfaRequest {
            mfa_token: pending.mfa_token.clone(),
            code: code(step),
        })
        .await
        .unwrap()
        .into_inner();
    c.ok_anonymous("AuthenticationService/VerifyMfa");
    assert!(!verified.access_token.is_empty() && !verified.mfa_required);

    let mut models = pb::model_service_client::ModelServiceClient::new(ch.clone());
    let export = || pb::ExportModelRequest {
        name: "keel-tiny".into(),
        version: String::new(),
    };
    // Without a recent step-up: the RFC 9470 challenge.
    let password_only = {
        // A session whose authentication is the password alone: a recovery-code login is
        // still MFA, so use the admin (no MFA) for the challenge.
        login(&mut auth, "admin").await
    };
    let st = c.err(
        "ModelService/ExportModel",
        models
            .export_model(authed(export(), &password_only.access_token))
            .await
            .map(|_| ()),
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    let challenge = st
        .metadata()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        challenge.contains("insufficient_user_authentication"),
        "{challenge:?}"
    );
    c.err(
        "AuthenticationService/StepUp",
        auth.step_up(authed(
            pb::StepUpRequest {
                code: a_wrong_code(&fresh),
            },
            &verified.access_token,
        ))
        .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    let r = auth
        .step_up(authed(
            pb::StepUpRequest {
                code: recovery[0].clone(),
            },
            &verified.access_token,
        ))
        .await
        .unwrap();
    c.ok("AuthenticationService/StepUp", &r);
    let stepped = r.into_inner();
    assert!(!stepped.access_token.is_empty());
    let r = models
        .export_model(authed(export(), &stepped.access_token))
        .await
        .unwrap();
    c.ok("ModelService/ExportModel", &r);
    let mut stream = r.into_inner();
    let (mut bytes, mut sha) = (0u64, String::new());
    while let Some(chunk) = stream.message().await.unwrap() {
        assert_eq!(chunk.offset, bytes, "chunks in order");
        bytes += chunk.data.len() as u64;
        if !chunk.sha256.is_empty() {
            sha = chunk.sha256;
        }
    }
    assert!(bytes > 0 && sha.len() == 64, "{bytes} bytes, sha {sha:?}");

    c.err(
        "AuthenticationService/DisableMfa",
        auth.disable_mfa(authed(
            pb::DisableMfaRequest { code: "123".into() },
            &stepped.access_token,
        ))
        .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    let r = auth
        .disable_mfa(authed(
            pb::DisableMfaRequest {
                code: recovery[1].clone(),
            },
            &stepped.access_token,
        ))
        .await
        .unwrap();
    c.ok("AuthenticationService/DisableMfa", &r);

    // --- DocumentService.
    let token = member_token.as_str();
    let mut docs = pb::document_service_client::DocumentServiceClient::new(ch.clone());
    let r = docs
        .create_document(authed(
            pb::CreateDocumentRequest {
                title: "Contract".into(),
                content: "what the document says".into(),
                idempotency_key: String::new(),
            },
            token,
        ))
        .await
        .unwrap();
    c.ok("DocumentService/CreateDocument", &r);
    let doc = r.into_inner();
    assert!(uuid::Uuid::parse_str(&doc.id).is_ok());
    assert_eq!(doc.version, 1);
    assert_eq!(doc.content_bytes, "what the document says".len() as i64);
    assert!(doc.create_time.is_some() && doc.update_time.is_some());
    let st = c.err(
        "DocumentService/CreateDocument",
        docs.create_document(authed(
            pb::CreateDocumentRequest {
                title: String::new(),
                content: "x".into(),
                idempotency_key: String::new(),
            },
            token,
        ))
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(keel_tests::detail(&st, "field").as_deref(), Some("title"));

    let r = docs
        .get_document(authed(pb::GetDocumentRequest { id: doc.id.clone() }, token))
        .await
        .unwrap();
    c.ok("DocumentService/GetDocument", &r);
    assert_eq!(r.into_inner(), doc);
    c.err(
        "DocumentService/GetDocument",
        docs.get_document(authed(
            pb::GetDocumentRequest {
                id: uuid::Uuid::now_v7().to_string(),
            },
            token,
        ))
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );

    let r = docs
        .list_documents(authed(
            pb::ListDocumentsRequest {
                page_size: 10,
                page_token: String::new(),
                omit_content: true,
            },
            token,
        ))
        .await
        .unwrap();
    c.ok("DocumentService/ListDocuments", &r);
    let listed = r.into_inner();
    assert!(
        listed
            .documents
            .iter()
            .any(|d| d.id == doc.id && d.content.is_empty() && d.content_bytes > 0)
    );
    c.err(
        "DocumentService/ListDocuments",
        docs.list_documents(authed(
            pb::ListDocumentsRequest {
                page_size: 10,
                page_token: "garbage".into(),
                omit_content: false,
            },
            token,
        ))
        .await,
        Code::InvalidArgument,
        "PAGE_TOKEN_INVALID",
    );

    let r = docs
        .update_document(authed(
            pb::UpdateDocumentRequest {
                id: doc.id.clone(),
                title: "Contract v2".into(),
                content: "changed".into(),
                expected_version: 1,
            },
            token,
        ))
        .await
        .unwrap();
    c.ok("DocumentService/UpdateDocument", &r);
    assert_eq!(r.into_inner().version, 2);
    c.err(
        "DocumentService/UpdateDocument",
        docs.update_document(authed(
            pb::UpdateDocumentRequest {
                id: doc.id.clone(),
                title: "stale".into(),
                content: "stale".into(),
                expected_version: 1,
            },
            token,
        ))
        .await,
        Code::Aborted,
        "VERSION_CONFLICT",
    );

    c.err(
        "DocumentService/DeleteDocument",
        docs.delete_document(authed(
            pb::DeleteDocumentRequest {
                id: "not-a-uuid".into(),
                expected_version: 0,
            },
            token,
        ))
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let r = docs
        .delete_document(authed(
            pb::DeleteDocumentRequest {
                id: doc.id.clone(),
                expected_version: 2,
            },
            token,
        ))
        .await
        .unwrap();
    c.ok("DocumentService/DeleteDocument", &r);

    // --- InferenceService.
    let mut inference = pb::inference_service_client::InferenceServiceClient::new(ch.clone());
    let ask = |model: &str| pb::GenerateRequest {
        model: model.into(),
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: "what is a contract test".into(),
        }],
        max_output_tokens: 8,
        temperature: 0.0,
        seed: Some(1),
        user: String::new(),
        retrieve_top_k: 0,
    };
    let r = inference
        .generate(authed(ask("keel-tiny"), token))
        .await
        .unwrap();
    c.ok("InferenceService/Generate", &r);
    let mut stream = r.into_inner();
    let mut chunks = Vec::new();
    while let Some(ch) = stream.message().await.unwrap() {
        chunks.push(ch);
    }
    let last = chunks.last().unwrap();
    assert!(!last.finish_reason.is_empty() && last.usage.is_some());
    assert!(
        chunks
            .iter()
            .all(|c| c.model_version.starts_with("keel-tiny@"))
    );
    c.err(
        "InferenceService/Generate",
        inference
            .generate(authed(ask("no-such-model"), token))
            .await
            .map(|_| ()),
        Code::NotFound,
        "NOT_FOUND",
    );

    let r = inference
        .complete(authed(ask("keel-tiny"), token))
        .await
        .unwrap();
    c.ok("InferenceService/Complete", &r);
    let done = r.into_inner();
    assert!(!done.text.is_empty() && done.model_version.starts_with("keel-tiny@"));
    assert!(
        done.usage
            .is_some_and(|u| u.input_tokens > 0 && u.output_tokens > 0)
    );
    let mut empty = ask("keel-tiny");
    empty.messages.clear();
    c.err(
        "InferenceService/Complete",
        inference.complete(authed(empty, token)).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );

    let r = inference
        .embed(authed(
            pb::EmbedRequest {
                model: "keel-embed".into(),
                inputs: vec!["one".into(), "two".into()],
            },
            token,
        ))
        .await
        .unwrap();
    c.ok("InferenceService/Embed", &r);
    let emb = r.into_inner();
    assert_eq!(emb.embeddings.len(), 2);
    assert!(emb.embeddings.iter().all(|e| !e.values.is_empty()));
    c.err(
        "InferenceService/Embed",
        inference
            .embed(authed(
                pb::EmbedRequest {
                    model: "keel-embed".into(),
                    inputs: vec![],
                },
                token,
            ))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );

    // --- ModelService/ListModels.
    let r = models
        .list_models(authed(pb::ListModelsRequest::default(), token))
        .await
        .unwrap();
    c.ok("ModelService/ListModels", &r);
    let listed = r.into_inner().models;
    assert!(
        listed
            .iter()
            .any(|m| m.name == "keel-tiny" && m.kind == "chat")
    );
    c.err(
        "ModelService/ListModels",
        models
            .list_models(authed(
                pb::ListModelsRequest {
                    page_size: 10,
                    page_token: "garbage".into(),
                },
                token,
            ))
            .await,
        Code::InvalidArgument,
        "PAGE_TOKEN_INVALID",
    );

    // --- UsageService, AuditService, ModerationService (tenant admins).
    let admin = login(&mut auth, "admin").await.access_token;
    let mut usage = pb::usage_service_client::UsageServiceClient::new(ch.clone());
    let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    let r = usage
        .get_usage(authed(
            pb::GetUsageRequest {
                start_time: at(keel_tests::unix_now() - 7 * 86_400),
                end_time: at(keel_tests::unix_now() + 86_400),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap();
    c.ok("UsageService/GetUsage", &r);
    assert_eq!(r.into_inner().tier, "pro");
    c.err(
        "UsageService/GetUsage",
        usage
            .get_usage(authed(
                pb::GetUsageRequest {
                    start_time: at(keel_tests::unix_now()),
                    end_time: at(keel_tests::unix_now() - 86_400),
                    ..Default::default()
                },
                &admin,
            ))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );

    let mut audit = pb::audit_service_client::AuditServiceClient::new(ch.clone());
    let r = audit
        .list_audit_events(authed(pb::ListAuditEventsRequest::default(), &admin))
        .await
        .unwrap();
    c.ok("AuditService/ListAuditEvents", &r);
    c.err(
        "AuditService/ListAuditEvents",
        audit
            .list_audit_events(authed(pb::ListAuditEventsRequest::default(), token))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );

    let mut moderation = pb::moderation_service_client::ModerationServiceClient::new(ch.clone());
    let r = moderation
        .list_moderation_results(authed(pb::ListModerationResultsRequest::default(), &admin))
        .await
        .unwrap();
    c.ok("ModerationService/ListModerationResults", &r);
    c.err(
        "ModerationService/ListModerationResults",
        moderation
            .list_moderation_results(authed(pb::ListModerationResultsRequest::default(), token))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );

    // Every declared method was exercised both ways: a new RPC needs its contract case here.
    let all = declared();
    let routed: BTreeSet<String> = keel_gateway::routes::ROUTES
        .iter()
        .map(|r| r.path.to_owned())
        .collect();
    assert_eq!(
        all, routed,
        "the contract and the gateway's route table agree"
    );
    let missing_ok: Vec<_> = all.difference(&c.ok).collect();
    let missing_err: Vec<_> = all.difference(&c.err).collect();
    assert!(
        missing_ok.is_empty() && missing_err.is_empty(),
        "no success case: {missing_ok:?}; no failure case: {missing_err:?}"
    );
    let unknown: Vec<_> = c.ok.union(&c.err).filter(|p| !all.contains(*p)).collect();
    assert!(
        unknown.is_empty(),
        "cases for undeclared methods: {unknown:?}"
    );
    stack.shutdown().await;
}
