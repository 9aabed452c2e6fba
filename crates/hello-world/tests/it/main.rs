//! One integration-test binary, one file per behaviour (see `helpers` for how servers start).

mod helpers;
mod redis_server;

mod admin;
mod browser;
mod check;
mod cli;
mod grpc;
mod http2;
mod listener;
mod openapi;
mod parsers;
mod replication;
mod routes;
mod shared_state;
mod shutdown;
mod state_routes;
mod store_contract;
mod websocket;
