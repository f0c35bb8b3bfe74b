//! The access-token verifier on arbitrary input: it must never panic, and must accept nothing
//! that was not signed by the fixture key (a fixed seed, so a token in the corpus that verifies
//! would be found at once).
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use keel_tenancy::TenantId;
use keel_token::{KeyRecord, KeySource, KeyState, ManualClock, SigningKey, TokenError, Verifier};
use libfuzzer_sys::fuzz_target;

struct Keys(HashMap<String, KeyRecord>);

impl KeySource for Keys {
    fn key(&self, kid: &str) -> Result<Option<KeyRecord>, TokenError> {
        Ok(self.0.get(kid).cloned())
    }
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let tenant = TenantId::parse("acme").expect("valid");
        let key =
            SigningKey::from_seed("AAAAAAAAAAAAAAAAAAAAAA".into(), tenant.clone(), &[7u8; 32]);
        let rec = KeyRecord {
            kid: key.kid.clone(),
            tenant,
            public: key.public(),
            state: KeyState::Active,
            valid_from: 0,
            verify_until: None,
        };
        Keys(HashMap::from([(rec.kid.clone(), rec)]))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let clock = ManualClock::at(1_800_000_000);
    let _ = keel_token::peek_kid(token);
    let result = Verifier {
        issuer_base: "https://auth.keel.test",
        clock: &clock,
    }
    .verify(token, keys());
    assert!(result.is_err(), "an unsigned input verified");
});
