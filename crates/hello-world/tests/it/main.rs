//! One integration-test binary, one file per behaviour (see `helpers` for how servers start).

mod helpers;

mod admin;
mod cli;
mod listener;
mod routes;
mod shutdown;
