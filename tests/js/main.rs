//! Tests with Node.js: the real npm Pomelo clients, and the chat page in
//! headless Chromium.
//!
//! One test binary per group of what the tests need (see README, "Tests").

#[path = "../common/mod.rs"]
mod common;

mod browser;
mod client_lib;
mod node_compat;
mod snippets;
