# Shared by the bench scripts (sourced, not run).

# `session-proxy run` serves the bench app's routes only when asked by name.
export SESSION_PROXY_APP=bench

# Waits up to 10 s for something to listen on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# Starts the bench cluster as two processes of binary $1, the connector
# (clients on 127.0.0.1:4700) and the chat backend, with cluster file $2
# (default bench/cluster.toml); their PIDs go into the caller's `pids`.
# Returns once the connector listens (it may not have its backend yet).
start_cluster() { # binary [cluster file]
  local file=${2:-bench/cluster.toml}
  "$1" run --config "$file" --node connector-1 >/dev/null 2>&1 &
  pids=($!)
  "$1" run --config "$file" --node chat-1 >/dev/null 2>&1 &
  pids+=($!)
  wait_port 4700
}

# Runs `$2 old $3` and `$2 new $4`, the old build first in odd rounds ($1)
# and second in even ones, so drift in the machine hits both builds alike.
in_turn() { # round command old-binary new-binary
  if [ $(($1 % 2)) -eq 1 ]; then
    "$2" old "$3"
    "$2" new "$4"
  else
    "$2" new "$4"
    "$2" old "$3"
  fi
}

# Stops the processes in the caller's `pids` array by PID, the last started
# first (a cluster's servers before the etcd and NATS they shut down
# through), each given 10 s before SIGKILL; empties the array.
stop() {
  local i p state
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    p=${pids[i]}
    [ -n "$p" ] || continue
    kill "$p" 2>/dev/null || continue
    for _ in $(seq 100); do
      state=$(ps -o stat= -p "$p" 2>/dev/null || true)
      [[ -z $state || $state == Z* ]] && break
      sleep 0.1
    done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
}

# CPU seconds (user + system) of the processes named by PID, one per PID.
cpu() {
  python3 -c '
import os, sys
tick = os.sysconf("SC_CLK_TCK")
print(" ".join(str(sum(int(x) for x in open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[11:13]) / tick) for p in sys.argv[1:]))
' "$@"
}

# Buffer pages of all TCP sockets, in KiB (/proc/net/sockstat "mem": unread
# and unsent data; idle sockets hold none).
tcp_buffer_kib() { awk '/^TCP:/ { for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1) * 4 }' /proc/net/sockstat; }

# The socket objects themselves (TCP, TCPv6 and socket inodes) in the slab
# allocator, in KiB.
socket_slab_kib() {
  awk '$1 == "TCP" || $1 == "TCPv6" || $1 == "sock_inode_cache" { kib += $2 * $4 / 1024 } END { print int(kib) }' /proc/slabinfo 2>/dev/null || echo 0
}

# Starts a redis-server on 127.0.0.1:$1 that persists as a production store
# would (appendonly yes, appendfsync everysec) into the directory $2, sets
# `redis_pid`, waits for it, and writes the bench cluster file with that
# store attached to $2/durable.toml.
durable_redis() {
  redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly yes \
    --appendfsync everysec --dir "$2" >"$2/redis.log" 2>&1 &
  redis_pid=$!
  wait_port "$1"
  sed "s|^\[cluster\]|[cluster]\nredis = \"redis://127.0.0.1:$1/0\"|" bench/cluster.toml \
    >"$2/durable.toml"
}

# Waits until `chat.benchHandler.echo` is answered on 127.0.0.1:$1 (a
# cluster whose frontend listens before it has found its backend), at most
# 20 one-second tries.
serves() {
  local line
  for _ in $(seq 20); do
    if line=$("$bin" bench rr --target "127.0.0.1:$1" --clients 1 --duration 1 --json 2>/dev/null) &&
      [[ $line == *'"errors":0,'* && $line != *'"ops":0,'* ]]; then
      return 0
    fi
  done
  echo "127.0.0.1:$1 does not answer the bench routes" >&2
  return 1
}

# The Go peers (bench/peers/build.sh builds them). Each start appends its
# processes' PIDs to the caller's `pids` (stopped by `stop`) and sets
# `peer_front`, the PID of the process clients connect to; a start that
# fails prints the end of its processes' logs (in $2) and returns 1.
peers=bench/peers/bin

peer_failed() { # dir name...
  local dir=$1 f
  shift
  for f in "$@"; do echo "--- $f" >&2; tail -n 5 "$dir/$f.log" >&2 || true; done
  return 1
}

# Pitaya in cluster mode, as in its cluster demo: etcd (Debian's) and a NATS
# server on loopback ports of their own, a chat server, and the connector
# on client port $1; $2 is a directory for etcd's data.
start_pitaya() {
  local port=$1 dir=$2/etcd-$RANDOM nats=nats://127.0.0.1:${PITAYA_NATS_PORT:-4322}
  local etcd=127.0.0.1:${PITAYA_ETCD_PORT:-2479}
  etcd --data-dir "$dir" --listen-client-urls "http://$etcd" --advertise-client-urls "http://$etcd" \
    --listen-peer-urls "http://127.0.0.1:${PITAYA_ETCD_PEER_PORT:-2480}" >"$2/etcd.log" 2>&1 &
  pids+=($!)
  "$peers/nats-server" -a 127.0.0.1 -p "${nats##*:}" >"$2/nats.log" 2>&1 &
  pids+=($!)
  wait_port "${etcd##*:}"
  wait_port "${nats##*:}"
  "$peers/pitaya-peer" -type chat -nats "$nats" -etcd "$etcd" >"$2/pitaya-chat.log" 2>&1 &
  pids+=($!)
  "$peers/pitaya-peer" -type connector -frontend -port "$port" -nats "$nats" -etcd "$etcd" \
    >"$2/pitaya-connector.log" 2>&1 &
  peer_front=$!
  pids+=("$peer_front")
  wait_port "$port" && serves "$port" || peer_failed "$2" etcd nats pitaya-chat pitaya-connector
}

# nano in cluster mode, as in its cluster example: a master, a chat member
# and the gate on client port $1 (gRPC between them, on loopback ports of
# their own, below 10,000: `bench ccu` binds its clients' ports from 10,000
# up, and the kernel's ephemeral ports start at 32,768); $2 is a directory
# for their logs.
start_nano() {
  local port=$1 master=127.0.0.1:${NANO_MASTER_PORT:-7567}
  "$peers/nano-peer" -role master -listen "$master" >"$2/nano-master.log" 2>&1 &
  pids+=($!)
  wait_port "${master##*:}"
  "$peers/nano-peer" -role chat -listen 127.0.0.1:${NANO_CHAT_PORT:-7580} -master "$master" \
    >"$2/nano-chat.log" 2>&1 &
  pids+=($!)
  "$peers/nano-peer" -role gate -listen 127.0.0.1:${NANO_GATE_PORT:-7570} -client "127.0.0.1:$port" \
    -master "$master" >"$2/nano-gate.log" 2>&1 &
  peer_front=$!
  pids+=("$peer_front")
  wait_port "$port" && serves "$port" || peer_failed "$2" nano-master nano-chat nano-gate
}
