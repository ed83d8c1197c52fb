#!/usr/bin/env bash
# Stops a Pinus peer: the master given by PID and every descendant, by PID
# (the master's SIGTERM does not stop its children).
set -u
master=$1
descendants() {
  local p
  for p in $(pgrep -P "$1" 2>/dev/null); do
    descendants "$p"
    echo "$p"
  done
}
pids="$(descendants "$master") $master"
kill $pids 2>/dev/null || true
sleep 0.5
kill -9 $pids 2>/dev/null || true
