//! How tests start servers and talk to them.
//!
//! - [`spawn_app`] / [`spawn_app_with`]: an in-process server on 127.0.0.1, ephemeral ports,
//!   in-memory store, logs silent; it stops when the [`TestApp`] is dropped or shut down.
//! - [`Process`]: the real binary as a child process, for what only a process shows (signals,
//!   exit codes); killed on drop.
//! - [`send`]: one request over a fresh connection, answered as status + headers + body.

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

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server with the test defaults, changed by `configure`. Drain delay and shutdown
/// timeout are short so stopping is quick; tests of draining set their own.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
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

    pub async fn get(&self, path: &str) -> Answer {
        send(
            Method::GET,
            &format!("{}{path}", self.public_url()),
            &[],
            Bytes::new(),
        )
        .await
    }

    pub async fn admin(&self, method: Method, path: &str, body: &str) -> Answer {
        let url = format!("{}{path}", self.admin_url());
        send(
            method,
            &url,
            &[("content-type", "application/json")],
            Bytes::from(body.to_owned()),
        )
        .await
    }

    /// Waits (bounded) until /readyz says ready.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.get("/readyz").await.status == StatusCode::OK {
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

/// Sends one request (new connection each time, so tests never share state through a pool).
pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body)).expect("valid test request");
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("answer within 20 s")
        .expect("request succeeds");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body readable").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
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
