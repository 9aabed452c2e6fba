//! `GET /openapi.json`: served as JSON, says OpenAPI 3.1, every operation it describes is routed,
//! and schemathesis, sending what the description allows (and what it does not), finds every
//! answer as described.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, StatusCode};

use crate::helpers::{TestApp, spawn_app_with, venv_program};

/// A server whose `/delay` waits at most 200 ms, so schemathesis's requests stay quick; the
/// description it serves says so.
async fn spawn() -> TestApp {
    spawn_app_with(|config| config.max_delay = Duration::from_millis(200)).await
}

#[tokio::test]
async fn the_description_is_served_as_openapi_3_1_json() {
    let app = spawn().await;
    let answer = app.request(Method::GET, "/openapi.json").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), "application/json");
    let document = answer.json();
    let version = document["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3.1."), "{version}");
    assert!(
        document["paths"]["/delay/{duration}"]["get"]["description"]
            .as_str()
            .is_some_and(|text| text.contains("at most 200ms")),
        "the description says this server's maximum delay"
    );
    assert!(
        document["paths"].get("/metrics").is_none(),
        "the admin port is left out"
    );
}

#[tokio::test]
async fn every_described_operation_is_routed() {
    let app = spawn().await;
    let document = app.request(Method::GET, "/openapi.json").await.json();
    let paths = document["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (template, item) in paths {
        // A value every path parameter here accepts.
        let path = template
            .replace("{key}", "openapi-check")
            .replace("{code}", "200")
            .replace("{duration}", "1ms");
        for method in ["get", "put", "post", "delete", "head"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            let method =
                Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("a method");
            let answer = app.request(method.clone(), &path).await;
            assert_ne!(
                answer.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            if answer.status == StatusCode::NOT_FOUND {
                assert_ne!(
                    answer.json()["error"],
                    "no route for this path",
                    "{method} {path} is described but not routed"
                );
            }
        }
    }
    assert!(operations >= 18, "{operations} operations");
}

/// The schemathesis of `.ci/run`'s `.venv-schemathesis` (see [`venv_program`]).
fn schemathesis() -> Option<PathBuf> {
    venv_program(
        ".venv-schemathesis",
        "bin/schemathesis",
        "requirements-schemathesis.txt",
    )
}

#[tokio::test]
async fn schemathesis_finds_every_answer_as_described() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };
    let app = spawn().await;
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    // schemathesis keeps its examples database and reports where it runs: a directory of its own.
    let workdir =
        std::env::temp_dir().join(format!("hello-world-schemathesis-{}", app.public.port()));
    std::fs::create_dir_all(&workdir).expect("a work directory");
    let mut command = tokio::process::Command::new(schemathesis);
    command
        .current_dir(&workdir)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/openapi.json", app.public_url()))
        .args(["--checks", "all"])
        // Bounded: a few examples per operation and a time budget for the whole run (fuzzing
        // repeats until it is spent), each request within 5 s (the slowest, /delay, takes 200 ms).
        .args([
            "--max-examples",
            "20",
            "--max-time",
            "30",
            "--request-timeout",
            "5",
        ])
        .args(["--workers", "2"])
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(80), command.output())
        .await
        .expect("schemathesis finishes within 80 s")
        .expect("schemathesis runs");
    let _ = std::fs::remove_dir_all(&workdir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
}
