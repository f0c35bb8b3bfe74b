//! Form-encoded parameters (request bodies and query strings).

use crate::OAuthError;

/// Larger forms are refused before parsing: no legitimate OAuth request comes close.
pub const MAX_FORM_BYTES: usize = 16 * 1024;
/// Likewise for any one value (tokens, codes, URIs, state).
pub const MAX_VALUE_BYTES: usize = 4 * 1024;

/// Parsed parameters, each name at most once.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses `a=1&b=2`. A repeated name is an error (RFC 6749 §3.1), as is anything that is not
    /// valid form encoding or UTF-8. Empty values count as absent.
    pub fn parse(raw: &[u8]) -> Result<Params, OAuthError> {
        if raw.len() > MAX_FORM_BYTES {
            return Err(OAuthError::invalid_request("the request is too large"));
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(raw)
            .map_err(|_| OAuthError::invalid_request("the parameters are not form-encoded"))?;
        let mut out: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            if out.iter().any(|(seen, _)| *seen == k) {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {} is repeated",
                    printable(&k)
                )));
            }
            if v.len() > MAX_VALUE_BYTES {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {} is too long",
                    printable(&k)
                )));
            }
            out.push((k, v));
        }
        Ok(Params(out))
    }

    /// The value of `name`, if present and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Like [`Params::get`], but owned.
    pub fn take(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_owned)
    }

    /// The value of `name`, or `invalid_request` naming it.
    pub fn require(&self, name: &'static str) -> Result<String, OAuthError> {
        self.take(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("{name} is required")))
    }
}

/// A parameter name made safe to echo in an error description.
fn printable(s: &str) -> String {
    let cut: String = s
        .chars()
        .take(40)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    format!("{cut:?}")
}

/// Encodes pairs as `a=1&b=2` (for redirects and forms).
pub fn encode(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_are_refused() {
        let e = Params::parse(b"a=1&b=2&a=3").unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::InvalidRequest);
        assert!(e.description.contains("\"a\""), "{e}");
    }

    #[test]
    fn empty_values_count_as_absent() {
        let p = Params::parse(b"a=&b=x%20y").unwrap();
        assert_eq!(p.get("a"), None);
        assert_eq!(p.get("b"), Some("x y"));
        assert!(p.require("a").is_err());
    }

    #[test]
    fn oversized_forms_and_values_are_refused() {
        assert!(Params::parse(&vec![b'a'; MAX_FORM_BYTES + 1]).is_err());
        let long = format!("a={}", "x".repeat(MAX_VALUE_BYTES + 1));
        assert!(Params::parse(long.as_bytes()).is_err());
    }

    #[test]
    fn encoding_round_trips() {
        let s = encode(&[("code", "a b&c"), ("state", "é")]);
        let p = Params::parse(s.as_bytes()).unwrap();
        assert_eq!(p.get("code"), Some("a b&c"));
        assert_eq!(p.get("state"), Some("é"));
    }
}
