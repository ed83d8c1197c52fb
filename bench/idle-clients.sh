#!/usr/bin/env bash
# Measures what a connected client costs the connector: starts the chat
# example cluster, connects N clients from a separate process
# (`session-proxy bench idle`, through the gate), reads the server's RSS from
# /proc, stops the server by its PID.
#   bench/idle-clients.sh [clients] [tcp|ws] [idle|chat]
# Loopback only; needs an open-files limit above the client count.
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-10000}
transport=${2:-tcp}
mode=${3:-idle}
port=${PORT:-4000}

cargo build --release --quiet --example chat --bin session-proxy
out=$(mktemp)
SESSION_PROXY_MAX_CONNECTIONS_PER_IP=100000 ./target/release/examples/chat "$port" >"$out" 2>/dev/null &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 50); do grep -q '^pid ' "$out" && break; sleep 0.1; done
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; clients: $clients over $transport ($mode)"
args=(bench idle --gate --target "127.0.0.1:$port" --clients "$clients" --pid "$pid")
[ "$transport" = ws ] && args+=(--ws)
if [ "$mode" = chat ]; then
  # Each client enters one of 100 rooms, as a chatofpomelo player does.
  args+=(--login-route connector.entryHandler.enter --login-body '{"username":"load{i}","rid":"room{r}"}')
fi
./target/release/session-proxy "${args[@]}"
