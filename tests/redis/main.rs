//! Tests against a real redis-server (and Redis Cluster): the session
//! store, its faults, durable channels and sessions that move.
//!
//! One test binary per group of what the tests need (see README, "Tests").

#[path = "../common/mod.rs"]
mod common;

mod chat;
mod client_resume;
mod corrupt_record;
mod node_drain;
mod session_move;
mod single_session;
mod sticky;
mod store;
mod store_faults;
mod store_index;
