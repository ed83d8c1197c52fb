#!/usr/bin/env bash
# What one frontend process costs as its connected clients grow: for each
# count of idle clients (TCP, heartbeat 30 s), the connector's RSS per
# client, its CPU over one heartbeat interval (idle: heartbeats and timers
# only), the kernel's TCP memory (/proc/net/sockstat, both ends of every
# loopback socket), and the latency of 50 active clients (open loop, 1,000
# req/s in all) while the rest sit idle. Loopback only; every process is
# stopped by its PID.
#   bench/cost-curve.sh [counts...]     (default: 1000 5000 10000 19500)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1000 5000 10000 19500)
ulimit -n 20000
cargo build --release --quiet --bin session-proxy
bin=./target/release/session-proxy
work=$(mktemp -d)
pids=()
trap 'stop; rm -rf "$work"' EXIT
sed 's/^heartbeat_secs = .*/heartbeat_secs = 30/' bench/cluster.toml >"$work/cluster.toml"
grep -q '^heartbeat_secs = 30' "$work/cluster.toml"

printf '%8s %12s %14s %14s %14s %16s %16s\n' clients "RSS/client" "idle CPU" "TCP buffers" "socket slab" "active p50" "active p99"
for n in "${counts[@]}"; do
  start_cluster "$bin" "$work/cluster.toml"
  front=${pids[0]}
  sleep 1
  : >"$work/idle.json"
  "$bin" bench idle --target 127.0.0.1:4700 --clients "$n" --pid "$front" --hold 60 --json \
    >"$work/idle.json" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 600); do [ -s "$work/idle.json" ] && break; sleep 0.1; done
  [ -s "$work/idle.json" ] || { echo "the idle clients did not connect" >&2; exit 1; }
  mem=$(tcp_buffer_kib)
  slab=$(socket_slab_kib)
  c0=$(cpu "$front")
  sleep 30
  c1=$(cpu "$front")
  active=$("$bin" bench rr --target 127.0.0.1:4700 --clients 50 --duration 10 --rate 1000 --json 2>/dev/null)
  python3 -c '
import json, sys
idle = json.loads(open(sys.argv[1]).read())
active = json.loads(sys.argv[2])
n, c0, c1, mem, slab = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
core = (c1 - c0) / 30 * 100
print("%8d %10.2f KiB %9.3f %% core %10.1f MiB %10.1f MiB %13.2f ms %13.2f ms" % (
    idle["clients"], idle["bytes_per_client"] / 1024, core, mem / 1024, slab / 1024,
    active["p50_us"] / 1000, active["p99_us"] / 1000))
if idle["clients"] != n or idle["errors"]:
    print("  (%d of %d connected, %d errors)" % (idle["clients"], n, idle["errors"]))
if active["errors"]:
    print("  (%d errors among the active clients)" % active["errors"])
' "$work/idle.json" "$active" "$n" "$c0" "$c1" "$mem" "$slab"
  stop
done
