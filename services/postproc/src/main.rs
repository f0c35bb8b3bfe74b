//! `keel-postproc`: reads configuration, starts the service, stops on SIGTERM or Ctrl-C.

use keel_runtime::process::{StartFailure, run};

fn main() -> std::process::ExitCode {
    run(
        "keel-postproc",
        |env| keel_postproc::Config::from_env(env).map(|c| c.host),
        |env| async move {
            let cfg = keel_postproc::Config::from_env(&env)?;
            keel_postproc::start(cfg).await.map_err(StartFailure::other)
        },
    )
}
