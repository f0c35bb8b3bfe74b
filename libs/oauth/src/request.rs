//! The authorization and token requests, parsed and checked as far as can be done without the
//! client registry.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::form::Params;
use crate::{ErrorCode, OAuthError, pkce, scope};

/// State and nonce longer than this are refused (they are echoed back and stored).
pub const MAX_STATE_BYTES: usize = 512;
/// Client identifiers: bounded, printable.
pub const MAX_CLIENT_ID_BYTES: usize = 128;

pub fn is_valid_client_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_CLIENT_ID_BYTES && id.bytes().all(|b| b.is_ascii_graphic())
}

/// An authorization request whose client and redirect URI are known to be well formed; the
/// caller checks them against the registry *before* trusting the redirect for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    pub client_id: String,
    /// Required: every client registers at least one, and we do not guess which one is meant.
    pub redirect_uri: String,
    params: ParamsView,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ParamsView {
    response_type: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    prompt: Option<String>,
    response_mode: Option<String>,
    request: bool,
}

/// A fully checked authorization request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorize {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: String,
    /// `prompt=none`: the caller must answer `login_required` (we keep no browser session).
    pub prompt_none: bool,
}

impl AuthorizeRequest {
    /// First stage: errors here are shown to the user, never redirected (RFC 6749 §4.1.2.1),
    /// because the redirect URI is not yet trusted.
    pub fn parse(query: &str) -> Result<AuthorizeRequest, OAuthError> {
        let p = Params::parse(query.as_bytes())?;
        let client_id = p.require("client_id")?;
        if !is_valid_client_id(&client_id) {
            return Err(OAuthError::invalid_request("client_id is malformed"));
        }
        let redirect_uri = p.require("redirect_uri")?;
        Ok(AuthorizeRequest {
            client_id,
            redirect_uri,
            params: ParamsView {
                response_type: p.take("response_type"),
                scope: p.take("scope"),
                state: p.take("state"),
                nonce: p.take("nonce"),
                code_challenge: p.take("code_challenge"),
                code_challenge_method: p.take("code_challenge_method"),
                prompt: p.take("prompt"),
                response_mode: p.take("response_mode"),
                request: p.get("request").is_some() || p.get("request_uri").is_some(),
            },
        })
    }

    /// The `state` to echo in an error redirect (only when it is acceptable).
    pub fn state(&self) -> Option<&str> {
        self.params
            .state
            .as_deref()
            .filter(|s| s.len() <= MAX_STATE_BYTES)
    }

    /// Second stage, once the client and redirect URI are trusted: errors here are redirected.
    pub fn check(&self) -> Result<Authorize, OAuthError> {
        let p = &self.params;
        match p.response_type.as_deref() {
            Some("code") => {}
            None => return Err(OAuthError::invalid_request("response_type is required")),
            Some(_) => {
                return Err(OAuthError::new(
                    ErrorCode::UnsupportedResponseType,
                    "only response_type=code is served (no implicit or hybrid flows)",
                ));
            }
        }
        if let Some(m) = p.response_mode.as_deref()
            && m != "query"
        {
            return Err(OAuthError::invalid_request(
                "only response_mode=query is served",
            ));
        }
        if p.request {
            return Err(OAuthError::new(
                ErrorCode::InvalidRequest,
                "request objects are not supported",
            ));
        }
        if p.state.as_ref().is_some_and(|s| s.len() > MAX_STATE_BYTES) {
            return Err(OAuthError::invalid_request("state is too long"));
        }
        if p.nonce.as_ref().is_some_and(|s| s.len() > MAX_STATE_BYTES) {
            return Err(OAuthError::invalid_request("nonce is too long"));
        }
        let code_challenge = pkce::check_challenge(
            p.code_challenge.as_deref(),
            p.code_challenge_method.as_deref(),
        )?;
        let scope = scope::parse(p.scope.as_deref().unwrap_or(""))?;
        let prompt_none = match p.prompt.as_deref() {
            None => false,
            Some(pr) => {
                let parts: Vec<&str> = pr.split(' ').filter(|s| !s.is_empty()).collect();
                if parts.contains(&"none") && parts.len() > 1 {
                    return Err(OAuthError::invalid_request(
                        "prompt=none cannot be combined with other values",
                    ));
                }
                if let Some(bad) = parts
                    .iter()
                    .find(|v| !matches!(**v, "none" | "login" | "consent" | "select_account"))
                {
                    return Err(OAuthError::invalid_request(format!(
                        "prompt value {bad:?} is not supported"
                    )));
                }
                parts == ["none"]
            }
        };
        Ok(Authorize {
            client_id: self.client_id.clone(),
            redirect_uri: self.redirect_uri.clone(),
            scope,
            state: p.state.clone(),
            nonce: p.nonce.clone(),
            code_challenge,
            prompt_none,
        })
    }
}

/// How the client authenticated at the token (or introspection) endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// A public client: identified by `client_id`, no secret.
    None { client_id: String },
    /// `client_secret_basic` or `client_secret_post`.
    Secret { client_id: String, secret: String },
}

impl ClientAuth {
    pub fn client_id(&self) -> &str {
        match self {
            ClientAuth::None { client_id } | ClientAuth::Secret { client_id, .. } => client_id,
        }
    }
}

/// The grant of a token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    AuthorizationCode {
        code: String,
        redirect_uri: String,
        code_verifier: String,
    },
    RefreshToken {
        refresh_token: String,
        scope: Option<Vec<String>>,
    },
    ClientCredentials {
        scope: Option<Vec<String>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub grant: Grant,
    /// `None` only for a refresh without any client identification (keel's own first-party
    /// clients, whose refresh tokens name their client).
    pub client: Option<ClientAuth>,
}

fn invalid_client(description: &'static str) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidClient, description)
}

/// RFC 6749 §2.3.1: `Basic base64(urlencode(id) ":" urlencode(secret))`.
pub fn parse_basic(header: &str) -> Result<(String, String), OAuthError> {
    let (scheme, rest) = header
        .split_once(' ')
        .ok_or(invalid_client("malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(invalid_client(
            "only Basic client authentication is accepted",
        ));
    }
    let raw = STANDARD
        .decode(rest.trim())
        .map_err(|_| invalid_client("malformed Basic credentials"))?;
    let raw = String::from_utf8(raw).map_err(|_| invalid_client("malformed Basic credentials"))?;
    let (id, secret) = raw
        .split_once(':')
        .ok_or(invalid_client("malformed Basic credentials"))?;
    let decode = |s: &str| -> Result<String, OAuthError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&format!("v={s}"))
            .map_err(|_| invalid_client("malformed Basic credentials"))?;
        Ok(pairs.into_iter().next().map(|(_, v)| v).unwrap_or_default())
    };
    Ok((decode(id)?, decode(secret)?))
}

/// Client authentication from the Authorization header and the form: at most one method
/// (RFC 6749 §2.3), and a `client_id` in the form must agree with the header's.
pub fn client_auth(
    p: &Params,
    authorization: Option<&str>,
) -> Result<Option<ClientAuth>, OAuthError> {
    let form_id = p.take("client_id");
    let form_secret = p.take("client_secret");
    if let Some(id) = &form_id
        && !is_valid_client_id(id)
    {
        return Err(invalid_client("client_id is malformed"));
    }
    match authorization {
        Some(h) => {
            if form_secret.is_some() {
                return Err(OAuthError::invalid_request(
                    "use one client authentication method, not two",
                ));
            }
            let (id, secret) = parse_basic(h)?;
            if !is_valid_client_id(&id) || secret.is_empty() {
                return Err(invalid_client("malformed Basic credentials"));
            }
            if form_id.as_ref().is_some_and(|f| *f != id) {
                return Err(OAuthError::invalid_request(
                    "client_id in the form differs from the authenticated client",
                ));
            }
            Ok(Some(ClientAuth::Secret {
                client_id: id,
                secret,
            }))
        }
        None => match (form_id, form_secret) {
            (Some(client_id), Some(secret)) => Ok(Some(ClientAuth::Secret { client_id, secret })),
            (Some(client_id), None) => Ok(Some(ClientAuth::None { client_id })),
            (None, Some(_)) => Err(invalid_client("client_secret without client_id")),
            (None, None) => Ok(None),
        },
    }
}

impl TokenRequest {
    pub fn parse(body: &[u8], authorization: Option<&str>) -> Result<TokenRequest, OAuthError> {
        let p = Params::parse(body)?;
        let client = client_auth(&p, authorization)?;
        let grant = match p.get("grant_type") {
            None => return Err(OAuthError::invalid_request("grant_type is required")),
            Some("authorization_code") => {
                let code_verifier = p.take("code_verifier").ok_or_else(|| {
                    OAuthError::invalid_request("code_verifier is required (PKCE)")
                })?;
                Grant::AuthorizationCode {
                    code: p.require("code")?,
                    redirect_uri: p.require("redirect_uri")?,
                    code_verifier,
                }
            }
            Some("refresh_token") => Grant::RefreshToken {
                refresh_token: p.require("refresh_token")?,
                scope: p.get("scope").map(scope::parse).transpose()?,
            },
            Some("client_credentials") => Grant::ClientCredentials {
                scope: p.get("scope").map(scope::parse).transpose()?,
            },
            Some("password") | Some("implicit") => {
                return Err(OAuthError::new(
                    ErrorCode::UnsupportedGrantType,
                    "this grant is never offered (RFC 9700 §2.4)",
                ));
            }
            Some(_) => {
                return Err(OAuthError::new(
                    ErrorCode::UnsupportedGrantType,
                    "grant_type must be authorization_code, refresh_token or client_credentials",
                ));
            }
        };
        match (&grant, &client) {
            (Grant::AuthorizationCode { .. }, None) => Err(invalid_client(
                "the client must identify itself (client_id or Basic authentication)",
            )),
            (Grant::ClientCredentials { .. }, Some(ClientAuth::Secret { .. })) => {
                Ok(TokenRequest { grant, client })
            }
            (Grant::ClientCredentials { .. }, _) => Err(invalid_client(
                "client_credentials needs an authenticated confidential client",
            )),
            _ => Ok(TokenRequest { grant, client }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkce::s256_challenge;

    const V: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

    fn authorize(extra: &str) -> String {
        format!(
            "client_id=web&redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb&response_type=code&scope=openid&state=s1&code_challenge={}&code_challenge_method=S256{extra}",
            s256_challenge(V)
        )
    }

    #[test]
    fn a_good_authorization_request_checks() {
        let a = AuthorizeRequest::parse(&authorize(""))
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(a.redirect_uri, "https://app.example.com/cb");
        assert_eq!(a.scope, vec!["openid"]);
        assert_eq!(a.state.as_deref(), Some("s1"));
        assert!(!a.prompt_none);
    }

    #[test]
    fn r21_pkce_is_required_with_s256() {
        let no_method = authorize("").replace("&code_challenge_method=S256", "");
        let e = AuthorizeRequest::parse(&no_method)
            .unwrap()
            .check()
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        let plain = authorize("").replace("S256", "plain");
        assert!(AuthorizeRequest::parse(&plain).unwrap().check().is_err());
        let none = "client_id=web&redirect_uri=https%3A%2F%2Fa.example%2Fcb&response_type=code";
        assert!(AuthorizeRequest::parse(none).unwrap().check().is_err());
    }

    #[test]
    fn implicit_and_hybrid_are_refused() {
        for rt in ["token", "id_token", "code%20id_token", "code%20token"] {
            let q = authorize("").replace("response_type=code", &format!("response_type={rt}"));
            let e = AuthorizeRequest::parse(&q).unwrap().check().unwrap_err();
            assert_eq!(e.code, ErrorCode::UnsupportedResponseType, "{rt}");
        }
    }

    #[test]
    fn unredirectable_errors_come_first() {
        assert!(AuthorizeRequest::parse("redirect_uri=x").is_err());
        assert!(AuthorizeRequest::parse("client_id=web").is_err());
        assert!(AuthorizeRequest::parse(&authorize("&client_id=other")).is_err());
        assert!(AuthorizeRequest::parse("client_id=a%20b&redirect_uri=x").is_err());
    }

    #[test]
    fn prompt_none_and_bad_prompts() {
        let a = AuthorizeRequest::parse(&authorize("&prompt=none"))
            .unwrap()
            .check()
            .unwrap();
        assert!(a.prompt_none);
        assert!(
            AuthorizeRequest::parse(&authorize("&prompt=none%20login"))
                .unwrap()
                .check()
                .is_err()
        );
    }

    #[test]
    fn token_requests_parse_by_grant() {
        let t = TokenRequest::parse(
            format!("grant_type=authorization_code&code=c&redirect_uri=https%3A%2F%2Fa%2Fcb&code_verifier={V}&client_id=web").as_bytes(),
            None,
        )
        .unwrap();
        assert!(matches!(t.grant, Grant::AuthorizationCode { .. }));
        assert_eq!(
            t.client,
            Some(ClientAuth::None {
                client_id: "web".into()
            })
        );
        // no code_verifier, no code.
        let e = TokenRequest::parse(
            b"grant_type=authorization_code&code=c&redirect_uri=x&client_id=web",
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        for g in [
            "password",
            "implicit",
            "urn:ietf:params:oauth:grant-type:device_code",
        ] {
            let e = TokenRequest::parse(format!("grant_type={g}").as_bytes(), None).unwrap_err();
            assert_eq!(e.code, ErrorCode::UnsupportedGrantType);
        }
    }

    #[test]
    fn client_authentication_methods() {
        let basic = format!("Basic {}", STANDARD.encode("svc%3A1:s%26cret"));
        let t = TokenRequest::parse(b"grant_type=client_credentials", Some(&basic)).unwrap();
        assert_eq!(
            t.client,
            Some(ClientAuth::Secret {
                client_id: "svc:1".into(),
                secret: "s&cret".into()
            })
        );
        // Two methods at once, a mismatched client_id, or no secret at all are refused.
        assert!(
            TokenRequest::parse(
                b"grant_type=client_credentials&client_secret=x",
                Some(&basic)
            )
            .is_err()
        );
        assert!(
            TokenRequest::parse(
                b"grant_type=client_credentials&client_id=other",
                Some(&basic)
            )
            .is_err()
        );
        let e =
            TokenRequest::parse(b"grant_type=client_credentials&client_id=svc", None).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidClient);
        assert!(TokenRequest::parse(b"grant_type=client_credentials", Some("Bearer x")).is_err());
    }
}
