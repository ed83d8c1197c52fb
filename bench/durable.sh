#!/usr/bin/env bash
# The durable path side by side, in one run, interleaved round by round:
# set-push-50 and login-50 (as in bench/compare) on the bench cluster
# without a store, then with the Redis store on a redis-server that has
# `appendonly yes` and `appendfsync everysec`, acknowledging after the write
# (the default) and writing behind (`redis_write_behind = true`). Prints
# each round's req/s and
# p99, the median ratios (store against none), Redis's own commands per
# second (INFO stats) and the mean batch (sessions per store write, from the
# connector's /metrics). Loopback only; every process stopped by its PID.
#   bench/durable.sh [rounds] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-5}
command -v redis-server >/dev/null || { echo "bench/durable.sh needs redis-server" >&2; exit 1; }
cargo build --release --quiet --bin session-proxy
bin=./target/release/session-proxy
work=$(mktemp -d)
rport=${REDIS_PORT:-6391}
admin=${ADMIN_PORT:-9391}
pids=()
redis_pid=
trap 'stop; [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null; rm -rf "$work"' EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh

durable_redis "$rport" "$work"
redis() { redis-cli -p "$rport" "$@"; }
sed 's|^\[cluster\]|[cluster]\nredis_write_behind = true|' "$work/durable.toml" >"$work/behind.toml"

start() { # cluster file [connector flags...]
  local file=$1
  shift
  "$bin" run --config "$file" --node connector-1 "$@" >/dev/null 2>&1 &
  pids=($!)
  "$bin" run --config "$file" --node chat-1 >/dev/null 2>&1 &
  pids+=($!)
  wait_port 4700
  sleep 1
}

commands() { redis info stats | tr -d '\r' | sed -n 's/^total_commands_processed://p'; }
flushes() { # "sum count" of sessions per store write
  python3 -c '
import re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
def value(name):
    m = re.search("^" + name + r"(?:\{[^}]*\})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0
print(value("session_proxy_store_flush_sessions_sum"), value("session_proxy_store_flush_sessions_count"))
' "http://127.0.0.1:$admin/metrics"
}

measure() { # setup round workload [durable]
  local route body login=
  case $3 in
    set-push-50) route=chat.benchHandler.set body='{"key":"k","value":1}' login=--login ;;
    login-50) route=chat.benchHandler.login body='{"uid":"u{i}"}' ;;
  esac
  local c0 f0 line t0
  [ -n "${4:-}" ] && { c0=$(commands); f0=$(flushes); }
  t0=$(cpu "${pids[0]}" "${pids[1]}" "$redis_pid")
  line=$("$bin" bench rr --target 127.0.0.1:4700 --clients 50 --duration "$secs" \
    --route "$route" --body "$body" $login --json 2>/dev/null)
  echo "$1 $2 $3 $line" >>"$work/runs"
  local t1 ops
  t1=$(cpu "${pids[0]}" "${pids[1]}" "$redis_pid")
  ops=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ops"])' "$line")
  local per
  per=$(python3 -c '
import sys
a = list(map(float, sys.argv[1].split())); b = list(map(float, sys.argv[2].split())); n = int(sys.argv[3])
us = [(y - x) / n * 1e6 for x, y in zip(a, b)]
print("  CPU per request: connector %.1f us, backend %.1f us, redis %.1f us" % tuple(us))
' "$t0" "$t1" "$ops")
  local extra=
  if [ -n "${4:-}" ]; then
    local c1 f1
    c1=$(commands)
    f1=$(flushes)
    extra=$(python3 -c '
import sys
c0, c1, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s0, n0 = map(float, sys.argv[4].split()); s1, n1 = map(float, sys.argv[5].split())
batch = (s1 - s0) / (n1 - n0) if n1 > n0 else 0
print("  redis %.0f commands/s, %.1f sessions per store write" % ((c1 - c0) / secs, batch))
' "$c0" "$c1" "$secs" "$f0" "$f1")
  fi
  python3 -c '
import json, sys
r = json.loads(sys.argv[3])
print("  %-9s %-12s %8.0f req/s  p99 %6.2f ms  errors %d%s" % (sys.argv[1], sys.argv[2], r["throughput"], r["p99_us"] / 1000, r["errors"], sys.argv[4]))
' "$1" "$3" "$line" "$extra"
  echo "  $per"
}

for r in $(seq "$rounds"); do
  echo "round $r/$rounds (50 clients, $secs s each)"
  start bench/cluster.toml
  measure none "$r" set-push-50
  measure none "$r" login-50
  stop
  redis flushall >/dev/null
  start "$work/durable.toml" --admin-addr "127.0.0.1:$admin"
  measure redis "$r" set-push-50 durable
  measure redis "$r" login-50 durable
  stop
  redis flushall >/dev/null
  start "$work/behind.toml" --admin-addr "127.0.0.1:$admin"
  measure behind "$r" set-push-50 durable
  measure behind "$r" login-50 durable
  stop
done

python3 - "$work/runs" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    setup, rnd, workload, result = line.split(" ", 3)
    runs.setdefault((workload, int(rnd)), {})[setup] = json.loads(result)
print("median over rounds, the Redis store against no store in the same round:")
for setup, name in (("redis", "acknowledged after the write"), ("behind", "writing behind")):
    print(f" {name}:")
    for workload in ("set-push-50", "login-50"):
        rows = [v for (w, _), v in runs.items() if w == workload]
        t = statistics.median(v[setup]["throughput"] / v["none"]["throughput"] for v in rows)
        p = statistics.median(v[setup]["p99_us"] / v["none"]["p99_us"] for v in rows)
        print(f"  {workload:12} throughput {t:.2f}x, p99 {p:.2f}x")
PY
