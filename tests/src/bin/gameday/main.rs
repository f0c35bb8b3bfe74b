//! `cargo xtask gameday key-rotation`: a tenant's signing key is rotated under light load on a
//! throwaway stack. New tokens must carry the new key at once and tokens of the old one keep
//! working while it is retained (its window is the longest token lifetime plus skew, an hour:
//! too long to wait for here, so it is printed); then the retained key is revoked, as an
//! operator retiring it early would, and every token it signed must be refused at once and
//! cleanly (UNAUTHENTICATED, never a server error), while clients that refresh when told their
//! token is no good lose nothing. Prints a short report and ends with
//! `faults=… requests=… lost=… duplicated=… max_recovery_s=… verdict=…`; exits non-zero on any
//! loss or unclean failure.
//!
//! `cargo xtask gameday failover`: see [`failover`]. `cargo xtask chaos` (`gameday chaos`):
//! see [`chaos`]. What the two share (the stack as processes, the client load, the accounting)
//! is in [`rig`].

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod chaos;
mod failover;
mod rig;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keel_proto::public as pb;
use keel_tests::{TestStack, authed, connect};
use tokio::sync::Mutex;

/// The shortest access-token lifetime auth accepts: the retained key expires this long after
/// the rotation.
const ACCESS_TTL: Duration = Duration::from_secs(30);
const CLIENTS: usize = 4;
/// Each client's pace (light load).
const EVERY: Duration = Duration::from_millis(100);
const TENANT: &str = "rotation";

/// What every client saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    refreshes: AtomicU64,
    /// Calls that failed even after a refresh: lost work from the client's point of view.
    lost: AtomicU64,
    /// The longest a client went from its first refusal to a served call (ms).
    max_recovery_ms: AtomicU64,
}

struct Session {
    access: String,
    refresh: String,
}

async fn list(ch: &tonic::transport::Channel, token: &str) -> Result<(), tonic::Status> {
    pb::document_service_client::DocumentServiceClient::new(ch.clone())
        .list_documents(authed(pb::ListDocumentsRequest::default(), token))
        .await
        .map(|_| ())
}

/// One client: calls, and on UNAUTHENTICATED refreshes once and retries.
async fn client(
    ch: tonic::transport::Channel,
    session: Arc<Mutex<Session>>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let mut auth = pb::authentication_service_client::AuthenticationServiceClient::new(ch.clone());
    while !stop.load(Ordering::Relaxed) {
        tally.requests.fetch_add(1, Ordering::Relaxed);
        let token = session.lock().await.access.clone();
        match list(&ch, &token).await {
            Ok(()) => {}
            Err(st) if st.code() == tonic::Code::Unauthenticated => {
                let refused_at = Instant::now();
                let refresh = session.lock().await.refresh.clone();
                let renewed = auth
                    .refresh(pb::RefreshRequest {
                        refresh_token: refresh,
                        client_id: "keel-tests".into(),
                    })
                    .await;
                tally.refreshes.fetch_add(1, Ordering::Relaxed);
                let ok = match renewed {
                    Ok(r) => {
                        let r = r.into_inner();
                        let mut s = session.lock().await;
                        s.access = r.access_token.clone();
                        s.refresh = r.refresh_token;
                        list(&ch, &r.access_token).await.is_ok()
                    }
                    Err(_) => false,
                };
                if ok {
                    tally
                        .max_recovery_ms
                        .fetch_max(refused_at.elapsed().as_millis() as u64, Ordering::Relaxed);
                } else {
                    tally.lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                tally.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}

async fn key_rotation() -> Result<bool> {
    let stack = TestStack::start_with(|e| {
        e.with(
            "KEEL_AUTH_ACCESS_TOKEN_TTL",
            format!("{}s", ACCESS_TTL.as_secs()),
        )
        .with("RUST_LOG", "error")
    })
    .await?;
    let started = Instant::now();
    let say = |what: &str| println!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
    stack.create_tenant(TENANT).await?;
    let ch = connect(&stack.gateway_url()).await?;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let user = format!("client{i}");
        stack.create_user(TENANT, &user, &["member"]).await?;
        let (access, refresh) = stack.login(TENANT, &user).await?;
        let session = Arc::new(Mutex::new(Session { access, refresh }));
        clients.spawn(client(ch.clone(), session, tally.clone(), stop.clone()));
    }
    stack.create_user(TENANT, "stale", &["member"]).await?;
    let (stale, _) = stack.login(TENANT, "stale").await?;
    let old_kid = keel_token::peek_kid(&stale).context("the stale token's kid")?;
    say(&format!(
        "{CLIENTS} clients running; a stale token signed by {old_kid}"
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let rotated = stack
        .admin()
        .await?
        .rotate_signing_key(keel_proto::auth::RotateSigningKeyRequest {
            tenant_id: TENANT.into(),
            activate_after_seconds: 0,
        })
        .await?
        .into_inner();
    say(&format!(
        "rotated: {} is active, {old_kid} retained",
        rotated.kid
    ));
    let (fresh, _) = stack.login(TENANT, "stale").await?;
    let new_kid = keel_token::peek_kid(&fresh)?;
    if new_kid != rotated.kid {
        bail!(
            "a login after the rotation was signed by {new_kid}, not {}",
            rotated.kid
        );
    }
    list(&ch, &fresh).await.context("a token of the new key")?;
    list(&ch, &stale)
        .await
        .context("the stale token while its key is retained")?;
    say("new tokens carry the new kid; the stale token still works (key retained)");

    // The retained key keeps verifying for the longest token lifetime plus skew; then, as an
    // operator retiring it early would, it is revoked: every token it signed is refused at once,
    // and the clients holding such tokens refresh onto the new key.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let window = keel_proto::auth::key_directory_client::KeyDirectoryClient::new(
        connect(&stack.auth_url()).await?,
    )
    .list_verification_keys(keel_proto::auth::ListVerificationKeysRequest {
        tenant_id: TENANT.into(),
    })
    .await?
    .into_inner()
    .keys
    .into_iter()
    .find(|k| k.kid == old_kid)
    .map_or(0, |k| k.verify_until_unix - keel_tests::unix_now());
    say(&format!(
        "{old_kid} would keep verifying for another {window} s (the longest token lifetime plus skew)"
    ));
    stack
        .admin()
        .await?
        .revoke_signing_key(keel_proto::auth::RevokeSigningKeyRequest {
            kid: old_kid.clone(),
        })
        .await
        .context("revoking the retained key")?;
    let revoked_at = Instant::now();
    say(&format!("revoked {old_kid}"));
    let mut stale_failed: Option<(f64, tonic::Code, String)> = None;
    while revoked_at.elapsed() < Duration::from_secs(10) {
        if stale_failed.is_none()
            && let Err(st) = list(&ch, &stale).await
        {
            stale_failed = Some((
                revoked_at.elapsed().as_secs_f64(),
                st.code(),
                st.message().to_owned(),
            ));
            say(&format!(
                "the stale token is refused: {:?} ({})",
                st.code(),
                st.message()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys = keel_proto::auth::key_directory_client::KeyDirectoryClient::new(
        connect(&stack.auth_url()).await?,
    )
    .list_verification_keys(keel_proto::auth::ListVerificationKeysRequest {
        tenant_id: TENANT.into(),
    })
    .await?
    .into_inner()
    .keys;
    let published: Vec<String> = keys
        .iter()
        .map(|k| format!("{}={}", k.kid, k.state))
        .collect();
    say(&format!("published keys now: {}", published.join(", ")));
    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    stack.shutdown().await;

    let requests = tally.requests.load(Ordering::Relaxed);
    let lost = tally.lost.load(Ordering::Relaxed);
    let refreshes = tally.refreshes.load(Ordering::Relaxed);
    let recovery = tally.max_recovery_ms.load(Ordering::Relaxed) as f64 / 1000.0;
    let clean = matches!(&stale_failed, Some((_, tonic::Code::Unauthenticated, _)));
    let revocation = stale_failed.as_ref().map_or(f64::NAN, |f| f.0);
    // The old key no longer signs, and its verification window has closed.
    // The old key is no longer published for verification (or only as revoked).
    let old_closed = keys
        .iter()
        .all(|k| k.kid != old_kid || k.state == "revoked");
    println!(
        "clients: {requests} calls, {refreshes} refreshes, {lost} lost; stale token: {}",
        match &stale_failed {
            Some((at, code, msg)) =>
                format!("refused {at:.1}s after the revocation with {code:?} ({msg})"),
            None => "never refused".into(),
        }
    );
    let pass = lost == 0 && clean && old_closed;
    println!(
        "faults=1 requests={requests} lost={lost} duplicated=0 max_recovery_s={recovery:.2} refreshes={refreshes} revocation_s={revocation:.1} stale_refused_clean={clean} old_key_closed={old_closed} verdict={}",
        if pass { "pass" } else { "fail" }
    );
    Ok(pass)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = match args.first().map(String::as_str) {
        Some("key-rotation") => key_rotation().await,
        Some("failover") => failover::run().await,
        Some("chaos") => chaos::run(&args[1..]).await,
        _ => {
            eprintln!("usage: gameday key-rotation|failover|chaos [--only PHASES]");
            return ExitCode::from(2);
        }
    };
    match run {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("gameday: {e:#}");
            ExitCode::FAILURE
        }
    }
}
