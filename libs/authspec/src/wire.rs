//! Conversions between the policy and client types and their `keel.auth.v1` wire messages,
//! shared by the auth service's gRPC edge and keelctl.

use keel_proto::auth as pb;

use crate::{ClientSpec, TenantPolicy};

pub fn step_up_to_pb(p: &TenantPolicy) -> Vec<pb::StepUpRule> {
    p.step_up
        .iter()
        .map(|(scope, age)| pb::StepUpRule {
            scope: scope.clone(),
            max_age_seconds: *age,
        })
        .collect()
}

pub fn policy_to_pb(tenant: &str, p: &TenantPolicy, is_default: bool) -> pb::TenantPolicy {
    pb::TenantPolicy {
        tenant_id: tenant.to_owned(),
        access_token_ttl_seconds: p.access_ttl_secs,
        refresh_idle_ttl_seconds: p.refresh_idle_secs,
        refresh_absolute_ttl_seconds: p.refresh_absolute_secs,
        key_algorithm: p.key_algorithm.clone(),
        key_rotation_period_seconds: p.rotation_period_secs,
        mfa_required_roles: p.mfa_required_roles.clone(),
        roles: p
            .roles
            .iter()
            .map(|(role, scopes)| pb::RoleScopes {
                role: role.clone(),
                scopes: scopes.clone(),
            })
            .collect(),
        step_up: step_up_to_pb(p),
        is_default,
    }
}

pub fn policy_from_pb(p: pb::TenantPolicy) -> TenantPolicy {
    TenantPolicy {
        access_ttl_secs: p.access_token_ttl_seconds,
        refresh_idle_secs: p.refresh_idle_ttl_seconds,
        refresh_absolute_secs: p.refresh_absolute_ttl_seconds,
        key_algorithm: p.key_algorithm,
        rotation_period_secs: p.key_rotation_period_seconds,
        mfa_required_roles: p.mfa_required_roles,
        roles: p.roles.into_iter().map(|r| (r.role, r.scopes)).collect(),
        step_up: p
            .step_up
            .into_iter()
            .map(|r| (r.scope, r.max_age_seconds))
            .collect(),
    }
}

/// The wire form of a client registration (`disabled` and `create_time` are the server's).
pub fn client_to_pb(tenant: &str, c: &ClientSpec) -> pb::OAuthClient {
    pb::OAuthClient {
        tenant_id: tenant.to_owned(),
        client_id: c.client_id.clone(),
        display_name: c.display_name.clone(),
        confidential: c.confidential,
        redirect_uris: c.redirect_uris.clone(),
        grant_types: c.grant_types.clone(),
        scopes: c.scopes.clone(),
        disabled: false,
        create_time: None,
    }
}

pub fn client_from_pb(c: pb::OAuthClient) -> ClientSpec {
    ClientSpec {
        client_id: c.client_id,
        display_name: c.display_name,
        confidential: c.confidential,
        redirect_uris: c.redirect_uris,
        grant_types: c.grant_types,
        scopes: c.scopes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_and_clients_round_trip() {
        let p = TenantPolicy::default();
        assert_eq!(policy_from_pb(policy_to_pb("acme", &p, false)), p);
        let c = ClientSpec {
            client_id: "web".into(),
            display_name: "Web".into(),
            confidential: false,
            redirect_uris: vec!["https://a.example/cb".into()],
            grant_types: vec!["authorization_code".into()],
            scopes: vec![],
        };
        assert_eq!(client_from_pb(client_to_pb("acme", &c)), c);
    }
}
