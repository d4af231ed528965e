#!/usr/bin/env bash
# The store benchmarks, in one run: writer ingest (entries hashed into the Merkle tree in the
# writer's transaction) and verify time, then admin query latency per filter, export rows/s and
# the export's peak memory, each over N entries (default 1,000,000).
#
#   bench/store.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
cargo build --release --locked --examples >&2
echo "== writer ingest and verify, $N entries"
target/release/examples/store_bench "$N"
echo
echo "== admin queries and exports, $N entries"
target/release/examples/admin_bench "$N"
