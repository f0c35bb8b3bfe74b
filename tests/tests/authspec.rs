//! Tenant auth declared in a spec: applied through the admin API (what `keelctl auth apply`
//! does), idempotent, and enforced — roles → scopes, token lifetime, MFA by role, step-up by
//! scope at the gateway, tier, client registrations, and the key rotation schedule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_authspec::Spec;
use keel_authspec::plan::Change;
use keel_authspec::remote::Remote;
use keel_proto::public as pb;
use keel_tests::{TestStack, authed, bearer, connect, eventually};
use tonic::Code;

const SPEC: &str = r#"version = 1
tenant = "acme"
display_name = "Acme Corp"
tier = "pro"

[tokens]
access_ttl = "10m"

[mfa]
required_for_roles = ["admin"]

[roles]
admin = ["account", "documents:read", "documents:write", "models:export", "tenant:admin"]
analyst = ["account", "documents:read"]
writer = ["account", "documents:read", "documents:write"]

[step_up]
"models:export" = "2m"
"documents:write" = "3m"

[[clients]]
id = "web"
name = "Acme Web"
type = "public"
redirect_uris = ["https://app.acme.example/callback"]
grants = ["authorization_code", "refresh_token"]

[[clients]]
id = "indexer"
type = "confidential"
grants = ["client_credentials"]
scopes = ["documents:read"]
"#;

fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn operator(stack: &TestStack) -> Remote {
    Remote::new(
        connect(&stack.auth_url()).await.unwrap(),
        bearer(&stack.admin_token()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spec_applies_idempotently_and_its_policy_is_enforced_everywhere() {
    let stack = TestStack::start().await.unwrap();
    let spec = Spec::parse(SPEC).unwrap();
    let mut remote = operator(&stack).await;

    let plan = remote.plan(&spec).await.unwrap();
    assert!(matches!(plan[0], Change::CreateTenant { .. }), "{plan:?}");
    let applied = remote.apply(&spec).await.unwrap();
    assert_eq!(applied.changes, plan);
    assert_eq!(
        applied.client_secrets.len(),
        1,
        "the confidential client's secret, once"
    );
    assert_eq!(applied.client_secrets[0].0, "indexer");
    // Applying again changes nothing.
    assert_eq!(remote.plan(&spec).await.unwrap(), vec![]);
    assert!(remote.apply(&spec).await.unwrap().changes.is_empty());

    // Roles come from the spec: "member" is not one of them any more.
    let st = stack
        .create_user("acme", "x", &["member"])
        .await
        .unwrap_err();
    assert_eq!(
        st.downcast_ref::<tonic::Status>().unwrap().code(),
        Code::InvalidArgument
    );
    stack
        .create_user("acme", "ann", &["analyst"])
        .await
        .unwrap();
    stack.create_user("acme", "wes", &["writer"]).await.unwrap();
    stack.create_user("acme", "boss", &["admin"]).await.unwrap();

    // The analyst's token carries the analyst's scopes and the spec's lifetime.
    let (ann, _) = stack.login("acme", "ann").await.unwrap();
    let c = claims(&ann);
    assert_eq!(c["scope"], "account documents:read");
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);
    let mut docs = stack.documents().await.unwrap();
    docs.list_documents(authed(pb::ListDocumentsRequest::default(), &ann))
        .await
        .unwrap();
    let create = |title: &str| pb::CreateDocumentRequest {
        title: title.into(),
        content: "c".into(),
        ..Default::default()
    };
    let st = docs
        .create_document(authed(create("a"), &ann))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);

    // documents:write needs a recent MFA for this tenant (its own step-up rule).
    let (wes, _) = stack.login("acme", "wes").await.unwrap();
    let st = docs
        .create_document(authed(create("w"), &wes))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    let challenge = st
        .metadata()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.contains("max_age=180"), "{challenge}");

    // Admins must use MFA: a password-only session gets the account scope alone.
    let (boss, _) = stack.login("acme", "boss").await.unwrap();
    assert_eq!(claims(&boss)["scope"], "account");
    let st = docs
        .list_documents(authed(pb::ListDocumentsRequest::default(), &boss))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);

    // A changed spec: a new tier, one client dropped (disabled), analysts may write.
    let changed = SPEC
        .replace("tier = \"pro\"", "tier = \"enterprise\"")
        .replace(
            "analyst = [\"account\", \"documents:read\"]",
            "analyst = [\"account\", \"documents:read\", \"documents:write\"]",
        );
    let cut = changed.find("[[clients]]\nid = \"indexer\"").unwrap();
    let changed = Spec::parse(&changed[..cut]).unwrap();
    let plan: Vec<String> = remote
        .plan(&changed)
        .await
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let text = plan.join("\n");
    assert!(text.contains("~ tenant tier: pro -> enterprise"), "{text}");
    assert!(text.contains("roles.analyst"), "{text}");
    assert!(text.contains("- client indexer"), "{text}");
    remote.apply(&changed).await.unwrap();
    let t = stack
        .directory()
        .await
        .unwrap()
        .get_tenant(keel_proto::auth::GetTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.tier, "enterprise");
    let clients = stack
        .admin()
        .await
        .unwrap()
        .list_clients(keel_proto::auth::ListClientsRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .clients;
    assert!(
        clients
            .iter()
            .any(|c| c.client_id == "indexer" && c.disabled)
    );
    // The new role grant reaches the analyst at their next refresh (policies are cached
    // for at most two seconds).
    eventually(Duration::from_secs(10), "analyst may write", || async {
        let (ann, _) = stack.login("acme", "ann").await?;
        Ok(claims(&ann)["scope"]
            .as_str()
            .unwrap_or("")
            .contains("documents:write")
            .then_some(()))
    })
    .await
    .unwrap();
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_admins_may_apply_their_policy_but_not_change_their_tier() {
    let stack = TestStack::start().await.unwrap();
    let spec = Spec::parse(SPEC).unwrap();
    operator(&stack).await.apply(&spec).await.unwrap();
    // A tenant admin without the MFA requirement, to hold tenant:admin.
    let relaxed = Spec::parse(&SPEC.replace(
        "required_for_roles = [\"admin\"]",
        "required_for_roles = []",
    ))
    .unwrap();
    operator(&stack).await.apply(&relaxed).await.unwrap();
    stack.create_user("acme", "boss", &["admin"]).await.unwrap();
    let (boss, _) = stack.login("acme", "boss").await.unwrap();
    let mut as_boss = Remote::new(connect(&stack.auth_url()).await.unwrap(), bearer(&boss));
    let tighter = Spec::parse(
        &SPEC
            .replace(
                "required_for_roles = [\"admin\"]",
                "required_for_roles = []",
            )
            .replace("access_ttl = \"10m\"", "access_ttl = \"2m\""),
    )
    .unwrap();
    as_boss.apply(&tighter).await.unwrap();
    let dearer = Spec::parse(&SPEC.replace("tier = \"pro\"", "tier = \"enterprise\"")).unwrap();
    let st = as_boss.apply(&dearer).await.unwrap_err();
    assert_eq!(
        st.code(),
        Code::PermissionDenied,
        "the tier is the operator's"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_rotate_on_the_tenants_schedule_publishing_before_signing() {
    use keel_token::Clock;
    let stack = TestStack::start().await.unwrap();
    stack.create_tenant("acme").await.unwrap();
    // A second auth replica on a manual clock, over the same databases.
    let t0 = keel_token::SystemClock.now();
    let clock = Arc::new(keel_token::ManualClock::at(t0));
    let env = stack
        .env
        .clone()
        .with("KEEL_AUTH_GRPC_ADDR", "127.0.0.1:0")
        .with("KEEL_AUTH_ADMIN_ADDR", "127.0.0.1:0")
        .with("KEEL_AUTH_HTTP_ADDR", "127.0.0.1:0");
    let replica =
        keel_auth::start_with_clock(keel_auth::Config::from_env(&env).unwrap(), clock.clone())
            .await
            .unwrap();
    let http = replica.http_addr().unwrap();
    let keys = || async {
        let r = keel_tests::http_request(http, "GET", "/t/acme/jwks.json", &[], b"")
            .await
            .unwrap();
        r.json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let first = keys().await;
    assert_eq!(first.len(), 1);
    let spec = Spec::parse(
        r#"version = 1
tenant = "acme"
display_name = "Tenant acme"
tier = "pro"

[keys]
rotation_period = "1d"
"#,
    )
    .unwrap();
    operator(&stack).await.apply(&spec).await.unwrap();

    // A day later the schedule publishes a new key...
    clock.advance(86_400 + 1);
    let published = eventually(Duration::from_secs(15), "a new key published", || async {
        let k = keys().await;
        Ok((k.len() == 2).then_some(k))
    })
    .await
    .unwrap();
    let new_kid = published.iter().find(|k| **k != first[0]).unwrap().clone();
    let dir = keel_proto::auth::key_directory_client::KeyDirectoryClient::new(
        connect(&format!("http://{}", replica.grpc_addr()))
            .await
            .unwrap(),
    );
    let state = |kid: String| {
        let mut dir = dir.clone();
        async move {
            dir.get_verification_key(keel_proto::auth::GetVerificationKeyRequest { kid })
                .await
                .unwrap()
                .into_inner()
                .state
        }
    };
    assert_eq!(
        state(new_kid.clone()).await,
        "pending",
        "published, not signing"
    );
    // ...which signs once every JWKS cache has had time to see it; the old one is retained.
    clock.advance(keel_auth::keys::PUBLISH_AHEAD_SECS + 1);
    eventually(Duration::from_secs(15), "the new key active", || async {
        Ok((state(new_kid.clone()).await == "active").then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(state(first[0].clone()).await, "retained");
    replica.shutdown().await;
    stack.shutdown().await;
}
