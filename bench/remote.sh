#!/usr/bin/env bash
# What a call between servers costs: forwarded echo against a forwarded
# request whose handler makes one remote call (`chat.benchHandler.remote`:
# the chat backend asks its session's frontend, which calls the callee on
# its link, and back), interleaved round by round, with the connector and
# the chat backend as two processes and as one (`run --node
# connector-1,chat-1`). Prints each run's req/s, p50 and p99, and the
# median ratio of the remote route to echo in the same round. Loopback
# only; every process is stopped by its PID.
#   bench/remote.sh [rounds] [seconds] [clients]
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

measure() { # system route round
  local line
  line=$("$bin" bench rr --target 127.0.0.1:4700 --clients "$clients" --duration "$secs" \
    --route "$2" --body '{"x":1}' --json 2>/dev/null)
  echo "$1 $2 $3 $line" >>"$out/runs"
  python3 -c '
import json, sys
r = json.loads(sys.argv[3])
print("  %-12s %-24s %9.0f req/s  p50 %.2f ms  p99 %.2f ms  errors %d" % (
    sys.argv[1], sys.argv[2], r["throughput"], r["p50_us"] / 1000, r["p99_us"] / 1000, r["errors"]))
' "$1" "$2" "$line"
}

for r in $(seq "$rounds"); do
  echo "round $r/$rounds ($clients clients, $secs s each)"
  for system in two-process one-process; do
    if [ "$system" = two-process ]; then
      "$bin" run --config bench/cluster.toml --node connector-1 >/dev/null 2>&1 &
      pids=($!)
      "$bin" run --config bench/cluster.toml --node chat-1 >/dev/null 2>&1 &
      pids+=($!)
    else
      "$bin" run --config bench/cluster.toml --node connector-1,chat-1 >/dev/null 2>&1 &
      pids=($!)
    fi
    wait_port 4700
    sleep 1
    # Alternate which route goes first, so drift within a round hits both.
    if [ $((r % 2)) -eq 1 ]; then order="echo remote"; else order="remote echo"; fi
    for route in $order; do
      measure "$system" "chat.benchHandler.$route" "$r"
    done
    stop
  done
done

python3 - "$out/runs" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    system, route, rnd, result = line.split(" ", 3)
    runs.setdefault((system, int(rnd)), {})[route.rsplit(".", 1)[1]] = json.loads(result)
print("median over rounds, the remote route against echo in the same round:")
for system in ("two-process", "one-process"):
    rounds = [v for (s, _), v in runs.items() if s == system]
    thr = statistics.median(v["remote"]["throughput"] / v["echo"]["throughput"] for v in rounds)
    p50 = statistics.median(v["remote"]["p50_us"] - v["echo"]["p50_us"] for v in rounds)
    print(f"  {system:12} throughput {thr:.2f}x echo, p50 +{p50 / 1000:.2f} ms")
PY
