#!/usr/bin/env bash
# What a call between servers costs: forwarded echo against a forwarded
# request whose handler makes one remote call (`chat.benchHandler.remote`:
# the chat backend asks its session's frontend, which calls the callee on
# its link, and back), interleaved round by round, with the connector and
# the chat backend as two processes and as one (`run --node
# connector-1,chat-1`), and Pinus beside them (`app.rpc.chat.benchRemote.echo`
# from its chat server, bench/pinus) and Pitaya (its chat server's RPC to
# the connector over NATS, bench/peers; skipped without Go or etcd). Prints
# each run's req/s, p50 and p99,
# and per system the median over rounds of the remote route against echo in
# the same round. Loopback only; every process is stopped by its PID.
#   bench/remote.sh [rounds] [seconds] [clients]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-5}
clients=${3:-50}
cargo build --release --quiet --bin session-proxy
bin=./target/release/session-proxy
(cd bench/pinus && [ -d node_modules/pinus ] || npm ci --no-audit --no-fund >/dev/null)
out=$(mktemp -d)
pids=()
pinus_master=
cleanup() {
  stop
  if [ -n "$pinus_master" ]; then bench/pinus/stop.sh "$pinus_master"; fi
  rm -rf "$out"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh
systems="two-process one-process pinus"
if command -v go >/dev/null && command -v etcd >/dev/null && bench/peers/build.sh; then
  systems="$systems pitaya"
fi

measure() { # system route round port
  local line
  line=$("$bin" bench rr --target "127.0.0.1:$4" --clients "$clients" --duration "$secs" \
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
  for system in $systems; do
    port=4700
    if [ "$system" = pitaya ]; then
      port=4600
      start_pitaya "$port" "$out"
    elif [ "$system" = pinus ]; then
      pinus_master=$(bench/pinus/start.sh)
      port=4100
    elif [ "$system" = two-process ]; then
      start_cluster "$bin"
    else
      "$bin" run --config bench/cluster.toml --node connector-1,chat-1 >/dev/null 2>&1 &
      pids=($!)
    fi
    wait_port "$port"
    serves "$port"
    # Alternate which route goes first, so drift within a round hits both.
    if [ $((r % 2)) -eq 1 ]; then order="echo remote"; else order="remote echo"; fi
    for route in $order; do
      measure "$system" "chat.benchHandler.$route" "$r" "$port"
    done
    stop
    if [ -n "$pinus_master" ]; then
      bench/pinus/stop.sh "$pinus_master"
      pinus_master=
    fi
  done
done

python3 - "$out/runs" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    system, route, rnd, result = line.split(" ", 3)
    runs.setdefault((system, int(rnd)), {})[route.rsplit(".", 1)[1]] = json.loads(result)
print("median over rounds: the remote route's req/s, p50 and p99, and against echo in the same round:")
for system in ("two-process", "one-process", "pinus", "pitaya"):
    rounds = [v for (s, _), v in runs.items() if s == system]
    if not rounds:
        continue
    med = lambda f: statistics.median(f(v) for v in rounds)
    print(f"  {system:12} remote {med(lambda v: v['remote']['throughput']):8.0f} req/s"
          f"  p50 {med(lambda v: v['remote']['p50_us']) / 1000:.2f} ms"
          f"  p99 {med(lambda v: v['remote']['p99_us']) / 1000:.2f} ms"
          f"  | {med(lambda v: v['remote']['throughput'] / v['echo']['throughput']):.2f}x echo's req/s,"
          f" p50 +{med(lambda v: v['remote']['p50_us'] - v['echo']['p50_us']) / 1000:.2f} ms")
by_round = {r: v for (s, r), v in runs.items() if s == "two-process"}
for peer, name in (("pinus", "Pinus"), ("pitaya", "Pitaya")):
    ratios = [(by_round[r]["remote"]["throughput"] / v["remote"]["throughput"],
               by_round[r]["remote"]["p50_us"] / v["remote"]["p50_us"])
              for (s, r), v in runs.items() if s == peer and r in by_round]
    if ratios:
        print(f"  remote route, two processes against {name} in the same round:"
              f" {statistics.median(t for t, _ in ratios):.2f}x req/s,"
              f" p50 {statistics.median(p for _, p in ratios):.2f}x")
PY
