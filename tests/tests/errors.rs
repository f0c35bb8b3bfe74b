//! Bad input gets a precise status and reason, at the public gateway and at internal hops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_proto::public as internal;
use keel_proto::public as pb;
use keel_tests::{TestStack, authed, connect, detail, reason};
use tonic::Code;

fn create(title: &str, content: &str, key: &str) -> pb::CreateDocumentRequest {
    pb::CreateDocumentRequest {
        title: title.into(),
        content: content.into(),
        idempotency_key: key.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_refuses_bad_credentials_precisely() {
    let stack = TestStack::start().await.unwrap();
    let tok_acme = stack.tenant_token("acme").await.unwrap();
    let mut docs = stack.documents().await.unwrap();

    // No credentials at all.
    let st = docs
        .create_document(tonic::Request::new(create("t", "c", "")))
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st)),
        (Code::Unauthenticated, "UNAUTHENTICATED")
    );
    assert!(st.metadata().get("www-authenticate").is_some());

    // Wrong scheme, empty token, garbage token.
    for value in [
        "Basic YWxhZGRpbjpvcGVu",
        "Bearer ",
        "Bearer not-a-token",
        "Bearer",
    ] {
        let mut req = tonic::Request::new(create("t", "c", ""));
        req.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        let st = docs.create_document(req).await.unwrap_err();
        assert_eq!(st.code(), Code::Unauthenticated, "{value}");
    }

    // The foundation's development tokens are gone: nothing unsigned or self-made passes.
    for fake in ["dev.acme", "Not_A_Tenant", "eyJhbGciOiJub25lIn0.e30."] {
        let st = docs
            .create_document(authed(create("t", "c", ""), fake))
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::Unauthenticated, "{fake}");
    }

    // A client-sent tenant header that disagrees with the token.
    let mut req = authed(create("t", "c", ""), &tok_acme);
    req.metadata_mut()
        .insert("keel-tenant-id", "globex".parse().unwrap());
    let st = docs.create_document(req).await.unwrap_err();
    assert_eq!(
        (st.code(), reason(&st)),
        (Code::PermissionDenied, "TENANT_MISMATCH")
    );
    // ...while an agreeing one is fine.
    let mut req = authed(create("t", "c", ""), &tok_acme);
    req.metadata_mut()
        .insert("keel-tenant-id", "acme".parse().unwrap());
    docs.create_document(req).await.unwrap();

    // Usage: credentials first; a bad range is refused by field.
    let mut usage = pb::usage_service_client::UsageServiceClient::new(
        connect(&stack.gateway_url()).await.unwrap(),
    );
    let st = usage
        .get_usage(tonic::Request::new(pb::GetUsageRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    let st = usage
        .get_usage(authed(pb::GetUsageRequest::default(), &tok_acme))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(
        keel_tests::detail(&st, "field").as_deref(),
        Some("start_time")
    );

    // The tenant's models: credentials first, then the catalogue.
    let mut models = pb::model_service_client::ModelServiceClient::new(
        connect(&stack.gateway_url()).await.unwrap(),
    );
    let st = models
        .list_models(tonic::Request::new(pb::ListModelsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    let listed = models
        .list_models(authed(pb::ListModelsRequest::default(), &tok_acme))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed.models.iter().map(|m| m.name.as_str()).collect();
    assert!(
        names.contains(&"keel-tiny") && names.contains(&"keel-embed"),
        "{names:?}"
    );
    let page = models
        .list_models(authed(
            pb::ListModelsRequest {
                page_size: 2,
                page_token: String::new(),
            },
            &tok_acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.models.len(), 2);
    assert_eq!(page.next_page_token, "2");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_document_input_names_the_field() {
    let stack = TestStack::start().await.unwrap();
    let tok_acme = stack.tenant_token("acme").await.unwrap();
    let mut docs = stack.documents().await.unwrap();

    let cases: Vec<(pb::CreateDocumentRequest, &str)> = vec![
        (create("", "c", ""), "title"),
        (create("   ", "c", ""), "title"),
        (create(&"t".repeat(513), "c", ""), "title"),
        (create("t", "nul\0byte", ""), "content"),
        (create("t", "c", "has spaces"), "idempotency_key"),
    ];
    for (req, field) in cases {
        let st = docs
            .create_document(authed(req, &tok_acme))
            .await
            .unwrap_err();
        assert_eq!(
            (st.code(), reason(&st)),
            (Code::InvalidArgument, "INVALID_ARGUMENT"),
            "{field}"
        );
        assert_eq!(detail(&st, "field").as_deref(), Some(field));
    }
    for id in [
        "",
        "42",
        "not-a-uuid",
        "01a24220-6186-738d-8e0b-93e05a654a2",
    ] {
        let st = docs
            .get_document(authed(pb::GetDocumentRequest { id: id.into() }, &tok_acme))
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument, "{id:?}");
        assert_eq!(detail(&st, "field").as_deref(), Some("id"));
    }
    let missing = uuid::Uuid::now_v7().to_string();
    let st = docs
        .get_document(authed(
            pb::GetDocumentRequest {
                id: missing.clone(),
            },
            &tok_acme,
        ))
        .await
        .unwrap_err();
    assert_eq!((st.code(), reason(&st)), (Code::NotFound, "NOT_FOUND"));
    assert_eq!(
        detail(&st, "resource"),
        Some(format!("documents/{missing}"))
    );

    let st = docs
        .list_documents(authed(
            pb::ListDocumentsRequest {
                page_size: 0,
                page_token: "garbage".into(),
                omit_content: false,
            },
            &tok_acme,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st)),
        (Code::InvalidArgument, "PAGE_TOKEN_INVALID")
    );
    let st = docs
        .list_documents(authed(
            pb::ListDocumentsRequest {
                page_size: 1000,
                page_token: String::new(),
                omit_content: false,
            },
            &tok_acme,
        ))
        .await
        .unwrap_err();
    assert_eq!(detail(&st, "field").as_deref(), Some("page_size"));

    // Idempotency key reused with another body; version conflicts.
    let d = docs
        .create_document(authed(create("t", "one", "key-1"), &tok_acme))
        .await
        .unwrap()
        .into_inner();
    let st = docs
        .create_document(authed(create("t", "two", "key-1"), &tok_acme))
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st)),
        (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED")
    );
    let st = docs
        .update_document(authed(
            pb::UpdateDocumentRequest {
                id: d.id.clone(),
                title: "t".into(),
                content: "x".into(),
                expected_version: 7,
            },
            &tok_acme,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st)),
        (Code::Aborted, "VERSION_CONFLICT")
    );
    let st = docs
        .delete_document(authed(
            pb::DeleteDocumentRequest {
                id: d.id.clone(),
                expected_version: -1,
            },
            &tok_acme,
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);

    // Another tenant cannot see it: NOT_FOUND, not PERMISSION_DENIED (no existence oracle).
    let tok_globex = stack.tenant_token("globex").await.unwrap();
    let st = docs
        .get_document(authed(
            pb::GetDocumentRequest { id: d.id.clone() },
            &tok_globex,
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);

    // Nothing already accepted was lost along the way.
    let still = docs
        .get_document(authed(pb::GetDocumentRequest { id: d.id }, &tok_acme))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.content, "one");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn internal_hops_require_well_formed_tenant_metadata() {
    let stack = TestStack::start().await.unwrap();
    let mut store = keel_proto::inference::document_store_client::DocumentStoreClient::new(
        connect(&stack.inference_url()).await.unwrap(),
    );
    let st = store
        .get_document(tonic::Request::new(internal::GetDocumentRequest {
            id: uuid::Uuid::now_v7().to_string(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st)),
        (Code::InvalidArgument, "TENANT_ID_MISSING")
    );
    for bad in ["", "UPPER", "a", "has.dot", "x--y", "-lead"] {
        let mut req = tonic::Request::new(internal::GetDocumentRequest {
            id: uuid::Uuid::now_v7().to_string(),
        });
        req.metadata_mut()
            .insert("keel-tenant-id", bad.parse().unwrap());
        let st = store.get_document(req).await.unwrap_err();
        assert_eq!(
            (st.code(), reason(&st)),
            (Code::InvalidArgument, "TENANT_ID_MALFORMED"),
            "{bad:?}"
        );
    }
    // The tenant directory refuses malformed and unknown tenants precisely.
    let mut dir = stack.directory().await.unwrap();
    let st = dir
        .get_tenant(keel_proto::auth::GetTenantRequest {
            tenant_id: "NOPE".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), detail(&st, "field").as_deref()),
        (Code::InvalidArgument, Some("tenant_id"))
    );
    let st = dir
        .get_tenant(keel_proto::auth::GetTenantRequest {
            tenant_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "TENANT_UNKNOWN");
    let st = dir
        .create_tenant(keel_proto::auth::CreateTenantRequest {
            tenant_id: "fine".into(),
            display_name: "Fine".into(),
            tier: "platinum".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(detail(&st, "field").as_deref(), Some("tier"));
    stack.shutdown().await;
}
