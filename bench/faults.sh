#!/usr/bin/env bash
# The fault harness's soak: for MINUTES, seeds drawn at random, each running
# one scenario of bench/src/faults/scenarios.toml (partitions, one-way
# partitions, packet loss, paused, drained and killed nodes) on hosts in
# network namespaces of its own, every history checked. Prints one line per
# run and the seed of any run that broke a promise, to replay it with
# `session-proxy bench faults --seed N`. Needs root, ip, nft and
# redis-server; no traffic leaves the harness's namespaces.
#   bench/faults.sh [MINUTES] [PLAYERS]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
players=${2:-12}
cargo build --release --quiet --bin session-proxy
exec ./target/release/session-proxy bench faults --minutes "$minutes" --players "$players"
