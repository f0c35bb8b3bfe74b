//! A short-lived cache of verified access tokens, so the signature of a token a client presents
//! again and again is checked once, not on every call.
//!
//! What a hit still checks, every time: the token is byte-for-byte the one verified (the full
//! token is the key, never a hash of it); it has not expired; its key is still known to the key
//! source and usable now (so revoking a key takes effect as fast as without the cache). What a
//! hit skips: base64 and JSON decoding and the Ed25519 check, which cannot change for the same
//! bytes and key. Session revocation is the caller's, checked per call as before.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::{KeySource, LEEWAY_SECS, TokenError, Verified, Verifier};

/// Entries are dropped after this long even if the token lives longer (bounds staleness and
/// memory, not security: every hit re-checks expiry and the key).
pub const DEFAULT_TTL_SECS: i64 = 30;
/// At most this many tokens are cached (about 1 KiB each); beyond it the oldest half goes.
pub const DEFAULT_MAX_ENTRIES: usize = 50_000;

pub struct VerifiedCache {
    entries: RwLock<HashMap<Box<str>, (i64, Verified)>>,
    ttl_secs: i64,
    max_entries: usize,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        Self::new(DEFAULT_TTL_SECS, DEFAULT_MAX_ENTRIES)
    }
}

impl VerifiedCache {
    pub fn new(ttl_secs: i64, max_entries: usize) -> Self {
        VerifiedCache {
            entries: RwLock::new(HashMap::new()),
            ttl_secs,
            max_entries: max_entries.max(1),
        }
    }

    /// Verifies `token`, from the cache when it was verified recently.
    pub fn verify(
        &self,
        verifier: &Verifier<'_>,
        token: &str,
        keys: &dyn KeySource,
    ) -> Result<Verified, TokenError> {
        let now = verifier.clock.now();
        let hit = self.entries.read().ok().and_then(|m| m.get(token).cloned());
        if let Some((at, v)) = hit
            && now - at < self.ttl_secs
            && now >= at
        {
            if v.claims.exp <= now - LEEWAY_SECS {
                return Err(TokenError::Expired);
            }
            match keys.key(&v.kid)? {
                Some(k) if k.verifies_at(now) && k.tenant == v.tenant => return Ok(v),
                Some(_) => return Err(TokenError::KeyNotUsable),
                None => return Err(TokenError::UnknownKey),
            }
        }
        let v = verifier.verify(token, keys)?;
        if let Ok(mut m) = self.entries.write() {
            if m.len() >= self.max_entries {
                // Keep the newer half: cheap, and bounded.
                let mut ages: Vec<i64> = m.values().map(|(at, _)| *at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                m.retain(|_, (at, _)| *at > cut && now - *at < self.ttl_secs);
                if m.len() >= self.max_entries {
                    m.clear();
                }
            }
            m.insert(token.into(), (now, v.clone()));
        }
        Ok(v)
    }

    pub fn len(&self) -> usize {
        self.entries.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::keys::{KeyRecord, KeyState, SigningKey};
    use crate::{AccessClaims, ManualClock};

    struct Keys(Mutex<HashMap<String, KeyRecord>>);

    impl KeySource for Keys {
        fn key(&self, kid: &str) -> Result<Option<KeyRecord>, TokenError> {
            Ok(self.0.lock().unwrap().get(kid).cloned())
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn setup() -> (String, SigningKey, Keys) {
        let (token, key, keys, _) = setup_with_claims();
        (token, key, keys)
    }

    fn setup_with_claims() -> (String, SigningKey, Keys, AccessClaims) {
        let tenant = keel_tenancy::TenantId::parse("acme").unwrap();
        let key = SigningKey::generate(&tenant).unwrap();
        let claims = AccessClaims {
            iss: crate::issuer("http://iss", &tenant),
            sub: "u".into(),
            aud: crate::audience(&tenant),
            client_id: "c".into(),
            iat: NOW,
            exp: NOW + 300,
            nbf: None,
            jti: "j".into(),
            scope: "account".into(),
            tenant_id: "acme".into(),
            tier: "pro".into(),
            sid: "s".into(),
            acr: "pwd".into(),
            amr: vec!["pwd".into()],
            auth_time: NOW,
        };
        let token = crate::sign(&claims, &key);
        let record = KeyRecord {
            kid: key.kid.clone(),
            tenant,
            public: key.public(),
            state: KeyState::Active,
            valid_from: NOW - 10,
            verify_until: None,
        };
        let keys = Keys(Mutex::new(HashMap::from([(key.kid.clone(), record)])));
        (token, key, keys, claims)
    }

    #[test]
    fn hits_still_honour_key_revocation_and_expiry() {
        let (token, key, keys) = setup();
        let clock = ManualClock::at(NOW);
        let v = Verifier {
            issuer_base: "http://iss",
            clock: &clock,
        };
        let cache = VerifiedCache::new(60, 10);
        let first = cache.verify(&v, &token, &keys).unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.verify(&v, &token, &keys).unwrap(), first);
        // One byte changed is another token: verified from scratch, and refused.
        let mut other = token.clone().into_bytes();
        let last = other.len() - 2;
        other[last] = if other[last] == b'A' { b'B' } else { b'A' };
        let other = String::from_utf8(other).unwrap();
        assert!(cache.verify(&v, &other, &keys).is_err());
        // Expiry is checked on a hit.
        clock.advance(300 + LEEWAY_SECS);
        assert!(cache.verify(&v, &token, &keys).is_err());
        // Key revocation is checked on a hit.
        clock.set(NOW + 1);
        cache.verify(&v, &token, &keys).unwrap();
        keys.0.lock().unwrap().get_mut(&key.kid).unwrap().state = KeyState::Revoked;
        assert_eq!(
            cache.verify(&v, &token, &keys),
            Err(TokenError::KeyNotUsable)
        );
        keys.0.lock().unwrap().clear();
        assert_eq!(cache.verify(&v, &token, &keys), Err(TokenError::UnknownKey));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let (_, key, keys, claims) = setup_with_claims();
        let clock = ManualClock::at(NOW);
        let v = Verifier {
            issuer_base: "http://iss",
            clock: &clock,
        };
        let cache = VerifiedCache::new(60, 4);
        for i in 0..20 {
            let token = crate::sign(
                &AccessClaims {
                    jti: format!("j{i}"),
                    ..claims.clone()
                },
                &key,
            );
            cache.verify(&v, &token, &keys).unwrap();
            assert!(cache.len() <= 4, "{}", cache.len());
        }
        assert!(!cache.is_empty());
    }
}
