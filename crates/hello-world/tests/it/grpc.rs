//! The gRPC health service, as a real gRPC client (Python's grpcio) sees it: `Check` and `Watch`
//! for `""` and `hello-world` follow readiness; unknown names are `NOT_FOUND`, unknown methods
//! and services `UNIMPLEMENTED` (the script, `py/health_check_and_watch.py`, says each check).

use std::time::Duration;

use crate::helpers::{run_python, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread")]
async fn grpcio_checks_and_watches_health_as_readiness_changes() {
    let app = spawn_app().await;
    run_python(
        "health_check_and_watch.py",
        &[app.public.to_string(), app.admin.to_string()],
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draining_replica_says_not_serving() {
    let app = spawn_app_with(|config| config.drain_delay = Duration::from_secs(30)).await;
    app.state.readiness.mark_draining();
    run_python(
        "health_not_serving.py",
        &[app.public.to_string()],
        Duration::from_secs(30),
    )
    .await;
}
