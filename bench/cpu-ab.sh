#!/usr/bin/env bash
# Two builds' CPU per request, back to back: for each round, one workload
# on the old build's two-process bench cluster and then on the new one's
# (the order alternating by round), each on a freshly started cluster,
# reading the connector's and the backend's CPU from /proc around a closed
# loop of 50 clients. Prints each run and, per pair, the median ratio (new
# against old) of CPU per request and of throughput. Pairs run seconds
# apart, so drift in a shared machine hits both builds of a pair alike;
# bench/ab.sh measures more workloads but its pairs are minutes apart.
# Loopback only; every process is stopped by its PID.
#   bench/cpu-ab.sh OLD_BIN NEW_BIN [rounds] [workload]
#   workload: echo (default) or set-push
set -euo pipefail
usage="usage: bench/cpu-ab.sh OLD_BIN NEW_BIN [rounds] [echo|set-push]"
# The binaries as the caller named them, before moving to the tree's root.
old=$(realpath "${1:?$usage}")
new=$(realpath "${2:?$usage}")
cd "$(dirname "$0")/.."
rounds=${3:-10}
workload=${4:-echo}
duration=${DURATION:-5}
# The load generator (and `serves`, which waits until the backend answers).
bin=$new
case $workload in
  echo) load=(--route chat.benchHandler.echo --body '{"msg":"hello"}') ;;
  set-push) load=(--route chat.benchHandler.set --body '{"key":"k","value":1}' --login) ;;
  *) echo "unknown workload $workload (echo or set-push)" >&2; exit 2 ;;
esac
work=$(mktemp -d)
pids=()
trap 'stop; rm -rf "$work"' EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh

one() { # build binary
  start_cluster "$2"
  serves 4700
  local before after line
  before=$(cpu "${pids[@]}")
  line=$("$new" bench rr --target 127.0.0.1:4700 --clients 50 --duration "$duration" "${load[@]}" --json 2>/dev/null)
  after=$(cpu "${pids[@]}")
  stop
  python3 -c '
import json, sys
r = json.loads(sys.argv[4])
b, a = map(float, sys.argv[2].split()), map(float, sys.argv[3].split())
us = [(y - x) * 1e6 / r["ops"] for x, y in zip(b, a)]
print("%s %.0f %.2f %.2f" % (sys.argv[1], r["throughput"], us[0], us[1]))
' "$1" "$before" "$after" "$line" | tee -a "$work/runs"
}

echo "build req/s connector-us/req backend-us/req ($workload, 50 clients, ${duration} s)"
for r in $(seq "$rounds"); do
  in_turn "$r" one "$old" "$new"
done

python3 - "$work/runs" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
cpu, rate = [], []
for pair in (rows[i:i + 2] for i in range(0, len(rows) - 1, 2)):
    run = {b: (float(t), float(c) + float(k)) for b, t, c, k in pair}
    rate.append(run["new"][0] / run["old"][0])
    cpu.append(run["new"][1] / run["old"][1])
print(f"new against old, median of {len(cpu)} pairs: CPU per request {statistics.median(cpu):.2f}x "
      f"(lower in {sum(c < 1 for c in cpu)}), throughput {statistics.median(rate):.2f}x")
PY
