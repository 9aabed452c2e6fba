//! Logs: one JSON object per line in containers, readable text on a terminal.
//!
//! Two steps, as zero-to-production has them: [`subscriber`] builds the log pipeline for a
//! format, a filter and a sink (the binary's is stdout, where the container runtime collects
//! logs), and [`install`] makes it the process's. Tests install one only when `TEST_LOG` is set
//! (`tests/it/helpers.rs`), so they stay silent unless asked, and build their own with a buffer
//! as the sink to read what was logged.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::{self, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;

use crate::config::LogFormat;

/// A log pipeline, ready to [`install`] (or to use in one scope, as tests do).
pub type LogSubscriber = Box<dyn Subscriber + Send + Sync>;

/// Builds the log pipeline: `format` (`Auto` is JSON unless stdout is a terminal), `filter` a
/// comma-separated list of `target=level` directives or a bare level for everything (`info`,
/// `warn,hello_world=debug`: the `Targets` filter, which needs no regex engine in the binary,
/// unlike `EnvFilter`), lines written to `sink`.
pub fn subscriber<W>(format: LogFormat, filter: &str, sink: W) -> anyhow::Result<LogSubscriber>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let targets = parse_filter(filter)
        .map_err(|err| anyhow::anyhow!("invalid --log / HELLO_LOG '{filter}': {err}"))?;
    let on_terminal = std::io::stdout().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !on_terminal,
    };
    let registry = tracing_subscriber::registry().with(targets);
    Ok(if json {
        Box::new(
            registry.with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_target(false)
                    .with_writer(sink),
            ),
        )
    } else {
        Box::new(
            registry.with(
                fmt::layer()
                    .with_ansi(on_terminal)
                    .with_target(false)
                    .with_writer(sink),
            ),
        )
    })
}

/// Makes `subscriber` the process's log pipeline; fails if one is installed already.
pub fn install(subscriber: LogSubscriber) -> anyhow::Result<()> {
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|err| anyhow::anyhow!("cannot install the log subscriber: {err}"))
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

/// JSON logs kept in memory, for unit tests that read what the code logged.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct KeptLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl KeptLogs {
    /// A JSON pipeline at `filter` that writes here.
    pub(crate) fn subscriber(&self, filter: &str) -> LogSubscriber {
        let sink = self.clone();
        subscriber(LogFormat::Json, filter, move || sink.clone()).expect("a valid filter")
    }

    /// Every line logged so far, each parsed as the one JSON object it must be.
    pub(crate) fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes)
            .expect("logs are UTF-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
            .collect()
    }
}

#[cfg(test)]
impl std::io::Write for KeptLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn json_logs_are_one_object_per_line_and_filtered() {
        let kept = KeptLogs::default();
        tracing::subscriber::with_default(kept.subscriber("info"), || {
            tracing::info!(route = "/", status = 200, "request");
            tracing::debug!("below the filter");
        });
        let lines = kept.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["message"], "request");
        assert_eq!(lines[0]["route"], "/");
        assert_eq!(lines[0]["status"], 200);
        assert_eq!(lines[0]["level"], "INFO");
    }

    #[test]
    fn a_bad_filter_names_the_setting() {
        let err = subscriber(LogFormat::Text, "hyper=nonsense", std::io::sink)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("--log / HELLO_LOG"), "{err}");
    }

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
