//! `cargo xtask e2e`: the end-to-end proofs on the Swarm stack.

pub(crate) mod http;
