//! `hello-world check`: the load-check client (being built; see issue 4).

use std::process::ExitCode;

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The URL to check.
    pub url: String,
}

pub async fn run(_args: CheckArgs) -> ExitCode {
    eprintln!("hello-world check: not built yet");
    ExitCode::from(2)
}
