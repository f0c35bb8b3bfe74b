//! The gRPC edge of the auth service: the tenant directory, authentication, the key directory
//! and the operators' identity admin.

use crate::admin::AdminGuard;
use crate::clients::{Client, client_sid};
use crate::policies::Policies;
use keel_authspec::wire;
use keel_proto::auth as pb;
use keel_proto::public;
use keel_tenancy::TenantId;
use tonic::{Request, Response, Status};

use crate::identity::Identity;
use crate::keys::KeyStore;
use crate::tenants::{Directory, Tenant, parse_tenant_id};

pub struct TenantDirectoryService {
    dir: Directory,
    guard: AdminGuard,
    policies: Policies,
}

impl TenantDirectoryService {
    pub fn new(dir: Directory, guard: AdminGuard, policies: Policies) -> Self {
        TenantDirectoryService {
            dir,
            guard,
            policies,
        }
    }
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    keel_proto::timestamp_from_micros(t.timestamp_micros())
}

fn to_pb(t: Tenant) -> pb::Tenant {
    pb::Tenant {
        tenant_id: t.id.to_string(),
        display_name: t.display_name,
        tier: t.tier.as_str().into(),
        status: if t.active { "active" } else { "suspended" }.into(),
        create_time: Some(timestamp(t.create_time)),
        step_up: Vec::new(),
    }
}

#[tonic::async_trait]
impl pb::tenant_directory_server::TenantDirectory for TenantDirectoryService {
    async fn get_tenant(
        &self,
        req: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let id = parse_tenant_id(&req.get_ref().tenant_id)?;
        let tenant = self.dir.get(&id).await?;
        let policy = self.policies.get(&id).await?;
        let mut t = to_pb(tenant);
        t.step_up = wire::step_up_to_pb(&policy);
        Ok(Response::new(t))
    }

    async fn update_tenant(
        &self,
        req: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        // The tier is the contract: the operator's to change.
        self.guard.check(req.metadata(), None).await?;
        let r = req.into_inner();
        let id = parse_tenant_id(&r.tenant_id)?;
        let nonempty = |s: &str| (!s.is_empty()).then_some(s.to_owned());
        let t = self
            .dir
            .update(
                &id,
                nonempty(&r.display_name).as_deref(),
                nonempty(&r.tier).as_deref(),
            )
            .await?;
        Ok(Response::new(to_pb(t)))
    }

    async fn get_tenant_policy(
        &self,
        req: Request<pb::GetTenantPolicyRequest>,
    ) -> Result<Response<pb::TenantPolicy>, Status> {
        let id = parse_tenant_id(&req.get_ref().tenant_id)?;
        self.guard.check(req.metadata(), Some(&id)).await?;
        self.dir.get(&id).await?;
        let (p, is_default) = self.policies.get_with_origin(&id).await?;
        Ok(Response::new(wire::policy_to_pb(
            id.as_str(),
            &p,
            is_default,
        )))
    }

    async fn put_tenant_policy(
        &self,
        req: Request<pb::TenantPolicy>,
    ) -> Result<Response<pb::PutTenantPolicyResponse>, Status> {
        let id = parse_tenant_id(&req.get_ref().tenant_id)?;
        self.guard.check(req.metadata(), Some(&id)).await?;
        self.dir.get(&id).await?;
        let policy = wire::policy_from_pb(req.into_inner());
        let changed = self.policies.put(&id, &policy).await?;
        Ok(Response::new(pb::PutTenantPolicyResponse {
            policy: Some(wire::policy_to_pb(id.as_str(), &policy, false)),
            changed,
        }))
    }

    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        self.guard.check(req.metadata(), None).await?;
        let r = req.into_inner();
        let id = parse_tenant_id(&r.tenant_id)?;
        Ok(Response::new(to_pb(
            self.dir.create(&id, &r.display_name, &r.tier).await?,
        )))
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        self.guard.check(req.metadata(), None).await?;
        let r = req.into_inner();
        let (tenants, next) = self.dir.list(r.page_size, &r.page_token).await?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: tenants.into_iter().map(to_pb).collect(),
            next_page_token: next,
        }))
    }
}

/// Internal metadata with the end client's IP address, set by the gateway from the transport.
pub const CLIENT_IP_HEADER: &str = "keel-client-ip";

pub struct AuthenticationService {
    identity: Identity,
}

impl AuthenticationService {
    pub fn new(identity: Identity) -> Self {
        AuthenticationService { identity }
    }
}

fn issued(i: crate::identity::Issued) -> public::LoginResponse {
    public::LoginResponse {
        mfa_required: i.mfa_token.is_some(),
        mfa_token: i.mfa_token.unwrap_or_default(),
        access_token: i.access_token,
        refresh_token: i.refresh_token,
        expires_in_seconds: u32::try_from(i.expires_in).unwrap_or(0),
        token_type: "Bearer".into(),
    }
}

#[tonic::async_trait]
impl pb::authentication_server::Authentication for AuthenticationService {
    async fn login(
        &self,
        req: Request<public::LoginRequest>,
    ) -> Result<Response<public::LoginResponse>, Status> {
        // The gateway puts the caller's transport address here (never the client's say-so).
        let source = req
            .metadata()
            .get(CLIENT_IP_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let r = req.into_inner();
        let out = self
            .identity
            .login(&r.tenant_id, &r.username, r.password, &r.client_id, source)
            .await?;
        Ok(Response::new(issued(out)))
    }

    async fn refresh(
        &self,
        req: Request<public::RefreshRequest>,
    ) -> Result<Response<public::LoginResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(issued(
            self.identity
                .refresh(&r.refresh_token, &r.client_id, false)
                .await?,
        )))
    }

    async fn logout(
        &self,
        req: Request<public::LogoutRequest>,
    ) -> Result<Response<public::LogoutResponse>, Status> {
        self.identity.logout(&req.get_ref().refresh_token).await?;
        Ok(Response::new(public::LogoutResponse {}))
    }

    async fn verify_mfa(
        &self,
        req: Request<public::VerifyMfaRequest>,
    ) -> Result<Response<public::LoginResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(issued(
            self.identity.verify_mfa(&r.mfa_token, &r.code).await?,
        )))
    }

    async fn enroll_mfa(
        &self,
        req: Request<public::EnrollMfaRequest>,
    ) -> Result<Response<public::EnrollMfaResponse>, Status> {
        let v = self.identity.authenticate(req.metadata()).await?;
        let (otpauth_uri, secret) = self.identity.enroll_mfa(&v).await?;
        Ok(Response::new(public::EnrollMfaResponse {
            otpauth_uri,
            secret,
        }))
    }

    async fn confirm_mfa(
        &self,
        req: Request<public::ConfirmMfaRequest>,
    ) -> Result<Response<public::ConfirmMfaResponse>, Status> {
        let v = self.identity.authenticate(req.metadata()).await?;
        let recovery_codes = self.identity.confirm_mfa(&v, &req.get_ref().code).await?;
        Ok(Response::new(public::ConfirmMfaResponse { recovery_codes }))
    }

    async fn disable_mfa(
        &self,
        req: Request<public::DisableMfaRequest>,
    ) -> Result<Response<public::DisableMfaResponse>, Status> {
        let v = self.identity.authenticate(req.metadata()).await?;
        self.identity.disable_mfa(&v, &req.get_ref().code).await?;
        Ok(Response::new(public::DisableMfaResponse {}))
    }

    async fn step_up(
        &self,
        req: Request<public::StepUpRequest>,
    ) -> Result<Response<public::LoginResponse>, Status> {
        let v = self.identity.authenticate(req.metadata()).await?;
        Ok(Response::new(issued(
            self.identity.step_up(&v, &req.get_ref().code).await?,
        )))
    }

    async fn sign_out_everywhere(
        &self,
        req: Request<public::SignOutEverywhereRequest>,
    ) -> Result<Response<public::SignOutEverywhereResponse>, Status> {
        let v = self.identity.authenticate(req.metadata()).await?;
        let sessions_ended = self.identity.sign_out_everywhere(&v).await?;
        Ok(Response::new(public::SignOutEverywhereResponse {
            sessions_ended,
        }))
    }

    async fn list_sessions(
        &self,
        req: Request<public::ListSessionsRequest>,
    ) -> Result<Response<public::ListSessionsResponse>, Status> {
        let v = self.identity.authenticate(req.metadata()).await?;
        let sessions = self.identity.list_sessions(&v).await?;
        Ok(Response::new(public::ListSessionsResponse {
            sessions: sessions
                .into_iter()
                .map(|s| public::Session {
                    session_id: s.sid,
                    client_id: s.client_id,
                    acr: s.acr,
                    amr: s.amr,
                    auth_time: Some(timestamp(s.auth_time)),
                    current: s.current,
                })
                .collect(),
        }))
    }

    async fn revoke_session(
        &self,
        req: Request<public::RevokeSessionRequest>,
    ) -> Result<Response<public::RevokeSessionResponse>, Status> {
        let v = self.identity.authenticate(req.metadata()).await?;
        self.identity
            .revoke_own_session(&v, &req.get_ref().session_id)
            .await?;
        Ok(Response::new(public::RevokeSessionResponse {}))
    }

    async fn change_password(
        &self,
        req: Request<public::ChangePasswordRequest>,
    ) -> Result<Response<public::ChangePasswordResponse>, Status> {
        let v = self.identity.authenticate(req.metadata()).await?;
        let r = req.into_inner();
        let other_sessions_ended = self
            .identity
            .change_password(&v, r.current_password, r.new_password)
            .await?;
        Ok(Response::new(public::ChangePasswordResponse {
            other_sessions_ended,
        }))
    }
}

fn key_pb(k: keel_token::KeyRecord) -> pb::VerificationKey {
    pb::VerificationKey {
        kid: k.kid.clone(),
        tenant_id: k.tenant.to_string(),
        alg: k.alg().into(),
        public_key: k.public.as_bytes().to_vec(),
        state: k.state.as_str().into(),
        valid_from_unix: k.valid_from,
        verify_until_unix: k.verify_until.unwrap_or(0),
    }
}

fn not_found(kid: &str) -> Status {
    keel_errors::status(
        keel_errors::Reason::NotFound,
        "no such key",
        vec![("resource", format!("keys/{kid}"))],
    )
}

pub struct KeyDirectoryService {
    keys: KeyStore,
}

impl KeyDirectoryService {
    pub fn new(keys: KeyStore) -> Self {
        KeyDirectoryService { keys }
    }
}

#[tonic::async_trait]
impl pb::key_directory_server::KeyDirectory for KeyDirectoryService {
    async fn get_verification_key(
        &self,
        req: Request<pb::GetVerificationKeyRequest>,
    ) -> Result<Response<pb::VerificationKey>, Status> {
        let kid = &req.get_ref().kid;
        let rec = self.keys.record(kid).await?.ok_or_else(|| not_found(kid))?;
        Ok(Response::new(key_pb(rec)))
    }

    async fn list_verification_keys(
        &self,
        req: Request<pb::ListVerificationKeysRequest>,
    ) -> Result<Response<pb::ListVerificationKeysResponse>, Status> {
        let tenant = parse_tenant_id(&req.get_ref().tenant_id)?;
        let keys = self.keys.published(&tenant).await?;
        Ok(Response::new(pb::ListVerificationKeysResponse {
            keys: keys.into_iter().map(key_pb).collect(),
        }))
    }
}

fn user_pb(
    tenant: &TenantId,
    id: uuid::Uuid,
    username: String,
    roles: Vec<String>,
    created: chrono::DateTime<chrono::Utc>,
) -> pb::User {
    pb::User {
        tenant_id: tenant.to_string(),
        user_id: id.to_string(),
        username,
        roles,
        create_time: Some(timestamp(created)),
    }
}

pub struct IdentityAdminService {
    identity: Identity,
    guard: AdminGuard,
}

impl IdentityAdminService {
    pub fn new(identity: Identity, guard: AdminGuard) -> Self {
        IdentityAdminService { identity, guard }
    }

    /// The tenant a request names, once its caller may administer it.
    async fn admit(
        &self,
        meta: &tonic::metadata::MetadataMap,
        tenant: &str,
    ) -> Result<TenantId, Status> {
        let tenant = parse_tenant_id(tenant)?;
        self.guard.check(meta, Some(&tenant)).await?;
        Ok(tenant)
    }
}

#[tonic::async_trait]
impl pb::identity_admin_server::IdentityAdmin for IdentityAdminService {
    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let tenant = self.admit(req.metadata(), &req.get_ref().tenant_id).await?;
        let r = req.into_inner();
        let (id, roles, created) = self
            .identity
            .create_user(&tenant, &r.username, r.password, r.roles)
            .await?;
        Ok(Response::new(user_pb(
            &tenant, id, r.username, roles, created,
        )))
    }

    async fn disable_user(
        &self,
        req: Request<pb::DisableUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let tenant = self.admit(req.metadata(), &req.get_ref().tenant_id).await?;
        let r = req.into_inner();
        let (id, roles, created) = self.identity.disable_user(&tenant, &r.username).await?;
        Ok(Response::new(user_pb(
            &tenant, id, r.username, roles, created,
        )))
    }

    async fn set_user_roles(
        &self,
        req: Request<pb::SetUserRolesRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let tenant = self.admit(req.metadata(), &req.get_ref().tenant_id).await?;
        let r = req.into_inner();
        let (id, roles, created) = self
            .identity
            .set_user_roles(&tenant, &r.username, r.roles)
            .await?;
        Ok(Response::new(user_pb(
            &tenant, id, r.username, roles, created,
        )))
    }

    async fn end_user_sessions(
        &self,
        req: Request<pb::EndUserSessionsRequest>,
    ) -> Result<Response<pb::EndUserSessionsResponse>, Status> {
        let tenant = self.admit(req.metadata(), &req.get_ref().tenant_id).await?;
        let sessions_ended = self
            .identity
            .end_user_sessions(&tenant, &req.get_ref().username)
            .await?;
        Ok(Response::new(pb::EndUserSessionsResponse {
            sessions_ended,
        }))
    }

    async fn rotate_signing_key(
        &self,
        req: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::VerificationKey>, Status> {
        let tenant = self.admit(req.metadata(), &req.get_ref().tenant_id).await?;
        let r = req.into_inner();
        self.identity.tenants.get(&tenant).await?;
        let rec = self
            .identity
            .keys
            .rotate(&tenant, i64::from(r.activate_after_seconds))
            .await?;
        Ok(Response::new(key_pb(rec)))
    }

    async fn revoke_signing_key(
        &self,
        req: Request<pb::RevokeSigningKeyRequest>,
    ) -> Result<Response<pb::VerificationKey>, Status> {
        let kid = &req.get_ref().kid;
        // The key's tenant decides who may revoke it; unknown keys are the operator's concern.
        let owner = self.identity.keys.record(kid).await?.map(|k| k.tenant);
        self.guard.check(req.metadata(), owner.as_ref()).await?;
        let rec = self
            .identity
            .keys
            .revoke(kid)
            .await?
            .ok_or_else(|| not_found(kid))?;
        Ok(Response::new(key_pb(rec)))
    }

    async fn put_client(
        &self,
        req: Request<pb::PutClientRequest>,
    ) -> Result<Response<pb::PutClientResponse>, Status> {
        let tenant_raw = req
            .get_ref()
            .client
            .as_ref()
            .map(|c| c.tenant_id.clone())
            .unwrap_or_default();
        let tenant = self.admit(req.metadata(), &tenant_raw).await?;
        let r = req.into_inner();
        let c = r
            .client
            .ok_or_else(|| Status::from(crate::identity::invalid("client", "is required")))?;
        self.identity.tenants.get(&tenant).await?;
        let spec = wire::client_from_pb(c);
        let (client, secret, changed) = self
            .identity
            .clients
            .put(&tenant, &spec, r.rotate_secret)
            .await?;
        if changed {
            // A re-enabled client's tokens work again.
            self.identity
                .unpublish_revocation(&tenant, &client_sid(&client.spec.client_id))
                .await?;
        }
        Ok(Response::new(pb::PutClientResponse {
            client: Some(client_pb(client)),
            client_secret: secret.unwrap_or_default(),
            changed,
        }))
    }

    async fn list_clients(
        &self,
        req: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsResponse>, Status> {
        let tenant = self.admit(req.metadata(), &req.get_ref().tenant_id).await?;
        let clients = self.identity.clients.list(&tenant).await?;
        Ok(Response::new(pb::ListClientsResponse {
            clients: clients.into_iter().map(client_pb).collect(),
        }))
    }

    async fn disable_client(
        &self,
        req: Request<pb::DisableClientRequest>,
    ) -> Result<Response<pb::OAuthClient>, Status> {
        let tenant = self.admit(req.metadata(), &req.get_ref().tenant_id).await?;
        let r = req.into_inner();
        let client = self.identity.clients.disable(&tenant, &r.client_id).await?;
        // Its client-credentials tokens die with it, at the gateway too, and so do the user
        // sessions it holds.
        self.identity
            .publish_revocation(&tenant, &client_sid(&r.client_id))
            .await?;
        self.identity
            .end_client_sessions(&tenant, &r.client_id)
            .await?;
        Ok(Response::new(client_pb(client)))
    }
}

fn client_pb(c: Client) -> pb::OAuthClient {
    pb::OAuthClient {
        tenant_id: c.tenant.to_string(),
        client_id: c.spec.client_id,
        display_name: c.spec.display_name,
        confidential: c.spec.confidential,
        redirect_uris: c.spec.redirect_uris,
        grant_types: c.spec.grant_types,
        scopes: c.spec.scopes,
        disabled: c.disabled,
        create_time: Some(timestamp(c.create_time)),
    }
}
