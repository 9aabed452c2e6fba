//! Logs: one JSON object per line in containers, readable text on a terminal.
//!
//! Logs go to stdout (the container runtime collects them). Tests never call [`init`], so they
//! stay silent unless a test installs its own subscriber.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Installs the global subscriber. `filter` is a comma-separated list of `target=level`
/// directives, or a bare level for everything (`info`, `warn,hello_world=debug`): the
/// `Targets` filter, which needs no regex engine in the binary, unlike `EnvFilter`.
pub fn init(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let targets: Targets = filter
        .parse()
        .map_err(|err| anyhow::anyhow!("invalid --log / HELLO_LOG '{filter}': {err}"))?;
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(targets);
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_target(false),
            )
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_target(false),
            )
            .try_init()
    };
    result.map_err(|err| anyhow::anyhow!("cannot install the log subscriber: {err}"))
}
