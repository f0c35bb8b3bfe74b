//! `keelctl` — keel's command line for users and operators: documents through the gateway,
//! tenants through the auth service's directory, and health checks for container probes.
//!
//! Output is JSON on stdout; errors go to stderr with the gRPC code and keel reason, and the exit
//! code is 1 (call failed) or 2 (usage).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod authspec;

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
    /// The inference service's gRPC endpoint (model commands; internal, operators only).
    #[arg(
        long,
        env = "KEEL_INFERENCE_URL",
        default_value = "http://127.0.0.1:50053",
        global = true
    )]
    inference_url: String,
    /// The operator's admin credential (tenant and user commands); defaults to
    /// .keel/admin.token when `cargo xtask up` wrote it. A tenant admin's access token works
    /// too, for their own tenant.
    #[arg(long, env = "KEEL_ADMIN_TOKEN", global = true, hide_env_values = true)]
    admin_token: Option<String>,
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
    /// Users (talks to the auth service directly: operators only).
    #[command(subcommand)]
    User(UserCmd),
    /// Signing keys (talks to the auth service directly: operators and tenant admins).
    #[command(subcommand)]
    Key(KeyCmd),
    /// A tenant's auth, declared in a spec file: plan, apply, generate client configuration.
    #[command(subcommand)]
    Auth(AuthCmd),
    /// Dead letters: messages a consumer could not process (talks to NATS directly).
    #[command(subcommand)]
    Dlq(DlqCmd),
    /// A tenant's models and A/B splits (talks to the inference service directly: operators
    /// only, from inside the deployment's network).
    #[command(subcommand)]
    Model(ModelCmd),
    /// Logs in through the gateway and prints the tokens as JSON.
    Login {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        username: String,
        /// The password (prefer --password-stdin: command lines are visible to other users).
        #[arg(long, env = "KEEL_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long)]
        password_stdin: bool,
        #[arg(long, default_value = "keelctl")]
        client_id: String,
        /// Also write the tokens into this JSON file (keeping its other fields).
        #[arg(long)]
        save: Option<PathBuf>,
    },
    /// Completes a login that answered `mfa_required` with a TOTP or recovery code.
    VerifyMfa {
        #[arg(long)]
        mfa_token: String,
        #[arg(long)]
        code: String,
        #[arg(long)]
        save: Option<PathBuf>,
    },
    /// Exits 0 when the gRPC server at ADDR reports SERVING (for container health checks).
    Health {
        #[arg(long)]
        addr: String,
        /// A service name to check instead of the server as a whole.
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[derive(Subcommand, Clone)]
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
enum UserCmd {
    Create {
        tenant: String,
        username: String,
        #[arg(long, env = "KEEL_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long)]
        password_stdin: bool,
        /// A role the tenant's policy defines (repeatable; default policy: admin or member).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Replaces a user's roles.
    SetRoles {
        tenant: String,
        username: String,
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Ends every session of a user (the account stays usable).
    EndSessions { tenant: String, username: String },
    /// Disables a user: logins refused, every session ended.
    Disable { tenant: String, username: String },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// The tenant's published keys (pending, active, retained).
    List { tenant: String },
    /// Rotates now (`--activate-after 0`) or schedules a key that signs after the given seconds
    /// (published at once; use at least the JWKS cache lifetime, 300 s, for outside verifiers).
    Rotate {
        tenant: String,
        #[arg(long, default_value_t = 300)]
        activate_after: u32,
    },
    /// Revokes a key: tokens it signed are refused at once.
    Revoke { kid: String },
}

#[derive(Subcommand)]
enum AuthCmd {
    /// Validates FILE and shows what `apply` would change.
    Plan { file: PathBuf },
    /// Applies FILE (idempotent); prints new clients' secrets once.
    Apply { file: PathBuf },
    /// Writes each client's OIDC configuration and a Rust snippet (no server needed).
    Generate {
        file: PathBuf,
        /// The deployment's issuer base URL (issuers are <base>/t/<tenant>).
        #[arg(
            long,
            env = "KEEL_AUTH_ISSUER_BASE",
            default_value = "http://127.0.0.1:8081"
        )]
        issuer_base: String,
    },
}

#[derive(Subcommand)]
enum DlqCmd {
    /// Every dead letter, oldest first: sequence, consumer, error, deliveries, subject.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One dead letter whole: headers and payload (UTF-8 when it is, else hex).
    Show { sequence: u64 },
    /// Publishes dead letters back to their original subjects (after the cause is fixed) and
    /// removes them from the dead-letter stream.
    Replay {
        /// Sequences to replay; none with --all.
        sequences: Vec<u64>,
        #[arg(long)]
        all: bool,
    },
}

/// The JetStream the dead letters live beside (`KEEL_NATS_URL`, `KEEL_NATS_STREAM`,
/// `KEEL_NATS_SUBJECT_PREFIX`, as the services read them; `cargo xtask up`'s by default).
async fn bus() -> Result<keel_bus::Bus> {
    let mut env = keel_config::Env::from_process();
    if env.raw("KEEL_NATS_URL").is_none() {
        env = env.with("KEEL_NATS_URL", "nats://127.0.0.1:54222");
    }
    let cfg = keel_bus::BusConfig::from_env(&env)?;
    Ok(keel_bus::Bus::connect(cfg).await?)
}

fn dead_letter_json(d: &keel_bus::dlq::DeadLetter, whole: bool) -> Value {
    let mut v = json!({
        "sequence": d.sequence,
        "consumer": d.consumer,
        "error": d.error,
        "delivered": d.delivered,
        "subject": d.subject,
        "time": d.time,
        "payload_bytes": d.payload.len(),
    });
    if whole {
        v["headers"] = json!(
            d.headers
                .iter()
                .map(|(k, v)| json!([k, v]))
                .collect::<Vec<_>>()
        );
        v["payload"] = match std::str::from_utf8(&d.payload) {
            Ok(s) => json!(s),
            Err(_) => {
                json!({ "hex": d.payload.iter().map(|b| format!("{b:02x}")).collect::<String>() })
            }
        };
    }
    v
}

#[derive(Subcommand)]
enum ModelCmd {
    /// The models the tenant may call.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Sends PERCENT % of the tenant's users of MODEL to VERSION_B (0 ends the split); takes
    /// effect within seconds on every inference replica, with no redeploy.
    Split {
        #[arg(long)]
        tenant: String,
        model: String,
        #[arg(long, default_value = "")]
        version_b: String,
        #[arg(long)]
        percent: u32,
    },
    /// The tenant's current split of MODEL.
    ShowSplit {
        #[arg(long)]
        tenant: String,
        model: String,
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

const DEMO_FILE: &str = ".keel/demo.json";

fn read_json(path: &std::path::Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn demo_token() -> Option<String> {
    read_json(std::path::Path::new(DEMO_FILE))?
        .get("access_token")?
        .as_str()
        .map(str::to_owned)
}

fn password(given: Option<String>, stdin: bool) -> Result<String> {
    if stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    given.context("give --password-stdin (or --password / KEEL_PASSWORD)")
}

fn tokens_json(r: &pb::LoginResponse) -> Value {
    if r.mfa_required {
        return json!({ "mfa_required": true, "mfa_token": r.mfa_token, "next": "keelctl verify-mfa --mfa-token <mfa_token> --code <TOTP code>" });
    }
    json!({ "access_token": r.access_token, "refresh_token": r.refresh_token, "expires_in_seconds": r.expires_in_seconds, "token_type": r.token_type })
}

/// Writes new tokens into a JSON file, keeping its other fields.
fn save_tokens(path: &std::path::Path, r: &pb::LoginResponse) -> Result<()> {
    if r.mfa_required {
        return Ok(());
    }
    let mut v = read_json(path).unwrap_or_else(|| json!({}));
    if let (Some(obj), Value::Object(t)) = (v.as_object_mut(), tokens_json(r)) {
        obj.extend(t);
    }
    std::fs::write(path, serde_json::to_vec_pretty(&v)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// When the demo file's access token has expired, trade its refresh token for new ones.
async fn refresh_demo(gateway_url: &str) -> Result<Option<String>> {
    let path = std::path::Path::new(DEMO_FILE);
    let Some(rt) =
        read_json(path).and_then(|v| v.get("refresh_token")?.as_str().map(str::to_owned))
    else {
        return Ok(None);
    };
    let mut auth = pb::authentication_service_client::AuthenticationServiceClient::new(
        channel(gateway_url).await?,
    );
    let r = auth
        .refresh(pb::RefreshRequest {
            refresh_token: rt,
            client_id: String::new(),
        })
        .await?
        .into_inner();
    save_tokens(path, &r)?;
    Ok(Some(r.access_token))
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

/// Where `cargo xtask up` keeps the local stack's operator credential.
const ADMIN_TOKEN_FILE: &str = ".keel/admin.token";

/// The admin credential: given, or the local stack's.
fn admin_bearer(given: Option<&str>) -> Result<keel_proto::client::Bearer> {
    let token = match given {
        Some(t) => t.to_owned(),
        None => std::fs::read_to_string(ADMIN_TOKEN_FILE)
            .map(|s| s.trim().to_owned())
            .with_context(|| {
                format!("no admin credential: pass --admin-token or KEEL_ADMIN_TOKEN (or run from a checkout where `cargo xtask up` wrote {ADMIN_TOKEN_FILE})")
            })?,
    };
    keel_proto::client::Bearer::new(&token)
        .context("the admin credential is not a valid header value")
}

type AdminClient = authpb::identity_admin_client::IdentityAdminClient<
    tonic::service::interceptor::InterceptedService<Channel, keel_proto::client::Bearer>,
>;

/// The auth service's admin API with the admin credential.
fn admin_client(channel: Channel, given: Option<&str>) -> Result<AdminClient> {
    Ok(
        authpb::identity_admin_client::IdentityAdminClient::with_interceptor(
            channel,
            admin_bearer(given)?,
        ),
    )
}

async fn run(cli: Cli) -> Result<Value> {
    match cli.command {
        Cmd::Auth(AuthCmd::Generate { file, issuer_base }) => {
            print!("{}", authspec::generate(&file, &issuer_base)?);
            Ok(Value::Null)
        }
        Cmd::Auth(AuthCmd::Plan { ref file }) | Cmd::Auth(AuthCmd::Apply { ref file }) => {
            // The file is checked before anything is contacted.
            let spec = authspec::load(file)?;
            let mut remote = keel_authspec::remote::Remote::new(
                channel(&cli.auth_url).await?,
                admin_bearer(cli.admin_token.as_deref())?,
            );
            if matches!(cli.command, Cmd::Auth(AuthCmd::Plan { .. })) {
                authspec::plan(&spec, &mut remote).await
            } else {
                authspec::apply(&spec, &mut remote).await
            }
        }
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
        Cmd::User(UserCmd::Create {
            tenant,
            username,
            password: pw,
            password_stdin,
            roles,
        }) => {
            let mut admin =
                admin_client(channel(&cli.auth_url).await?, cli.admin_token.as_deref())?;
            let u = admin
                .create_user(authpb::CreateUserRequest {
                    tenant_id: tenant,
                    username,
                    password: password(pw, password_stdin)?,
                    roles,
                })
                .await?
                .into_inner();
            Ok(
                json!({ "tenant_id": u.tenant_id, "user_id": u.user_id, "username": u.username, "roles": u.roles }),
            )
        }
        Cmd::Login {
            tenant,
            username,
            password: pw,
            password_stdin,
            client_id,
            save,
        } => {
            let mut auth = pb::authentication_service_client::AuthenticationServiceClient::new(
                channel(&cli.gateway_url).await?,
            );
            let r = auth
                .login(pb::LoginRequest {
                    tenant_id: tenant,
                    username,
                    password: password(pw, password_stdin)?,
                    client_id,
                })
                .await?
                .into_inner();
            if let Some(path) = save {
                save_tokens(&path, &r)?;
            }
            Ok(tokens_json(&r))
        }
        Cmd::VerifyMfa {
            mfa_token,
            code,
            save,
        } => {
            let mut auth = pb::authentication_service_client::AuthenticationServiceClient::new(
                channel(&cli.gateway_url).await?,
            );
            let r = auth
                .verify_mfa(pb::VerifyMfaRequest { mfa_token, code })
                .await?
                .into_inner();
            if let Some(path) = save {
                save_tokens(&path, &r)?;
            }
            Ok(tokens_json(&r))
        }
        Cmd::User(cmd) => {
            let mut admin =
                admin_client(channel(&cli.auth_url).await?, cli.admin_token.as_deref())?;
            let user_json = |u: authpb::User| json!({ "tenant_id": u.tenant_id, "user_id": u.user_id, "username": u.username, "roles": u.roles });
            match cmd {
                UserCmd::SetRoles {
                    tenant,
                    username,
                    roles,
                } => Ok(user_json(
                    admin
                        .set_user_roles(authpb::SetUserRolesRequest {
                            tenant_id: tenant,
                            username,
                            roles,
                        })
                        .await?
                        .into_inner(),
                )),
                UserCmd::EndSessions { tenant, username } => {
                    let r = admin
                        .end_user_sessions(authpb::EndUserSessionsRequest {
                            tenant_id: tenant,
                            username,
                        })
                        .await?
                        .into_inner();
                    Ok(json!({ "sessions_ended": r.sessions_ended }))
                }
                UserCmd::Disable { tenant, username } => Ok(user_json(
                    admin
                        .disable_user(authpb::DisableUserRequest {
                            tenant_id: tenant,
                            username,
                        })
                        .await?
                        .into_inner(),
                )),
                UserCmd::Create { .. } => Ok(Value::Null),
            }
        }
        Cmd::Key(cmd) => {
            let channel = channel(&cli.auth_url).await?;
            let key_json = |k: authpb::VerificationKey| {
                json!({ "kid": k.kid, "tenant_id": k.tenant_id, "alg": k.alg, "state": k.state,
                        "valid_from_unix": k.valid_from_unix, "verify_until_unix": k.verify_until_unix })
            };
            match cmd {
                KeyCmd::List { tenant } => {
                    let keys = authpb::key_directory_client::KeyDirectoryClient::new(channel)
                        .list_verification_keys(authpb::ListVerificationKeysRequest {
                            tenant_id: tenant,
                        })
                        .await?
                        .into_inner()
                        .keys;
                    Ok(Value::Array(keys.into_iter().map(key_json).collect()))
                }
                KeyCmd::Rotate {
                    tenant,
                    activate_after,
                } => {
                    let mut admin = admin_client(channel, cli.admin_token.as_deref())?;
                    Ok(key_json(
                        admin
                            .rotate_signing_key(authpb::RotateSigningKeyRequest {
                                tenant_id: tenant,
                                activate_after_seconds: activate_after,
                            })
                            .await?
                            .into_inner(),
                    ))
                }
                KeyCmd::Revoke { kid } => {
                    let mut admin = admin_client(channel, cli.admin_token.as_deref())?;
                    Ok(key_json(
                        admin
                            .revoke_signing_key(authpb::RevokeSigningKeyRequest { kid })
                            .await?
                            .into_inner(),
                    ))
                }
            }
        }
        Cmd::Dlq(cmd) => {
            let bus = bus().await?;
            match cmd {
                DlqCmd::List { limit } => {
                    let all = bus.dead_letters(limit).await?;
                    Ok(
                        json!({ "dead_letters": all.iter().map(|d| dead_letter_json(d, false)).collect::<Vec<_>>() }),
                    )
                }
                DlqCmd::Show { sequence } => match bus.dead_letter_by_sequence(sequence).await? {
                    Some(d) => Ok(dead_letter_json(&d, true)),
                    None => anyhow::bail!("no dead letter {sequence}"),
                },
                DlqCmd::Replay { sequences, all } => {
                    let targets: Vec<u64> = if all {
                        bus.dead_letters(usize::MAX)
                            .await?
                            .iter()
                            .map(|d| d.sequence)
                            .collect()
                    } else {
                        sequences
                    };
                    let mut replayed = Vec::new();
                    for seq in targets {
                        if bus.replay_dead_letter(seq).await? {
                            replayed.push(seq);
                        }
                    }
                    Ok(json!({ "replayed": replayed }))
                }
            }
        }
        Cmd::Model(cmd) => {
            let mut client = keel_proto::inference::models_client::ModelsClient::new(
                channel(&cli.inference_url).await?,
            );
            fn for_tenant<T>(msg: T, tenant: &str) -> anyhow::Result<tonic::Request<T>> {
                let mut r = tonic::Request::new(msg);
                r.metadata_mut()
                    .insert("keel-tenant-id", tenant.parse().context("tenant")?);
                Ok(r)
            }
            let split_json = |s: &keel_proto::inference::Split| json!({ "model": s.model, "version_a": s.version_a, "version_b": s.version_b, "percent_b": s.percent_b });
            match cmd {
                ModelCmd::List { tenant } => {
                    let r = client
                        .list_models(for_tenant(pb::ListModelsRequest::default(), &tenant)?)
                        .await?
                        .into_inner();
                    Ok(json!({ "models": r.models.iter().map(|m| json!({
                        "name": m.name, "version": m.version, "kind": m.kind,
                        "context_length_tokens": m.context_length_tokens,
                        "max_output_tokens": m.max_output_tokens,
                        "embedding_dimension": m.embedding_dimension,
                    })).collect::<Vec<_>>() }))
                }
                ModelCmd::Split {
                    tenant,
                    model,
                    version_b,
                    percent,
                } => {
                    let r = client
                        .set_split(for_tenant(
                            keel_proto::inference::SetSplitRequest {
                                model,
                                version_b,
                                percent_b: percent,
                            },
                            &tenant,
                        )?)
                        .await?;
                    Ok(split_json(r.get_ref()))
                }
                ModelCmd::ShowSplit { tenant, model } => {
                    let r = client
                        .get_split(for_tenant(
                            keel_proto::inference::GetSplitRequest { model },
                            &tenant,
                        )?)
                        .await?;
                    Ok(split_json(r.get_ref()))
                }
            }
        }
        Cmd::Tenant(cmd) => {
            let mut client =
                authpb::tenant_directory_client::TenantDirectoryClient::with_interceptor(
                    channel(&cli.auth_url).await?,
                    admin_bearer(cli.admin_token.as_deref())?,
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
            let explicit = cli.token.is_some();
            let token = cli
                .token
                .or_else(demo_token)
                .context("no token: pass --token, set KEEL_TOKEN, or run `cargo xtask up` (it writes .keel/demo.json)")?;
            match doc(&cli.gateway_url, &token, &cmd).await {
                Err(e)
                    if !explicit
                        && e.downcast_ref::<tonic::Status>()
                            .is_some_and(|s| s.code() == tonic::Code::Unauthenticated) =>
                {
                    match refresh_demo(&cli.gateway_url).await? {
                        Some(fresh) => doc(&cli.gateway_url, &fresh, &cmd).await,
                        None => Err(e),
                    }
                }
                other => other,
            }
        }
    }
}

async fn doc(gateway_url: &str, token: &str, cmd: &DocCmd) -> Result<Value> {
    let token = token.to_owned();
    let cmd = cmd.clone();
    let mut client =
        pb::document_service_client::DocumentServiceClient::new(channel(gateway_url).await?);
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
