//! The token request parser (grants and client authentication) on arbitrary bodies and
//! Authorization headers: no panic, and accepted requests are internally consistent.
#![no_main]

use keel_oauth::request::{ClientAuth, Grant, TokenRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first line (if any) is the Authorization header, the rest the body.
    let (header, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    };
    if let Ok(t) = TokenRequest::parse(body, header) {
        match &t.grant {
            Grant::AuthorizationCode {
                code,
                redirect_uri,
                code_verifier,
            } => {
                assert!(!code.is_empty() && !redirect_uri.is_empty() && !code_verifier.is_empty());
                assert!(t.client.is_some());
            }
            Grant::ClientCredentials { .. } => {
                assert!(matches!(t.client, Some(ClientAuth::Secret { .. })));
            }
            Grant::RefreshToken { refresh_token, .. } => assert!(!refresh_token.is_empty()),
        }
        if let Some(c) = &t.client {
            assert!(keel_oauth::request::is_valid_client_id(c.client_id()));
        }
    }
    let _ = keel_oauth::pkce::verify(
        &String::from_utf8_lossy(body),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
    );
});
