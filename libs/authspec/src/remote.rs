//! Plans and applies a spec against a running auth service through its admin API (used by
//! `keelctl auth plan|apply` and by the end-to-end tests).

use keel_proto::auth as authpb;
use keel_proto::client::Bearer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::plan::{Change, Current, CurrentClient, TenantState};
use crate::{Spec, wire};

type Directory =
    authpb::tenant_directory_client::TenantDirectoryClient<InterceptedService<Channel, Bearer>>;
type Admin =
    authpb::identity_admin_client::IdentityAdminClient<InterceptedService<Channel, Bearer>>;

/// The auth service's admin API, called with one credential (the operator's, or a tenant
/// admin's for their own tenant: creating tenants and changing tiers need the operator).
pub struct Remote {
    dir: Directory,
    admin: Admin,
}

/// What `apply` did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub changes: Vec<Change>,
    /// Secrets of confidential clients registered by this run: shown once, stored hashed.
    pub client_secrets: Vec<(String, String)>,
}

fn keel_reason(st: &tonic::Status) -> &str {
    st.metadata()
        .get("keel-error-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

impl Remote {
    pub fn new(channel: Channel, credential: Bearer) -> Self {
        Remote {
            dir: authpb::tenant_directory_client::TenantDirectoryClient::with_interceptor(
                channel.clone(),
                credential.clone(),
            ),
            admin: authpb::identity_admin_client::IdentityAdminClient::with_interceptor(
                channel, credential,
            ),
        }
    }

    /// What the auth service has for the spec's tenant now.
    pub async fn current(&mut self, tenant: &str) -> Result<Current, tonic::Status> {
        let t = match self
            .dir
            .get_tenant(authpb::GetTenantRequest {
                tenant_id: tenant.to_owned(),
            })
            .await
        {
            Ok(t) => t.into_inner(),
            Err(st) if keel_reason(&st) == "TENANT_UNKNOWN" => return Ok(Current::default()),
            Err(st) => return Err(st),
        };
        let policy = self
            .dir
            .get_tenant_policy(authpb::GetTenantPolicyRequest {
                tenant_id: tenant.to_owned(),
            })
            .await?
            .into_inner();
        let clients = self
            .admin
            .list_clients(authpb::ListClientsRequest {
                tenant_id: tenant.to_owned(),
            })
            .await?
            .into_inner()
            .clients;
        Ok(Current {
            tenant: Some(TenantState {
                display_name: t.display_name,
                tier: t.tier,
            }),
            policy: wire::policy_from_pb(policy),
            clients: clients
                .into_iter()
                .map(|c| CurrentClient {
                    disabled: c.disabled,
                    spec: wire::client_from_pb(c),
                })
                .collect(),
        })
    }

    pub async fn plan(&mut self, spec: &Spec) -> Result<Vec<Change>, tonic::Status> {
        Ok(crate::plan::plan(spec, &self.current(&spec.tenant).await?))
    }

    /// Applies the plan, change by change (each change is idempotent, so a failed run can
    /// simply be repeated).
    pub async fn apply(&mut self, spec: &Spec) -> Result<Applied, tonic::Status> {
        let changes = self.plan(spec).await?;
        let mut out = Applied::default();
        for change in &changes {
            match change {
                Change::CreateTenant {
                    tenant,
                    display_name,
                    tier,
                } => {
                    self.dir
                        .create_tenant(authpb::CreateTenantRequest {
                            tenant_id: tenant.clone(),
                            display_name: display_name.clone(),
                            tier: tier.clone(),
                        })
                        .await?;
                }
                Change::UpdateTenant { field, to, .. } => {
                    let mut req = authpb::UpdateTenantRequest {
                        tenant_id: spec.tenant.clone(),
                        ..Default::default()
                    };
                    if *field == "tier" {
                        req.tier = to.clone();
                    } else {
                        req.display_name = to.clone();
                    }
                    self.dir.update_tenant(req).await?;
                }
                Change::SetPolicy { .. } => {
                    self.dir
                        .put_tenant_policy(wire::policy_to_pb(&spec.tenant, &spec.policy, false))
                        .await?;
                }
                Change::CreateClient { client_id } | Change::UpdateClient { client_id, .. } => {
                    let Some(c) = spec.clients.iter().find(|c| &c.client_id == client_id) else {
                        continue;
                    };
                    let r = self
                        .admin
                        .put_client(authpb::PutClientRequest {
                            client: Some(wire::client_to_pb(&spec.tenant, c)),
                            rotate_secret: false,
                        })
                        .await?
                        .into_inner();
                    if !r.client_secret.is_empty() {
                        out.client_secrets
                            .push((client_id.clone(), r.client_secret));
                    }
                }
                Change::DisableClient { client_id } => {
                    self.admin
                        .disable_client(authpb::DisableClientRequest {
                            tenant_id: spec.tenant.clone(),
                            client_id: client_id.clone(),
                        })
                        .await?;
                }
            }
        }
        out.changes = changes;
        Ok(out)
    }
}
