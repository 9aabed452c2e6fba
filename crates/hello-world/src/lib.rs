//! hello-world: the greeting service and its shared state.

pub mod store;
