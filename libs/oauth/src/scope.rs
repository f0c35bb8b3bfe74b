//! RFC 6749 §3.3 scopes: space-delimited tokens of `%x21 / %x23-5B / %x5D-7E`.

use crate::{ErrorCode, OAuthError};

/// More scopes than this in one request is not a real client.
pub const MAX_SCOPES: usize = 64;

fn scope_char(b: u8) -> bool {
    b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
}

pub fn is_valid_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(scope_char)
}

/// Splits a scope parameter into distinct tokens, in order.
pub fn parse(raw: &str) -> Result<Vec<String>, OAuthError> {
    let mut out: Vec<String> = Vec::new();
    for t in raw.split(' ').filter(|t| !t.is_empty()) {
        if !is_valid_token(t) {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                "a scope contains a character RFC 6749 §3.3 does not allow",
            ));
        }
        if !out.iter().any(|s| s == t) {
            out.push(t.to_owned());
        }
        if out.len() > MAX_SCOPES {
            return Err(OAuthError::new(ErrorCode::InvalidScope, "too many scopes"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_split_and_dedupe() {
        assert_eq!(
            parse("openid  documents:read openid").unwrap(),
            vec!["openid", "documents:read"]
        );
        assert!(parse("").unwrap().is_empty());
        assert!(parse("a\"b").is_err());
        assert!(parse("a\\b").is_err());
        assert!(parse("é").is_err());
    }
}
