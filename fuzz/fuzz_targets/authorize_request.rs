//! The authorization request parser and checker, and the redirect-URI rules, on arbitrary input:
//! no panic, and whatever is accepted satisfies the invariants the auth service relies on.
#![no_main]

use keel_oauth::{pkce, redirect, request::AuthorizeRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = AuthorizeRequest::parse(query) {
        assert!(keel_oauth::request::is_valid_client_id(&req.client_id));
        if let Ok(a) = req.check() {
            assert!(pkce::is_valid_s256_challenge(&a.code_challenge));
            assert!(a.scope.iter().all(|s| keel_oauth::scope::is_valid_token(s)));
            assert!(a.state.as_ref().is_none_or(|s| s.len() <= 512));
        }
        // A URI always matches itself; a registrable URI never matches a different one unless
        // both are loopback http URIs differing only in port.
        assert!(redirect::matches(&req.redirect_uri, &req.redirect_uri));
        let _ = redirect::check_registrable(&req.redirect_uri);
    }
    if let Some((a, b)) = query.split_once('\n') {
        if redirect::matches(a, b) && a != b {
            assert!(a.starts_with("http://") && b.starts_with("http://"));
        }
    }
});
