#!/usr/bin/env bash
# A build against an older one, interleaved in one run: echo, session
# writes (set-push, login), pushes and idle memory on the two-process bench
# cluster, and echo on the one-process node (connector and backend in one
# process): the rows of bench/compare that a change of the cluster link or
# the forwarding path can move. Builds revision REV in a git worktree of its own, then for each
# round runs the workloads on the old build's cluster and on this tree's, in
# alternating order (so drift in the machine hits both), and prints each
# workload's medians and their ratio, with the CPU the server's processes
# spent per request (from /proc). The load generator is this tree's for
# both (the client protocol is the same). Loopback only; every process is
# stopped by its PID.
#   bench/ab.sh REV [rounds]   (DURATION, IDLE_CLIENTS env overrides; OLD_BIN
#   names an old build already made, and skips building REV)
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/ab.sh REV [rounds]}
rounds=${2:-5}
duration=${DURATION:-5}
idle_clients=${IDLE_CLIENTS:-5000}
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
old_tree="$work/old"
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  git worktree remove --force "$old_tree" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh

old_bin=${OLD_BIN:-}
if [ -z "$old_bin" ]; then
  # The old build keeps a target directory of its own.
  git worktree add --quiet --detach "$old_tree" "$rev"
  (cd "$old_tree" && CARGO_TARGET_DIR="$work/old-target" cargo build --release --quiet --bin session-proxy)
  old_bin="$work/old-target/release/session-proxy"
fi
cargo build --release --quiet --bin session-proxy
new_bin=./target/release/session-proxy
results="$work/results.jsonl"

record() { # build workload -- bench args...
  local build=$1 workload=$2
  shift 3
  local line before after
  # The CPU the server's processes used meanwhile, from /proc: per request
  # it is steadier than throughput on a shared machine.
  before=$(cpu "${pids[@]}")
  if line=$("$new_bin" bench "$@" --json 2>/dev/null); then
    after=$(cpu "${pids[@]}")
    echo "{\"build\":\"$build\",\"workload\":\"$workload\",\"cpu_s\":[[${before// /,}],[${after// /,}]],\"result\":$line}" >>"$results"
  else
    echo "  $build $workload: FAILED" >&2
  fi
}

start() { # binary
  start_cluster "$1"
  front=${pids[0]}
  # The backend is linked once it answers a request; `bench rr` warms up.
}

start_one() { # binary: connector and backend in one process
  "$1" run --config bench/cluster.toml --node connector-1,chat-1 >/dev/null 2>&1 &
  front=$!
  pids=("$front")
  wait_port 4700
}

measure() { # build binary
  local t="--target 127.0.0.1:4700"
  start "$2"
  record "$1" idle-tcp -- idle $t --clients "$idle_clients" --pid "$front"
  stop
  start "$2"
  record "$1" echo-50 -- rr $t --clients 50 --duration "$duration"
  record "$1" set-push-50 -- rr $t --clients 50 --duration "$duration" --route chat.benchHandler.set --body '{"key":"k","value":1}' --login
  record "$1" login-50 -- rr $t --clients 50 --duration "$duration" --route chat.benchHandler.login --body '{"uid":"u{i}"}'
  record "$1" fanout-1000 -- fanout $t --clients 1000 --pushes 20
  stop
  start_one "$2"
  record "$1" one-process-echo-50 -- rr $t --clients 50 --duration "$duration"
  stop
}

for r in $(seq "$rounds"); do
  echo "round $r/$rounds" >&2
  in_turn "$r" measure "$old_bin" "$new_bin"
done

python3 - "$results" "$rev" "$rounds" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"bench/ab.sh {sys.argv[2]} {sys.argv[3]}: medians of {sys.argv[3]} interleaved rounds")
print(f"| workload | figure | {sys.argv[2]} | this tree | ratio |")
print("|---|---|---|---|---|")
figures = {
    "echo-50": [("req/s", "throughput"), ("p99 µs", "p99_us")],
    "set-push-50": [("req/s", "throughput"), ("p99 µs", "p99_us")],
    "login-50": [("req/s", "throughput"), ("p99 µs", "p99_us")],
    "one-process-echo-50": [("req/s", "throughput"), ("p99 µs", "p99_us")],
    "fanout-1000": [("pushes/s", "throughput"), ("p50 µs", "p50_us")],
    "idle-tcp": [("bytes/client", "bytes_per_client")],
}
for r in rows:
    # Seconds of CPU of the server's processes per operation, in µs.
    (before, after), ops = r["cpu_s"], r["result"].get("ops") or 0
    r["result"]["cpu_us"] = (sum(after) - sum(before)) * 1e6 / ops if ops else None
for workload in ("echo-50", "set-push-50", "login-50", "one-process-echo-50"):
    figures[workload].append(("server CPU µs/req", "cpu_us"))
for workload, wanted in figures.items():
    for label, key in wanted:
        med = {}
        for build in ("old", "new"):
            values = [r["result"][key] for r in rows if r["build"] == build and r["workload"] == workload and r["result"].get(key) is not None]
            med[build] = statistics.median(values) if values else None
        each = {b: [round(r["result"][key], 1) for r in rows if r["build"] == b and r["workload"] == workload and r["result"].get(key) is not None] for b in ("old", "new")}
        print(f"<!-- {workload} {label}: old {each['old']}, new {each['new']} -->")
        if med["old"] and med["new"]:
            digits = 1 if key == "cpu_us" else 0
            print(f"| {workload} | {label} | {med['old']:.{digits}f} | {med['new']:.{digits}f} | {med['new'] / med['old']:.2f} |")
        else:
            print(f"| {workload} | {label} | {med['old']} | {med['new']} | - |")
EOF
