//! `cargo xtask cluster up` where it cannot work: without a Docker engine it stops at once with
//! one line naming the cause, and starts nothing. (A port in use and too little disk are held
//! by the unit tests of `cluster.rs`; a machine that never becomes ready, by the timeouts its
//! waits carry.)

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn without_an_engine_cluster_up_fails_at_once_naming_the_cause() {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["cluster", "up"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .expect("run xtask");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("no Docker engine answers"),
        "the message names the cause: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "it gave up within a minute, not at a timeout: {:?}",
        started.elapsed()
    );
}
