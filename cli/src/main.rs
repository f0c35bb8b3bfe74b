//! `keelctl` — keel's command line for users and operators: documents through the gateway,
//! tenants through the auth service's directory, and health checks for container probes.
//!
//! Output is JSON on stdout; errors go to stderr with the gRPC code and keel reason, and the exit
//! code is 1 (call failed) or 2 (usage).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use keel_proto::{auth as authpb, public as pb};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

/// Calls that take longer than this are abandoned (keelctl is interactive).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "keelctl",
    version,
    about = "keel's user and admin command line"
)]
struct Cli {
    /// The gateway's gRPC endpoint.
    #[arg(
        long,
        env = "KEEL_GATEWAY_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    gateway_url: String,
    /// The auth service's gRPC endpoint (admin commands).
    #[arg(
        long,
        env = "KEEL_AUTH_URL",
        default_value = "http://127.0.0.1:50052",
        global = true
    )]
    auth_url: String,
    /// Access token; defaults to the one in .keel/demo.json when `cargo xtask up` wrote it.
    #[arg(long, env = "KEEL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Documents of the token's tenant.
    #[command(subcommand)]
    Doc(DocCmd),
    /// Tenants (talks to the auth service directly: operators only).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Exits 0 when the gRPC server at ADDR reports SERVING (for container health checks).
    Health {
        #[arg(long)]
        addr: String,
        /// A service name to check instead of the server as a whole.
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[derive(Subcommand)]
enum DocCmd {
    Create {
        #[arg(long)]
        title: String,
        #[arg(long, conflicts_with = "file")]
        content: Option<String>,
        /// Read the content from a file.
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, default_value = "")]
        idempotency_key: String,
    },
    Get {
        id: String,
    },
    List {
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    Update {
        id: String,
        #[arg(long)]
        title: String,
        #[arg(long)]
        content: String,
        #[arg(long, default_value_t = 0)]
        expected_version: i64,
    },
    Delete {
        id: String,
        #[arg(long, default_value_t = 0)]
        expected_version: i64,
    },
}

#[derive(Subcommand)]
enum TenantCmd {
    Create {
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "free")]
        tier: String,
    },
    Get {
        id: String,
    },
    List {
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keelctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(v) => {
            if !v.is_null() {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(st) => {
                    let reason = st
                        .metadata()
                        .get("keel-error-reason")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    eprintln!("keelctl: {:?} ({reason}): {}", st.code(), st.message());
                }
                None => eprintln!("keelctl: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn channel(url: &str) -> Result<Channel> {
    Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("{url} is not a valid endpoint"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

fn demo_token() -> Option<String> {
    let text = std::fs::read_to_string(".keel/demo.json").ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("access_token")?.as_str().map(str::to_owned)
}

fn authed<T>(msg: T, token: &str) -> Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("the token has characters that cannot be sent")?,
    );
    Ok(req)
}

fn ts(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref().map_or(
        Value::Null,
        |t| json!({ "seconds": t.seconds, "nanos": t.nanos }),
    )
}

fn doc_json(d: &pb::Document) -> Value {
    json!({
        "id": d.id, "title": d.title, "content": d.content, "version": d.version,
        "content_bytes": d.content_bytes, "create_time": ts(&d.create_time), "update_time": ts(&d.update_time),
    })
}

fn tenant_json(t: &authpb::Tenant) -> Value {
    json!({ "tenant_id": t.tenant_id, "display_name": t.display_name, "tier": t.tier, "status": t.status, "create_time": ts(&t.create_time) })
}

async fn run(cli: Cli) -> Result<Value> {
    match cli.command {
        Cmd::Health { addr, service } => {
            let mut client =
                tonic_health::pb::health_client::HealthClient::new(channel(&addr).await?);
            let resp = client
                .check(tonic_health::pb::HealthCheckRequest { service })
                .await?;
            let status = resp.into_inner().status;
            if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
                Ok(json!({ "status": "SERVING" }))
            } else {
                anyhow::bail!("not serving (status {status})")
            }
        }
        Cmd::Tenant(cmd) => {
            let mut client = authpb::tenant_directory_client::TenantDirectoryClient::new(
                channel(&cli.auth_url).await?,
            );
            match cmd {
                TenantCmd::Create { id, name, tier } => {
                    let t = client
                        .create_tenant(authpb::CreateTenantRequest {
                            tenant_id: id,
                            display_name: name,
                            tier,
                        })
                        .await?;
                    Ok(tenant_json(t.get_ref()))
                }
                TenantCmd::Get { id } => {
                    let t = client
                        .get_tenant(authpb::GetTenantRequest { tenant_id: id })
                        .await?;
                    Ok(tenant_json(t.get_ref()))
                }
                TenantCmd::List {
                    page_size,
                    page_token,
                } => {
                    let r = client
                        .list_tenants(authpb::ListTenantsRequest {
                            page_size,
                            page_token,
                        })
                        .await?;
                    let r = r.into_inner();
                    Ok(
                        json!({ "tenants": r.tenants.iter().map(tenant_json).collect::<Vec<_>>(), "next_page_token": r.next_page_token }),
                    )
                }
            }
        }
        Cmd::Doc(cmd) => {
            let token = cli
                .token
                .or_else(demo_token)
                .context("no token: pass --token, set KEEL_TOKEN, or run `cargo xtask up` (it writes .keel/demo.json)")?;
            let mut client = pb::document_service_client::DocumentServiceClient::new(
                channel(&cli.gateway_url).await?,
            );
            match cmd {
                DocCmd::Create {
                    title,
                    content,
                    file,
                    idempotency_key,
                } => {
                    let content = match (content, file) {
                        (Some(c), _) => c,
                        (None, Some(f)) => std::fs::read_to_string(&f)
                            .with_context(|| format!("reading {}", f.display()))?,
                        (None, None) => String::new(),
                    };
                    let d = client
                        .create_document(authed(
                            pb::CreateDocumentRequest {
                                title,
                                content,
                                idempotency_key,
                            },
                            &token,
                        )?)
                        .await?;
                    Ok(doc_json(d.get_ref()))
                }
                DocCmd::Get { id } => {
                    let d = client
                        .get_document(authed(pb::GetDocumentRequest { id }, &token)?)
                        .await?;
                    Ok(doc_json(d.get_ref()))
                }
                DocCmd::List {
                    page_size,
                    page_token,
                } => {
                    let r = client
                        .list_documents(authed(
                            pb::ListDocumentsRequest {
                                page_size,
                                page_token,
                                omit_content: true,
                            },
                            &token,
                        )?)
                        .await?;
                    let r = r.into_inner();
                    Ok(
                        json!({ "documents": r.documents.iter().map(doc_json).collect::<Vec<_>>(), "next_page_token": r.next_page_token }),
                    )
                }
                DocCmd::Update {
                    id,
                    title,
                    content,
                    expected_version,
                } => {
                    let d = client
                        .update_document(authed(
                            pb::UpdateDocumentRequest {
                                id,
                                title,
                                content,
                                expected_version,
                            },
                            &token,
                        )?)
                        .await?;
                    Ok(doc_json(d.get_ref()))
                }
                DocCmd::Delete {
                    id,
                    expected_version,
                } => {
                    client
                        .delete_document(authed(
                            pb::DeleteDocumentRequest {
                                id,
                                expected_version,
                            },
                            &token,
                        )?)
                        .await?;
                    Ok(json!({ "deleted": true }))
                }
            }
        }
    }
}
