//! The spec file: TOML, versioned, one per tenant.
//!
//! ```toml
//! version = 1
//! tenant = "acme"
//! display_name = "Acme Corp"
//! tier = "pro"                      # free | pro | enterprise
//!
//! [tokens]
//! access_ttl = "5m"                 # 30s..1h
//! refresh_idle_ttl = "7d"
//! refresh_absolute_ttl = "30d"
//!
//! [keys]
//! algorithm = "EdDSA"
//! rotation_period = "30d"
//!
//! [mfa]
//! required_for_roles = ["admin"]
//!
//! [roles]
//! admin = ["account", "documents:read", "documents:write", "models:export", "tenant:admin"]
//! member = ["account", "documents:read"]
//!
//! [step_up]
//! "models:export" = "5m"            # how recent the MFA must be
//!
//! [[clients]]
//! id = "web"
//! name = "Acme Web"
//! type = "public"                   # public | confidential
//! redirect_uris = ["https://app.acme.example/callback"]
//! grants = ["authorization_code", "refresh_token"]
//! ```
//!
//! Sections left out keep the built-in defaults ([`TenantPolicy::default`]). Unknown fields,
//! unknown versions and unsafe settings are refused, each with its line and the reason.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::client::{self, ClientSpec};
use crate::policy::TenantPolicy;

/// The spec format this build reads.
pub const SPEC_VERSION: u32 = 1;
pub const TIERS: &[&str] = &["free", "pro", "enterprise"];

/// A problem in a spec file, at a line (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// A checked spec: everything `keelctl auth apply` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub tenant: String,
    pub display_name: String,
    pub tier: String,
    pub policy: TenantPolicy,
    pub clients: Vec<ClientSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    version: Spanned<u32>,
    tenant: Spanned<String>,
    display_name: Option<String>,
    tier: Spanned<String>,
    tokens: Option<RawTokens>,
    keys: Option<RawKeys>,
    mfa: Option<RawMfa>,
    roles: Option<BTreeMap<String, Spanned<Vec<String>>>>,
    step_up: Option<BTreeMap<String, Spanned<String>>>,
    #[serde(default)]
    clients: Vec<Spanned<RawClient>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    access_ttl: Option<Spanned<String>>,
    refresh_idle_ttl: Option<Spanned<String>>,
    refresh_absolute_ttl: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    algorithm: Option<Spanned<String>>,
    rotation_period: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMfa {
    required_for_roles: Spanned<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    id: Spanned<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    #[serde(default)]
    redirect_uris: Vec<Spanned<String>>,
    grants: Spanned<Vec<String>>,
    #[serde(default)]
    scopes: Vec<String>,
    pkce: Option<Spanned<bool>>,
}

struct Lines<'a> {
    src: &'a str,
    errors: Vec<SpecError>,
    /// Where each policy setting was written, to place policy problems.
    settings: BTreeMap<String, usize>,
}

impl Lines<'_> {
    fn line(&self, offset: usize) -> usize {
        self.src[..offset.min(self.src.len())].matches('\n').count() + 1
    }

    fn err(&mut self, offset: usize, reason: impl Into<String>) {
        let line = self.line(offset);
        self.errors.push(SpecError {
            line,
            reason: reason.into(),
        });
    }

    fn duration(&mut self, setting: &str, v: &Spanned<String>) -> Option<u32> {
        self.settings
            .insert(setting.to_owned(), self.line(v.span().start));
        match keel_config::parse_duration(v.get_ref()) {
            Ok(d) if d.subsec_nanos() == 0 && d.as_secs() <= u64::from(u32::MAX) => {
                Some(d.as_secs() as u32)
            }
            Ok(_) => {
                self.err(v.span().start, format!("{setting}: use whole seconds"));
                None
            }
            Err(e) => {
                self.err(v.span().start, format!("{setting}: {e}"));
                None
            }
        }
    }
}

impl Spec {
    /// Parses and checks a spec; every problem found is reported (not just the first).
    pub fn parse(src: &str) -> Result<Spec, Vec<SpecError>> {
        let raw: RawSpec = match toml::from_str(src) {
            Ok(r) => r,
            Err(e) => {
                let line = e
                    .span()
                    .map(|s| src[..s.start.min(src.len())].matches('\n').count() + 1)
                    .unwrap_or(1);
                return Err(vec![SpecError {
                    line,
                    reason: e.message().trim().to_owned(),
                }]);
            }
        };
        let mut l = Lines {
            src,
            errors: Vec::new(),
            settings: BTreeMap::new(),
        };
        if *raw.version.get_ref() != SPEC_VERSION {
            l.err(
                raw.version.span().start,
                format!(
                    "version {} is not understood by this keelctl (it reads version {SPEC_VERSION})",
                    raw.version.get_ref()
                ),
            );
        }
        if let Err(e) = keel_tenancy::TenantId::parse(raw.tenant.get_ref()) {
            l.err(raw.tenant.span().start, format!("tenant: {e}"));
        }
        if !TIERS.contains(&raw.tier.get_ref().as_str()) {
            l.err(
                raw.tier.span().start,
                format!("tier must be one of {}", TIERS.join(", ")),
            );
        }
        let mut policy = TenantPolicy::default();
        if let Some(t) = &raw.tokens {
            if let Some(v) = &t.access_ttl
                && let Some(s) = l.duration("tokens.access_ttl", v)
            {
                policy.access_ttl_secs = s;
            }
            if let Some(v) = &t.refresh_idle_ttl
                && let Some(s) = l.duration("tokens.refresh_idle_ttl", v)
            {
                policy.refresh_idle_secs = s;
            }
            if let Some(v) = &t.refresh_absolute_ttl
                && let Some(s) = l.duration("tokens.refresh_absolute_ttl", v)
            {
                policy.refresh_absolute_secs = s;
            }
        }
        if let Some(k) = &raw.keys {
            if let Some(a) = &k.algorithm {
                l.settings
                    .insert("keys.algorithm".into(), l.line(a.span().start));
                policy.key_algorithm = a.get_ref().clone();
            }
            if let Some(v) = &k.rotation_period
                && let Some(s) = l.duration("keys.rotation_period", v)
            {
                policy.rotation_period_secs = s;
            }
        }
        if let Some(roles) = &raw.roles {
            policy.roles = roles
                .iter()
                .map(|(name, scopes)| {
                    l.settings
                        .insert(format!("roles.{name}"), l.line(scopes.span().start));
                    (name.clone(), scopes.get_ref().clone())
                })
                .collect();
            if let Some((_, first)) = roles.iter().next() {
                l.settings
                    .insert("roles".into(), l.line(first.span().start));
            }
        }
        if let Some(m) = &raw.mfa {
            l.settings.insert(
                "mfa.required_for_roles".into(),
                l.line(m.required_for_roles.span().start),
            );
            policy.mfa_required_roles = m.required_for_roles.get_ref().clone();
        }
        if let Some(rules) = &raw.step_up {
            let mut parsed = BTreeMap::new();
            for (scope, age) in rules {
                if let Some(s) = l.duration(&format!("step_up.{scope}"), age) {
                    parsed.insert(scope.clone(), s);
                }
            }
            if let Some((_, first)) = rules.iter().next() {
                l.settings
                    .insert("step_up".into(), l.line(first.span().start));
            }
            policy.step_up = parsed;
        }
        for p in policy.problems() {
            let line = l
                .settings
                .get(&p.setting)
                .copied()
                .or_else(|| {
                    let section = p.setting.split('.').next().unwrap_or("");
                    l.settings
                        .iter()
                        .find(|(k, _)| k.starts_with(section))
                        .map(|(_, v)| *v)
                })
                .unwrap_or(1);
            l.errors.push(SpecError {
                line,
                reason: format!("{}: {}", p.setting, p.reason),
            });
        }
        let mut clients: Vec<ClientSpec> = Vec::new();
        for c in &raw.clients {
            let at = c.span().start;
            let c = c.get_ref();
            let confidential = match c.kind.get_ref().as_str() {
                "public" => false,
                "confidential" => true,
                other => {
                    l.err(
                        c.kind.span().start,
                        format!("client type {other:?}: use public or confidential"),
                    );
                    continue;
                }
            };
            if let Some(p) = &c.pkce
                && !*p.get_ref()
            {
                l.err(
                    p.span().start,
                    "pkce = false: PKCE (S256) is required for every client (RFC 9700 §2.1.1)",
                );
            }
            for uri in &c.redirect_uris {
                if let Err(why) = keel_oauth::redirect::check_registrable(uri.get_ref()) {
                    l.err(
                        uri.span().start,
                        format!("redirect URI {:?}: {why}", uri.get_ref()),
                    );
                }
            }
            let spec = ClientSpec {
                client_id: c.id.get_ref().clone(),
                display_name: c.name.clone().unwrap_or_else(|| c.id.get_ref().clone()),
                confidential,
                redirect_uris: c
                    .redirect_uris
                    .iter()
                    .map(|u| u.get_ref().clone())
                    .collect(),
                grant_types: c.grants.get_ref().clone(),
                scopes: c.scopes.clone(),
            };
            if clients.iter().any(|x| x.client_id == spec.client_id) {
                l.err(
                    c.id.span().start,
                    format!("client {:?} is declared twice", spec.client_id),
                );
            }
            match client::check(&spec) {
                // Redirect URIs were reported above, each on its own line.
                Err(("redirect_uris", why)) if why.starts_with('"') => {}
                Err((field, why)) => {
                    let offset = match field {
                        "grant_types" => c.grants.span().start,
                        "client_id" => c.id.span().start,
                        _ => at,
                    };
                    l.err(
                        offset,
                        format!("client {:?}: {field}: {why}", spec.client_id),
                    );
                }
                Ok(()) => {}
            }
            clients.push(spec);
        }
        if !l.errors.is_empty() {
            l.errors.sort_by_key(|e| e.line);
            return Err(l.errors);
        }
        let tenant = raw.tenant.into_inner();
        Ok(Spec {
            display_name: raw.display_name.unwrap_or_else(|| tenant.clone()),
            tenant,
            tier: raw.tier.into_inner(),
            policy,
            clients,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const GOOD: &str = r#"version = 1
tenant = "acme"
display_name = "Acme Corp"
tier = "pro"

[tokens]
access_ttl = "10m"

[mfa]
required_for_roles = ["admin"]

[roles]
admin = ["account", "documents:read", "documents:write", "models:export", "tenant:admin"]
member = ["account", "documents:read"]

[step_up]
"models:export" = "2m"

[[clients]]
id = "web"
name = "Acme Web"
type = "public"
redirect_uris = ["https://app.acme.example/callback", "http://127.0.0.1/cb"]
grants = ["authorization_code", "refresh_token"]

[[clients]]
id = "indexer"
type = "confidential"
grants = ["client_credentials"]
scopes = ["documents:read"]
"#;

    #[test]
    fn a_good_spec_becomes_a_policy_and_clients() {
        let s = Spec::parse(GOOD).unwrap();
        assert_eq!((s.tenant.as_str(), s.tier.as_str()), ("acme", "pro"));
        assert_eq!(s.policy.access_ttl_secs, 600);
        assert_eq!(s.policy.refresh_idle_secs, 7 * 86_400, "defaults kept");
        assert_eq!(s.policy.step_up["models:export"], 120);
        assert_eq!(s.policy.mfa_required_roles, vec!["admin"]);
        assert_eq!(s.clients.len(), 2);
        assert!(s.clients[1].confidential);
        assert_eq!(s.clients[1].display_name, "indexer");
    }

    fn errors(src: &str) -> Vec<SpecError> {
        Spec::parse(src).unwrap_err()
    }

    #[test]
    fn unknown_fields_are_refused_with_their_line() {
        let src = GOOD.replace("[mfa]\n", "[mfa]\nrequired = true\n");
        let e = errors(&src);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].line, 10, "{e:?}");
        assert!(e[0].reason.contains("required"), "{e:?}");
        let e = errors(&GOOD.replace("tier = \"pro\"", "tier = \"pro\"\ncolour = \"red\""));
        assert_eq!(e[0].line, 5, "{e:?}");
    }

    #[test]
    fn unsafe_settings_are_refused_with_line_and_reason() {
        let src = GOOD
            .replace("access_ttl = \"10m\"", "access_ttl = \"30d\"")
            .replace("\"http://127.0.0.1/cb\"", "\"https://*.acme.example/cb\"")
            .replace("type = \"public\"", "type = \"public\"\npkce = false");
        let e = errors(&src);
        let lines: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.reason.as_str())).collect();
        assert!(
            e.iter()
                .any(|e| e.line == 7 && e.reason.contains("access_ttl")),
            "{lines:?}"
        );
        assert!(
            e.iter().any(|e| e.line == 23 && e.reason.contains("PKCE")),
            "{lines:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.line == 24 && e.reason.contains("wildcard")),
            "{lines:?}"
        );
    }

    #[test]
    fn versions_tiers_grants_and_duplicates_are_checked() {
        let e = errors(&GOOD.replace("version = 1", "version = 2"));
        assert_eq!(e[0].line, 1);
        let e = errors(&GOOD.replace("tier = \"pro\"", "tier = \"gold\""));
        assert_eq!(e[0].line, 4);
        let e = errors(&GOOD.replace(
            "grants = [\"client_credentials\"]",
            "grants = [\"password\"]",
        ));
        assert!(e.iter().any(|e| e.reason.contains("password")), "{e:?}");
        let e = errors(&GOOD.replace("id = \"indexer\"", "id = \"web\""));
        assert!(e.iter().any(|e| e.reason.contains("twice")), "{e:?}");
        let e = errors(&GOOD.replace("\"models:export\" = \"2m\"", "\"documents:read\" = \"2m\""));
        assert!(
            e.iter()
                .any(|e| e.reason.contains("models:export must keep")),
            "{e:?}"
        );
    }
}
