//! OAuth client registrations.

pub const GRANT_CODE: &str = "authorization_code";
pub const GRANT_REFRESH: &str = "refresh_token";
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// The grants keel offers; never `password` or `implicit` (RFC 9700 §2.4).
pub const GRANTS: &[&str] = &[GRANT_CODE, GRANT_REFRESH, GRANT_CLIENT_CREDENTIALS];
/// More redirect URIs than this per client is a configuration mistake.
pub const MAX_REDIRECT_URIS: usize = 20;

/// What a client may do, as registered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientSpec {
    pub client_id: String,
    pub display_name: String,
    /// Confidential clients authenticate with a secret; public ones use PKCE alone.
    pub confidential: bool,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    /// The scopes this client may obtain: all a `client_credentials` token carries; for the
    /// code flow, a bound on what it may request (empty: whatever the user's roles allow).
    pub scopes: Vec<String>,
}

impl ClientSpec {
    pub fn allows(&self, grant: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant)
    }
}

/// Why a registration is refused: (field, reason).
pub fn check(spec: &ClientSpec) -> Result<(), (&'static str, String)> {
    if !keel_oauth::request::is_valid_client_id(&spec.client_id) {
        return Err((
            "client_id",
            "must be 1 to 128 printable ASCII characters".into(),
        ));
    }
    if spec.display_name.chars().count() > 200 {
        return Err(("display_name", "must be at most 200 characters".into()));
    }
    if spec.grant_types.is_empty() {
        return Err(("grant_types", "name at least one grant".into()));
    }
    if let Some(g) = spec
        .grant_types
        .iter()
        .find(|g| !GRANTS.contains(&g.as_str()))
    {
        return Err((
            "grant_types",
            format!("{g:?} is not offered (authorization_code, refresh_token, client_credentials)"),
        ));
    }
    if spec.allows(GRANT_CLIENT_CREDENTIALS) && !spec.confidential {
        return Err((
            "grant_types",
            "client_credentials needs a confidential client (one with a secret)".into(),
        ));
    }
    if spec.allows(GRANT_CODE) && spec.redirect_uris.is_empty() {
        return Err((
            "redirect_uris",
            "the authorization_code grant needs at least one redirect URI".into(),
        ));
    }
    if !spec.allows(GRANT_CODE) && !spec.redirect_uris.is_empty() {
        return Err((
            "redirect_uris",
            "only clients of the authorization_code grant have redirect URIs".into(),
        ));
    }
    if spec.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(("redirect_uris", format!("at most {MAX_REDIRECT_URIS}")));
    }
    for uri in &spec.redirect_uris {
        keel_oauth::redirect::check_registrable(uri)
            .map_err(|why| ("redirect_uris", format!("{uri:?}: {why}")))?;
    }
    if let Some(s) = spec
        .scopes
        .iter()
        .find(|s| !crate::policy::KNOWN_SCOPES.contains(&s.as_str()))
    {
        return Err(("scopes", format!("{s:?} is not a keel scope")));
    }
    if spec.scopes.is_empty() && spec.allows(GRANT_CLIENT_CREDENTIALS) {
        return Err((
            "scopes",
            "a client_credentials client needs the scopes its tokens carry".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ClientSpec {
        ClientSpec {
            client_id: "web".into(),
            display_name: "Web".into(),
            confidential: false,
            redirect_uris: vec!["https://app.example.com/cb".into()],
            grant_types: vec![GRANT_CODE.into(), GRANT_REFRESH.into()],
            scopes: vec![],
        }
    }

    #[test]
    fn unsafe_client_specs_are_refused() {
        assert!(check(&spec()).is_ok());
        let mut s = spec();
        s.redirect_uris = vec!["https://*.example.com/cb".into()];
        assert_eq!(check(&s).unwrap_err().0, "redirect_uris");
        let mut s = spec();
        s.grant_types.push("password".into());
        assert_eq!(check(&s).unwrap_err().0, "grant_types");
        let mut s = spec();
        s.grant_types = vec![GRANT_CLIENT_CREDENTIALS.into()];
        assert!(
            check(&s).is_err(),
            "public clients get no client_credentials"
        );
        let mut s = spec();
        s.redirect_uris.clear();
        assert!(check(&s).is_err());
        let mut s = spec();
        s.scopes = vec!["documents:read".into()];
        assert!(
            check(&s).is_ok(),
            "a code-flow client bounded to some scopes"
        );
        s.scopes = vec!["root".into()];
        assert!(check(&s).is_err(), "only keel scopes");
        let mut s = spec();
        s.confidential = true;
        s.redirect_uris.clear();
        s.grant_types = vec![GRANT_CLIENT_CREDENTIALS.into()];
        assert!(check(&s).is_err(), "a service client names its scopes");
    }
}
