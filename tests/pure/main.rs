//! Tests that need nothing but this process: nodes on loopback (and the
//! in-process link), raw peers, clients and the invariants.
//!
//! One test binary per group of what the tests need (see README, "Tests").

#[path = "../common/mod.rs"]
mod common;

mod admin_logs;
mod auth;
mod auth_logs;
mod client_protocol;
mod faults;
mod filters;
mod forwarding;
mod gateway;
mod greedy_clients;
mod invariants;
mod lifetime;
mod limits;
mod minimal;
mod pipelining;
mod remotes;
mod rpc_admission;
mod rpc_logs;
