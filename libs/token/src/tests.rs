//! The verifier against the JWT attack table of shared/reference/auth.md (rows cited as
//! `row_N`) and the RFC 9068 / RFC 8725 requirements (R-IDs).

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::Signer;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

const BASE: &str = "https://auth.keel.test";
const NOW: i64 = 1_800_000_000;

struct Keys(HashMap<String, KeyRecord>);

impl KeySource for Keys {
    fn key(&self, kid: &str) -> Result<Option<KeyRecord>, TokenError> {
        Ok(self.0.get(kid).cloned())
    }
}

fn tenant(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

fn record(k: &SigningKey, state: KeyState, verify_until: Option<i64>) -> KeyRecord {
    KeyRecord {
        kid: k.kid.clone(),
        tenant: k.tenant.clone(),
        public: k.public(),
        state,
        valid_from: NOW - 1000,
        verify_until,
    }
}

struct Fixture {
    acme: SigningKey,
    globex: SigningKey,
    keys: Keys,
    clock: ManualClock,
}

fn fixture() -> Fixture {
    let acme = SigningKey::generate(&tenant("acme")).unwrap();
    let globex = SigningKey::generate(&tenant("globex")).unwrap();
    let mut map = HashMap::new();
    map.insert(acme.kid.clone(), record(&acme, KeyState::Active, None));
    map.insert(globex.kid.clone(), record(&globex, KeyState::Active, None));
    Fixture {
        acme,
        globex,
        keys: Keys(map),
        clock: ManualClock::at(NOW),
    }
}

fn claims(t: &str) -> AccessClaims {
    let t = tenant(t);
    AccessClaims {
        iss: issuer(BASE, &t),
        sub: "user-1".into(),
        aud: audience(&t),
        client_id: "keel-cli".into(),
        iat: NOW - 10,
        exp: NOW + 290,
        nbf: None,
        jti: "j-1".into(),
        scope: "documents:read documents:write".into(),
        tenant_id: t.to_string(),
        tier: "pro".into(),
        sid: "s-1".into(),
        acr: "pwd".into(),
        amr: vec!["pwd".into()],
        auth_time: NOW - 10,
    }
}

fn claims_json(t: &str) -> Value {
    serde_json::to_value(claims(t)).unwrap()
}

fn header_json(k: &SigningKey) -> Value {
    json!({"alg": "EdDSA", "typ": "at+jwt", "kid": k.kid})
}

/// Signs arbitrary header and claims text with `key` (the attacker-crafted token of a row).
fn craft_raw(header: &str, claims: &str, key: &SigningKey) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = key.secret.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

fn craft(header: &Value, claims: &Value, key: &SigningKey) -> String {
    craft_raw(&header.to_string(), &claims.to_string(), key)
}

impl Fixture {
    fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        Verifier {
            issuer_base: BASE,
            clock: &self.clock,
        }
        .verify(token, &self.keys)
    }
}

#[test]
fn a_well_formed_token_verifies_and_names_its_tenant() {
    let f = fixture();
    let v = f.verify(&sign(&claims("acme"), &f.acme)).unwrap();
    assert_eq!(v.tenant.as_str(), "acme");
    assert_eq!(v.claims, claims("acme"));
    assert_eq!(v.kid, f.acme.kid);
}

#[test]
fn row_1_r10_r20_alg_none_in_any_case_is_refused() {
    let f = fixture();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = json!({"alg": alg, "typ": "at+jwt", "kid": f.acme.kid});
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(h.to_string()),
            URL_SAFE_NO_PAD.encode(claims_json("acme").to_string())
        );
        assert!(f.verify(&unsigned).is_err(), "{alg} unsigned");
        let signed = craft(&h, &claims_json("acme"), &f.acme);
        assert_eq!(
            f.verify(&signed),
            Err(TokenError::Algorithm),
            "{alg} signed"
        );
    }
}

#[test]
fn row_2_null_signature_is_refused() {
    let f = fixture();
    let t = sign(&claims("acme"), &f.acme);
    let stripped = &t[..t.rfind('.').unwrap() + 1];
    assert_eq!(f.verify(stripped), Err(TokenError::Malformed));
}

#[test]
fn row_3_altered_or_truncated_signatures_are_refused() {
    let f = fixture();
    let t = sign(&claims("acme"), &f.acme);
    assert!(f.verify(&t[..t.len() - 4]).is_err());
    let mut flipped = t.clone().into_bytes();
    let last = flipped.len() - 5;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    assert!(f.verify(std::str::from_utf8(&flipped).unwrap()).is_err());
    // The claims changed after signing (privilege escalation attempt).
    let (h, rest) = t.split_once('.').unwrap();
    let (_, s) = rest.split_once('.').unwrap();
    let mut c = claims_json("acme");
    c["scope"] = json!("models:export");
    let forged = format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(c.to_string()));
    assert_eq!(f.verify(&forged), Err(TokenError::Signature));
}

#[test]
fn rows_4_5_r10_hmac_and_key_confusion_are_refused() {
    let f = fixture();
    for alg in [
        "HS256", "HS384", "HS512", "RS256", "ES256", "PS256", "eddsa", "Ed25519",
    ] {
        let h = json!({"alg": alg, "typ": "at+jwt", "kid": f.acme.kid});
        assert_eq!(
            f.verify(&craft(&h, &claims_json("acme"), &f.acme)),
            Err(TokenError::Algorithm),
            "{alg}"
        );
    }
}

#[test]
fn rows_6_7_19_20_r13_r16_unexpected_header_parameters_are_refused_and_never_fetched() {
    let f = fixture();
    let extras = [
        (
            "jwk",
            json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(f.acme.public().as_bytes())}),
        ),
        ("jku", json!("https://attacker.example/jwks.json")),
        ("x5u", json!("http://169.254.169.254/latest/meta-data")),
        ("x5c", json!(["MIIB"])),
        ("crit", json!(["exp"])),
        ("crit", json!(["foo"])),
        ("crit", json!([])),
        ("cty", json!("JWT")),
        ("zip", json!("DEF")),
    ];
    for (k, v) in extras {
        let mut h = header_json(&f.acme);
        h[k] = v;
        assert_eq!(
            f.verify(&craft(&h, &claims_json("acme"), &f.acme)),
            Err(TokenError::Header),
            "{k}"
        );
    }
}

#[test]
fn rows_8_9_10_r13_hostile_absent_and_foreign_kids_are_refused() {
    let f = fixture();
    for kid in [
        "",
        "../../../../dev/null",
        "/dev/null",
        "/invalid_path",
        "x' UNION SELECT '1';--",
        "|sleep 10",
        "| curl evil",
        "a",
    ] {
        let h = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
        assert_eq!(
            f.verify(&craft(&h, &claims_json("acme"), &f.acme)),
            Err(TokenError::UnknownKey),
            "{kid:?}"
        );
    }
    let h = json!({"alg": "EdDSA", "typ": "at+jwt"});
    assert_eq!(
        f.verify(&craft(&h, &claims_json("acme"), &f.acme)),
        Err(TokenError::Header)
    );
    // Signed with globex's key, claiming to be acme's token (row 28 too).
    let t = craft(&header_json(&f.globex), &claims_json("acme"), &f.globex);
    assert_eq!(f.verify(&t), Err(TokenError::Binding));
    // A well-formed kid nobody issued.
    let h = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "AAAAAAAAAAAAAAAAAAAAAA"});
    assert_eq!(
        f.verify(&craft(&h, &claims_json("acme"), &f.acme)),
        Err(TokenError::UnknownKey)
    );
}

#[test]
fn rows_11_to_14_r17_r20_time_claims_are_strict() {
    let f = fixture();
    let with = |k: &str, v: Value| {
        let mut c = claims_json("acme");
        c[k] = v;
        craft(&header_json(&f.acme), &c, &f.acme)
    };
    // Expired, and inside/outside the (small) leeway.
    assert!(f.verify(&with("exp", json!(NOW - 100))).is_err());
    let mut c = claims("acme");
    c.iat = NOW - 300;
    c.auth_time = NOW - 300;
    c.exp = NOW - LEEWAY_SECS;
    assert_eq!(f.verify(&sign(&c, &f.acme)), Err(TokenError::Expired));
    c.exp = NOW - LEEWAY_SECS + 1;
    assert!(f.verify(&sign(&c, &f.acme)).is_ok(), "inside the leeway");
    for bad in [
        json!("1900000000"),
        json!(1.5e9),
        json!(-1),
        json!(u64::MAX),
        json!(null),
        json!([NOW + 10]),
    ] {
        assert!(f.verify(&with("exp", bad.clone())).is_err(), "exp {bad}");
        assert!(f.verify(&with("iat", bad.clone())).is_err(), "iat {bad}");
    }
    // A hand-written huge number that is not valid JSON for serde's number parser.
    let raw = claims_json("acme")
        .to_string()
        .replace(&format!("\"exp\":{}", NOW + 290), "\"exp\":1e309");
    assert!(
        f.verify(&craft_raw(&header_json(&f.acme).to_string(), &raw, &f.acme))
            .is_err()
    );
    // nbf and iat in the future.
    assert_eq!(
        f.verify(&with("nbf", json!(NOW + 60))),
        Err(TokenError::NotYetValid)
    );
    let mut c = claims("acme");
    c.iat = NOW + 600;
    c.auth_time = NOW + 600;
    c.exp = NOW + 900;
    assert_eq!(f.verify(&sign(&c, &f.acme)), Err(TokenError::NotYetValid));
    // A week-old iat with a long exp breaks the lifetime policy.
    let mut c = claims("acme");
    c.iat = NOW - 7 * 86400;
    c.auth_time = c.iat;
    assert_eq!(f.verify(&sign(&c, &f.acme)), Err(TokenError::Claims));
    // Missing exp.
    let mut c = claims_json("acme");
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        f.verify(&craft(&header_json(&f.acme), &c, &f.acme)),
        Err(TokenError::Claims)
    );
}

#[test]
fn rows_15_16_17_r3_r11_r12_r19_audience_issuer_and_subject_must_be_exact() {
    let f = fixture();
    let with = |k: &str, v: Option<Value>| {
        let mut c = claims_json("acme");
        match v {
            Some(v) => c[k] = v,
            None => {
                c.as_object_mut().unwrap().remove(k);
            }
        }
        craft(&header_json(&f.acme), &c, &f.acme)
    };
    for aud in [
        Some(json!("keel-api:globex")),
        Some(json!("keel-auth")),
        None,
        Some(json!([])),
        Some(json!(["keel-api:acme", "evil"])),
        Some(json!(["keel-api:acme"])),
        Some(json!(7)),
    ] {
        assert!(f.verify(&with("aud", aud.clone())).is_err(), "aud {aud:?}");
    }
    for iss in [
        Some(json!("https://evil.example/t/acme")),
        Some(json!(format!("{BASE}/t/globex"))),
        None,
        Some(json!(["evil", format!("{BASE}/t/acme")])),
        Some(json!(format!("{BASE}/t/acme/"))),
    ] {
        assert!(f.verify(&with("iss", iss.clone())).is_err(), "iss {iss:?}");
    }
    assert!(f.verify(&with("sub", None)).is_err());
    assert!(f.verify(&with("sub", Some(json!("")))).is_err());
    assert!(f.verify(&with("tenant_id", Some(json!("globex")))).is_err());
    assert!(
        f.verify(&with("unexpected_claim", Some(json!("x"))))
            .is_err(),
        "unknown claims are refused"
    );
}

#[test]
fn row_18_r14_r18_other_token_types_are_refused() {
    let f = fixture();
    for typ in [
        "JWT",
        "jwt",
        "dpop+jwt",
        "id_token",
        "refresh+jwt",
        "",
        "application/jwt",
    ] {
        let h = json!({"alg": "EdDSA", "typ": typ, "kid": f.acme.kid});
        assert_eq!(
            f.verify(&craft(&h, &claims_json("acme"), &f.acme)),
            Err(TokenError::Type),
            "{typ}"
        );
    }
    let h = json!({"alg": "EdDSA", "typ": "application/at+jwt", "kid": f.acme.kid});
    assert!(
        f.verify(&craft(&h, &claims_json("acme"), &f.acme)).is_ok(),
        "RFC 9068 media type form"
    );
    // An ID-token-shaped claim set (nonce, no scope/client_id) under the right typ.
    let id = json!({"iss": format!("{BASE}/t/acme"), "sub": "u", "aud": "keel-cli", "iat": NOW, "exp": NOW + 300, "nonce": "n"});
    assert_eq!(
        f.verify(&craft(&header_json(&f.acme), &id, &f.acme)),
        Err(TokenError::Claims)
    );
}

#[test]
fn row_21_r15_duplicate_members_are_refused() {
    let f = fixture();
    let c = claims_json("acme").to_string();
    let dup_exp = c.replacen('{', "{\"exp\":1,", 1);
    assert_eq!(
        f.verify(&craft_raw(
            &header_json(&f.acme).to_string(),
            &dup_exp,
            &f.acme
        )),
        Err(TokenError::Claims)
    );
    let dup_sub = c.replacen('{', "{\"sub\":\"admin\",", 1);
    assert_eq!(
        f.verify(&craft_raw(
            &header_json(&f.acme).to_string(),
            &dup_sub,
            &f.acme
        )),
        Err(TokenError::Claims)
    );
    let dup_alg = format!(
        "{{\"alg\":\"none\",\"alg\":\"EdDSA\",\"typ\":\"at+jwt\",\"kid\":\"{}\"}}",
        f.acme.kid
    );
    assert_eq!(
        f.verify(&craft_raw(&dup_alg, &c, &f.acme)),
        Err(TokenError::Header)
    );
}

#[test]
fn row_22_malformed_encodings_and_shapes_are_refused() {
    let f = fixture();
    let t = sign(&claims("acme"), &f.acme);
    let (h, rest) = t.split_once('.').unwrap();
    let (c, s) = rest.split_once('.').unwrap();
    let padded_header = STANDARD.encode(header_json(&f.acme).to_string());
    for bad in [
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        format!("{h}.{c}"),
        format!("{h}.{c}.{s}.{s}"),
        format!("{h}..{s}"),
        format!(".{c}.{s}"),
        format!("{padded_header}.{c}.{s}"),
        format!("{h}=.{c}.{s}"),
        format!("{h}.{c} .{s}"),
        format!("{h}.{c}.{s}\n"),
        format!("+{}.{c}.{s}", &h[1..]),
        format!("/{}.{c}.{s}", &h[1..]),
        format!("{h}.{c}.{s}é"),
        "not a token".into(),
    ] {
        assert!(f.verify(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn rows_23_24_bad_signature_lengths_and_zero_signatures_are_refused() {
    let f = fixture();
    let t = sign(&claims("acme"), &f.acme);
    let input = &t[..t.rfind('.').unwrap()];
    for sig in [
        vec![0u8; 64],
        vec![0u8; 63],
        vec![0u8; 65],
        vec![1u8; 72],
        Vec::new(),
    ] {
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
        assert!(f.verify(&forged).is_err(), "{} bytes", sig.len());
    }
}

#[test]
fn row_25_huge_tokens_are_refused_before_decoding() {
    let f = fixture();
    let mut c = claims_json("acme");
    c["scope"] = json!("x".repeat(MAX_TOKEN_BYTES));
    assert_eq!(
        f.verify(&craft(&header_json(&f.acme), &c, &f.acme)),
        Err(TokenError::TooLarge)
    );
    assert_eq!(f.verify(&"a".repeat(1 << 20)), Err(TokenError::TooLarge));
    let deep = format!("{}{}", "[".repeat(3000), "]".repeat(3000));
    let t = craft_raw(&header_json(&f.acme).to_string(), &deep, &f.acme);
    assert!(f.verify(&t).is_err());
}

#[test]
fn row_26_errors_never_reflect_token_content() {
    let f = fixture();
    let marker = "MARKER-7f3a";
    let mut c = claims_json("acme");
    for k in ["sub", "jti", "scope", "client_id", "sid", "acr"] {
        c[k] = json!(marker);
    }
    c["aud"] = json!(marker);
    let h = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": f.globex.kid});
    for t in [
        craft(&h, &c, &f.acme),
        craft(&header_json(&f.acme), &c, &f.acme),
    ] {
        let err = f.verify(&t).unwrap_err();
        assert!(!format!("{err} {err:?}").contains(marker));
    }
}

#[test]
fn row_29_key_states_and_rotation_on_a_controlled_clock() {
    let f = fixture();
    let old = SigningKey::generate(&tenant("acme")).unwrap();
    let new = SigningKey::generate(&tenant("acme")).unwrap();
    let token_old = sign(&claims("acme"), &old);
    let token_new = sign(&claims("acme"), &new);
    let mut keys = Keys(HashMap::new());
    let verify = |keys: &Keys, clock: &ManualClock, t: &str| {
        Verifier {
            issuer_base: BASE,
            clock,
        }
        .verify(t, keys)
    };
    // The new key is pending (published, valid_from in the future): its tokens are refused.
    let mut pending = record(&new, KeyState::Pending, None);
    pending.valid_from = NOW + 3600;
    keys.0.insert(new.kid.clone(), pending);
    keys.0
        .insert(old.kid.clone(), record(&old, KeyState::Active, None));
    assert!(verify(&keys, &f.clock, &token_old).is_ok());
    assert_eq!(
        verify(&keys, &f.clock, &token_new),
        Err(TokenError::KeyNotUsable)
    );
    // Rotation: new active, old retained until its tokens have expired.
    keys.0
        .insert(new.kid.clone(), record(&new, KeyState::Active, None));
    keys.0.insert(
        old.kid.clone(),
        record(&old, KeyState::Retained, Some(NOW + 300 + LEEWAY_SECS)),
    );
    assert!(
        verify(&keys, &f.clock, &token_old).is_ok(),
        "retained keys verify during retention"
    );
    assert!(verify(&keys, &f.clock, &token_new).is_ok());
    let later = ManualClock::at(NOW + 300 + LEEWAY_SECS);
    let mut c = claims("acme");
    c.iat = later.now() - 1;
    c.auth_time = c.iat;
    c.exp = later.now() + 200;
    let late_old = sign(&c, &old);
    assert_eq!(
        verify(&keys, &later, &late_old),
        Err(TokenError::KeyNotUsable),
        "past retention"
    );
    // Revoked: refused at once, even for an unexpired token.
    keys.0
        .insert(new.kid.clone(), record(&new, KeyState::Revoked, None));
    assert_eq!(
        verify(&keys, &f.clock, &token_new),
        Err(TokenError::KeyNotUsable)
    );
}

#[test]
fn jwks_entries_describe_the_public_key_only() {
    let f = fixture();
    let jwk = record(&f.acme, KeyState::Active, None).jwk();
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    assert_eq!(jwk["alg"], "EdDSA");
    assert!(jwk.get("d").is_none());
    assert_eq!(
        URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap(),
        f.acme.public().as_bytes()
    );
}

proptest! {
    #[test]
    fn arbitrary_text_never_verifies_or_panics(s in "\\PC{0,600}") {
        let f = fixture();
        prop_assert!(f.verify(&s).is_err());
    }

    #[test]
    fn arbitrary_segments_never_verify(h in proptest::collection::vec(any::<u8>(), 0..200), c in proptest::collection::vec(any::<u8>(), 0..400), s in proptest::collection::vec(any::<u8>(), 0..80)) {
        let f = fixture();
        let t = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(&h), URL_SAFE_NO_PAD.encode(&c), URL_SAFE_NO_PAD.encode(&s));
        prop_assert!(f.verify(&t).is_err());
    }

    #[test]
    fn any_single_byte_change_breaks_a_valid_token(pos in 0usize..400, byte in any::<u8>()) {
        let f = fixture();
        let t = sign(&claims("acme"), &f.acme);
        let mut b = t.clone().into_bytes();
        let i = pos % b.len();
        prop_assume!(b[i] != byte);
        b[i] = byte;
        if let Ok(s) = String::from_utf8(b) {
            prop_assert!(f.verify(&s).is_err());
        }
    }
}

#[test]
fn peek_kid_checks_only_what_needs_no_key() {
    let f = fixture();
    assert_eq!(
        peek_kid(&sign(&claims("acme"), &f.acme)).unwrap(),
        f.acme.kid
    );
    assert_eq!(
        peek_kid(&"a".repeat(MAX_TOKEN_BYTES + 1)),
        Err(TokenError::TooLarge)
    );
    let h = json!({"alg": "EdDSA", "typ": "JWT", "kid": f.acme.kid});
    assert_eq!(
        peek_kid(&craft(&h, &claims_json("acme"), &f.acme)),
        Err(TokenError::Type)
    );
    let h = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "../etc/passwd"});
    assert_eq!(
        peek_kid(&craft(&h, &claims_json("acme"), &f.acme)),
        Err(TokenError::UnknownKey)
    );
}
