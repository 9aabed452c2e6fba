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
    let targets = parse_filter(filter)
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

/// Reads `--log`: empty entries (a trailing comma) are skipped rather than read as a target
/// named "" (which `Targets` would enable at every level), and span or field filters, which
/// `Targets` cannot express, are refused rather than silently ignored.
fn parse_filter(filter: &str) -> Result<Targets, String> {
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|directive| !directive.is_empty())
        .collect();
    if directives.is_empty() {
        return Err("no directive (try `info`)".into());
    }
    if let Some(span) = directives.iter().find(|d| d.contains(['[', '{'])) {
        return Err(format!(
            "`{span}`: span and field filters are not supported, only `target=level`"
        ));
    }
    directives.join(",").parse().map_err(|err| format!("{err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn filters_read_levels_by_target() {
        let targets = parse_filter("warn, hello_world=debug,").expect("valid");
        assert_eq!(targets.default_level(), Some(LevelFilter::WARN));
        assert!(targets.would_enable("hello_world::server", &tracing::Level::DEBUG));
        assert!(!targets.would_enable("hyper::proto", &tracing::Level::INFO));
        assert!(!targets.would_enable("hyper::proto", &tracing::Level::TRACE));
    }

    #[test]
    fn empty_and_span_filters_are_refused() {
        assert!(parse_filter("").is_err());
        assert!(parse_filter(" , ").is_err());
        assert!(parse_filter("hello_world[request]=debug").is_err());
        assert!(parse_filter("hyper=nonsense").is_err());
    }
}
