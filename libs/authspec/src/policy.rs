//! The auth policy of one tenant.

use std::collections::BTreeMap;

/// Every scope keel's API checks (the gateway's route table) plus the admin scope.
pub const KNOWN_SCOPES: &[&str] = &[
    "account",
    "documents:read",
    "documents:write",
    "inference",
    "models:read",
    "models:export",
    "usage:read",
    "tenant:admin",
];
/// OpenID Connect scopes any user may be granted on top of their roles.
pub const OIDC_SCOPES: &[&str] = &["openid", "profile", "offline_access"];
/// The only signing algorithm this deployment offers (Ed25519 keys).
pub const ALG_EDDSA: &str = "EdDSA";

/// Access tokens: at least 30 s (clock skew), at most 1 h (RFC 9068 short-lived; the verifier
/// refuses longer ones).
pub const ACCESS_TTL_BOUNDS: (u32, u32) = (30, 3600);
/// Refresh inactivity: 5 min to 30 days (ASVS 7.3.1).
pub const REFRESH_IDLE_BOUNDS: (u32, u32) = (300, 30 * 86_400);
/// Refresh absolute lifetime: at most 90 days (ASVS 10.4.8), never below the idle lifetime.
pub const REFRESH_ABSOLUTE_MAX: u32 = 90 * 86_400;
/// Key rotation: at least daily would churn JWKS caches; at most yearly.
pub const ROTATION_BOUNDS: (u32, u32) = (86_400, 365 * 86_400);
/// Step-up recency: 30 s to 1 h (ASVS 3.3.2 L3: re-authentication within 15 min is typical).
pub const STEP_UP_BOUNDS: (u32, u32) = (30, 3600);
pub const MAX_ROLES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPolicy {
    pub access_ttl_secs: u32,
    pub refresh_idle_secs: u32,
    pub refresh_absolute_secs: u32,
    pub key_algorithm: String,
    pub rotation_period_secs: u32,
    /// Users with any of these roles get only the `account` scope (enough to enrol MFA) until
    /// they sign in with a second factor.
    pub mfa_required_roles: Vec<String>,
    /// Role → the scopes it grants.
    pub roles: BTreeMap<String, Vec<String>>,
    /// Scope → how recent (seconds) an MFA must be for calls needing that scope.
    pub step_up: BTreeMap<String, u32>,
}

impl Default for TenantPolicy {
    /// What a tenant gets before it applies a spec.
    fn default() -> Self {
        let member: Vec<String> = [
            "account",
            "documents:read",
            "documents:write",
            "inference",
            "models:read",
            "usage:read",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut admin = member.clone();
        admin.push("models:export".into());
        admin.push("tenant:admin".into());
        TenantPolicy {
            access_ttl_secs: 300,
            refresh_idle_secs: 7 * 86_400,
            refresh_absolute_secs: 30 * 86_400,
            key_algorithm: ALG_EDDSA.into(),
            rotation_period_secs: 30 * 86_400,
            mfa_required_roles: Vec::new(),
            roles: BTreeMap::from([("admin".into(), admin), ("member".into(), member)]),
            step_up: BTreeMap::from([("models:export".into(), 300)]),
        }
    }
}

/// One reason a policy is unsafe or inconsistent, with the setting it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub setting: String,
    pub reason: String,
}

fn is_role_name(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 32
        && r.starts_with(|c: char| c.is_ascii_lowercase())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl TenantPolicy {
    /// Every problem, in a stable order (empty: the policy may be applied).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |setting: &str, reason: String| {
            out.push(Problem {
                setting: setting.to_owned(),
                reason,
            })
        };
        let within = |v: u32, (lo, hi): (u32, u32)| (lo..=hi).contains(&v);
        if !within(self.access_ttl_secs, ACCESS_TTL_BOUNDS) {
            bad(
                "tokens.access_ttl",
                format!(
                    "must be between {}s and {}s: long-lived access tokens cannot be revoked quickly",
                    ACCESS_TTL_BOUNDS.0, ACCESS_TTL_BOUNDS.1
                ),
            );
        }
        if !within(self.refresh_idle_secs, REFRESH_IDLE_BOUNDS) {
            bad(
                "tokens.refresh_idle_ttl",
                format!(
                    "must be between {}s and {}s",
                    REFRESH_IDLE_BOUNDS.0, REFRESH_IDLE_BOUNDS.1
                ),
            );
        }
        if self.refresh_absolute_secs < self.refresh_idle_secs
            || self.refresh_absolute_secs > REFRESH_ABSOLUTE_MAX
        {
            bad(
                "tokens.refresh_absolute_ttl",
                format!(
                    "must be at least the idle lifetime and at most {REFRESH_ABSOLUTE_MAX}s (90d)"
                ),
            );
        }
        if self.key_algorithm != ALG_EDDSA {
            bad(
                "keys.algorithm",
                format!(
                    "{:?} is not offered by this deployment; use \"EdDSA\"",
                    self.key_algorithm
                ),
            );
        }
        if !within(self.rotation_period_secs, ROTATION_BOUNDS) {
            bad("keys.rotation_period", "must be between 1d and 365d".into());
        }
        if self.roles.is_empty() {
            bad("roles", "define at least one role".into());
        }
        if self.roles.len() > MAX_ROLES {
            bad("roles", format!("at most {MAX_ROLES} roles"));
        }
        for (role, scopes) in &self.roles {
            if !is_role_name(role) {
                bad(
                    &format!("roles.{role}"),
                    "role names are 1 to 32 of a-z, 0-9, - and _, starting with a letter".into(),
                );
            }
            for s in scopes {
                if !KNOWN_SCOPES.contains(&s.as_str()) {
                    bad(
                        &format!("roles.{role}"),
                        format!("{s:?} is not a keel scope ({})", KNOWN_SCOPES.join(", ")),
                    );
                }
            }
        }
        for r in &self.mfa_required_roles {
            if !self.roles.contains_key(r) {
                bad(
                    "mfa.required_for_roles",
                    format!("{r:?} is not a defined role"),
                );
            }
        }
        for (scope, age) in &self.step_up {
            if !KNOWN_SCOPES.contains(&scope.as_str()) {
                bad(
                    &format!("step_up.{scope}"),
                    format!("{scope:?} is not a keel scope"),
                );
            }
            if !within(*age, STEP_UP_BOUNDS) {
                bad(
                    &format!("step_up.{scope}"),
                    format!(
                        "must be between {}s and {}s",
                        STEP_UP_BOUNDS.0, STEP_UP_BOUNDS.1
                    ),
                );
            }
        }
        if !self.step_up.contains_key("models:export") {
            bad(
                "step_up",
                "models:export must keep a step-up rule (model export is a highly sensitive transaction, ASVS 7.5.3)".into(),
            );
        }
        out
    }

    /// The scopes granted by a set of roles (unknown roles grant nothing).
    pub fn scopes_for(&self, roles: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in roles {
            for s in self.roles.get(r).into_iter().flatten() {
                if !out.contains(s) {
                    out.push(s.clone());
                }
            }
        }
        out
    }

    pub fn mfa_required(&self, roles: &[String]) -> bool {
        roles.iter().any(|r| self.mfa_required_roles.contains(r))
    }

    /// The scope of a session's tokens: what was granted (`None`: everything the roles allow),
    /// narrowed to what the roles allow *now*; only `account` while the policy demands an MFA
    /// the session does not have.
    pub fn session_scope(&self, roles: &[String], acr: &str, granted: Option<&str>) -> String {
        if acr != "mfa" && acr != "client" && self.mfa_required(roles) {
            return "account".into();
        }
        let allowed = self.scopes_for(roles);
        match granted {
            None => allowed.join(" "),
            Some(g) => g
                .split(' ')
                .filter(|s| {
                    !s.is_empty() && (OIDC_SCOPES.contains(s) || allowed.iter().any(|a| a == s))
                })
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_is_safe_and_admins_alone_export() {
        let p = TenantPolicy::default();
        assert_eq!(p.problems(), vec![]);
        assert!(
            p.scopes_for(&["admin".into()])
                .contains(&"models:export".to_owned())
        );
        assert!(
            !p.scopes_for(&["member".into()])
                .contains(&"models:export".to_owned())
        );
        assert!(p.scopes_for(&["nobody".into()]).is_empty());
    }

    #[test]
    fn unsafe_settings_are_named() {
        let mut p = TenantPolicy {
            access_ttl_secs: 86_400,
            key_algorithm: "HS256".into(),
            ..TenantPolicy::default()
        };
        p.step_up.clear();
        p.mfa_required_roles = vec!["ghost".into()];
        p.roles.insert("Bad Role".into(), vec!["root".into()]);
        let settings: Vec<String> = p.problems().into_iter().map(|p| p.setting).collect();
        for s in [
            "tokens.access_ttl",
            "keys.algorithm",
            "step_up",
            "mfa.required_for_roles",
            "roles.Bad Role",
        ] {
            assert!(settings.iter().any(|x| x == s), "{s} in {settings:?}");
        }
    }

    #[test]
    fn sessions_without_a_required_mfa_get_only_the_account_scope() {
        let p = TenantPolicy {
            mfa_required_roles: vec!["admin".into()],
            ..TenantPolicy::default()
        };
        let admin = vec!["admin".to_owned()];
        assert_eq!(p.session_scope(&admin, "pwd", None), "account");
        assert!(
            p.session_scope(&admin, "mfa", None)
                .contains("models:export")
        );
        assert_eq!(
            p.session_scope(&admin, "mfa", Some("openid documents:read root")),
            "openid documents:read"
        );
    }
}
