//! The gRPC edge of the auth service: `keel.auth.v1.TenantDirectory`.

use keel_proto::auth as pb;
use tonic::{Request, Response, Status};

use crate::tenants::{Directory, Tenant, parse_tenant_id};

pub struct TenantDirectoryService {
    dir: Directory,
}

impl TenantDirectoryService {
    pub fn new(dir: Directory) -> Self {
        TenantDirectoryService { dir }
    }
}

fn to_pb(t: Tenant) -> pb::Tenant {
    pb::Tenant {
        tenant_id: t.id.to_string(),
        display_name: t.display_name,
        tier: t.tier.as_str().into(),
        status: if t.active { "active" } else { "suspended" }.into(),
        create_time: Some(keel_proto::timestamp_from_micros(
            t.create_time.timestamp_micros(),
        )),
    }
}

#[tonic::async_trait]
impl pb::tenant_directory_server::TenantDirectory for TenantDirectoryService {
    async fn get_tenant(
        &self,
        req: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let id = parse_tenant_id(&req.get_ref().tenant_id)?;
        Ok(Response::new(to_pb(self.dir.get(&id).await?)))
    }

    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
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
        let r = req.into_inner();
        let (tenants, next) = self.dir.list(r.page_size, &r.page_token).await?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: tenants.into_iter().map(to_pb).collect(),
            next_page_token: next,
        }))
    }
}
