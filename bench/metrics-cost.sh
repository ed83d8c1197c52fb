#!/usr/bin/env bash
# What metrics cost: forwarded echo with 50 and 1,000 clients against the
# bench cluster (bench/cluster.toml: one connector, one chat backend, each
# its own process), with the admin address (metrics recorder installed,
# scraped every second) and without, interleaved round by round. Loopback
# only; every process is stopped by its PID.
#   bench/metrics-cost.sh [rounds]        (DURATION env override)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
duration=${DURATION:-5}
cargo build --release --quiet
bin=./target/release/session-proxy
out=bench/results/metrics-cost.jsonl
mkdir -p bench/results
: >"$out"

pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  return 0
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh

cpu_ticks() { # pid: utime + stime, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

start() { # on|off
  local front_admin=() back_admin=()
  if [ "$1" = on ]; then
    front_admin=(--admin-addr 127.0.0.1:4791)
    back_admin=(--admin-addr 127.0.0.1:4792)
  fi
  "$bin" run --config bench/cluster.toml --node connector-1 "${front_admin[@]}" >/dev/null 2>&1 &
  front=$!
  "$bin" run --config bench/cluster.toml --node chat-1 "${back_admin[@]}" >/dev/null 2>&1 &
  back=$!
  pids=("$front" "$back")
  wait_port 4700
  sleep 1
  scraper=
  if [ "$1" = on ]; then
    # A scrape a second, as a busy Prometheus would.
    (while true; do
      for p in 4791 4792; do
        exec 3<>"/dev/tcp/127.0.0.1/$p" && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3 >/dev/null
        exec 3>&-
      done
      sleep 1
    done) &
    scraper=$!
    pids+=("$scraper")
  fi
}

stop() {
  [ -n "$scraper" ] && kill "$scraper" 2>/dev/null || true
  kill "$front" "$back"
  wait "$front" "$back" 2>/dev/null || true
  pids=()
}

for r in $(seq "$rounds"); do
  for mode in off on; do
    start "$mode"
    for clients in 50 1000; do
      f0=$(cpu_ticks "$front"); b0=$(cpu_ticks "$back")
      line=$("$bin" bench rr --target 127.0.0.1:4700 --clients "$clients" --duration "$duration" --json 2>/dev/null)
      f1=$(cpu_ticks "$front"); b1=$(cpu_ticks "$back")
      # CPU the two nodes spent (clock ticks, 1/100 s): steadier than req/s
      # on a machine whose cores the load generator shares.
      echo "{\"round\":$r,\"metrics\":\"$mode\",\"workload\":\"echo-$clients\",\"frontend_cpu_ticks\":$((f1 - f0)),\"backend_cpu_ticks\":$((b1 - b0)),\"result\":$line}" >>"$out"
      echo "round $r metrics $mode echo-$clients: cpu ticks front $((f1 - f0)) back $((b1 - b0)); $(echo "$line" | cut -c1-100)"
    done
    stop
  done
done
echo "wrote $out"
