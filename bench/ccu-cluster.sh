#!/usr/bin/env bash
# Players per cluster at 1 req/s: N frontend processes and B backends on
# this machine, found through a registry (a redis-server started here on a
# free loopback port), and one `session-proxy bench ccu` generator process
# per frontend, each spreading its sockets over loopback source addresses.
# Every process is stopped by its PID.
#   bench/ccu-cluster.sh [frontends] [backends] [steps per frontend] [hold s]
# RATE sets each player's requests per second (default 1; e.g. 0.05 for
# mostly idle players), RAMP each generator's new connections per second
# (default 2000), SOURCES the loopback source addresses per generator
# (default: one per 25,000 players of the largest step). Each generator has
# addresses of its own (generator i starts at 127.0.0.<2 + (i-1)*SOURCES>)
# and binds its clients' source ports itself (see bench/src/ccu.rs):
# the kernel picks a connect()'s port by searching the established sockets
# of its source address, and 100,000 sockets on 127.0.0.1 alone made that
# search (__inet_check_established) 75 % of the machine's CPU; shared
# addresses bound without IP_BIND_ADDRESS_NO_PORT had done the same in
# bind() (inet_bhash2_conflict). While the generators run, the kernel's TCP sockets
# in use, its socket slab and the frontends' RSS are sampled every second;
# their peaks are printed at the end.
# Loopback only; needs `ulimit -n` above the clients per process.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
frontends=${1:-3}
backends=${2:-2}
steps=${3:-5000,10000,15000}
hold=${4:-10}
rate=${RATE:-1}
ramp=${RAMP:-2000}
largest=$(echo "$steps" | tr ',' '\n' | sort -n | tail -1)
sources=${SOURCES:-$(( (largest + 24999) / 25000 ))}
bin=./target/release/session-proxy
cargo build --release --quiet --bin session-proxy
ulimit -n 20000

pids=()
trap stop EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pids+=($!)
wait_port "$redis_port"
registry="redis://127.0.0.1:$redis_port/0"

client_ports=()
front_pids=()
for i in $(seq "$frontends"); do
  rpc=$(free_port); client=$(free_port)
  "$bin" run --role frontend --id "connector-$i" --type connector --rpc-addr "127.0.0.1:$rpc" \
    --client-addr "127.0.0.1:$client" --registry "$registry" --max-connections-per-ip 100000 \
    >/dev/null 2>&1 &
  pids+=($!)
  front_pids+=($!)
  client_ports+=("$client")
done
for i in $(seq "$backends"); do
  "$bin" run --role backend --id "chat-$i" --type chat --registry "$registry" >/dev/null 2>&1 &
  pids+=($!)
done
sleep 3
echo "machine: $(nproc) cores; $frontends frontends, $backends backends, steps $steps per frontend, $rate req/s per player"
samples=$(mktemp)
(
  while :; do
    inuse=$(awk '/^TCP:/ { print $3 }' /proc/net/sockstat)
    buffers=$(tcp_buffer_kib)
    slab=$(socket_slab_kib)
    rss=0
    for p in "${front_pids[@]}"; do rss=$((rss + $(awk '/^VmRSS/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0))); done
    echo "$inuse $slab $rss $buffers" >>"$samples"
    sleep 1
  done
) &
sampler=$!
pids+=("$sampler")
outs=()
for i in $(seq "$frontends"); do
  out=$(mktemp)
  outs+=("$out")
  # Frontend i's generator: its own source addresses.
  "$bin" bench ccu --target "127.0.0.1:${client_ports[$((i-1))]}" --steps "$steps" --hold "$hold" \
    --sources "$sources" --first-source $((2 + (i - 1) * sources)) --rate-per-client "$rate" --ramp "$ramp" --json >"$out" 2>/dev/null &
  pids+=($!)
done
wait "${pids[@]: -$frontends}" || true
kill "$sampler" 2>/dev/null || true
python3 - "$samples" <<'PY'
import sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if len(l.split()) == 4]
if rows:
    inuse, slab, rss, buffers = (max(r[i] for r in rows) for i in range(4))
    print(f"peak: {inuse} TCP sockets in use, socket slab {slab / 1024:.0f} MiB, "
          f"TCP buffers {buffers / 1024:.0f} MiB, frontends' RSS {rss / 1024:.0f} MiB")
PY
rm -f "$samples"
python3 - "${outs[@]}" <<'PY'
import json, sys
reports = [json.load(open(p)) for p in sys.argv[1:]]
steps = max(len(r["steps"]) for r in reports)
for k in range(steps):
    rows = [r["steps"][k] for r in reports if len(r["steps"]) > k]
    clients = sum(s["clients"] for s in rows)
    print(f"cluster {clients:>7} players: {sum(s['req_per_sec'] for s in rows):>8.0f} req/s  "
          f"worst p99 {max(s['p99_ms'] for s in rows):7.2f} ms  errors {sum(s['errors'] for s in rows)}  "
          f"generators {sum(s['generator_cpu'] for s in rows):.2f} cores")
print("CCU per frontend:", [r["ccu"] for r in reports], " cluster:", sum(r["ccu"] for r in reports))
PY
rm -f "${outs[@]}"
