//! The tenant auth spec parser (`keelctl auth plan|apply|generate`) on arbitrary text. Nothing
//! may panic; every problem names a line of the file; an accepted spec is safe (its policy has
//! no problem, every client passes the registration rules the auth service applies), survives
//! the wire and the stored JSON unchanged, and applying it twice plans nothing the second time.
#![no_main]

use keel_authspec::plan::{Current, plan};
use keel_authspec::{Spec, client, generate, wire};
use keel_proto::auth as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let spec = match Spec::parse(src) {
        Ok(s) => s,
        Err(errors) => {
            assert!(!errors.is_empty());
            let lines = src.split('\n').count();
            for e in &errors {
                assert!((1..=lines).contains(&e.line), "{e} of {lines} lines");
                assert!(!e.reason.is_empty());
            }
            assert!(errors.windows(2).all(|w| w[0].line <= w[1].line));
            return;
        }
    };
    assert!(keel_tenancy::TenantId::parse(&spec.tenant).is_ok());
    assert!(keel_authspec::spec::TIERS.contains(&spec.tier.as_str()));
    assert!(
        spec.policy.problems().is_empty(),
        "{:?}",
        spec.policy.problems()
    );
    for c in &spec.clients {
        assert!(client::check(c).is_ok(), "{c:?}: {:?}", client::check(c));
        let back = pb::OAuthClient::decode(
            wire::client_to_pb(&spec.tenant, c)
                .encode_to_vec()
                .as_slice(),
        )
        .expect("decodes");
        assert_eq!(&wire::client_from_pb(back), c);
    }
    let back = pb::TenantPolicy::decode(
        wire::policy_to_pb(&spec.tenant, &spec.policy, false)
            .encode_to_vec()
            .as_slice(),
    )
    .expect("decodes");
    assert_eq!(wire::policy_from_pb(back), spec.policy);
    let json = serde_json::to_string(&spec.policy).expect("serializes");
    assert_eq!(
        serde_json::from_str::<keel_authspec::TenantPolicy>(&json).expect("parses"),
        spec.policy
    );

    // First apply: the tenant is created; the second plans nothing.
    let first = plan(&spec, &Current::default());
    assert!(!first.is_empty());
    for change in &first {
        let _ = change.to_string();
    }
    let applied = Current::applied(&spec);
    let second = plan(&spec, &applied);
    assert!(second.is_empty(), "{second:?}");
    let _ = generate::generate(&spec, "https://auth.keel.test");
});
