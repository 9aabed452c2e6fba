//! The one integration-test binary: a module per behaviour.

mod redis_server;
mod store_contract;
