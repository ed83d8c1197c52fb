#!/usr/bin/env bash
# The session store alone, on one Redis server against a Redis Cluster of
# three masters, interleaved round by round (`session-proxy bench store`:
# writers putting batches of 18 bound sessions, a frontend's group commit).
# Every server has `appendonly yes` and `appendfsync everysec`. Prints each
# round's sessions/s, p99 per put, the CPU the Redis processes and the
# writer took per 100k sessions and the cores busy, then the median ratio.
# Loopback only; every process stopped by its PID.
#   bench/store-cluster.sh [rounds] [seconds] [writers]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-5}
writers=${3:-8}
for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "bench/store-cluster.sh needs $tool" >&2; exit 1; }
done
cargo build --release --quiet --bin session-proxy
bin=./target/release/session-proxy
work=$(mktemp -d)
base=${REDIS_PORT:-6401} # one server on it, the cluster on the next three
pids=()
# shellcheck source=bench/lib.sh
. bench/lib.sh
trap 'stop; rm -rf "$work"' EXIT

persist=(--bind 127.0.0.1 --save '' --appendonly yes --appendfsync everysec)
redis-server --port "$base" "${persist[@]}" --dir "$work" >"$work/one.log" 2>&1 &
pids+=($!)
one=($!)
masters=()
nodes=()
for i in 1 2 3; do
  port=$((base + i))
  mkdir -p "$work/n$i"
  redis-server --port "$port" "${persist[@]}" --dir "$work/n$i" --cluster-enabled yes \
    --cluster-config-file nodes.conf >"$work/n$i.log" 2>&1 &
  pids+=($!)
  masters+=($!)
  nodes+=("127.0.0.1:$port")
done
for port in "$base" $((base + 1)) $((base + 2)) $((base + 3)); do wait_port "$port"; done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$work/create.log"
for _ in $(seq 100); do
  ok=1
  for i in 1 2 3; do
    redis-cli -p $((base + i)) cluster info | grep -q cluster_state:ok || ok=0
  done
  [ "$ok" = 1 ] && break
  sleep 0.1
done
[ "$ok" = 1 ] || { echo "the cluster did not come up" >&2; exit 1; }
cluster_url="redis+cluster://$(IFS=,; echo "${nodes[*]}")"

sum() { tr ' ' '\n' | awk '{ s += $1 } END { printf "%.3f", s }'; }

measure() { # label url redis-pids...
  local label=$1 url=$2 before after
  shift 2
  before=$(cpu "$@" | sum)
  # The writer's own CPU: the child's rusage, read by a python parent.
  python3 -c '
import json, resource, subprocess, sys
out = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=True).stdout
r = json.loads(out.strip().splitlines()[-1])
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r["throughput"], r["p99_us"], r["ops"], r["errors"], r["seconds"], u.ru_utime + u.ru_stime)
' "$bin" bench store --redis "$url" --writers "$writers" --duration "$secs" --json >"$work/out"
  after=$(cpu "$@" | sum)
  read -r tput p99 ops errors seconds writer_cpu <"$work/out"
  python3 -c '
import sys
label, tput, p99, ops, errors, seconds, writer, before, after = sys.argv[1:]
ops, seconds = float(ops), float(seconds)
redis = float(after) - float(before)
per = 100000 / ops if ops else 0
print(f"{label:8} {float(tput):9.0f} sessions/s  p99 {int(p99) / 1000:6.2f} ms  errors {errors}  "
      f"Redis {redis * per:5.2f} s/100k  writer {float(writer) * per:5.2f} s/100k  "
      f"cores busy {(redis + float(writer)) / seconds:4.2f}")
' "$label" "$tput" "$p99" "$ops" "$errors" "$seconds" "$writer_cpu" "$before" "$after"
  echo "$label $tput" >>"$work/rounds"
}

echo "store throughput: $writers writers, 18 sessions per put, ${secs}s a run, $rounds rounds"
for r in $(seq "$rounds"); do
  echo "round $r"
  measure one "redis://127.0.0.1:$base/0" "${one[@]}"
  measure cluster "$cluster_url" "${masters[@]}"
done
python3 -c '
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    label, tput = line.split()
    runs.setdefault(label, []).append(float(tput))
one, cluster = statistics.median(runs["one"]), statistics.median(runs["cluster"])
print(f"median: one server {one:.0f} sessions/s, 3-master cluster {cluster:.0f} sessions/s, cluster/one {cluster / one:.2f}x")
' "$work/rounds"
