//! Tests against a real etcd (and Redis): the registry and the elastic
//! cluster on it.
//!
//! One test binary per group of what the tests need (see README, "Tests").

#[path = "../common/mod.rs"]
mod common;

mod elastic;
mod registry;
