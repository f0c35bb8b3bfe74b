//! Tenant IDs appear in subjects, keys and SQL: the parser must never panic and must accept
//! only its alphabet.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = keel_tenancy::TenantId::parse(s) {
        assert!(
            t.as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
        let map = keel_tenancy::ShardMap::new(64, 3).expect("valid");
        assert!(map.physical(&t) < 3);
    }
});
