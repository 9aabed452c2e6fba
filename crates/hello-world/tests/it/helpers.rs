//! How tests start servers and talk to them.
//!
//! - [`spawn_app`] / [`spawn_app_with`]: an in-process server on 127.0.0.1, ephemeral ports,
//!   in-memory store; it stops when the [`TestApp`] is dropped or shut down. Logs are silent
//!   unless `TEST_LOG` is set: `TEST_LOG=1` shows them at `info`, and a filter
//!   (`TEST_LOG=debug`, `TEST_LOG=hello_world=debug`) picks what to show.
//! - [`Process`]: the real binary as a child process, for what only a process shows (signals,
//!   exit codes); killed on drop.
//! - [`Ask`]: one request (`app.request(Method::GET, "/").await`), over a fresh connection,
//!   answered as status + headers + body: the one way tests send requests.

#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hello_world::api::AppState;
use hello_world::config::Config;
use hello_world::server::Server;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestApp {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Installs a log pipeline for the test binary when `TEST_LOG` asks for one, once.
fn show_logs_if_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(asked) = std::env::var("TEST_LOG") else {
            return;
        };
        let filter = match asked.trim() {
            "" | "1" | "true" => "info",
            filter => filter,
        };
        let logs = hello_world::telemetry::subscriber(
            hello_world::config::LogFormat::Text,
            filter,
            tracing_subscriber::fmt::TestWriter::new,
        );
        if let Err(err) = logs.and_then(hello_world::telemetry::install) {
            panic!("TEST_LOG={asked}: {err:#}");
        }
    });
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server with the test defaults, changed by `configure`. Drain delay and shutdown
/// timeout are short so stopping is quick; tests of draining set their own.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    show_logs_if_asked();
    let mut config = Config::for_tests("test-replica");
    config.drain_delay = Duration::ZERO;
    config.shutdown_timeout = Duration::from_secs(2);
    configure(&mut config);
    let server = Server::bind(config).await.expect("test server binds");
    let public = server.public_addr();
    let admin = server.admin_addr();
    let state = server.state().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let app = TestApp {
        public,
        admin,
        state,
        stop: Some(stop),
        task: Some(task),
    };
    app.wait_ready().await;
    app
}

impl TestApp {
    pub fn public_url(&self) -> String {
        format!("http://{}", self.public)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// A request to this server's public port; `.admin()` sends it to the admin port.
    pub fn request(&self, method: Method, path: &str) -> Ask {
        Ask::new(method, &format!("{}{path}", self.public_url()))
            .with_admin(format!("{}{path}", self.admin_url()))
    }

    /// Waits (bounded) until /readyz says ready.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.request(Method::GET, "/readyz").await.status == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("test server never became ready");
    }

    /// Asks the server to stop and waits for `run` to return.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.take().map(|stop| stop.send(()));
        let task = self.task.take().expect("not shut down twice");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("server stops in time")?
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "body is not JSON ({err}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .expect("visible ASCII header")
    }
}

/// One request, the one way tests send one: made by [`TestApp::request`] (or, for a URL of
/// its own, [`Ask::new`]), shaped with [`Ask::header`], [`Ask::headers`], [`Ask::body`] and
/// [`Ask::admin`], and sent by awaiting it. Each goes over a fresh connection, so tests never
/// share state through a pool, and gets 20 s to answer.
#[must_use = "a request is sent when awaited"]
pub struct Ask {
    method: Method,
    url: String,
    /// The same path on the admin port, when the request came from a [`TestApp`].
    admin_url: Option<String>,
    headers: Vec<(String, String)>,
    body: Bytes,
    sending: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send>>>,
}

impl Ask {
    pub fn new(method: Method, url: &str) -> Self {
        Self {
            method,
            url: url.to_owned(),
            admin_url: None,
            headers: Vec::new(),
            body: Bytes::new(),
            sending: None,
        }
    }

    fn with_admin(mut self, admin_url: String) -> Self {
        self.admin_url = Some(admin_url);
        self
    }

    /// Sends it to the admin port instead of the public one.
    pub fn admin(mut self) -> Self {
        self.url = self
            .admin_url
            .take()
            .expect("only a TestApp's request knows its admin port");
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn headers(self, headers: &[(&str, &str)]) -> Self {
        headers
            .iter()
            .fold(self, |ask, (name, value)| ask.header(name, value))
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    async fn send(
        method: Method,
        url: String,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Answer {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        let mut request = Request::builder().method(method).uri(&url);
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(body)).expect("valid test request");
        let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
            .await
            .unwrap_or_else(|_| panic!("{url} answers within 20 s"))
            .unwrap_or_else(|err| panic!("{url}: {err}"));
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body readable").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

impl std::future::Future for Ask {
    type Output = Answer;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Answer> {
        let this = &mut *self;
        let sending = this.sending.get_or_insert_with(|| {
            Box::pin(Ask::send(
                this.method.clone(),
                std::mem::take(&mut this.url),
                std::mem::take(&mut this.headers),
                std::mem::take(&mut this.body),
            ))
        });
        sending.as_mut().poll(cx)
    }
}

/// A port that was free a moment ago, for child processes that must be told their port.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("address")
        .port()
}

/// The real binary as a child process; killed on drop.
pub struct Process {
    pub child: Child,
    pub port: u16,
    pub admin_port: u16,
    /// Where the process's stdout (its logs) goes: a file, so a chatty server never blocks on
    /// a full pipe.
    pub log_path: std::path::PathBuf,
}

impl Process {
    /// Starts `hello-world serve` on free loopback ports with `args` and `env` added, and waits
    /// (bounded) until it answers /healthz.
    pub fn serve(args: &[&str], env: &[(&str, &str)]) -> Process {
        let port = free_port();
        let admin_port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_hello-world"));
        command
            .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--admin-port",
                &admin_port.to_string(),
                "--log-format",
                "json",
            ])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        let log_path = std::env::temp_dir().join(format!("hello-world-test-{port}.log"));
        let log = std::fs::File::create(&log_path).expect("create the process log file");
        command.stdout(log);
        let child = command.spawn().expect("start the hello-world binary");
        let process = Process {
            child,
            port,
            admin_port,
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if hello_world::healthcheck::probe(port, Duration::from_millis(200)).is_ok() {
                return process;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("hello-world did not start on port {port}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (bounded) until the process counts `count` requests in flight (its `/metrics`).
    pub fn wait_for_in_flight(&self, count: u64, within: Duration) {
        let line = format!("http_requests_in_flight {count}");
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let metrics = runtime.block_on(Ask::new(Method::GET, &url));
            if metrics.text().lines().any(|metric| metric == line) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("never {count} requests in flight within {within:?}");
    }

    /// Waits (bounded) until the process has logged `text`.
    pub fn wait_for_log(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.logs().contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("'{text}' not logged within {within:?}:\n{}", self.logs());
    }

    /// What the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (bounded) for the process to exit and returns its status code and logs.
    pub fn wait_exit(&mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return (status.code(), self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// The allocator's variables the image sets (`ENV MIMALLOC_*` in deploy/Dockerfile), so tests
/// run the binary as the image does.
pub fn image_allocator_settings() -> Vec<(String, String)> {
    let dockerfile = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/Dockerfile");
    let text = std::fs::read_to_string(dockerfile).expect("read deploy/Dockerfile");
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .map(|word| word.trim_end_matches('\\'))
        .filter_map(|word| word.split_once('='))
        .filter(|(name, _)| name.starts_with("MIMALLOC_"))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// The Python of the workspace's `.venv`, where `.ci/run` installs the real clients of
/// `tests/requirements.txt` (grpcio, websockets).
pub fn venv_python() -> Option<std::path::PathBuf> {
    venv_program(".venv", "bin/python", "requirements.txt")
}

/// `program` of the workspace's venv `venv`, which `.ci/run` makes from
/// `tests/<requirements>`. Where it is absent outside CI the test that needs it says so and
/// passes; in CI (`CI=true`) its absence fails the test.
pub fn venv_program(venv: &str, program: &str, requirements: &str) -> Option<std::path::PathBuf> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(venv)
        .join(program);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing: .ci/run installs it (python3 -m venv {venv} && {venv}/bin/pip install -r crates/hello-world/tests/{requirements})",
        path.display()
    );
    eprintln!("skipped: no {} (.ci/run installs it)", path.display());
    None
}

/// Runs `tests/it/py/<script>` with `args` under the venv's Python, for at most `within`, and
/// fails the test with its output unless it exits 0 and prints `ok`. Does nothing where
/// [`venv_python`] skips.
pub async fn run_python(script: &str, args: &[String], within: Duration) {
    let Some(python) = venv_python() else {
        return;
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/py")
        .join(script);
    let mut command = tokio::process::Command::new(python);
    command.arg(&path).args(args).kill_on_drop(true);
    let output = tokio::time::timeout(within, command.output())
        .await
        .unwrap_or_else(|_| panic!("{script} still running after {within:?}"))
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("ok"),
        "{script}: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
