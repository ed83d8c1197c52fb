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

# Stops the processes in the caller's `pids` array, by PID, and waits for
# them; empties the array.
stop() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
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
