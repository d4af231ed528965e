#!/usr/bin/env bash
# The store benchmarks.
#
#   bench/store.sh [N...]            for each size N (default 1,000,000): writer ingest per tenth
#                                    of N (flat or not as the log grows), bytes per entry on disk,
#                                    verify entries/s, then admin query latency per filter, counts,
#                                    stats, export rows/s and the export's peak memory over N
#   bench/store.sh designs [N...]    the candidate store designs side by side on the same entries
#                                    (examples/store_designs.rs; default 1,000,000); options for it
#                                    go in STORE_DESIGNS_ARGS, e.g. "--sync full --designs b,c"
#   bench/store.sh pg-fleet [SIDECARS [ENTRIES_EACH]]
#                                    a fleet into one PostgreSQL server (examples/pg_fleet.rs;
#                                    default 8 sidecars x 100,000 entries): SIDECARS writer
#                                    processes append at once, each under its own log through the
#                                    real writer; entries/s together and per writer, CPU per entry
#                                    of writers and server, bytes per entry in the database, then
#                                    the admin filters' first-page, count and stats latencies across
#                                    the fleet. The server is AUDITGATE_TEST_POSTGRES_URL's, or a
#                                    throwaway one (scripts/postgres-test-server --durable, fsync
#                                    on) started for the run and destroyed after it
#
# e.g. bench/store.sh 1000000 10000000 50000000
#
# Bench files go to TMPDIR (default /tmp) and are deleted after each size. Before each size the
# free space there is checked against what the run needs (today's store takes ~700 bytes per
# entry with its WAL); a size that does not fit is skipped with a message, not started.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=store
if [ "${1:-}" = pg-fleet ]; then
    shift
    sidecars=${1:-8}
    each=${2:-100000}
    for n in "$sidecars" "$each"; do
        if ! [[ $n =~ ^[1-9][0-9]*$ ]]; then
            echo "bench/store.sh: '$n' is not a number" >&2
            exit 2
        fi
    done
    cargo build --release --locked --example pg_fleet >&2
    if [ -z "${AUDITGATE_TEST_POSTGRES_URL:-}" ]; then
        eval "$(scripts/postgres-test-server --durable start)"
        trap 'scripts/postgres-test-server destroy "$AUDITGATE_TEST_POSTGRES_DIR"' EXIT
    fi
    echo "== PostgreSQL fleet, $sidecars sidecars x $each entries"
    target/release/examples/pg_fleet "$sidecars" "$each"
    exit 0
fi
if [ "${1:-}" = designs ]; then
    mode=designs
    shift
fi
sizes=("$@")
if [ ${#sizes[@]} -eq 0 ]; then
    sizes=(1000000)
fi
for n in "${sizes[@]}"; do
    if ! [[ $n =~ ^[1-9][0-9]*$ ]]; then
        echo "bench/store.sh: '$n' is not a number of entries" >&2
        exit 2
    fi
done

cargo build --release --locked --examples >&2

# Bytes a run of N entries needs at most: one store at a time, 800 bytes an entry (today's store
# measured 600-700 with its WAL), plus a GiB of room for everything else on the disk.
fits() {
    local n=$1 free
    free=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR == 2 { print $4 }')
    free=$((free * 1024))
    if [ $((n * 800 + 1073741824)) -gt "$free" ]; then
        echo "== skipped $n entries: needs ~$((n * 800 / 1048576)) MiB, ${TMPDIR:-/tmp} has $((free / 1048576)) MiB free"
        return 1
    fi
}

for n in "${sizes[@]}"; do
    fits "$n" || continue
    if [ "$mode" = designs ]; then
        echo "== store designs, $n entries"
        # shellcheck disable=SC2086 # the options are meant to split into words
        target/release/examples/store_designs ${STORE_DESIGNS_ARGS:-} "$n"
    else
        echo "== writer ingest and verify, $n entries"
        target/release/examples/store_bench "$n"
        echo
        echo "== admin queries and exports, $n entries"
        target/release/examples/admin_bench "$n"
    fi
    echo
done
