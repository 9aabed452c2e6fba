//! The one place that reads flags and environment variables.
//!
//! Every setting is a flag with a `HELLO_*` environment fallback (12-factor); `--help` lists them
//! all. Durations read like `250ms` or `2s`, sizes like `1MiB` or `65536`. A bad value is a
//! [`ConfigError`]: `main` prints it as one line naming the flag and the variable, and exits 64.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
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
    /// Parses the process's command line and environment; `serve` is implied when no
    /// subcommand is named.
    pub fn parse_from_env() -> Result<Self, clap::Error> {
        let env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        Self::parse(std::env::args_os(), &env)
    }

    /// Parses `args` with `env` as the environment, the only one read: the process's own plays
    /// no part, so a test gives exactly the variables it means (and a bad one is an error, as
    /// for the binary, never a panic).
    ///
    /// clap reads a setting's variable from the process when it builds the command; here each
    /// such read is undone, and the variables `env` holds are given to clap as the flags they
    /// stand for, ahead of the command line's own, which win (`args_override_self`).
    pub fn parse<I, T>(args: I, env: &BTreeMap<String, String>) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut args = with_default_subcommand(args.into_iter().map(Into::into).collect());
        let mut command = <Self as clap::CommandFactory>::command();
        let invoked = args.get(1).and_then(|arg| arg.to_str()).map(str::to_owned);
        if let Some(sub) = invoked
            .as_deref()
            .and_then(|name| command.find_subcommand(name))
        {
            let from_env: Vec<std::ffi::OsString> = sub
                .get_arguments()
                .filter_map(|arg| {
                    let name = arg.get_env()?.to_str()?;
                    let value = env.get(name)?;
                    Some(format!("--{}={value}", arg.get_long()?).into())
                })
                .collect();
            args.splice(2..2, from_env);
        }
        command = command.mut_subcommands(|sub| {
            sub.args_override_self(true).mut_args(|arg| {
                let Some(name) = arg
                    .get_env()
                    .map(|name| name.to_string_lossy().into_owned())
                else {
                    return arg;
                };
                // Still said in --help, as clap would say it.
                let said = |text: Option<&clap::builder::StyledStr>| {
                    text.map(|text| format!("{text} [env: {name}]"))
                };
                let help = said(arg.get_help());
                let long_help = said(arg.get_long_help());
                let arg = arg.env(None::<&str>);
                let arg = match help {
                    Some(help) => arg.help(help),
                    None => arg,
                };
                match long_help {
                    Some(long_help) => arg.long_help(long_help),
                    None => arg,
                }
            })
        });
        let matches = command.try_get_matches_from(args)?;
        <Self as clap::FromArgMatches>::from_arg_matches(&matches)
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

    /// `PORT`, the Cloud Run convention, read as text so a bad one is named as `PORT`.
    #[arg(long = "cloud-run-port", env = "PORT", hide = true)]
    pub cloud_run_port: Option<String>,
}

impl PortArgs {
    /// `--port`/`HELLO_PORT`, else `PORT`, else 5000.
    pub fn resolve(&self) -> Result<u16, ConfigError> {
        if let Some(port) = self.port {
            return Ok(port);
        }
        match &self.cloud_run_port {
            Some(text) => text.trim().parse().map_err(|_| ConfigError {
                setting: "PORT".to_owned(),
                message: format!("invalid value '{text}': expected a port number (0-65535)"),
            }),
            None => Ok(DEFAULT_PORT),
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

/// Which requests get an access log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccessLog {
    /// Every request.
    #[value(alias = "true")]
    All,
    /// Errors (4xx, 5xx) and slow requests (`--slow-request`) only: what an operator looks
    /// for, at a fraction of the log volume (the stacks' default).
    #[value(alias = "false")]
    Errors,
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

    /// A WebSocket on /ws/echo that receives nothing (no message, no ping) for this long is
    /// closed (code 1000).
    #[arg(long, env = "HELLO_WS_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub ws_idle_timeout: Duration,

    /// Longest time a request may take before it is answered 503.
    #[arg(long, env = "HELLO_REQUEST_TIMEOUT", default_value = "70s", value_parser = duration)]
    pub request_timeout: Duration,

    /// Largest request body accepted (413 above).
    #[arg(long, env = "HELLO_BODY_LIMIT", default_value = "1MiB", value_parser = byte_size)]
    pub body_limit: usize,

    /// Most request-body bytes all requests together may hold at once. A request with a body
    /// reserves its `Content-Length` (the body limit when it gives none) before it is read and
    /// waits, within the request timeout, while the reservations of others fill this: however
    /// many clients send at once, bodies in flight cannot exhaust memory. At least the body
    /// limit.
    #[arg(long, env = "HELLO_BODY_BUDGET", default_value = "8MiB", value_parser = byte_size)]
    pub body_budget: usize,

    /// Largest value stored under one key (413 above).
    #[arg(long, env = "HELLO_VALUE_LIMIT", default_value = "1MiB", value_parser = byte_size)]
    pub value_limit: usize,

    /// Longest delay /delay/{duration} accepts (400 above).
    #[arg(long, env = "HELLO_MAX_DELAY", default_value = "60s", value_parser = duration)]
    pub max_delay: Duration,

    /// Most connections open at once on the public port; more are closed at once.
    #[arg(long, env = "HELLO_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,

    /// File holding the admin token: every admin mutation (`POST /exit`, `PUT`/`DELETE /faults`,
    /// `POST /readyz/disable|enable`) then needs `Authorization: Bearer <token>`. At least 32
    /// visible ASCII characters; surrounding whitespace (a trailing newline) is ignored.
    /// [default: none: mutations are accepted from loopback only]
    #[arg(long, env = "HELLO_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,

    /// Most bytes the in-memory store keeps (keys, values, idempotency records); a write past it
    /// is answered 507, while reads and deletes still work. The default leaves a 64 MiB
    /// container room for the process and for requests in flight. Unused with --redis-url:
    /// Redis has its own `maxmemory`.
    #[arg(long, env = "HELLO_STORE_BUDGET", default_value = "32MiB", value_parser = byte_size)]
    pub store_budget: usize,

    /// Shared state in Redis (`redis://[:password@]host:port[/db]`) [default: in memory].
    #[arg(long, env = "HELLO_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,

    /// Shared state in the Redis primary these Sentinels name (`host:port[,host:port...]`): it is
    /// found again after a failover, without a restart. Not with --redis-url.
    #[arg(
        long,
        env = "HELLO_REDIS_SENTINEL",
        value_name = "HOST:PORT[,...]",
        value_delimiter = ','
    )]
    pub redis_sentinel: Vec<String>,

    /// The name the Sentinels monitor the primary under (`sentinel monitor <name> ...`).
    #[arg(long, env = "HELLO_REDIS_MASTER_NAME", default_value = "hello-world")]
    pub redis_master_name: String,

    /// Replicas that must confirm a write (`WAIT`) before it is acknowledged; unconfirmed
    /// writes answer 503 and are retried with the same Idempotency-Key [default: 1 with
    /// --redis-sentinel, 0 with --redis-url].
    #[arg(long, env = "HELLO_REDIS_WAIT_REPLICAS", value_name = "N")]
    pub redis_wait_replicas: Option<u32>,

    /// How long replicas get to confirm a write; below --store-timeout, which bounds the call.
    #[arg(long, env = "HELLO_REDIS_WAIT_TIMEOUT", default_value = "500ms", value_parser = duration)]
    pub redis_wait_timeout: Duration,

    /// Timeout of one store call; an unreachable store answers 503 within it.
    #[arg(long, env = "HELLO_STORE_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub store_timeout: Duration,

    /// Log format.
    #[arg(long, env = "HELLO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// Log filter: a level, or comma-separated `target=level` directives (`warn,hello_world=debug`).
    #[arg(long, env = "HELLO_LOG", default_value = "info")]
    pub log: String,

    /// Which requests get a log line: `all`, or `errors` (4xx, 5xx and slow requests only).
    /// `true` and `false` mean the same.
    #[arg(long, env = "HELLO_ACCESS_LOG", value_enum, default_value_t = AccessLog::All)]
    pub access_log: AccessLog,

    /// A request slower than this is logged even with the access log off.
    #[arg(long, env = "HELLO_SLOW_REQUEST", default_value = "1s", value_parser = duration)]
    pub slow_request: Duration,

    /// Pod name from the Kubernetes Downward API.
    #[arg(long, env = "POD_NAME", hide = true)]
    pub pod_name: Option<String>,

    /// Pod namespace from the Kubernetes Downward API.
    #[arg(long, env = "POD_NAMESPACE", hide = true)]
    pub pod_namespace: Option<String>,

    /// The machine this replica runs on: Kubernetes' Downward API (`spec.nodeName`), Swarm's
    /// `{{.Node.Hostname}}`. Sent as `x-node` and shown in /api/info.
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
    pub ws_idle_timeout: Duration,
    pub request_timeout: Duration,
    pub body_limit: usize,
    pub body_budget: usize,
    pub value_limit: usize,
    pub max_delay: Duration,
    pub max_connections: usize,
    /// The admin port's credential; `None`: mutations from loopback only.
    pub admin_token: Option<AdminToken>,
    pub store_budget: usize,
    pub redis_url: Option<String>,
    /// `--redis-sentinel`: find the primary through these Sentinels (exclusive with the URL).
    pub redis_sentinel: Option<SentinelConfig>,
    /// Replicas that must confirm each write, and how long they get; 0 replicas: none.
    pub redis_wait_replicas: u32,
    pub redis_wait_timeout: Duration,
    pub store_timeout: Duration,
    pub log_format: LogFormat,
    pub log: String,
    pub access_log: AccessLog,
    pub slow_request: Duration,
    pub downward: Downward,
}

/// The wait for replicas must end before the call's timeout, or no unconfirmed write would
/// ever be told apart from a lost connection.
fn redis_wait_timeout_too_long(wait: Duration, store_timeout: Duration) -> bool {
    wait >= store_timeout
}

/// Where the Sentinels are and which primary to ask them for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// `host:port` of each Sentinel.
    pub addresses: Vec<String>,
    pub master_name: String,
}

/// A Sentinel address: `host:port` with a host and a port number, else the problem.
fn sentinel_address(address: &str) -> Result<String, String> {
    let address = address.trim();
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("'{address}' is not host:port"))?;
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err(format!("'{address}' has no usable host"));
    }
    port.parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("'{address}' has no valid port"))?;
    Ok(address.to_owned())
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
        // An orchestrator that knows no node may still set the variable, empty.
        let node_name = self.node_name.filter(|node| !node.trim().is_empty());
        if node_name
            .as_deref()
            .is_some_and(|node| http::HeaderValue::from_str(node).is_err())
        {
            return Err(ConfigError::new(
                "--node-name",
                "NODE_NAME",
                "must be printable ASCII (it is sent as the x-node header)",
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
        if self.body_budget < self.body_limit {
            return Err(ConfigError::new(
                "--body-budget",
                "HELLO_BODY_BUDGET",
                format!(
                    "must be at least the body limit ({} bytes): a body that large could never be read",
                    self.body_limit
                ),
            ));
        }
        let admin_token = match &self.admin_token_file {
            Some(path) => Some(AdminToken::read(path).map_err(|problem| {
                ConfigError::new("--admin-token-file", "HELLO_ADMIN_TOKEN_FILE", problem)
            })?),
            None => None,
        };
        let redis_url = self.redis_url.filter(|url| !url.trim().is_empty());
        let sentinels: Vec<&String> = self
            .redis_sentinel
            .iter()
            .filter(|address| !address.trim().is_empty())
            .collect();
        let redis_sentinel = if sentinels.is_empty() {
            None
        } else {
            if redis_url.is_some() {
                return Err(ConfigError::new(
                    "--redis-sentinel",
                    "HELLO_REDIS_SENTINEL",
                    "give either --redis-url or --redis-sentinel, not both",
                ));
            }
            let addresses = sentinels
                .into_iter()
                .map(|address| sentinel_address(address))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|problem| {
                    ConfigError::new("--redis-sentinel", "HELLO_REDIS_SENTINEL", problem)
                })?;
            let master_name = self.redis_master_name.trim().to_owned();
            if master_name.is_empty() || !master_name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    "--redis-master-name",
                    "HELLO_REDIS_MASTER_NAME",
                    "must be a non-empty name of visible ASCII characters",
                ));
            }
            Some(SentinelConfig {
                addresses,
                master_name,
            })
        };
        let redis_wait_replicas = self
            .redis_wait_replicas
            .unwrap_or(u32::from(redis_sentinel.is_some()));
        if redis_wait_replicas > 0
            && redis_wait_timeout_too_long(self.redis_wait_timeout, self.store_timeout)
        {
            return Err(ConfigError::new(
                "--redis-wait-timeout",
                "HELLO_REDIS_WAIT_TIMEOUT",
                "must be shorter than --store-timeout, which bounds the whole write",
            ));
        }
        if redis_wait_replicas > 0 && self.redis_wait_timeout.is_zero() {
            return Err(ConfigError::new(
                "--redis-wait-timeout",
                "HELLO_REDIS_WAIT_TIMEOUT",
                "must be above 0 (WAIT 0 would wait forever)",
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
            ws_idle_timeout: self.ws_idle_timeout,
            request_timeout: self.request_timeout,
            body_limit: self.body_limit,
            body_budget: self.body_budget,
            value_limit: self.value_limit,
            max_delay: self.max_delay,
            max_connections: self.max_connections,
            admin_token,
            store_budget: self.store_budget,
            redis_url,
            redis_sentinel,
            redis_wait_replicas,
            redis_wait_timeout: self.redis_wait_timeout,
            store_timeout: self.store_timeout,
            log_format: self.log_format,
            log: self.log,
            access_log: self.access_log,
            slow_request: self.slow_request,
            downward: Downward {
                pod: self.pod_name,
                namespace: self.pod_namespace,
                node: node_name,
            },
        })
    }
}

impl Config {
    /// The defaults, as `serve` with no flags and no environment resolves them (the process's
    /// environment plays no part), bound to loopback on ephemeral ports: what tests and
    /// embedders start from.
    pub fn for_tests(instance_name: &str) -> Self {
        let cli = Cli::parse(["hello-world", "serve"], &BTreeMap::new())
            .expect("the defaults always parse");
        let Command::Serve(args) = cli.command else {
            unreachable!("`serve` parses as serve");
        };
        let mut config = args.resolve().expect("the defaults always resolve");
        config.host = IpAddr::from([127, 0, 0, 1]);
        config.port = 0;
        config.admin_port = 0;
        config.instance_name = instance_name.to_owned();
        config.redis_url = None;
        config.redis_sentinel = None;
        config.redis_wait_replicas = 0;
        config.admin_token = None;
        config.downward = Downward::default();
        config
    }
}

/// The admin port's credential, read from `--admin-token-file`. It is never shown: its `Debug`
/// says only that it is there, and nothing else in the crate can read it back out; the one
/// thing it does is compare itself, in constant time, with what a client sent.
#[derive(Clone)]
pub struct AdminToken(Box<[u8]>);

impl AdminToken {
    /// Fewest bytes a token may have: 32 random characters are beyond guessing.
    pub const MIN_LEN: usize = 32;
    /// Most bytes a token file may hold: a token travels in a header.
    pub const MAX_LEN: usize = 4096;

    /// Reads the token from `path`; the problem, in words, when the file cannot serve as one.
    pub fn read(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let file =
            std::fs::File::open(path).map_err(|err| format!("cannot open {shown}: {err}"))?;
        // One byte over the bound is enough to know the file is too large.
        let mut bytes = Vec::new();
        file.take(Self::MAX_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|err| format!("cannot read {shown}: {err}"))?;
        if bytes.len() > Self::MAX_LEN {
            return Err(format!(
                "{shown} holds more than {} bytes: not a token file",
                Self::MAX_LEN
            ));
        }
        Self::from_file_contents(&bytes).map_err(|problem| format!("{shown} {problem}"))
    }

    /// The token in a file's contents, without the whitespace around it.
    fn from_file_contents(bytes: &[u8]) -> Result<Self, String> {
        let token = bytes.trim_ascii();
        if token.is_empty() {
            return Err("is empty".to_owned());
        }
        if !token.iter().all(u8::is_ascii_graphic) {
            return Err(
                "holds characters other than visible ASCII: a token must fit in a header"
                    .to_owned(),
            );
        }
        if token.len() < Self::MIN_LEN {
            return Err(format!(
                "holds a token of {} bytes; at least {} are needed",
                token.len(),
                Self::MIN_LEN
            ));
        }
        Ok(Self(token.into()))
    }

    /// Whether `presented` is this token, compared in constant time: how long the comparison
    /// takes says nothing about how much of a guess was right.
    pub fn verify(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.ct_eq(presented).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(redacted)")
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

/// Shortest header timeout accepted: a connection has to get a request in at all.
const MIN_HEADER_TIMEOUT: Duration = Duration::from_millis(10);

/// Parses `250ms`, `2s`, `1m30s`; a bare number means seconds.
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
        let err = Cli::parse(
            ["hello-world", "serve", "--drain-delay", "soon"],
            &BTreeMap::new(),
        )
        .expect_err("'soon' is not a duration");
        let config_error = ConfigError::from_clap(&err).expect("a value error");
        assert_eq!(config_error.setting, "--drain-delay / HELLO_DRAIN_DELAY");
        assert!(config_error.message.contains("soon"), "{config_error}");
    }

    #[test]
    fn a_header_timeout_too_short_to_get_a_request_in_is_refused() {
        let serve = |timeout: &str| {
            let cli = Cli::parse(
                ["hello-world", "serve", "--header-timeout", timeout],
                &BTreeMap::new(),
            )
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
    fn sentinels_default_to_one_replica_confirming_each_write() {
        let resolve = |args: &[&str]| {
            let cli = Cli::parse(
                ["hello-world", "serve"].iter().chain(args),
                &BTreeMap::new(),
            )
            .expect("valid flags");
            let Command::Serve(args) = cli.command else {
                panic!("serve is the subcommand");
            };
            args.resolve().expect("valid settings")
        };
        let config = resolve(&["--redis-sentinel", "s-1:26379, s-2:26379,[::1]:26379"]);
        assert_eq!(
            config.redis_sentinel,
            Some(SentinelConfig {
                addresses: vec![
                    "s-1:26379".to_owned(),
                    "s-2:26379".to_owned(),
                    "[::1]:26379".to_owned()
                ],
                master_name: "hello-world".to_owned(),
            })
        );
        assert_eq!(config.redis_wait_replicas, 1);
        assert_eq!(config.redis_wait_timeout, Duration::from_millis(500));
        let config = resolve(&["--redis-url", "redis://r:6379"]);
        assert_eq!(
            (config.redis_sentinel, config.redis_wait_replicas),
            (None, 0)
        );
        let config = resolve(&["--redis-sentinel", "s:1", "--redis-wait-replicas", "2"]);
        assert_eq!(config.redis_wait_replicas, 2);
        assert!(sentinel_address("s:0").is_err());
        assert!(sentinel_address(":26379").is_err());
        assert!(sentinel_address("redis://s:26379").is_err());
    }

    #[test]
    fn a_token_file_is_trimmed_and_must_be_long_visible_ascii() {
        let token = "t".repeat(AdminToken::MIN_LEN);
        let read = AdminToken::from_file_contents(format!("{token}\n").as_bytes())
            .expect("a long token with a trailing newline");
        assert!(read.verify(token.as_bytes()));
        assert!(!read.verify(format!("{token}\n").as_bytes()));
        assert!(!read.verify(&token.as_bytes()[1..]));
        assert!(!read.verify(b""));

        let problem = |bytes: &[u8]| AdminToken::from_file_contents(bytes).expect_err("refused");
        assert_eq!(problem(b""), "is empty");
        assert_eq!(problem(b" \n\t"), "is empty");
        assert!(problem(&[b't'; AdminToken::MIN_LEN - 1]).contains("at least 32"));
        assert!(problem("é".repeat(32).as_bytes()).contains("visible ASCII"));
        assert!(problem(format!("{token} {token}").as_bytes()).contains("visible ASCII"));
    }

    #[test]
    fn a_token_never_shows_in_debug_output() {
        let token = "s3cr3t-".repeat(6);
        let path = std::env::temp_dir().join(format!("hello-world-token-{}", std::process::id()));
        std::fs::write(&path, &token).expect("write the token file");
        let cli = Cli::try_parse_from([
            "hello-world",
            "serve",
            "--admin-token-file",
            path.to_str().expect("a UTF-8 temporary path"),
        ])
        .expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("serve is the subcommand");
        };
        let config = args.resolve().expect("a valid token file");
        std::fs::remove_file(&path).expect("remove the token file");
        let shown = format!("{config:?} {config:#?}");
        assert!(shown.contains("AdminToken(redacted)"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    /// The settings of a given environment, resolved.
    fn serve_with(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let args = ["hello-world"].iter().chain(args).copied();
        let cli = Cli::parse(args, &env).map_err(|err| {
            ConfigError::from_clap(&err).unwrap_or_else(|| panic!("not a value error: {err}"))
        })?;
        let Command::Serve(args) = cli.command else {
            panic!("serve is the subcommand");
        };
        args.resolve()
    }

    #[test]
    fn settings_come_from_the_given_environment_and_flags_win() {
        let config = serve_with(&[], &[("HELLO_DRAIN_DELAY", "7s"), ("PORT", "8080")])
            .expect("valid settings");
        assert_eq!(config.drain_delay, Duration::from_secs(7));
        assert_eq!(config.port, 8080);
        let config = serve_with(
            &["--drain-delay", "1s"],
            &[
                ("HELLO_DRAIN_DELAY", "7s"),
                ("HELLO_PORT", "81"),
                ("PORT", "82"),
            ],
        )
        .expect("valid settings");
        assert_eq!(config.drain_delay, Duration::from_secs(1), "the flag wins");
        assert_eq!(config.port, 81, "HELLO_PORT wins over PORT");
        for (given, access_log) in [
            ("errors", AccessLog::Errors),
            ("false", AccessLog::Errors),
            ("all", AccessLog::All),
            ("true", AccessLog::All),
        ] {
            let flag = serve_with(&["--access-log", given], &[]).expect("valid");
            assert_eq!(flag.access_log, access_log, "--access-log {given}");
            let env = serve_with(&[], &[("HELLO_ACCESS_LOG", given)]).expect("valid");
            assert_eq!(env.access_log, access_log, "HELLO_ACCESS_LOG={given}");
        }
        let err = serve_with(&[], &[("HELLO_ACCESS_LOG", "some")]).expect_err("refused");
        assert_eq!(err.setting, "--access-log / HELLO_ACCESS_LOG");
    }

    #[test]
    fn a_bad_variable_is_an_error_naming_it_never_a_panic() {
        let err = serve_with(&[], &[("HELLO_BODY_LIMIT", "lots")]).expect_err("refused");
        assert_eq!(err.setting, "--body-limit / HELLO_BODY_LIMIT");
        assert!(err.message.contains("lots"), "{err}");
        let err = serve_with(&[], &[("PORT", "web")]).expect_err("refused");
        assert_eq!(err.setting, "PORT");
    }

    #[test]
    fn defaults_match_the_contract() {
        let config = Config::for_tests("t");
        assert_eq!(config.drain_delay, Duration::from_secs(5));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(config.body_limit, 1 << 20);
        assert_eq!(config.access_log, AccessLog::All);
        // Sized for the 64 MiB container limit of every manifest: the store takes half; bodies
        // in flight, each held at most twice while it is read (its frames, then one buffer),
        // take a quarter; the process keeps the rest.
        assert_eq!(config.store_budget, 32 << 20);
        assert_eq!(config.body_budget, 8 << 20);
        assert!(config.store_budget + 2 * config.body_budget <= (64 - 8) << 20);
    }

    #[test]
    fn a_body_budget_below_the_body_limit_is_refused() {
        let err = serve_with(&["--body-budget", "512KiB"], &[]).expect_err("refused");
        assert_eq!(err.setting, "--body-budget / HELLO_BODY_BUDGET");
        assert!(err.message.contains("body limit"), "{err}");
        let config =
            serve_with(&["--body-budget", "1MiB"], &[]).expect("the limit itself is enough");
        assert_eq!(config.body_budget, config.body_limit);
    }
}
