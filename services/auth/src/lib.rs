//! The auth service: keel's identity provider. Today it owns the tenant directory (tenants,
//! their tier and status, each on its own shard); users, credentials, MFA, sessions and
//! per-tenant signing keys build on the same skeleton.
//!
//! * [`Config`] / [`Application`] — serves `keel.auth.v1.TenantDirectory`.
//! * [`tenants`] — the directory; [`grpc`] — the edge.

pub mod grpc;
pub mod tenants;

use keel_config::{ConfigError, Env};
use keel_runtime::{Check, Host, HostConfig, HostSpec, Tasks};
use keel_store::{Shards, StoreConfig};

/// Default ports: gRPC 50052, admin 9092 (HTTP 8081 is reserved for the OIDC endpoints).
pub const DEFAULT_GRPC_PORT: u16 = 50052;
pub const DEFAULT_ADMIN_PORT: u16 = 9092;
pub const SCHEMA: &str = "auth";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct Config {
    pub host: HostConfig,
    pub store: StoreConfig,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Config {
            host: HostConfig::from_env(env, "KEEL_AUTH", DEFAULT_GRPC_PORT, DEFAULT_ADMIN_PORT)?,
            store: StoreConfig::from_env(env)?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] keel_runtime::RuntimeError),
    #[error(transparent)]
    Store(#[from] keel_store::StoreError),
}

/// Starts the service: binds its listeners, serves, runs its background work. The returned
/// [`Host`] reports readiness and shuts everything down.
pub async fn start(cfg: Config) -> Result<Host, StartError> {
    let shards = Shards::connect_lazy(&cfg.store, SCHEMA)?;
    let dir = tenants::Directory::new(shards.clone());
    let routes = tonic::service::Routes::new(
        keel_proto::auth::tenant_directory_server::TenantDirectoryServer::new(
            grpc::TenantDirectoryService::new(dir),
        ),
    );
    let check_shards = shards.clone();
    let checks = vec![Check::new("postgres", move || {
        let shards = check_shards.clone();
        async move { shards.ready(&MIGRATOR).await }
    })];
    let mut host = Host::start(
        &cfg.host,
        HostSpec {
            name: "auth",
            grpc_services: vec!["keel.auth.v1.TenantDirectory"],
            routes,
            checks,
            trust_tenant_header: true,
            gate: None,
        },
        Tasks::new(),
    )
    .await?;
    host.on_shutdown(async move { shards.close().await });
    Ok(host)
}
