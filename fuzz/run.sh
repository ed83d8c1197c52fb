#!/usr/bin/env bash
# A short fuzz run of every target (60 s each by default), on the stable
# toolchain (RUSTC_BOOTSTRAP lets cargo-fuzz pass its flags; no sanitizer).
#   fuzz/run.sh [seconds per target]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for t in cluster_frame client_package client_message client_protobuf; do
  # New inputs go to work/ (ignored by git); corpus/ keeps the small seeds.
  mkdir -p "work/$t"
  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$t" "work/$t" "corpus/$t" -- -max_total_time="$secs" -max_len=4096
done
