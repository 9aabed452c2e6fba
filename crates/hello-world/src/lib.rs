//! hello-world: the tutorial's `Hello World!` web app, made real.
//!
//! A tour of the crate, in the order a request meets it:
//!
//! - [`config`] reads flags and `HELLO_*` environment variables, the one place that does;
//! - [`server`] binds the public and admin listeners and runs the accept loops, with the
//!   listener-level defences (header timeout, header size, connection limit) and graceful drain,
//!   in HTTP/1.1 or HTTP/2 cleartext as each connection opens, or after `Upgrade: h2c` ([`h2c`]);
//! - [`observe`] is the middleware around every public route: request id, `x-served-by`,
//!   metrics, access log, body limit, request timeout, fault injection ([`faults`]), and the
//!   guarantee that every error is JSON;
//! - [`api`] holds the public routes, one file per resource; [`admin`] the admin port's routes;
//! - [`store`] is the shared state (in memory, or Redis) behind one trait in plain verbs;
//! - [`lifecycle`] owns readiness and the shutdown order; [`metrics`] names every metric;
//!   [`telemetry`] sets up logs; [`error`] turns failures into JSON answers;
//! - [`healthcheck`] and [`check`] are the two client subcommands: the container's probe and
//!   the load-check tool that shows the load balancer at work.

pub mod admin;
pub mod api;
pub mod check;
pub mod config;
pub mod error;
pub mod faults;
pub mod h2c;
pub mod healthcheck;
pub mod lifecycle;
pub mod metrics;
pub mod observe;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod watchdog;
pub mod web;

/// The version this binary reports; the image build sets `HELLO_BUILD_VERSION`.
pub const VERSION: &str = match option_env!("HELLO_BUILD_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

/// The source revision this binary was built from, when the build said.
pub const COMMIT: &str = match option_env!("HELLO_BUILD_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};
