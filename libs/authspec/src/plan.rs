//! What applying a spec would change. Applying is idempotent: a spec applied twice plans
//! nothing the second time.

use crate::client::ClientSpec;
use crate::policy::TenantPolicy;
use crate::spec::Spec;

/// The tenant's current state, as the admin API reports it.
#[derive(Debug, Clone, Default)]
pub struct Current {
    /// `None`: the tenant does not exist yet.
    pub tenant: Option<TenantState>,
    /// The applied policy (a tenant that never applied one runs the default).
    pub policy: TenantPolicy,
    pub clients: Vec<CurrentClient>,
}

impl Current {
    /// The state `spec` leaves once applied: its tenant, policy and clients, none disabled.
    pub fn applied(spec: &Spec) -> Self {
        Current {
            tenant: Some(TenantState {
                display_name: spec.display_name.clone(),
                tier: spec.tier.clone(),
            }),
            policy: spec.policy.clone(),
            clients: spec
                .clients
                .iter()
                .map(|c| CurrentClient {
                    spec: c.clone(),
                    disabled: false,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantState {
    pub display_name: String,
    pub tier: String,
}

#[derive(Debug, Clone)]
pub struct CurrentClient {
    pub spec: ClientSpec,
    pub disabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    CreateTenant {
        tenant: String,
        display_name: String,
        tier: String,
    },
    UpdateTenant {
        field: &'static str,
        from: String,
        to: String,
    },
    SetPolicy {
        diffs: Vec<String>,
    },
    CreateClient {
        client_id: String,
    },
    UpdateClient {
        client_id: String,
        diffs: Vec<String>,
    },
    /// Registered but no longer declared: the spec is the whole truth, so it is disabled.
    DisableClient {
        client_id: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::CreateTenant {
                tenant,
                display_name,
                tier,
            } => write!(f, "+ tenant {tenant} ({display_name:?}, tier {tier})"),
            Change::UpdateTenant { field, from, to } => {
                write!(f, "~ tenant {field}: {from} -> {to}")
            }
            Change::SetPolicy { diffs } => {
                write!(f, "~ policy")?;
                for d in diffs {
                    write!(f, "\n    {d}")?;
                }
                Ok(())
            }
            Change::CreateClient { client_id } => write!(f, "+ client {client_id}"),
            Change::UpdateClient { client_id, diffs } => {
                write!(f, "~ client {client_id}")?;
                for d in diffs {
                    write!(f, "\n    {d}")?;
                }
                Ok(())
            }
            Change::DisableClient { client_id } => {
                write!(f, "- client {client_id} (disabled: not in the spec)")
            }
        }
    }
}

fn diff<T: std::fmt::Debug + PartialEq>(out: &mut Vec<String>, name: &str, from: &T, to: &T) {
    if from != to {
        out.push(format!("{name}: {from:?} -> {to:?}"));
    }
}

/// Field-by-field differences of two policies, in spec terms.
pub fn policy_diffs(from: &TenantPolicy, to: &TenantPolicy) -> Vec<String> {
    let mut d = Vec::new();
    diff(
        &mut d,
        "tokens.access_ttl (s)",
        &from.access_ttl_secs,
        &to.access_ttl_secs,
    );
    diff(
        &mut d,
        "tokens.refresh_idle_ttl (s)",
        &from.refresh_idle_secs,
        &to.refresh_idle_secs,
    );
    diff(
        &mut d,
        "tokens.refresh_absolute_ttl (s)",
        &from.refresh_absolute_secs,
        &to.refresh_absolute_secs,
    );
    diff(
        &mut d,
        "keys.algorithm",
        &from.key_algorithm,
        &to.key_algorithm,
    );
    diff(
        &mut d,
        "keys.rotation_period (s)",
        &from.rotation_period_secs,
        &to.rotation_period_secs,
    );
    diff(
        &mut d,
        "mfa.required_for_roles",
        &from.mfa_required_roles,
        &to.mfa_required_roles,
    );
    for role in from.roles.keys().chain(to.roles.keys()) {
        if d.iter().any(|x| x.starts_with(&format!("roles.{role}:"))) {
            continue;
        }
        diff(
            &mut d,
            &format!("roles.{role}"),
            &from.roles.get(role),
            &to.roles.get(role),
        );
    }
    for scope in from.step_up.keys().chain(to.step_up.keys()) {
        if d.iter()
            .any(|x| x.starts_with(&format!("step_up.{scope} ")))
        {
            continue;
        }
        diff(
            &mut d,
            &format!("step_up.{scope} (s)"),
            &from.step_up.get(scope),
            &to.step_up.get(scope),
        );
    }
    d
}

fn client_diffs(from: &ClientSpec, to: &ClientSpec) -> Vec<String> {
    let mut d = Vec::new();
    diff(&mut d, "name", &from.display_name, &to.display_name);
    diff(&mut d, "confidential", &from.confidential, &to.confidential);
    diff(
        &mut d,
        "redirect_uris",
        &from.redirect_uris,
        &to.redirect_uris,
    );
    diff(&mut d, "grants", &from.grant_types, &to.grant_types);
    diff(&mut d, "scopes", &from.scopes, &to.scopes);
    d
}

/// The changes that would bring `current` in line with `spec`, in the order to apply them.
pub fn plan(spec: &Spec, current: &Current) -> Vec<Change> {
    let mut out = Vec::new();
    match &current.tenant {
        None => out.push(Change::CreateTenant {
            tenant: spec.tenant.clone(),
            display_name: spec.display_name.clone(),
            tier: spec.tier.clone(),
        }),
        Some(t) => {
            if t.display_name != spec.display_name {
                out.push(Change::UpdateTenant {
                    field: "display_name",
                    from: t.display_name.clone(),
                    to: spec.display_name.clone(),
                });
            }
            if t.tier != spec.tier {
                out.push(Change::UpdateTenant {
                    field: "tier",
                    from: t.tier.clone(),
                    to: spec.tier.clone(),
                });
            }
        }
    }
    let diffs = policy_diffs(&current.policy, &spec.policy);
    if !diffs.is_empty() {
        out.push(Change::SetPolicy { diffs });
    }
    for c in &spec.clients {
        match current
            .clients
            .iter()
            .find(|x| x.spec.client_id == c.client_id)
        {
            None => out.push(Change::CreateClient {
                client_id: c.client_id.clone(),
            }),
            Some(x) => {
                let mut diffs = client_diffs(&x.spec, c);
                if x.disabled {
                    diffs.push("disabled: true -> false".into());
                }
                if !diffs.is_empty() {
                    out.push(Change::UpdateClient {
                        client_id: c.client_id.clone(),
                        diffs,
                    });
                }
            }
        }
    }
    for x in &current.clients {
        if !x.disabled && !spec.clients.iter().any(|c| c.client_id == x.spec.client_id) {
            out.push(Change::DisableClient {
                client_id: x.spec.client_id.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec::parse(crate::spec::tests::GOOD).unwrap()
    }

    #[test]
    fn a_new_tenant_plans_everything_and_an_applied_one_nothing() {
        let s = spec();
        let p = plan(&s, &Current::default());
        assert!(matches!(p[0], Change::CreateTenant { .. }));
        assert!(p.iter().any(|c| matches!(c, Change::SetPolicy { .. })));
        assert_eq!(
            p.iter()
                .filter(|c| matches!(c, Change::CreateClient { .. }))
                .count(),
            2
        );
        let applied = Current::applied(&s);
        assert_eq!(plan(&s, &applied), vec![]);
    }

    #[test]
    fn changes_are_itemised() {
        let s = spec();
        let mut old = s.clients[0].clone();
        old.redirect_uris.pop();
        let stray = ClientSpec {
            client_id: "old-app".into(),
            ..old.clone()
        };
        let current = Current {
            tenant: Some(TenantState {
                display_name: "Acme".into(),
                tier: "free".into(),
            }),
            policy: TenantPolicy::default(),
            clients: vec![
                CurrentClient {
                    spec: old,
                    disabled: false,
                },
                CurrentClient {
                    spec: stray,
                    disabled: false,
                },
            ],
        };
        let text: Vec<String> = plan(&s, &current).iter().map(|c| c.to_string()).collect();
        let all = text.join("\n");
        assert!(all.contains("~ tenant tier: free -> pro"), "{all}");
        assert!(all.contains("tokens.access_ttl (s): 300 -> 600"), "{all}");
        assert!(all.contains("~ client web\n    redirect_uris"), "{all}");
        assert!(all.contains("+ client indexer"), "{all}");
        assert!(all.contains("- client old-app"), "{all}");
    }
}
