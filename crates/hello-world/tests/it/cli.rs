//! The binary's command line: bad configuration exits 64 with one line naming the flag and the
//! variable; `healthcheck` exits 0 or 1 quickly.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::{Ask, Process, free_port};

fn hello_world() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hello-world"))
}

/// Arguments, environment, and the setting the error line must name.
type BadConfig<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_values_exit_64_naming_the_flag_and_the_variable() {
    let cases: [BadConfig; 10] = [
        (
            &["--drain-delay", "soon"],
            &[],
            "--drain-delay / HELLO_DRAIN_DELAY",
        ),
        (
            &[],
            &[("HELLO_BODY_LIMIT", "lots")],
            "--body-limit / HELLO_BODY_LIMIT",
        ),
        (&["serve", "--port", "99999"], &[], "--port / HELLO_PORT"),
        (&[], &[("PORT", "web")], "PORT"),
        (
            &["--log-format", "xml"],
            &[],
            "--log-format / HELLO_LOG_FORMAT",
        ),
        // The machine's name is sent as a header; a newline cannot be.
        (&[], &[("NODE_NAME", "node\n2")], "--node-name / NODE_NAME"),
        (
            &["--redis-sentinel", "sentinel-1:26379,sentinel-2"],
            &[],
            "--redis-sentinel / HELLO_REDIS_SENTINEL",
        ),
        (
            &["--redis-url", "redis://r:6379"],
            &[("HELLO_REDIS_SENTINEL", "s:26379")],
            "--redis-sentinel / HELLO_REDIS_SENTINEL",
        ),
        (
            &["--redis-sentinel", "s:26379", "--redis-master-name", " "],
            &[],
            "--redis-master-name / HELLO_REDIS_MASTER_NAME",
        ),
        // The wait for replicas must end before the store timeout ends the whole write.
        (
            &["--redis-sentinel", "s:26379", "--redis-wait-timeout", "1s"],
            &[],
            "--redis-wait-timeout / HELLO_REDIS_WAIT_TIMEOUT",
        ),
    ];
    for (args, env, named) in cases {
        let output = hello_world()
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{args:?} {env:?} should name {named}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn a_token_file_that_cannot_serve_exits_64_saying_why() {
    let dir = std::env::temp_dir().join(format!("hello-world-token-cases-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("make a directory for the cases");
    let write = |name: &str, contents: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write a case");
        path.display().to_string()
    };
    let cases = [
        (dir.join("absent").display().to_string(), "cannot open"),
        // A directory opens but cannot be read: the unreadable file root can still open.
        (dir.display().to_string(), "cannot read"),
        (write("empty", b""), "is empty"),
        (write("blank", b"\n \n"), "is empty"),
        (
            write("short", b"0123456789abcdef0123456789abcde\n"),
            "31 bytes; at least 32",
        ),
        (
            write("spaced", "token with spaces in it, 32+ long".as_bytes()),
            "visible ASCII",
        ),
        (write("huge", &[b'x'; 5000]), "more than 4096 bytes"),
    ];
    for (path, problem) in &cases {
        for by_env in [false, true] {
            let mut command = hello_world();
            if by_env {
                command.env("HELLO_ADMIN_TOKEN_FILE", path);
            } else {
                command.args(["--admin-token-file", path]);
            }
            let output = command.output().expect("run");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(64), "{path}: {stderr}");
            assert!(
                stderr.contains("--admin-token-file / HELLO_ADMIN_TOKEN_FILE"),
                "{stderr}"
            );
            assert!(
                stderr.contains(problem),
                "{path} should say {problem}: {stderr}"
            );
            assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        }
    }
    std::fs::remove_dir_all(&dir).expect("remove the cases");
}

#[test]
fn help_documents_every_setting() {
    let output = hello_world()
        .args(["serve", "--help"])
        .output()
        .expect("run");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for env in [
        "HELLO_PORT",
        "HELLO_ADMIN_PORT",
        "HELLO_INSTANCE_NAME",
        "HELLO_DRAIN_DELAY",
        "HELLO_SHUTDOWN_TIMEOUT",
        "HELLO_HEADER_TIMEOUT",
        "HELLO_BODY_LIMIT",
        "HELLO_LOG_FORMAT",
        "HELLO_REDIS_URL",
        "HELLO_ACCESS_LOG",
        "HELLO_ADMIN_TOKEN_FILE",
    ] {
        assert!(help.contains(env), "{env} missing from --help");
    }
}

#[test]
fn healthcheck_passes_against_a_serving_instance() {
    let process = Process::serve(&[], &[]);
    let status = hello_world()
        .args(["healthcheck", "--port", &process.port.to_string()])
        .status()
        .expect("run healthcheck");
    assert_eq!(status.code(), Some(0));
    let status = hello_world()
        .arg("healthcheck")
        .env("HELLO_PORT", process.port.to_string())
        .status()
        .expect("run healthcheck");
    assert_eq!(
        status.code(),
        Some(0),
        "the port comes from the same variable as serve's"
    );
}

#[test]
fn healthcheck_fails_fast_when_nothing_listens() {
    let started = Instant::now();
    let output = hello_world()
        .args(["healthcheck", "--port", &free_port().to_string()])
        .output()
        .expect("run healthcheck");
    assert_eq!(output.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect"));
}

#[test]
fn healthcheck_fails_within_its_timeout_when_the_server_hangs() {
    // A listener that accepts and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let started = Instant::now();
    let output = hello_world()
        .args([
            "healthcheck",
            "--port",
            &port.to_string(),
            "--timeout",
            "500ms",
        ])
        .output()
        .expect("run healthcheck");
    assert_eq!(output.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(listener);
}

#[test]
fn json_logs_carry_method_route_status_latency_and_request_id() {
    let mut process = Process::serve(&[], &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(
        Ask::new(http::Method::GET, &process.url("/status/418"))
            .headers(&[("x-request-id", "log-me")]),
    );
    process.signal("KILL");
    let (_, logs) = process.wait_exit(Duration::from_secs(5));
    let line = logs
        .lines()
        .find(|line| line.contains("log-me"))
        .unwrap_or_else(|| panic!("no access log line:\n{logs}"));
    let json: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(json["method"], "GET");
    assert_eq!(json["route"], "/status/{code}");
    assert_eq!(json["status"], 418);
    assert!(json["latency_ms"].is_number());
}

#[test]
fn the_errors_access_log_keeps_errors_and_slow_requests_only() {
    let mut process = Process::serve(&["--access-log", "errors", "--slow-request", "50ms"], &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for (path, id) in [
        ("/status/200", "quiet-ok"),
        ("/", "quiet-hello"),
        ("/status/404", "loud-client-error"),
        ("/no/such/route", "loud-unmatched"),
        ("/status/503", "loud-server-error"),
        ("/delay/80ms", "loud-slow"),
    ] {
        runtime.block_on(
            Ask::new(http::Method::GET, &process.url(path)).headers(&[("x-request-id", id)]),
        );
    }
    process.signal("KILL");
    let (_, logs) = process.wait_exit(Duration::from_secs(5));
    assert!(!logs.contains("quiet"), "{logs}");
    for id in [
        "loud-client-error",
        "loud-unmatched",
        "loud-server-error",
        "loud-slow",
    ] {
        assert!(logs.contains(id), "{id} not logged: {logs}");
    }
}

/// The allocator's settings as the image sets them (`ENV MIMALLOC_*` in deploy/Dockerfile)
/// take effect: no arena reserves mimalloc's default gigabyte, whose bitmaps alone are 150 KiB
/// of idle RSS, and transparent huge pages are off for the process.
#[test]
fn the_images_allocator_settings_take_effect() {
    let settings = crate::helpers::image_allocator_settings();
    assert!(
        settings
            .iter()
            .any(|(name, _)| name == "MIMALLOC_ARENA_RESERVE"),
        "the image sets no arena reservation: {settings:?}"
    );
    let env: Vec<(&str, &str)> = settings
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let mut process = Process::serve(&[], &env);
    let pid = process.child.id();
    let maps =
        std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read the server's memory map");
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the server's status");
    process.signal("KILL");
    let _ = process.wait_exit(Duration::from_secs(5));
    let largest = maps
        .lines()
        .filter_map(|line| {
            let (start, end) = line.split_whitespace().next()?.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            Some(end - start)
        })
        .max()
        .expect("a process has mappings");
    assert!(
        largest < 512 << 20,
        "a {} MiB mapping: mimalloc reserved its default arena\n{maps}",
        largest >> 20
    );
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "transparent huge pages stay on:\n{status}");
}
