//! The one place that reads flags and environment variables.
//!
//! Every setting is a flag with a `HELLO_*` environment fallback (12-factor); `--help` lists them
//! all. Durations read like `250ms` or `2s`, sizes like `1MiB` or `65536`. A bad value is a
//! [`ConfigError`]: `main` prints it as one line naming the flag and the variable, and exits 64.

use std::error::Error as _;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The public port when neither `--port`, `HELLO_PORT` nor `PORT` says otherwise.
pub const DEFAULT_PORT: u16 = 5000;
/// The admin port: metrics and operator switches, never exposed by a load balancer.
pub const DEFAULT_ADMIN_PORT: u16 = 9000;

#[derive(Debug, Parser)]
#[command(
    name = "hello-world",
    version = crate::VERSION,
    about = "Hello World!, load-balanced, observable and proven",
    long_about = "Hello World!, load-balanced, observable and proven.\n\n\
        Without a subcommand, `serve` runs."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP on the public and admin ports (the default).
    Serve(Box<ServeArgs>),
    /// Probe the local instance's /healthz; exit 0 when healthy, 1 otherwise.
    Healthcheck(HealthcheckArgs),
    /// Send requests to a URL and report status counts, latency and how replicas share the load.
    Check(crate::check::CheckArgs),
}

impl Cli {
    /// Parses the command line; `serve` is implied when no subcommand is named.
    pub fn parse_from_env() -> Result<Self, clap::Error> {
        Self::try_parse_from(with_default_subcommand(std::env::args_os().collect()))
    }
}

/// Inserts `serve` when the first argument is not a subcommand, so `hello-world --port 8080`
/// and a bare `hello-world` (the image's entrypoint) both serve.
fn with_default_subcommand(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const FIRST_WORDS: &[&str] = &[
        "serve",
        "healthcheck",
        "check",
        "help",
        "--help",
        "-h",
        "--version",
        "-V",
    ];
    let named = args
        .get(1)
        .and_then(|arg| arg.to_str())
        .is_some_and(|arg| FIRST_WORDS.contains(&arg));
    if !named {
        args.insert(1.min(args.len()), "serve".into());
    }
    args
}

/// How the public listener is reached; shared by `serve` and `healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct PortArgs {
    /// Public port [default: $PORT, else 5000].
    #[arg(long, env = "HELLO_PORT", value_name = "PORT")]
    pub port: Option<u16>,
}

impl PortArgs {
    /// `--port`/`HELLO_PORT`, else `PORT` (the Cloud Run convention), else 5000.
    pub fn resolve(&self) -> Result<u16, ConfigError> {
        if let Some(port) = self.port {
            return Ok(port);
        }
        match std::env::var("PORT") {
            Ok(text) => text.trim().parse().map_err(|_| ConfigError {
                setting: "PORT".to_owned(),
                message: format!("invalid value '{text}': expected a port number (0-65535)"),
            }),
            Err(_) => Ok(DEFAULT_PORT),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON when stdout is not a terminal (containers), text otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub port: PortArgs,

    /// Admin port: /metrics, readiness switches, fault injection, /exit.
    #[arg(long, env = "HELLO_ADMIN_PORT", default_value_t = DEFAULT_ADMIN_PORT)]
    pub admin_port: u16,

    /// Address both listeners bind to.
    #[arg(long, env = "HELLO_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// The name in `x-served-by` and /api/info [default: the hostname].
    #[arg(long, env = "HELLO_INSTANCE_NAME")]
    pub instance_name: Option<String>,

    /// On SIGTERM, how long /readyz answers 503 before the listener closes, so load balancers
    /// stop sending new requests first.
    #[arg(long, env = "HELLO_DRAIN_DELAY", default_value = "5s", value_parser = duration)]
    pub drain_delay: Duration,

    /// After the listener closes, how long in-flight requests get to finish.
    #[arg(long, env = "HELLO_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub shutdown_timeout: Duration,

    /// A connection that makes no progress for this long is closed: a client that does not send
    /// a whole request head (slowloris), an idle keep-alive connection, a client that stops
    /// reading its answer. Closed one to one and a half of it after the last progress.
    #[arg(long, env = "HELLO_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_timeout: Duration,

    /// Longest time a request may take before it is answered 503.
    #[arg(long, env = "HELLO_REQUEST_TIMEOUT", default_value = "70s", value_parser = duration)]
    pub request_timeout: Duration,

    /// Largest request body accepted (413 above).
    #[arg(long, env = "HELLO_BODY_LIMIT", default_value = "1MiB", value_parser = byte_size)]
    pub body_limit: usize,

    /// Largest value stored under one key (413 above).
    #[arg(long, env = "HELLO_VALUE_LIMIT", default_value = "1MiB", value_parser = byte_size)]
    pub value_limit: usize,

    /// Longest delay /delay/{duration} accepts (400 above).
    #[arg(long, env = "HELLO_MAX_DELAY", default_value = "60s", value_parser = duration)]
    pub max_delay: Duration,

    /// Most connections open at once on the public port; more are closed at once.
    #[arg(long, env = "HELLO_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,

    /// Shared state in Redis (`redis://[:password@]host:port[/db]`) [default: in memory].
    #[arg(long, env = "HELLO_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,

    /// Timeout of one store call; an unreachable store answers 503 within it.
    #[arg(long, env = "HELLO_STORE_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub store_timeout: Duration,

    /// Log format.
    #[arg(long, env = "HELLO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// Log filter: a level, or comma-separated `target=level` directives (`warn,hello_world=debug`).
    #[arg(long, env = "HELLO_LOG", default_value = "info")]
    pub log: String,

    /// One log line per request; 5xx and slow requests are logged either way.
    #[arg(long, env = "HELLO_ACCESS_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,

    /// A request slower than this is logged even with the access log off.
    #[arg(long, env = "HELLO_SLOW_REQUEST", default_value = "1s", value_parser = duration)]
    pub slow_request: Duration,

    /// Pod name from the Kubernetes Downward API.
    #[arg(long, env = "POD_NAME", hide = true)]
    pub pod_name: Option<String>,

    /// Pod namespace from the Kubernetes Downward API.
    #[arg(long, env = "POD_NAMESPACE", hide = true)]
    pub pod_namespace: Option<String>,

    /// Node name from the Kubernetes Downward API.
    #[arg(long, env = "NODE_NAME", hide = true)]
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    pub port: PortArgs,

    /// Give up after this long.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub timeout: Duration,
}

/// Everything `serve` needs, resolved: defaults applied, the port and instance name decided.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub admin_port: u16,
    pub instance_name: String,
    pub drain_delay: Duration,
    pub shutdown_timeout: Duration,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub body_limit: usize,
    pub value_limit: usize,
    pub max_delay: Duration,
    pub max_connections: usize,
    pub redis_url: Option<String>,
    pub store_timeout: Duration,
    pub log_format: LogFormat,
    pub log: String,
    pub access_log: bool,
    pub slow_request: Duration,
    pub downward: Downward,
}

/// What the Kubernetes Downward API tells a pod about itself; all absent elsewhere.
#[derive(Debug, Clone, Default)]
pub struct Downward {
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub node: Option<String>,
}

impl ServeArgs {
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let port = self.port.resolve()?;
        let instance_name = match self.instance_name {
            Some(name) if !name.trim().is_empty() => name,
            Some(_) => {
                return Err(ConfigError::new(
                    "--instance-name",
                    "HELLO_INSTANCE_NAME",
                    "must not be empty",
                ));
            }
            None => hostname(),
        };
        if http::HeaderValue::from_str(&instance_name).is_err() {
            return Err(ConfigError::new(
                "--instance-name",
                "HELLO_INSTANCE_NAME",
                "must be printable ASCII (it is sent as a header)",
            ));
        }
        if self.header_timeout < MIN_HEADER_TIMEOUT {
            return Err(ConfigError::new(
                "--header-timeout",
                "HELLO_HEADER_TIMEOUT",
                "must be at least 10ms",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "--max-connections",
                "HELLO_MAX_CONNECTIONS",
                "must be at least 1",
            ));
        }
        Ok(Config {
            host: self.host,
            port,
            admin_port: self.admin_port,
            instance_name,
            drain_delay: self.drain_delay,
            shutdown_timeout: self.shutdown_timeout,
            header_timeout: self.header_timeout,
            request_timeout: self.request_timeout,
            body_limit: self.body_limit,
            value_limit: self.value_limit,
            max_delay: self.max_delay,
            max_connections: self.max_connections,
            redis_url: self.redis_url.filter(|url| !url.trim().is_empty()),
            store_timeout: self.store_timeout,
            log_format: self.log_format,
            log: self.log,
            access_log: self.access_log,
            slow_request: self.slow_request,
            downward: Downward {
                pod: self.pod_name,
                namespace: self.pod_namespace,
                node: self.node_name,
            },
        })
    }
}

impl Config {
    /// The defaults, as `serve` with no flags and no environment would resolve them, bound to
    /// loopback on ephemeral ports: what tests and embedders start from.
    pub fn for_tests(instance_name: &str) -> Self {
        let args = ServeArgs::parse_args(["serve"]).expect("defaults always parse");
        let mut config = args.resolve().expect("defaults always resolve");
        config.host = IpAddr::from([127, 0, 0, 1]);
        config.port = 0;
        config.admin_port = 0;
        config.instance_name = instance_name.to_owned();
        config.redis_url = None;
        config.downward = Downward::default();
        config
    }
}

impl ServeArgs {
    fn parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: ServeArgs,
        }
        Only::try_parse_from(args).map(|only| only.args)
    }
}

/// A setting that cannot be used, named by its flag and its environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(flag: &str, env: &str, message: impl Into<String>) -> Self {
        Self {
            setting: format!("{flag} / {env}"),
            message: message.into(),
        }
    }

    /// Rewrites a clap value error as one line naming the flag and its environment variable.
    pub fn from_clap(err: &clap::Error) -> Option<Self> {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        if !matches!(
            err.kind(),
            ErrorKind::InvalidValue | ErrorKind::ValueValidation
        ) {
            return None;
        }
        let arg = match err.get(ContextKind::InvalidArg)? {
            ContextValue::String(arg) => arg.clone(),
            _ => return None,
        };
        let flag = arg.split_whitespace().next().unwrap_or(&arg).to_owned();
        let value = match err.get(ContextKind::InvalidValue) {
            Some(ContextValue::String(value)) => value.clone(),
            _ => String::new(),
        };
        let env = env_of_flag(&flag);
        let reason = err
            .source()
            .map(|source| source.to_string())
            .unwrap_or_else(|| "not accepted".to_owned());
        let setting = match env {
            Some(env) => format!("{flag} / {env}"),
            None => flag,
        };
        Some(Self {
            setting,
            message: format!("'{value}': {reason}"),
        })
    }
}

/// The environment variable behind a flag, read from the command definition itself.
fn env_of_flag(flag: &str) -> Option<String> {
    use clap::CommandFactory;
    let long = flag.strip_prefix("--")?;
    let command = Cli::command();
    command
        .get_subcommands()
        .flat_map(|sub| sub.get_arguments())
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
}

/// Parses `250ms`, `2s`, `1m30s`; a bare number means seconds.
/// Shortest header timeout accepted: a connection has to get a request in at all.
const MIN_HEADER_TIMEOUT: Duration = Duration::from_millis(10);

pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|err| format!("expected a duration like 250ms or 2s ({err})"))
}

/// Parses `65536`, `64KiB`, `1MiB`, `1MB` (powers of two for KiB/MiB/GiB, ten for kB/MB/GB).
pub fn byte_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number = usize::from_str(digits)
        .map_err(|_| format!("expected a size like 65536 or 1MiB, got '{text}'"))?;
    let factor: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit '{other}' (use B, KiB, MiB, GiB, kB, MB, GB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size '{text}' is too large"))
}

/// The machine's hostname: in a container, the container id or pod name.
pub(crate) fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_humans_write_them() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("3"), Ok(Duration::from_secs(3)));
        assert!(duration("soon").is_err());
        assert!(duration("-1s").is_err());
    }

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        assert_eq!(byte_size("65536"), Ok(65_536));
        assert_eq!(byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(byte_size("64 KiB"), Ok(64 << 10));
        assert_eq!(byte_size("1MB"), Ok(1_000_000));
        assert!(byte_size("1XB").is_err());
        assert!(byte_size("MiB").is_err());
    }

    #[test]
    fn serve_is_the_default_subcommand() {
        let args = with_default_subcommand(vec!["hello-world".into(), "--port".into(), "1".into()]);
        assert_eq!(args[1], "serve");
        let args = with_default_subcommand(vec!["hello-world".into()]);
        assert_eq!(args, vec!["hello-world", "serve"]);
        let args = with_default_subcommand(vec!["hello-world".into(), "check".into()]);
        assert_eq!(args[1], "check");
    }

    #[test]
    fn a_bad_value_names_the_flag_and_the_variable() {
        let err = Cli::try_parse_from(["hello-world", "serve", "--drain-delay", "soon"])
            .expect_err("'soon' is not a duration");
        let config_error = ConfigError::from_clap(&err).expect("a value error");
        assert_eq!(config_error.setting, "--drain-delay / HELLO_DRAIN_DELAY");
        assert!(config_error.message.contains("soon"), "{config_error}");
    }

    #[test]
    fn a_header_timeout_too_short_to_get_a_request_in_is_refused() {
        let serve = |timeout: &str| {
            let cli = Cli::try_parse_from(["hello-world", "serve", "--header-timeout", timeout])
                .expect("a duration");
            let Command::Serve(args) = cli.command else {
                panic!("serve is the subcommand");
            };
            args.resolve()
        };
        let err = serve("0").expect_err("zero is refused");
        assert_eq!(err.setting, "--header-timeout / HELLO_HEADER_TIMEOUT");
        assert!(serve("5ms").is_err());
        assert!(serve("10ms").is_ok());
    }

    #[test]
    fn defaults_match_the_contract() {
        let config = Config::for_tests("t");
        assert_eq!(config.drain_delay, Duration::from_secs(5));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(config.body_limit, 1 << 20);
        assert!(config.access_log);
    }
}
