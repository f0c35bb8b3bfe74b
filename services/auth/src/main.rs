//! `keel-auth`: reads configuration, starts the service, stops on SIGTERM or Ctrl-C.

use keel_runtime::process::{StartFailure, run};

fn main() -> std::process::ExitCode {
    run(
        "keel-auth",
        |env| keel_auth::Config::from_env(env).map(|c| c.host),
        |env| async move {
            let cfg = keel_auth::Config::from_env(&env)?;
            keel_auth::start(cfg).await.map_err(StartFailure::other)
        },
    )
}
