//! RFC 7636 with S256 only.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::OAuthError;

/// The one method we accept (R-21: `plain`, and a missing method, which defaults to `plain`,
/// are refused).
pub const METHOD_S256: &str = "S256";

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
pub fn is_valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len()) && v.bytes().all(unreserved)
}

/// An S256 challenge is the unpadded base64url of a SHA-256: exactly 43 characters.
pub fn is_valid_s256_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// BASE64URL(SHA256(ASCII(verifier))).
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Checks the challenge half of an authorization request.
pub fn check_challenge(
    challenge: Option<&str>,
    method: Option<&str>,
) -> Result<String, OAuthError> {
    let Some(challenge) = challenge else {
        return Err(OAuthError::invalid_request(
            "code_challenge is required (PKCE with S256)",
        ));
    };
    match method {
        Some(METHOD_S256) => {}
        Some("plain") => {
            return Err(OAuthError::invalid_request(
                "code_challenge_method plain is not accepted; use S256",
            ));
        }
        None => {
            return Err(OAuthError::invalid_request(
                "code_challenge_method is required and must be S256",
            ));
        }
        Some(_) => {
            return Err(OAuthError::invalid_request(
                "code_challenge_method must be S256",
            ));
        }
    }
    if !is_valid_s256_challenge(challenge) {
        return Err(OAuthError::invalid_request(
            "code_challenge is not a base64url SHA-256",
        ));
    }
    Ok(challenge.to_owned())
}

/// §4.6: does `verifier` hash to `challenge`? Compared in constant time.
pub fn verify(verifier: &str, challenge: &str) -> bool {
    is_valid_verifier(verifier)
        && bool::from(
            s256_challenge(verifier)
                .as_bytes()
                .ct_eq(challenge.as_bytes()),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc7636_appendix_b_vector() {
        let v = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(
            s256_challenge(v),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(verify(v, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
    }

    #[test]
    fn r21_plain_and_missing_method_are_refused() {
        let c = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(check_challenge(Some(c), Some("plain")).is_err());
        assert!(check_challenge(Some(c), None).is_err());
        assert!(check_challenge(Some(c), Some("s256")).is_err());
        assert!(check_challenge(None, Some("S256")).is_err());
        assert!(check_challenge(Some("short"), Some("S256")).is_err());
        assert_eq!(check_challenge(Some(c), Some("S256")).unwrap(), c);
    }

    #[test]
    fn verifier_length_and_alphabet_bounds() {
        assert!(!is_valid_verifier(&"a".repeat(42)));
        assert!(is_valid_verifier(&"a".repeat(43)));
        assert!(is_valid_verifier(&"a".repeat(128)));
        assert!(!is_valid_verifier(&"a".repeat(129)));
        assert!(!is_valid_verifier(&format!("{}+", "a".repeat(42))));
        assert!(!is_valid_verifier(&format!("{} ", "a".repeat(42))));
        // A 129-character verifier whose hash matches is still refused.
        let long = "a".repeat(129);
        assert!(!verify(&long, &s256_challenge(&long)));
    }

    proptest! {
        #[test]
        fn only_the_right_verifier_matches(v in "[A-Za-z0-9._~-]{43,128}", w in "[A-Za-z0-9._~-]{43,128}") {
            let c = s256_challenge(&v);
            prop_assert!(is_valid_s256_challenge(&c));
            prop_assert!(verify(&v, &c));
            prop_assert_eq!(verify(&w, &c), v == w);
        }
    }
}
