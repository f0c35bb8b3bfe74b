//! What app teams get from a spec: each client's OpenID Connect configuration and a typed Rust
//! snippet (the `openidconnect` / `oauth2` crates) for obtaining and refreshing tokens.

use crate::client::{ClientSpec, GRANT_CLIENT_CREDENTIALS, GRANT_CODE, GRANT_REFRESH};
use crate::spec::Spec;

/// The issuer of a tenant under a deployment's base URL.
pub fn issuer(issuer_base: &str, tenant: &str) -> String {
    format!("{}/t/{tenant}", issuer_base.trim_end_matches('/'))
}

/// One client's configuration, as JSON.
pub fn client_config(spec: &Spec, c: &ClientSpec, issuer_base: &str) -> serde_json::Value {
    let iss = issuer(issuer_base, &spec.tenant);
    let user_scopes: Vec<&str> = spec
        .policy
        .roles
        .values()
        .flatten()
        .map(String::as_str)
        .chain(["openid", "profile"])
        .fold(Vec::new(), |mut acc, s| {
            if !acc.contains(&s) {
                acc.push(s);
            }
            acc
        });
    serde_json::json!({
        "issuer": iss,
        "discovery_url": format!("{iss}/.well-known/openid-configuration"),
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "jwks_uri": format!("{iss}/jwks.json"),
        "client_id": c.client_id,
        "client_type": if c.confidential { "confidential" } else { "public" },
        "token_endpoint_auth_method": if c.confidential { "client_secret_basic" } else { "none" },
        "grant_types": c.grant_types,
        "redirect_uris": c.redirect_uris,
        "pkce": { "required": true, "method": "S256" },
        "id_token_signing_alg": crate::policy::ALG_EDDSA,
        "scopes": if c.allows(GRANT_CLIENT_CREDENTIALS) { c.scopes.clone() } else { user_scopes.iter().map(|s| (*s).to_owned()).collect() },
        "access_token_ttl_seconds": spec.policy.access_ttl_secs,
        "refresh": c.allows(GRANT_REFRESH).then_some(serde_json::json!({
            "rotates": true,
            "idle_ttl_seconds": spec.policy.refresh_idle_secs,
            "absolute_ttl_seconds": spec.policy.refresh_absolute_secs,
            "reuse": "presenting a used refresh token revokes the whole session",
        })),
    })
}

fn code_flow_snippet(iss: &str, c: &ClientSpec) -> String {
    let redirect = c.redirect_uris.first().map(String::as_str).unwrap_or("");
    let secret = if c.confidential {
        "Some(ClientSecret::new(std::env::var(\"KEEL_CLIENT_SECRET\")?))"
    } else {
        "None"
    };
    format!(
        r#"// Cargo.toml: openidconnect = "4"  (with its reqwest feature, or your own HTTP client)
use openidconnect::core::{{CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata}};
use openidconnect::{{AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl, RefreshToken, Scope, TokenResponse}};

pub const ISSUER: &str = "{iss}";
pub const CLIENT_ID: &str = "{id}";
pub const REDIRECT_URI: &str = "{redirect}";

/// Step 1: send the browser to `url`; keep `csrf`, `nonce` and `verifier` for step 2.
pub async fn start(http: &reqwest::Client) -> anyhow::Result<(url::Url, CsrfToken, Nonce, openidconnect::PkceCodeVerifier)> {{
    let meta = CoreProviderMetadata::discover_async(IssuerUrl::new(ISSUER.into())?, http).await?;
    let client = CoreClient::from_provider_metadata(meta, ClientId::new(CLIENT_ID.into()), {secret})
        .set_redirect_uri(RedirectUrl::new(REDIRECT_URI.into())?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256(); // S256 is required
    let (url, csrf, nonce) = client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();
    Ok((url, csrf, nonce, verifier))
}}

/// Step 2: on the redirect, check `state` against `csrf`, then exchange the one-time code.
/// Tokens: access (short-lived JWT), refresh (rotates on every use), ID token (EdDSA).
pub async fn finish(http: &reqwest::Client, client: &CoreClient, code: String, nonce: &Nonce,
                    verifier: openidconnect::PkceCodeVerifier) -> anyhow::Result<(String, Option<String>)> {{
    let tokens = client.exchange_code(AuthorizationCode::new(code))?
        .set_pkce_verifier(verifier).request_async(http).await?;
    let id_verifier = client.id_token_verifier().set_allowed_algs(vec![CoreJwsSigningAlgorithm::EdDsa]);
    tokens.id_token().ok_or_else(|| anyhow::anyhow!("no ID token"))?.claims(&id_verifier, nonce)?;
    Ok((tokens.access_token().secret().clone(), tokens.refresh_token().map(|t| t.secret().clone())))
}}

/// Refresh: always store the *new* refresh token; a used one is refused and ends the session.
pub async fn refresh(http: &reqwest::Client, client: &CoreClient, refresh_token: String) -> anyhow::Result<(String, String)> {{
    let tokens = client.exchange_refresh_token(&RefreshToken::new(refresh_token))?.request_async(http).await?;
    let next = tokens.refresh_token().ok_or_else(|| anyhow::anyhow!("no rotated refresh token"))?;
    Ok((tokens.access_token().secret().clone(), next.secret().clone()))
}}
"#,
        id = c.client_id,
    )
}

fn client_credentials_snippet(iss: &str, c: &ClientSpec) -> String {
    let scopes = c
        .scopes
        .iter()
        .map(|s| format!("Scope::new({s:?}.into())"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"// Cargo.toml: oauth2 = "5"  (with its reqwest feature, or your own HTTP client)
use oauth2::basic::BasicClient;
use oauth2::{{AuthUrl, ClientId, ClientSecret, Scope, TokenResponse, TokenUrl}};

pub const TOKEN_URL: &str = "{iss}/token";
pub const CLIENT_ID: &str = "{id}";

/// A service token (no refresh token: ask again when it expires). The secret comes from the
/// environment, never from source control.
pub async fn service_token(http: &reqwest::Client) -> anyhow::Result<String> {{
    let client = BasicClient::new(ClientId::new(CLIENT_ID.into()))
        .set_client_secret(ClientSecret::new(std::env::var("KEEL_CLIENT_SECRET")?))
        .set_auth_uri(AuthUrl::new("{iss}/authorize".into())?)
        .set_token_uri(TokenUrl::new(TOKEN_URL.into())?);
    let token = client.exchange_client_credentials()
        .add_scopes([{scopes}])
        .request_async(http).await?;
    Ok(token.access_token().secret().clone())
}}
"#,
        id = c.client_id,
    )
}

/// Everything for the app teams, as one text document.
pub fn generate(spec: &Spec, issuer_base: &str) -> String {
    let iss = issuer(issuer_base, &spec.tenant);
    let mut out = format!(
        "# keel auth for tenant {} (issuer {iss})\n# generated from the tenant's auth spec; regenerate instead of editing\n",
        spec.tenant
    );
    for c in &spec.clients {
        let config =
            serde_json::to_string_pretty(&client_config(spec, c, issuer_base)).unwrap_or_default();
        out.push_str(&format!(
            "\n## client {}\n\n### OpenID Connect configuration\n```json\n{config}\n```\n",
            c.client_id
        ));
        if c.allows(GRANT_CODE) {
            out.push_str(&format!(
                "\n### Rust: sign users in and refresh\n```rust\n{}```\n",
                code_flow_snippet(&iss, c)
            ));
        }
        if c.allows(GRANT_CLIENT_CREDENTIALS) {
            out.push_str(&format!(
                "\n### Rust: service token\n```rust\n{}```\n",
                client_credentials_snippet(&iss, c)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_its_configuration_and_snippet() {
        let s = Spec::parse(crate::spec::tests::GOOD).unwrap();
        let text = generate(&s, "https://auth.example.com/");
        assert!(text.contains("\"issuer\": \"https://auth.example.com/t/acme\""));
        assert!(text.contains("## client web"));
        assert!(text.contains("PkceCodeChallenge::new_random_sha256"));
        assert!(text.contains("pub const CLIENT_ID: &str = \"web\";"));
        assert!(text.contains("## client indexer"));
        assert!(text.contains("exchange_client_credentials"));
        assert!(text.contains("Scope::new(\"documents:read\".into())"));
        let web = client_config(&s, &s.clients[0], "https://auth.example.com");
        assert_eq!(web["token_endpoint_auth_method"], "none");
        assert_eq!(web["pkce"]["method"], "S256");
        assert_eq!(web["access_token_ttl_seconds"], 600);
    }
}
