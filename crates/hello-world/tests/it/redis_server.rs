//! A real Redis for tests: Debian's `redis-server` on a free loopback port, in its own temporary
//! directory, killed when dropped.
//!
//! Tests that need Redis fail with a clear message when `redis-server` is missing: a skipped
//! test would hide that the Redis path went unchecked. `.ci/run` installs the package.
//! `HELLO_TEST_REDIS_SERVER` may name another binary.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const DEFAULT_BINARY: &str = "/usr/bin/redis-server";

/// How long a starting Redis may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Distinguishes the directories of servers started by one test process.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// How the server keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persistence {
    /// Nothing on disk: a restart starts empty.
    None,
    /// Append-only file, fsynced on every write: a restart keeps every acknowledged write.
    AppendOnlyAlways,
}

/// A running (or deliberately stopped) `redis-server` child process.
#[derive(Debug)]
pub(crate) struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    password: Option<String>,
    persistence: Persistence,
    /// `--maxmemory` (with `noeviction`), as the deployments run Redis; none: unbounded.
    maxmemory: Option<String>,
    /// More arguments to `redis-server` (`--replicaof`, `--min-replicas-to-write`...).
    extra: Vec<String>,
    /// Runs as a Sentinel (`--sentinel`) with this configuration file.
    sentinel_config: Option<String>,
}

fn binary() -> PathBuf {
    let path = std::env::var_os("HELLO_TEST_REDIS_SERVER")
        .map_or_else(|| PathBuf::from(DEFAULT_BINARY), PathBuf::from);
    assert!(
        path.is_file(),
        "redis-server not found at {}: these tests need a real Redis. Install it \
         (`apt-get install redis-server`) or set HELLO_TEST_REDIS_SERVER to its path",
        path.display()
    );
    path
}

/// A port that was free a moment ago. Another process may take it before Redis binds it;
/// [`RedisServer::start_with`] then tries another one.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding an ephemeral loopback port")
        .port()
}

impl RedisServer {
    /// A Redis without persistence or password.
    pub(crate) fn start() -> Self {
        Self::start_with(None, Persistence::None)
    }

    /// A Redis that requires `password` (when given) and keeps data as `persistence` says.
    pub(crate) fn start_with(password: Option<&str>, persistence: Persistence) -> Self {
        Self::start_configured(password, persistence, None)
    }

    /// A Redis that holds at most `maxmemory` (`8mb`) and refuses writes past it, never evicting,
    /// as the deployments run it.
    pub(crate) fn start_with_maxmemory(maxmemory: &str) -> Self {
        Self::start_configured(None, Persistence::None, Some(maxmemory))
    }

    /// A Redis started with these more arguments: `["--replicaof", "127.0.0.1 6379"]`.
    pub(crate) fn start_with_args(args: &[&str]) -> Self {
        Self::start_full(None, Persistence::None, None, args, None)
    }

    /// A Sentinel (`redis-server --sentinel`, as Debian's `redis-sentinel` runs it) that
    /// monitors the primary at `127.0.0.1:primary_port` as `master_name`, with `quorum`, and
    /// notices a dead primary after one second.
    pub(crate) fn start_sentinel(master_name: &str, primary_port: u16, quorum: u32) -> Self {
        let config = format!(
            "sentinel monitor {master_name} 127.0.0.1 {primary_port} {quorum}\n\
             sentinel down-after-milliseconds {master_name} 1000\n\
             sentinel failover-timeout {master_name} 5000\n\
             sentinel parallel-syncs {master_name} 1\n"
        );
        Self::start_full(None, Persistence::None, None, &[], Some(config))
    }

    fn start_configured(
        password: Option<&str>,
        persistence: Persistence,
        maxmemory: Option<&str>,
    ) -> Self {
        Self::start_full(password, persistence, maxmemory, &[], None)
    }

    fn start_full(
        password: Option<&str>,
        persistence: Persistence,
        maxmemory: Option<&str>,
        extra: &[&str],
        sentinel_config: Option<String>,
    ) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("hello-world-redis-{}-{id}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the Redis data directory");
        let mut server = Self {
            child: None,
            port: 0,
            dir,
            password: password.map(str::to_owned),
            persistence,
            maxmemory: maxmemory.map(str::to_owned),
            extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
            sentinel_config,
        };
        // A port can be taken between probing and binding: try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!(
            "redis-server did not start; see its log in {}",
            server.dir.display()
        );
    }

    /// `redis://[:password@]127.0.0.1:port`.
    pub(crate) fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the Redis server is running")
            .id()
    }

    /// A direct synchronous connection, to look behind the store's back.
    pub(crate) fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("connecting to the test Redis")
    }

    /// SIGKILLs the server, as a crash would.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The child may already have exited; either way it is gone after wait.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (so an append-only file is
    /// replayed). Panics if it does not come up.
    pub(crate) fn restart(&mut self) {
        self.kill();
        // The port was ours a moment ago; retry briefly in case the old socket lingers.
        for _ in 0..20 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "redis-server did not restart on port {}; see {}",
            self.port,
            self.dir.display()
        );
    }

    /// Sends a signal to the server (e.g. `STOP`/`CONT` to freeze it without closing sockets).
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Starts the child and waits until it answers PING; false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let mut command = Command::new(binary());
        if let Some(config) = &self.sentinel_config {
            // A Sentinel rewrites its configuration file as it learns: a fresh one per start
            // would forget the failovers it saw, so it is written once.
            let path = self.dir.join("sentinel.conf");
            if !path.exists() {
                std::fs::write(&path, config).expect("writing the Sentinel configuration");
            }
            command.arg(&path).arg("--sentinel");
        }
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--daemonize", "no", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        match self.persistence {
            _ if self.sentinel_config.is_some() => &mut command,
            Persistence::None => command.args(["--appendonly", "no"]),
            Persistence::AppendOnlyAlways => {
                command.args(["--appendonly", "yes", "--appendfsync", "always"])
            }
        };
        if let Some(password) = &self.password {
            command.arg("--requirepass").arg(password);
        }
        if let Some(maxmemory) = &self.maxmemory {
            command
                .arg("--maxmemory")
                .arg(maxmemory)
                .args(["--maxmemory-policy", "noeviction"]);
        }
        command.args(&self.extra);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server");
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            let child = self
                .child
                .as_mut()
                .expect("the Redis server was just spawned");
            if let Ok(Some(_status)) = child.try_wait() {
                self.child = None;
                return false;
            }
            if self.answers_ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    fn answers_ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut connection).is_ok()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL also ends a server frozen with SIGSTOP.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
