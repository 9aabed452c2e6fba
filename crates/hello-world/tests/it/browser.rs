//! The web page in a real browser: headless Chromium driven over WebDriver (`chromedriver`)
//! against a running server. It checks what a person sees: the greeting and the replica, a live
//! panel whose counts grow, a counter button that counts, and a console without errors
//! (Content-Security-Policy violations are console errors too).
//!
//! Needs Debian's `chromium` and `chromium-driver` packages; without them the tests fail and
//! say so, since a skipped browser test would hide a broken page.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use http::{Method, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::helpers::{TestApp, free_port, spawn_app, spawn_app_with};

/// How long the browser gets for anything the page should do within a second or two; generous
/// because two cores are shared with a parallel test run.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_browser_sees_the_greeting_the_replica_and_a_panel_that_keeps_counting() {
    let app = spawn_app().await;
    let url = app.public_url();
    let info = app.request(Method::GET, "/api/info").await.json();
    let instance = info["instance"]
        .as_str()
        .expect("/api/info names its instance");
    let browser = Browser::launch().await;

    browser
        .client
        .goto(&format!("{url}/"))
        .await
        .expect("the page loads");

    let greeting = browser.text("h1").await;
    assert_eq!(greeting, "Hello World!");
    let shown = eventually("the page to name the replica that served it", || async {
        Some(browser.text("#served-instance").await).filter(|name| name != "…")
    })
    .await;
    assert_eq!(shown, instance);
    // The server filled the page in, so it names the replica that served it, not a later one.
    assert_eq!(
        browser.text("#served-title").await,
        "This page was served by"
    );
    assert_eq!(
        browser.text("#served-version").await,
        info["version"].as_str().expect("version")
    );

    // The panel polls /api/info: its count for this replica must keep growing.
    let first = eventually("the panel to count a first answer", || async {
        browser.answers_counted().await.filter(|&n| n > 0)
    })
    .await;
    let later = eventually("the panel's count to keep growing", || async {
        browser.answers_counted().await.filter(|&n| n >= first + 5)
    })
    .await;
    assert!(later > first);
    let row = browser.text("#replicas li").await;
    assert!(
        row.contains(instance),
        "the bar is labelled with its replica: {row}"
    );
    assert!(
        row.contains("answering"),
        "a replica that answers is marked so: {row}"
    );

    // One replica only: the page explains why the spread is not visible from here.
    eventually("the note about a single replica", || async {
        browser
            .script_value("return !document.getElementById('single-note').hidden")
            .await
            .as_bool()
            .filter(|&shown| shown)
    })
    .await;

    // A phone-sized window has no sideways scrolling.
    browser
        .client
        .set_window_size(360, 800)
        .await
        .expect("resize to a phone's width");
    let overflow = eventually("the layout to settle at phone width", || async {
        browser
            .script_value(
                "return window.innerWidth <= 400 ? \
                 document.documentElement.scrollWidth - window.innerWidth : null",
            )
            .await
            .as_i64()
    })
    .await;
    assert!(
        overflow <= 0,
        "the page is {overflow}px wider than a 360px screen"
    );

    browser.assert_no_console_errors().await;
    browser.close().await;
}

#[tokio::test]
async fn a_replica_that_stops_answering_stops_growing_and_is_marked_silent() {
    let app = spawn_app().await;
    let url = app.public_url();
    let browser = Browser::launch().await;
    browser
        .client
        .goto(&format!("{url}/"))
        .await
        .expect("the page loads");
    eventually("the panel to count answers", || async {
        browser.answers_counted().await.filter(|&n| n >= 3)
    })
    .await;

    app.shutdown().await.expect("the server stops");

    // The page keeps asking (and counts failures) but the bar no longer grows, and after a few
    // seconds without an answer the replica is marked silent.
    let state = eventually("the replica to be marked silent", || async {
        Some(browser.text("#replicas li .state").await)
            .filter(|state| state.starts_with("no answer for"))
    })
    .await;
    let frozen = browser.answers_counted().await.expect("the row stays");
    let failed_then = failures(&browser.text("#stats").await);
    eventually("the page to keep trying", || async {
        let failed = failures(&browser.text("#stats").await);
        (failed > failed_then).then_some(())
    })
    .await;
    assert_eq!(
        browser.answers_counted().await,
        Some(frozen),
        "a silent replica's count stays where it stopped ({state})"
    );
    let classes = browser
        .script_value("return document.querySelector('#replicas li').className")
        .await;
    assert_eq!(classes, "replica silent", "the row is dimmed");
    // Connection errors are expected here, so the console is not checked.
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panel_groups_replicas_by_machine_and_shows_a_lost_machine_go_silent() {
    let on = |instance: &str, node: &str| {
        let (instance, node) = (instance.to_owned(), node.to_owned());
        move |c: &mut hello_world::config::Config| {
            c.instance_name = instance;
            c.downward.node = Some(node);
        }
    };
    let one = spawn_app_with(on("web.1", "machine-1")).await;
    let two = spawn_app_with(on("web.2", "machine-2")).await;
    let three = spawn_app_with(on("web.3", "machine-3")).await;
    let balancer = RoundRobin::start(vec![one.public, two.public, three.public]).await;
    let browser = Browser::launch().await;
    browser
        .client
        .goto(&format!("http://{}/", balancer.addr))
        .await
        .expect("the page loads");

    let groups = eventually("a group per machine", || async {
        Some(browser.machine_groups().await).filter(|groups| groups.len() == 3)
    })
    .await;
    assert_eq!(
        groups
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        [
            "machine machine-1",
            "machine machine-2",
            "machine machine-3"
        ]
    );
    for (machine, replicas) in &groups {
        assert_eq!(
            replicas.len(),
            1,
            "{machine} holds its one replica: {replicas:?}"
        );
    }
    assert!(browser.text("#stats").await.contains("on 3 machines"));

    // machine-3 is lost: its replica stops, and a replacement starts on machine-1, as Swarm
    // would reschedule it.
    three.shutdown().await.expect("the server stops");
    let replacement = spawn_app_with(on("web.3b", "machine-1")).await;
    balancer.set(vec![one.public, two.public, replacement.public]);
    let state = eventually("machine-3 to be marked silent", || async {
        let head = browser
            .text("#replicas .machine:last-child .machine-head")
            .await;
        head.contains("no answer for").then_some(head)
    })
    .await;
    assert!(state.starts_with("machine machine-3"), "{state}");
    let groups = eventually("the replacement under machine-1", || async {
        let groups = browser.machine_groups().await;
        (groups.first()?.1.len() == 2).then_some(groups)
    })
    .await;
    assert!(
        groups[0].1.iter().any(|r| r.contains("web.3b")),
        "{groups:?}"
    );
    let silent = browser
        .script_value(
            "return [...document.querySelectorAll('#replicas .machine')].map(m => m.className)",
        )
        .await;
    assert_eq!(
        silent,
        json!(["machine", "machine", "machine silent"]),
        "only the lost machine is dimmed"
    );
    browser.assert_no_console_errors().await;
    browser.close().await;
}

/// A layer-7 balancer for the page's requests: each request goes to the next backend in turn
/// (the browser keeps one connection, so a per-connection balancer would show one replica),
/// and to the one after when a backend refuses, as the stack's HAProxy retries.
struct RoundRobin {
    addr: SocketAddr,
    backends: std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>,
}

impl RoundRobin {
    async fn start(backends: Vec<SocketAddr>) -> RoundRobin {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};

        let backends = Arc::new(Mutex::new(backends));
        let turn = Arc::new(AtomicUsize::new(0));
        let client: hyper_util::client::legacy::Client<_, axum::body::Body> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(HttpConnector::new());
        let shared = backends.clone();
        let forward = move |request: axum::extract::Request| {
            let (backends, turn, client) = (shared.clone(), turn.clone(), client.clone());
            async move {
                let (parts, body) = request.into_parts();
                // GETs only (the page's polls): the body is empty, so a retry resends nothing.
                drop(body);
                let pool = backends.lock().expect("backends").clone();
                for _ in 0..pool.len() {
                    let backend = pool[turn.fetch_add(1, Ordering::Relaxed) % pool.len()];
                    let mut forwarded = http::Request::builder()
                        .method(parts.method.clone())
                        .uri(format!(
                            "http://{backend}{}",
                            parts.uri.path_and_query().map_or("/", |p| p.as_str())
                        ))
                        .body(axum::body::Body::empty())
                        .expect("a valid request");
                    *forwarded.headers_mut() = parts.headers.clone();
                    if let Ok(answer) = client.request(forwarded).await {
                        return answer.map(axum::body::Body::new);
                    }
                }
                http::Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(axum::body::Body::empty())
                    .expect("a valid response")
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the balancer");
        let addr = listener.local_addr().expect("its address");
        let app = axum::Router::new().fallback(forward);
        tokio::spawn(async move { axum::serve(listener, app).await });
        RoundRobin { addr, backends }
    }

    fn set(&self, backends: Vec<SocketAddr>) {
        *self.backends.lock().expect("backends") = backends;
    }
}

/// The number before " failed" in the panel's status line (0 when nothing failed).
fn failures(stats: &str) -> u64 {
    stats
        .split(" · ")
        .find(|part| part.contains(" failed"))
        .and_then(|part| part.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_counter_button_increments_the_shared_counter_once_per_click() {
    let app = spawn_app().await;
    let url = app.public_url();
    let before = counter(&app).await;
    let browser = Browser::launch().await;
    browser
        .client
        .goto(&format!("{url}/"))
        .await
        .expect("the page loads");

    eventually("the page to show the counter", || async {
        Some(browser.text("#counter-value").await).filter(|shown| *shown == before.to_string())
    })
    .await;
    browser
        .client
        .find(Locator::Id("counter-button"))
        .await
        .expect("the button exists")
        .click()
        .await
        .expect("the button can be clicked");
    eventually("the page to show the incremented counter", || async {
        Some(browser.text("#counter-value").await)
            .filter(|shown| *shown == (before + 1).to_string())
    })
    .await;
    let message = browser.text("#counter-message").await;
    assert!(
        message.starts_with("Counted"),
        "the page confirms the increment: {message}"
    );
    assert_eq!(
        counter(&app).await,
        before + 1,
        "one click counts exactly once on the server"
    );

    browser.assert_no_console_errors().await;
    browser.close().await;
}

#[tokio::test]
async fn a_failed_increment_is_retried_and_counted_once() {
    let app = spawn_app().await;
    let url = app.public_url();
    let before = counter(&app).await;
    let browser = Browser::launch().await;
    browser
        .client
        .goto(&format!("{url}/"))
        .await
        .expect("the page loads");
    eventually("the page to show the counter", || async {
        Some(browser.text("#counter-value").await).filter(|shown| *shown == before.to_string())
    })
    .await;

    // Record the Idempotency-Key of every increment the page sends.
    browser
        .script_value(
            "window.sentKeys = []; const send = window.fetch; \
             window.fetch = (url, init) => { \
               if (String(url).endsWith('/increment')) window.sentKeys.push(init.headers['idempotency-key']); \
               return send(url, init); }; \
             return true",
        )
        .await;
    // Every public request fails with 500 until the faults are switched off again.
    let faults = app
        .request(Method::PUT, "/faults")
        .admin()
        .body(r#"{"error_rate": 1.0}"#)
        .await;
    assert_eq!(faults.status, StatusCode::OK, "{}", faults.text());
    browser
        .client
        .find(Locator::Id("counter-button"))
        .await
        .expect("the button exists")
        .click()
        .await
        .expect("the button can be clicked");
    eventually("the page to say it retries", || async {
        Some(browser.text("#counter-message").await)
            .filter(|message| message.contains("retrying with the same key"))
    })
    .await;
    let cleared = app.request(Method::DELETE, "/faults").admin().await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.text());

    eventually("a retry to be counted", || async {
        Some(browser.text("#counter-value").await)
            .filter(|shown| *shown == (before + 1).to_string())
    })
    .await;
    let message = browser.text("#counter-message").await;
    assert!(
        message.starts_with("Counted"),
        "the page confirms the increment: {message}"
    );
    assert_eq!(
        counter(&app).await,
        before + 1,
        "retries of one click count once"
    );
    let keys = browser.script_value("return window.sentKeys").await;
    let keys: Vec<&str> = keys
        .as_array()
        .expect("the recorded keys")
        .iter()
        .map(|key| key.as_str().expect("a key is a string"))
        .collect();
    assert!(
        keys.len() >= 2,
        "the failed increment was sent again: {keys:?}"
    );
    assert!(
        keys.iter().all(|key| *key == keys[0] && key.len() == 36),
        "one key for every attempt: {keys:?}"
    );
    // The injected 500s are logged by the browser as failed loads, so the console is not checked.
    browser.close().await;
}

/// A headless Chromium under its own chromedriver, with a throw-away profile.
struct Browser {
    client: Client,
    _driver: Driver,
}

/// The chromedriver process and the profile directory, removed when dropped: also when an
/// assertion fails before [`Browser::close`].
struct Driver {
    process: Child,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver runs in its own process group (its pid is the group id) and Chromium was
        // started inside it, so this ends both even if the session was never closed.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.process.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    async fn launch() -> Browser {
        let (Some(chromedriver), Some(_)) =
            (find_program("chromedriver"), find_program("chromium"))
        else {
            panic!(
                "the browser test needs Chromium and its WebDriver: install the Debian packages \
                 `chromium` and `chromium-driver` (apt-get install chromium chromium-driver)"
            );
        };
        let profile = std::env::temp_dir().join(format!(
            "hello-world-browser-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&profile).expect("create a fresh browser profile directory");

        let port = free_port();
        let mut command = Command::new(chromedriver);
        command
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let process = command.spawn().expect("start chromedriver");
        let driver = Driver {
            process,
            profile: profile.clone(),
        };

        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        eventually("chromedriver to listen", || async {
            TcpStream::connect(address).ok()
        })
        .await;

        let capabilities = json!({
            "goog:chromeOptions": {
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1200,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
            // Console messages, uncaught exceptions and CSP violations land in the browser log.
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("built as an object")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://{address}"))
            .await
            .expect("chromedriver starts a Chromium session");
        Browser {
            client,
            _driver: driver,
        }
    }

    /// The visible text of the first element matching `css`.
    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("the page has `{css}`: {e}"))
            .text()
            .await
            .expect("read the element's text")
    }

    async fn script_value(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .expect("run a script in the page")
    }

    /// The answers the panel counted, summed over replicas; None before the first row exists.
    async fn answers_counted(&self) -> Option<u64> {
        let rows = self
            .client
            .find_all(Locator::Css("#replicas .numbers"))
            .await
            .ok()?;
        let mut total = None;
        for row in rows {
            let text = row.text().await.ok()?;
            let count: u64 = text.split_whitespace().next()?.parse().ok()?;
            total = Some(total.unwrap_or(0) + count);
        }
        total
    }

    /// The panel's machine groups, in page order: each heading's machine name and the text
    /// of each replica row in it.
    async fn machine_groups(&self) -> Vec<(String, Vec<String>)> {
        let groups = self
            .script_value(
                "return [...document.querySelectorAll('#replicas .machine')].map(m => \
                 [m.querySelector('.machine-name').textContent, \
                  [...m.querySelectorAll('li')].map(li => li.textContent)])",
            )
            .await;
        serde_json::from_value(groups).expect("names and rows")
    }

    /// Fails with every error-level browser log entry since the session started.
    async fn assert_no_console_errors(&self) {
        let log = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("read the browser log");
        let errors: Vec<String> = log
            .as_array()
            .expect("the browser log is a list")
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert!(
            errors.is_empty(),
            "the browser console has errors: {errors:#?}"
        );
    }

    /// Ends the session (chromedriver quits Chromium), then chromedriver itself.
    async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// chromedriver's log endpoint (not in the W3C standard, so fantoccini has no method for it);
/// each read returns the entries since the previous one.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

/// Polls `probe` until it yields a value, for at most [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The shared counter as the server reports it.
async fn counter(app: &TestApp) -> i64 {
    let answer = app.request(Method::GET, "/api/counter").await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "GET /api/counter: {}",
        answer.text()
    );
    answer.json()["value"]
        .as_i64()
        .expect("the counter's value")
}
