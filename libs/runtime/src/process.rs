//! The body of every service binary's `main`: read the environment once, set up telemetry,
//! validate configuration before binding anything (exit code 2 with a clear message when it is
//! wrong), run until SIGTERM or Ctrl-C, shut down gracefully, flush telemetry.

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

pub fn run<S, F, Fut>(name: &'static str, start: F) -> ExitCode
where
    S: Service,
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = Result<S, StartFailure>>,
{
    let env = Env::from_process();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
