#!/usr/bin/env bash
# Forwarded echo side by side, in one run, interleaved round by round: the
# raw Rust floor; the bench cluster as two processes (connector and chat
# backend over a TCP link); and as one process (`run --node
# connector-1,chat-1`: the in-process link). Prints each round's req/s and
# p99, and the median ratios to the floor. Loopback only; every process is
# stopped by its PID.
#   bench/one-process.sh [rounds] [seconds] [clients]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-5}
clients=${3:-50}
cargo build --release --quiet --bin session-proxy
bin=./target/release/session-proxy
out=$(mktemp -d)
pids=()
trap 'stop; rm -rf "$out"' EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh

measure() { # system port round
  local line
  line=$("$bin" bench rr --target "127.0.0.1:$2" --clients "$clients" --duration "$secs" --json 2>/dev/null)
  echo "$1 $3 $line" >>"$out/runs"
  python3 -c '
import json, sys
r = json.loads(sys.argv[2])
print("  %-13s %9.0f req/s  p99 %.2f ms" % (sys.argv[1], r["throughput"], r["p99_us"] / 1000))
' "$1" "$line"
}

for r in $(seq "$rounds"); do
  echo "round $r/$rounds ($clients clients, $secs s each)"
  "$bin" bench floor --addr 127.0.0.1:4900 >/dev/null 2>&1 &
  pids=($!)
  wait_port 4900
  measure floor 4900 "$r"
  stop
  start_cluster "$bin"
  sleep 1
  measure two-process 4700 "$r"
  stop
  "$bin" run --config bench/cluster.toml --node connector-1,chat-1 >/dev/null 2>&1 &
  pids=($!)
  wait_port 4700
  sleep 1
  measure one-process 4700 "$r"
  stop
done

python3 - "$out/runs" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    system, rnd, result = line.split(" ", 2)
    runs.setdefault(int(rnd), {})[system] = json.loads(result)
def ratio(system):
    return statistics.median(r[system]["throughput"] / r["floor"]["throughput"] for r in runs.values())
print(f"median over {len(runs)} rounds, throughput against the floor in the same round:")
for system in ("two-process", "one-process"):
    print(f"  {system:13} {ratio(system):.2f}x the floor")
PY
