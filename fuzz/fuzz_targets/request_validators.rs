//! Every request validator that turns a public (or admin) request into a domain value, on
//! arbitrary protobuf: the first byte picks the message, the rest is decoded with prost as that
//! message (what tonic does with a request body) and handed to the validators the services run
//! on it. Nothing may panic; what a validator accepts satisfies the rule it states, validates
//! again unchanged, and survives the trip back to the wire; what it refuses is INVALID_ARGUMENT.
//!
//! Covered: documents (inference: title/content, IDs, idempotency keys, page sizes and
//! tokens), chat calls against every built-in model and a small declared one (inference:
//! roles, temperature, output bound, context length) and the built-in models run on what was
//! accepted, embedding inputs on keel-embed, A/B buckets, login tenant IDs, new passwords,
//! MFA codes (TOTP) and secrets (base32), tenant creation (ID, tier), tenant policies and OAuth
//! client registrations (the auth admin API), and the read APIs' page sizes and tokens
//! (postproc). Checks written inline in async handlers next to database calls (Embed's input
//! count, Login's client_id, ListModels' page token, GetUsage's dates) are not reachable here.
#![no_main]

use std::sync::OnceLock;

use keel_inference::documents::{self, DocumentInput};
use keel_inference::registry::{Backend, Kind, ModelSpec};
use keel_inference::{generation, models};
use keel_proto::{auth as apb, public as pb};
use keel_tenancy::TenantId;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// A declared upstream with small limits, so the context-length check is reachable with short
/// inputs (the built-ins take 5,120 tokens).
const DECLARED: &str = r#"
[[model]]
name = "small"
version = "small@1"
kind = "chat"
provider = "openai"
base_url = "http://127.0.0.1:9"
context_length = 24
max_output_tokens = 8
"#;

fn chat_specs() -> &'static [ModelSpec] {
    static S: OnceLock<Vec<ModelSpec>> = OnceLock::new();
    S.get_or_init(|| {
        let env = keel_config::Env::from_pairs([
            ("KEEL_INFERENCE_MODELS", DECLARED),
            ("KEEL_INFERENCE_FAULT_MODELS", "true"),
        ]);
        let all = keel_inference::registry::catalogue_from_env(&env).expect("the catalogue");
        all.into_iter().filter(|m| m.kind == Kind::Chat).collect()
    })
}

fn tenant() -> &'static TenantId {
    static T: OnceLock<TenantId> = OnceLock::new();
    T.get_or_init(|| TenantId::parse("acme").expect("valid"))
}

/// prost's own invariant, for every message decoded here: what it encodes decodes to the same
/// encoding (compared as bytes: a NaN temperature is not equal to itself).
fn round_trips<M: Message + Default>(m: &M) {
    let bytes = m.encode_to_vec();
    let again = M::decode(bytes.as_slice()).expect("re-encoded message decodes");
    assert_eq!(again.encode_to_vec(), bytes);
}

fn invalid_argument(st: tonic::Status) {
    assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
}

fn document(title: &str, content: &str) {
    match DocumentInput::parse(title.to_owned(), content.to_owned()) {
        Ok(d) => {
            assert!(!d.title.trim().is_empty());
            assert!(d.title.chars().count() <= documents::MAX_TITLE_CHARS);
            assert!(!d.title.chars().any(char::is_control));
            assert!(d.content.len() <= documents::MAX_CONTENT_BYTES);
            assert!(!d.content.contains('\0'));
            let again = DocumentInput::parse(d.title.clone(), d.content.clone())
                .expect("a validated document validates again");
            assert_eq!((again.title, again.content), (d.title, d.content));
        }
        Err(e) => invalid_argument(e.into()),
    }
}

fn document_id(raw: &str) {
    match documents::parse_id(raw) {
        Ok(id) => {
            assert_eq!(documents::parse_id(&id.to_string()).ok(), Some(id));
            assert_eq!(documents::parse_id(&id.simple().to_string()).ok(), Some(id));
        }
        Err(e) => invalid_argument(e.into()),
    }
}

fn idempotency_key(raw: &str) {
    match documents::parse_idempotency_key(raw) {
        Ok(None) => assert!(raw.is_empty()),
        Ok(Some(k)) => {
            assert_eq!(k, raw);
            assert!((1..=documents::MAX_IDEMPOTENCY_KEY).contains(&k.len()));
            assert!(k.bytes().all(|b| b.is_ascii_graphic()));
        }
        Err(e) => invalid_argument(e.into()),
    }
}

fn document_page(size: i32, token: &str) {
    match documents::page_size(size) {
        Ok(n) => {
            assert!((1..=documents::MAX_PAGE_SIZE).contains(&n));
            assert!(size == 0 || i64::from(size) == n);
        }
        Err(e) => invalid_argument(e.into()),
    }
    match documents::parse_page_token(token) {
        Ok(None) => assert!(token.is_empty()),
        // The tokens the list hands out (`d1.` and the simple form) name the same position.
        Ok(Some(id)) => assert_eq!(
            documents::parse_page_token(&format!("d1.{}", id.simple())).ok(),
            Some(Some(id))
        ),
        Err(e) => invalid_argument(e.into()),
    }
}

fn chat(r: &pb::GenerateRequest) {
    let messages: Vec<(String, String)> = r
        .messages
        .iter()
        .map(|m| (m.role.clone(), m.content.clone()))
        .collect();
    for spec in chat_specs() {
        let call = match generation::chat_call(
            messages.clone(),
            r.max_output_tokens,
            r.temperature,
            r.seed,
            spec,
        ) {
            Ok(c) => c,
            Err(e) => {
                invalid_argument(e.into());
                continue;
            }
        };
        assert!(!call.messages.is_empty());
        assert!(
            call.messages
                .iter()
                .all(|(role, _)| matches!(role.as_str(), "system" | "user" | "assistant"))
        );
        assert!((0.0..=2.0).contains(&call.temperature));
        assert!(call.max_output_tokens >= 1 && call.max_output_tokens <= spec.max_output_tokens);
        assert_eq!(call.input_tokens, models::count_tokens(&call.prompt));
        assert!(
            u64::from(call.input_tokens) + u64::from(call.max_output_tokens)
                <= u64::from(spec.context_length),
            "{} + {} > {}",
            call.input_tokens,
            call.max_output_tokens,
            spec.context_length
        );
        // What was accepted is accepted again as it was resolved.
        let again = generation::chat_call(
            call.messages.clone(),
            call.max_output_tokens as i32,
            call.temperature,
            call.seed,
            spec,
        )
        .expect("a validated chat call validates again");
        assert_eq!(
            (&again.prompt, again.input_tokens, again.max_output_tokens),
            (&call.prompt, call.input_tokens, call.max_output_tokens)
        );
        // The built-in model runs whatever its version accepted, within the bound.
        if let Backend::Tiny { salt, .. } = &spec.backend {
            let seed = call.seed.or(Some(0));
            let mut plan = models::Plan::new(
                &call.prompt,
                call.max_output_tokens,
                call.temperature,
                seed,
                *salt,
            );
            assert_eq!(plan.input_tokens, call.input_tokens);
            let mut produced = 0;
            while produced < plan.max_output_tokens && plan.next_token(produced).is_some() {
                produced += 1;
            }
            assert!(produced <= call.max_output_tokens);
        }
    }
    if !r.user.is_empty() {
        let b = keel_inference::registry::bucket(tenant(), &r.model, &r.user);
        assert!(b < 100);
        assert_eq!(
            b,
            keel_inference::registry::bucket(tenant(), &r.model, &r.user)
        );
    }
}

fn embed(r: &pb::EmbedRequest) {
    for t in r.inputs.iter().take(models::MAX_EMBED_INPUTS) {
        let _ = models::count_tokens(t);
        if t.chars().count() > models::MAX_EMBED_INPUT_CHARS {
            continue;
        }
        let v = models::embed(t);
        assert_eq!(v.len(), models::EMBED_DIMENSIONS);
        assert!(v.iter().all(|x| x.is_finite()));
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(norm == 0.0 || (norm - 1.0).abs() < 1e-3, "norm {norm}");
    }
}

fn tenant_id(raw: &str) {
    match keel_auth::tenants::parse_tenant_id(raw) {
        Ok(t) => {
            assert_eq!(t.as_str(), raw);
            assert!(keel_auth::tenants::parse_tenant_id(t.as_str()).is_ok());
        }
        Err(e) => invalid_argument(e.into()),
    }
}

fn new_password(raw: &str) {
    use keel_auth::passwords::{MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS, check_policy};
    if check_policy(raw).is_ok() {
        assert!(raw.chars().count() >= MIN_PASSWORD_CHARS);
        assert!(raw.len() <= MAX_PASSWORD_BYTES);
    }
}

/// A fixed enrolment secret and clock: a code is accepted only for the current or previous
/// step, and only as the code of that step.
fn mfa_code(code: &str) {
    use keel_auth::totp;
    const KEY: &[u8; 20] = b"12345678901234567890";
    const NOW: i64 = 1_800_000_000;
    if let Some(step) = totp::matching_step(KEY, code, NOW) {
        let current = totp::step_at(NOW);
        assert!(step == current || step == current - 1);
        assert_eq!(totp::code(totp::Alg::Sha1, KEY, step, totp::DIGITS), code);
    }
    // The enrolment secret's encoding: whatever decodes re-encodes to the same bytes.
    if let Some(bytes) = totp::base32_decode(code) {
        assert_eq!(
            totp::base32_decode(&totp::base32(&bytes)).as_deref(),
            Some(bytes.as_slice())
        );
    }
    let raw = code.as_bytes();
    assert_eq!(
        totp::base32_decode(&totp::base32(raw)).as_deref(),
        Some(raw)
    );
}

fn create_tenant(r: &apb::CreateTenantRequest) {
    tenant_id(&r.tenant_id);
    if let Some(t) = keel_auth::tenants::Tier::parse(&r.tier) {
        assert_eq!(t.as_str(), r.tier);
    }
}

fn tenant_policy(p: &apb::TenantPolicy) {
    use keel_authspec::wire;
    let policy = wire::policy_from_pb(p.clone());
    if !policy.problems().is_empty() {
        return;
    }
    // The wire form and the stored form (JSON in a jsonb column) give the same policy back.
    let pb_again = apb::TenantPolicy::decode(
        wire::policy_to_pb(&p.tenant_id, &policy, false)
            .encode_to_vec()
            .as_slice(),
    )
    .expect("decodes");
    assert_eq!(wire::policy_from_pb(pb_again), policy);
    let json = serde_json::to_string(&policy).expect("serializes");
    assert!(!json.contains("\\u0000"), "jsonb refuses NUL: {json}");
    let stored: keel_authspec::TenantPolicy = serde_json::from_str(&json).expect("parses");
    assert_eq!(stored, policy);
    assert!(stored.problems().is_empty());
    let roles: Vec<String> = policy.roles.keys().cloned().collect();
    let scope = policy.session_scope(&roles, "mfa", None);
    assert!(
        scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .all(|s| keel_authspec::policy::KNOWN_SCOPES.contains(&s))
    );
}

fn oauth_client(c: &apb::OAuthClient) {
    use keel_authspec::{client, wire};
    let spec = wire::client_from_pb(c.clone());
    if client::check(&spec).is_err() {
        return;
    }
    assert!(keel_oauth::request::is_valid_client_id(&spec.client_id));
    for uri in &spec.redirect_uris {
        assert!(keel_oauth::redirect::check_registrable(uri).is_ok());
        assert!(keel_oauth::redirect::matches(uri, uri));
    }
    let again = apb::OAuthClient::decode(
        wire::client_to_pb(&c.tenant_id, &spec)
            .encode_to_vec()
            .as_slice(),
    )
    .expect("decodes");
    let again = wire::client_from_pb(again);
    assert_eq!(again, spec);
    assert!(client::check(&again).is_ok());
}

fn postproc_page(size: i32, default: i32, max: i32, token: &str) {
    use keel_postproc::common;
    match common::page_size(size, default, max) {
        Ok(n) => assert!((1..=max).contains(&n) && (size == 0 || size == n)),
        Err(st) => invalid_argument(st),
    }
    match common::parse_time_token(token) {
        Ok(None) => assert!(token.is_empty()),
        Ok(Some((at, id))) => {
            let again = common::parse_time_token(&common::time_token(at, &id))
                .expect("a token the list hands out parses");
            assert_eq!(again, Some((at, id)));
        }
        Err(st) => invalid_argument(st),
    }
}

/// Decodes `bytes` as `M`, checks prost's round trip, then runs `check` on it.
fn with<M: Message + Default>(bytes: &[u8], check: impl Fn(&M)) {
    if let Ok(m) = M::decode(bytes) {
        round_trips(&m);
        check(&m);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((which, bytes)) = data.split_first() else {
        return;
    };
    match which % 20 {
        0 => with::<pb::CreateDocumentRequest>(bytes, |r| {
            idempotency_key(&r.idempotency_key);
            document(&r.title, &r.content);
        }),
        1 => with::<pb::GetDocumentRequest>(bytes, |r| document_id(&r.id)),
        2 => with::<pb::ListDocumentsRequest>(bytes, |r| document_page(r.page_size, &r.page_token)),
        3 => with::<pb::UpdateDocumentRequest>(bytes, |r| {
            document_id(&r.id);
            document(&r.title, &r.content);
        }),
        4 => with::<pb::DeleteDocumentRequest>(bytes, |r| document_id(&r.id)),
        5 => with::<pb::GenerateRequest>(bytes, chat),
        6 => with::<pb::EmbedRequest>(bytes, embed),
        7 => with::<pb::LoginRequest>(bytes, |r| tenant_id(&r.tenant_id)),
        8 => with::<pb::ChangePasswordRequest>(bytes, |r| new_password(&r.new_password)),
        9 => with::<pb::VerifyMfaRequest>(bytes, |r| mfa_code(&r.code)),
        10 => with::<pb::ConfirmMfaRequest>(bytes, |r| mfa_code(&r.code)),
        11 => with::<pb::StepUpRequest>(bytes, |r| mfa_code(&r.code)),
        12 => with::<pb::DisableMfaRequest>(bytes, |r| mfa_code(&r.code)),
        13 => with::<pb::ListAuditEventsRequest>(bytes, |r| {
            postproc_page(r.page_size, 100, 500, &r.page_token)
        }),
        14 => with::<pb::ListModerationResultsRequest>(bytes, |r| {
            postproc_page(r.page_size, 100, 500, &r.page_token)
        }),
        15 => with::<pb::GetUsageRequest>(bytes, |r| postproc_page(r.page_size, 1000, 1000, "")),
        16 => with::<apb::CreateTenantRequest>(bytes, create_tenant),
        17 => with::<apb::CreateUserRequest>(bytes, |r| {
            tenant_id(&r.tenant_id);
            new_password(&r.password);
        }),
        18 => with::<apb::TenantPolicy>(bytes, tenant_policy),
        _ => with::<apb::PutClientRequest>(bytes, |r| {
            if let Some(c) = &r.client {
                oauth_client(c);
            }
        }),
    }
});
