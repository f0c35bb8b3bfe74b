//! Redirect URIs: what may be registered, and how a presented one is matched (RFC 9700 §2.1:
//! exact string comparison; only the port of a loopback `http` URI may vary, RFC 8252 §7.3).

/// Longer URIs are refused at registration.
pub const MAX_URI_BYTES: usize = 2000;

/// Why a redirect URI cannot be registered.
pub fn check_registrable(uri: &str) -> Result<(), &'static str> {
    if uri.is_empty() || uri.len() > MAX_URI_BYTES {
        return Err("must be 1 to 2000 characters");
    }
    if uri.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces");
    }
    if uri.contains('#') {
        return Err("must not contain a fragment (RFC 6749 §3.1.2)");
    }
    if uri.contains('*') {
        return Err("wildcards are not allowed: redirect URIs are matched exactly");
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err("must be an absolute URI");
    };
    match scheme {
        "https" | "http" => {
            let Some(after) = rest.strip_prefix("//") else {
                return Err("must be an absolute URI");
            };
            let authority = after.split(['/', '?']).next().unwrap_or("");
            if authority.contains('@') {
                return Err("must not contain userinfo");
            }
            let host = host_of(authority);
            if host.is_empty() {
                return Err("must name a host");
            }
            if host.ends_with('.') {
                return Err("must not end its host with a dot");
            }
            if host.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err("must write its host in lower case");
            }
            if scheme == "http" && !is_loopback_ip(host) {
                return Err(
                    "plain http is allowed only for loopback IPs (127.0.0.1, [::1]); use https",
                );
            }
            Ok(())
        }
        // RFC 8252 §7.1: private-use schemes of native apps are reverse domain names.
        s if s.contains('.')
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+')
            }) =>
        {
            Ok(())
        }
        _ => Err("scheme must be https, http on a loopback IP, or a reverse-domain private scheme"),
    }
}

fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => "",
        }
    } else {
        authority.split(':').next().unwrap_or("")
    }
}

fn is_loopback_ip(host: &str) -> bool {
    host == "127.0.0.1" || host == "[::1]"
}

/// `http://<loopback>[:port]<rest>` → (`http://<loopback>`, `<rest>`).
fn loopback_parts(uri: &str) -> Option<(&str, &str)> {
    let after = uri.strip_prefix("http://")?;
    let host = host_of(after.split(['/', '?']).next()?);
    if !is_loopback_ip(host) {
        return None;
    }
    let tail = &after[host.len()..];
    let rest = match tail.strip_prefix(':') {
        Some(p) => {
            let digits = p.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 5 {
                return None;
            }
            &p[digits..]
        }
        None => tail,
    };
    Some((&uri[..7 + host.len()], rest))
}

/// Does a presented redirect URI match a registered one? Byte-for-byte, except that a loopback
/// `http` URI may carry any port (native apps bind an ephemeral one).
pub fn matches(registered: &str, presented: &str) -> bool {
    if registered == presented {
        return true;
    }
    match (loopback_parts(registered), loopback_parts(presented)) {
        (Some(r), Some(p)) => r == p,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &str = "https://app.example.com/callback";

    #[test]
    fn r1_exact_match_only() {
        assert!(matches(REG, REG));
        for bad in [
            "https://app.example.com/callback/extra",
            "https://app.example.com/callback?x=1",
            "https://app.example.com/Callback",
            "https://APP.example.com/callback",
            "https://app.example.com./callback",
            "https://a@app.example.com/callback",
            "https://app.example.com/callback#frag",
            "https://app.example.com:443/callback",
            "http://app.example.com/callback",
            "https://app.example.com/callbac",
            "https://app.example.com.evil.com/callback",
        ] {
            assert!(!matches(REG, bad), "{bad} must not match");
        }
    }

    #[test]
    fn loopback_port_may_vary_but_nothing_else() {
        let r = "http://127.0.0.1/cb";
        assert!(matches(r, "http://127.0.0.1:53121/cb"));
        assert!(matches("http://127.0.0.1:8080/cb", "http://127.0.0.1:9/cb"));
        assert!(matches("http://[::1]/cb", "http://[::1]:4000/cb"));
        assert!(!matches(r, "http://127.0.0.1:53121/cb2"));
        assert!(!matches(r, "http://127.0.0.1:53121/cb?x"));
        assert!(!matches(r, "http://127.0.0.1:/cb"));
        assert!(!matches(r, "http://127.0.0.1:123456/cb"));
        assert!(!matches(r, "http://[::1]:53121/cb"));
        assert!(!matches("http://localhost/cb", "http://localhost:1/cb"));
    }

    #[test]
    fn unsafe_registrations_are_refused() {
        assert!(check_registrable(REG).is_ok());
        assert!(check_registrable("http://127.0.0.1/cb").is_ok());
        assert!(check_registrable("http://[::1]:8080/cb").is_ok());
        assert!(check_registrable("com.example.app:/oauth").is_ok());
        for bad in [
            "",
            "https://*.example.com/cb",
            "https://app.example.com/*",
            "http://app.example.com/cb",
            "http://localhost/cb",
            "https://user@app.example.com/cb",
            "https://app.example.com/cb#x",
            "https://app.example.com./cb",
            "https://App.example.com/cb",
            "/relative",
            "https:///cb",
            "javascript:alert(1)",
            "https://app.example.com/c b",
        ] {
            assert!(check_registrable(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
