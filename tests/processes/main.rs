//! Tests that start session-proxy processes (the shipped binary, the
//! lobby game, the demo) and signal them by PID; some use Redis and
//! Prometheus when installed.
//!
//! One test binary per group of what the tests need (see README, "Tests").

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod bench;
mod deadlines;
mod demo;
mod fault_harness;
mod fault_processes;
mod game;
mod go_peers;
mod kubernetes;
mod one_process;
mod process;
mod restart;
mod sigterm;
mod tls;
