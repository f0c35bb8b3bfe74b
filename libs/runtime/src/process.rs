//! The body of every service binary's `main`: read the environment once, set up telemetry,
//! validate configuration before binding anything (exit code 2 with a clear message when it is
//! wrong), run until SIGTERM or Ctrl-C, shut down gracefully, flush telemetry.
//!
//! `<binary> healthcheck` (for container health checks, where images have no shell) reads the
//! same configuration, asks the service's own gRPC health endpoint, and exits 0 when it reports
//! SERVING, 1 otherwise (2 on bad configuration).

use std::future::Future;
use std::process::ExitCode;

use keel_config::Env;

/// A started service that can be stopped gracefully.
pub trait Service: Send + 'static {
    fn shutdown(self) -> impl Future<Output = ()> + Send;
}

/// Exit code for invalid configuration (as `sysexits`' EX_USAGE is for usage errors, 2 is the
/// conventional "you called me wrong").
const EXIT_CONFIG: u8 = 2;
/// Exit code when the service could not start for another reason.
const EXIT_START: u8 = 1;

/// Startup failures, split so configuration mistakes are told apart from runtime trouble.
#[derive(Debug)]
pub enum StartFailure {
    Config(keel_config::ConfigError),
    Other(String),
}

impl From<keel_config::ConfigError> for StartFailure {
    fn from(e: keel_config::ConfigError) -> Self {
        StartFailure::Config(e)
    }
}

impl StartFailure {
    /// Wraps any other start error (binding, connecting).
    pub fn other(e: impl std::fmt::Display) -> Self {
        StartFailure::Other(e.to_string())
    }
}

/// Worker threads of the async runtime; unset, one per core. On a machine whose cores are
/// shared with other busy processes, fewer workers than cores can cost less CPU per call: a
/// worker woken for each small task costs a futex wake and a context switch (measure with
/// `cargo xtask bench gateway --env KEEL_WORKER_THREADS=1`).
pub const WORKER_THREADS: &str = "KEEL_WORKER_THREADS";

/// How long `healthcheck` waits for an answer.
const HEALTHCHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// `host` reads the service's listener configuration (for `healthcheck`); `start` starts it.
pub fn run<S, F, Fut>(
    name: &'static str,
    host: fn(&Env) -> Result<crate::HostConfig, keel_config::ConfigError>,
    start: F,
) -> ExitCode
where
    S: Service,
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = Result<S, StartFailure>>,
{
    let env = Env::from_process();
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return healthcheck(name, host(&env));
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match env.optional::<usize>(WORKER_THREADS) {
        Ok(Some(n)) if n > 0 => {
            builder.worker_threads(n);
        }
        // Unset: one worker per core (tokio's default).
        Ok(None) => {}
        Ok(Some(_)) | Err(_) => {
            eprintln!("{name}: invalid configuration: {WORKER_THREADS} must be a positive integer");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    runtime.block_on(async move {
        let telemetry = match keel_telemetry::TelemetryConfig::from_env(name, &env)
            .map_err(keel_telemetry::TelemetryError::from)
            .and_then(keel_telemetry::init)
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{name}: telemetry configuration error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let service = match start(env).await {
            Ok(s) => s,
            Err(StartFailure::Config(e)) => {
                tracing::error!(error = %e, "invalid configuration");
                eprintln!("{name}: invalid configuration: {e}");
                telemetry.shutdown();
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(StartFailure::Other(e)) => {
                tracing::error!(error = %e, "failed to start");
                eprintln!("{name}: failed to start: {e}");
                telemetry.shutdown();
                return ExitCode::from(EXIT_START);
            }
        };
        crate::shutdown_signal().await;
        service.shutdown().await;
        telemetry.shutdown();
        ExitCode::SUCCESS
    })
}

fn healthcheck(name: &str, host: Result<crate::HostConfig, keel_config::ConfigError>) -> ExitCode {
    let host = match host {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{name} healthcheck: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // A server listening on every interface is asked on loopback.
    let mut addr = host.grpc_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name} healthcheck: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    let ask = async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status)
            .map_err(|st| st.message().to_owned())
    };
    // The timer is made inside the runtime (it needs its clock).
    let asked =
        runtime.block_on(async move { tokio::time::timeout(HEALTHCHECK_TIMEOUT, ask).await });
    match asked {
        Ok(Ok(status))
            if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
        {
            ExitCode::SUCCESS
        }
        Ok(Ok(_)) => {
            eprintln!("{name} healthcheck: {addr} is NOT_SERVING");
            ExitCode::from(EXIT_START)
        }
        Ok(Err(e)) => {
            eprintln!("{name} healthcheck: {addr}: {e}");
            ExitCode::from(EXIT_START)
        }
        Err(_) => {
            eprintln!("{name} healthcheck: {addr} did not answer within {HEALTHCHECK_TIMEOUT:?}");
            ExitCode::from(EXIT_START)
        }
    }
}
