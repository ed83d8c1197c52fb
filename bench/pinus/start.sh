#!/usr/bin/env bash
# Starts the Pinus peer (master + connector + chat) on loopback and prints
# the master's PID; stop.sh stops every process of it by PID.
set -euo pipefail
cd "$(dirname "$0")"
[ -d node_modules/pinus ] || npm ci --no-audit --no-fund >/dev/null
NODE_OPTIONS="-r $PWD/loopback.js" nohup node app.js env=production >logs.txt 2>&1 &
echo $!
