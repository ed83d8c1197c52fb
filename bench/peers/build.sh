#!/usr/bin/env bash
# Builds the Go peers of bench/compare into bench/peers/bin, from the Go
# module proxy, every module pinned by its go.sum (-mod=readonly: nothing is
# resolved afresh): the NATS server (nats/), the Pitaya peer (pitaya/,
# Pitaya v2.11.3) and the nano peer (nano/, nano v0.5.1). etcd, which
# Pitaya finds its servers through, is Debian's etcd-server. Needs Go.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p bin
export GOFLAGS=-mod=readonly
(cd nats && go build -o ../bin/nats-server github.com/nats-io/nats-server/v2)
(cd pitaya && go build -o ../bin/pitaya-peer .)
(cd nano && go build -o ../bin/nano-peer .)
