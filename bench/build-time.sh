#!/usr/bin/env bash
# Clean-build time of a library user's crate: one whose only dependency line
# is `session-proxy = { path = … }`, against this tree's library crate and
# against the root crate of an older revision (default: the last one before
# the library and the command were split), built side by side, interleaved,
# each in a fresh target directory.
#
#   bench/build-time.sh [rounds] [old-revision]
# (A third crate takes the facade with `default-features = false, features =
# ["node"]`: the session layer and the node, no Redis, etcd, TLS, WebSocket
# or admin address.)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds="${1:-2}"
old_rev="${2:-ccfb6ab}"
work="$(mktemp -d)"
trap 'git -C "$root" worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add --detach "$work/old" "$old_rev" >/dev/null 2>&1

user_crate() { # name, path of the session-proxy crate, extra dependency keys
  mkdir -p "$work/$1/src"
  printf '[package]\nname = "%s"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\nsession-proxy = { path = "%s"%s }\n' \
    "$1" "$2" "${3:-}" >"$work/$1/Cargo.toml"
  echo 'fn main() { let _ = session_proxy::SessionConfig::new("connector-1"); }' >"$work/$1/src/main.rs"
  (cd "$work/$1" && cargo fetch --quiet)
}
user_crate facade "$root/session-proxy"
user_crate node "$root/session-proxy" ', default-features = false, features = ["node"]'
user_crate before "$work/old"

build() { # name -> seconds
  rm -rf "$work/target-$1"
  local start end
  start=$(date +%s.%N)
  (cd "$work/$1" && CARGO_TARGET_DIR="$work/target-$1" cargo build --quiet)
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}
for r in $(seq "$rounds"); do
  f=$(build facade)
  n=$(build node)
  b=$(build before)
  echo "round $r: facade ${f}s, facade without default features (node only) ${n}s, $old_rev root crate ${b}s; ratios $(echo "scale=2; $f / $b" | bc), $(echo "scale=2; $n / $b" | bc)"
done
count() { ls "$work/target-$1/debug/deps"/*.rlib | wc -l; }
echo "crates compiled: facade $(count facade), node only $(count node), $old_rev $(count before)"
