#!/usr/bin/env bash
# The proxy benchmark: auditgate against nginx doing the same proxying, side by side in one run.
#
#   bench/proxy.sh [SECONDS] [CONNECTIONS]      (defaults: 10 s per case, 64 connections)
#
# Loopback only, bounded, and every process it starts is stopped on exit. Installs nginx and wrk
# from Debian's packages if they are missing. Fairness on 2 cores: wrk is pinned to CPU 0; the
# upstream and the proxy under test share CPU 1 (nginx with one worker, auditgate with one worker
# thread). For each case it prints requests/s, p50 and p99 latency, the proxy process's CPU time
# per request (utime+stime of all its threads from /proc/PID/stat over the measured window), and
# ratios to nginx; for audited cases it checks that entries written == requests answered.
#
#   BENCH_BINS="A=path/to/auditgate B=path/to/other" BENCH_ROUNDS=2 bench/proxy.sh 5 64
#
# compares builds side by side: the main cases run for each binary in turn, interleaved, rounds
# times. BENCH_ONLY=REGEX keeps only the auditgate cases whose label matches; BENCH_PERF=DIR
# writes a perf profile of each auditgate case.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_CASE=${1:-10}
CONNECTIONS=${2:-64}
WARMUP=2
WRK_CPU=0
SERVER_CPU=1

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk; then
  echo "installing nginx and wrk from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq nginx-light wrk >/dev/null 2>&1 || apt-get install -y -qq nginx wrk >/dev/null
fi
need sqlite3 || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq sqlite3 >/dev/null; }

cargo build --release --locked --bin auditgate >&2
BIN=$PWD/target/release/auditgate

WORK=$(mktemp -d /tmp/auditgate-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { for _ in $(seq 1 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

UPSTREAM_PORT=$(free_port)
NGINX_PORT=$(free_port)

# The upstream: nginx answering a small fixed 200.
mkdir -p "$WORK/upstream" "$WORK/nginx"
cat >"$WORK/upstream/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/upstream/nginx.pid;
error_log $WORK/upstream/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UPSTREAM_PORT;
    location / { default_type application/json; return 200 '{"id":1,"ok":true}'; }
  }
}
EOF
taskset -c $SERVER_CPU nginx -c "$WORK/upstream/nginx.conf" -p "$WORK/upstream" &
PIDS+=($!)
wait_port "$UPSTREAM_PORT"

# nginx as the reverse proxy users would pick instead: keepalive upstream, access_log on.
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log $WORK/nginx/access.log;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UPSTREAM_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto http;
      proxy_set_header Host \$host;
    }
  }
}
EOF
taskset -c $SERVER_CPU nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
NGINX_PID=$!
PIDS+=($NGINX_PID)
wait_port "$NGINX_PORT"

# A JWT for the "body capture + JWT actor" case (HS256, secret below).
export BENCH_JWT_SECRET=bench-secret-0123456789
JWT=$(python3 - <<'EOF'
import base64, hashlib, hmac, json, os, time
b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": "user-42", "email": "bench@example.com", "exp": int(time.time()) + 3600}).encode())
signing = f"{header}.{claims}".encode()
signature = b64(hmac.new(os.environ["BENCH_JWT_SECRET"].encode(), signing, hashlib.sha256).digest())
print(f"{header}.{claims}.{signature}")
EOF
)
cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"role":"admin","note":"benchmark"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $JWT"
EOF

# Production-like keys: every request a different resource id, one of 1000 users (identity headers
# of a trusted auth proxy) and a client address from X-Forwarded-For, so every index of the store
# takes inserts all over its range rather than at one end.
cat >"$WORK/varied.lua" <<'EOF'
request = function()
  local user = math.random(1000)
  wrk.headers["X-Forwarded-User"] = "user-" .. user
  wrk.headers["X-Forwarded-Email"] = "user" .. user .. "@example.com"
  wrk.headers["X-Forwarded-For"] = "10." .. math.random(0, 255) .. "." .. math.random(0, 255) .. "." .. math.random(1, 254)
  return wrk.format("GET", "/api/items/" .. math.random(1, 100000000))
end
EOF

# One auditgate config per case.
write_config() { # name, store extra, rest
  local name=$1 store_extra=$2 rest=$3
  local port admin
  port=$(free_port); admin=$(free_port)
  mkdir -p "$WORK/$name"
  # BENCH_STORE="key = value\n..." adds [store] settings to every auditgate case (for tuning).
  store_extra=$(printf '%s\n%b' "$store_extra" "${BENCH_STORE:-}")
  cat >"$WORK/$name/auditgate.toml" <<EOF
[proxy]
listen = "127.0.0.1:$port"
upstream = "127.0.0.1:$UPSTREAM_PORT"
worker_threads = 1
[admin]
listen = "127.0.0.1:$admin"
[store]
path = "$WORK/$name/audit.db"
$store_extra
[log]
log_id = "bench"
$rest
EOF
  echo "$port"
}

cpu_ticks() { # total utime+stime of a process and (for nginx) its children
  local total=0 pid
  for pid in "$@"; do
    if [ -r "/proc/$pid/stat" ]; then
      # Fields 14 and 15 after the command name (which may contain spaces).
      total=$((total + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$pid/stat")))
    fi
  done
  echo "$total"
}
nginx_pids() { echo "$1 $(pgrep -P "$1" | tr '\n' ' ')"; }

CLK_TCK=$(getconf CLK_TCK)
RESULTS=()

# BENCH_ONLY=REGEX runs only the auditgate cases whose label matches (the direct and nginx cases
# always run: the ratios need them), and skips the rule-count and memory sections.
BENCH_ONLY=${BENCH_ONLY:-}

# The number of entries once the writer has caught up: a writer slower than the proxy has a
# backlog in its queue (not lost: written before shutdown). Polls every 0.5 s until the count is
# at least AT_LEAST and has not moved for three polls (a seal of 32k rows can hold the next commit
# for more than one poll on a loaded core), at most 60 s.
settled_count() { # db, [at least]
  local at_least=${2:-0} count previous=-1 still=0 polls=0
  count=$(entry_count "$1")
  while { [ "$count" -lt "$at_least" ] || [ $still -lt 3 ]; } && [ $polls -lt 120 ]; do
    sleep 0.5
    previous=$count
    count=$(entry_count "$1")
    if [ "$count" = "$previous" ]; then still=$((still + 1)); else still=0; fi
    polls=$((polls + 1))
  done
  echo "$count"
}
entry_count() { # db
  sqlite3 "$1" 'select (select count(*) from entries) + (select count(*) from recent)' 2>/dev/null || echo 0
}

run_case() { # label, port, "pids to measure", db-or-empty, [wrk script]
  local label=$1 port=$2 pids=$3 db=$4 script=${5:-}
  if [ -n "$BENCH_ONLY" ] && [[ $label == auditgate* ]] && ! [[ $label =~ $BENCH_ONLY ]]; then return; fi
  local args=(-t1 -c"$CONNECTIONS" --latency "http://127.0.0.1:$port/api/items/7")
  [ -n "$script" ] && args+=(-s "$script")
  taskset -c $WRK_CPU wrk -d"${WARMUP}s" "${args[@]}" >/dev/null
  local before_entries=0
  [ -n "$db" ] && before_entries=$(settled_count "$db")
  local t0 t1
  t0=$(cpu_ticks $pids)
  local out perf_pid=""
  if [ -n "${BENCH_PERF:-}" ] && [[ $label == auditgate* ]]; then
    # BENCH_PERF=DIR: a perf profile of the proxy over the measured window, as DIR/<case>.txt.
    mkdir -p "$BENCH_PERF"
    local slug=${label//[^a-zA-Z0-9]/_}
    perf record -q -F 999 -g -p "$pids" -o "$BENCH_PERF/$slug.data" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  out=$(taskset -c $WRK_CPU wrk -d"${SECONDS_PER_CASE}s" "${args[@]}")
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
    perf report -i "$BENCH_PERF/$slug.data" --no-children --sort symbol --stdio 2>/dev/null \
      | grep -E '^ +[0-9]' | head -60 >"$BENCH_PERF/$slug.txt" || true
  fi
  local requests rps p50 p99 errors
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  local check="-"
  if [ -n "$db" ]; then
    # CPU is read once the writer has caught up, so its work for these requests is counted even
    # when it finishes after the load stops.
    local written=$(($(settled_count "$db" $((before_entries + requests))) - before_entries))
    # wrk counts responses it finished; requests cut off at the end of the window were still
    # answered by the proxy, so written may exceed requests by at most the connection count.
    if [ "$written" -ge "$requests" ] && [ "$written" -le $((requests + CONNECTIONS)) ]; then check="ok ($written)"; else check="MISMATCH ($written written, $requests answered)"; fi
  fi
  t1=$(cpu_ticks $pids)
  local cpu_us="-"
  if [ "$pids" != "-" ]; then
    cpu_us=$(python3 -c "print(f'{($t1-$t0)/$CLK_TCK*1e6/$requests:.1f}')")
  fi
  RESULTS+=("$label|$rps|$p50|$p99|$cpu_us|$check|$errors")
}

start_auditgate() { # name -> pid
  local name=$1
  # stdout too goes to a file: a background child holding the $(...) pipe would block the caller.
  taskset -c $SERVER_CPU "$BIN" run --config "$WORK/$name/auditgate.toml" >"$WORK/$name/out" 2>"$WORK/$name/log" &
  echo $!
}

run_case "direct to upstream" "$UPSTREAM_PORT" "-" ""
run_case "nginx proxy" "$NGINX_PORT" "$(nginx_pids $NGINX_PID)" ""

# The main cases, for one binary. BENCH_BINS="NAME=PATH ..." runs them for each binary in turn,
# BENCH_ROUNDS times (default 2), interleaved, each case labelled with its binary's NAME: builds
# compared side by side in one run (the rule-count and memory sections then use the last binary).
main_cases() { # tag, slug
  local TAG=$1 SLUG=$2
  PORT=$(write_config none$SLUG "" $'[unmatched]\nrecord = "none"')
  PID=$(start_auditgate none$SLUG); PIDS+=($PID); wait_port "$PORT"
  run_case "auditgate$TAG, nothing audited" "$PORT" "$PID" ""
  kill "$PID"; wait "$PID" 2>/dev/null || true

  RULE_ALL=$'[unmatched]\nrecord = "none"\n[[rule]]\nname = "everything"\npath = "/{*rest}"\naction = "item.read"\nresource = { type = "item", id = "{rest}" }'
  PORT=$(write_config all$SLUG "" "$RULE_ALL")
  PID=$(start_auditgate all$SLUG); PIDS+=($PID); wait_port "$PORT"
  run_case "auditgate$TAG, every request audited" "$PORT" "$PID" "$WORK/all$SLUG/audit.db"
  kill "$PID"; wait "$PID" 2>/dev/null || true

  RULE_VARIED=$'[unmatched]\nrecord = "none"\n[[actor]]\nfrom = "header"\nid = "x-forwarded-user"\nemail = "x-forwarded-email"\n[[rule]]\nname = "everything"\npath = "/{*rest}"\naction = "item.read"\nresource = { type = "item", id = "{rest}" }'
  PORT=$(write_config varied$SLUG "" "$RULE_VARIED")
  sed -i 's/^worker_threads = 1$/worker_threads = 1\ntrusted_proxies = ["127.0.0.1\/32"]/' "$WORK/varied$SLUG/auditgate.toml"
  PID=$(start_auditgate varied$SLUG); PIDS+=($PID); wait_port "$PORT"
  run_case "auditgate$TAG, every request audited, varied keys" "$PORT" "$PID" "$WORK/varied$SLUG/audit.db" "$WORK/varied.lua"
  kill "$PID"; wait "$PID" 2>/dev/null || true

  RULE_BODY=$'[unmatched]\nrecord = "none"\n[[actor]]\nfrom = "jwt"\nhs256_secret_env = "BENCH_JWT_SECRET"\n[[rule]]\nname = "everything"\npath = "/{*rest}"\naction = "item.updated"\nresource = { type = "item", id = "response.body:/id" }\nmetadata = { role = "request.body:/role" }'
  PORT=$(write_config body$SLUG "" "$RULE_BODY")
  PID=$(start_auditgate body$SLUG); PIDS+=($PID); wait_port "$PORT"
  run_case "auditgate$TAG, body capture + JWT actor" "$PORT" "$PID" "$WORK/body$SLUG/audit.db" "$WORK/post.lua"
  kill "$PID"; wait "$PID" 2>/dev/null || true

  PORT=$(write_config wal$SLUG 'durability = "write-ahead"' "$RULE_ALL")
  PID=$(start_auditgate wal$SLUG); PIDS+=($PID); wait_port "$PORT"
  run_case "auditgate$TAG, write-ahead" "$PORT" "$PID" "$WORK/wal$SLUG/audit.db"
  kill "$PID"; wait "$PID" 2>/dev/null || true
}

if [ -n "${BENCH_BINS:-}" ]; then
  for round in $(seq 1 "${BENCH_ROUNDS:-2}"); do
    for spec in $BENCH_BINS; do
      BIN=${spec#*=}
      main_cases " [${spec%%=*}]" "-${spec%%=*}-$round"
    done
  done
else
  main_cases "" ""
fi

# How cost grows with the number of rules: N rules that do not match, then the one that does.
rules_with() { # count
  local count=$1 index
  printf '[unmatched]\nrecord = "none"\n'
  for index in $(seq 1 $((count - 1))); do
    printf '[[rule]]\nname = "rule %s"\nmethod = ["POST", "PUT"]\npath = "/api/v%s/things/{id}"\naction = "thing%s.changed"\nresource = { type = "thing", id = "{id}" }\n' "$index" "$index" "$index"
  done
  printf '[[rule]]\nname = "everything"\npath = "/{*rest}"\naction = "item.read"\n'
}
for count in $([ -z "$BENCH_ONLY" ] && echo 1 10 100 1000); do
  PORT=$(write_config "rules$count" "" "$(rules_with $count)")
  PID=$(start_auditgate "rules$count"); PIDS+=($PID); wait_port "$PORT"
  run_case "auditgate, $count rules" "$PORT" "$PID" "$WORK/rules$count/audit.db"
  kill "$PID"; wait "$PID" 2>/dev/null || true
done

# Memory: resident set idle, and with many idle client connections open.
ulimit -n 65536 2>/dev/null || true
PORT=$(write_config idle "" $'[unmatched]\nrecord = "none"')
PID=$(start_auditgate idle); PIDS+=($PID); wait_port "$PORT"
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
MEMORY=("idle|$(rss_mb "$PID")")
for conns in $([ -z "$BENCH_ONLY" ] && echo 10 1000 10000); do
  python3 - "$PORT" "$conns" <<'PY' &
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
sockets = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /api/items/1 HTTP/1.1\r\nHost: bench\r\n\r\n")
    sockets.append(s)
for s in sockets:
    s.recv(4096)
print("open", flush=True)
time.sleep(4)
PY
  HOLDER=$!
  sleep 3
  MEMORY+=("$conns idle connections|$(rss_mb "$PID")")
  wait "$HOLDER" || true
done
kill "$PID"; wait "$PID" 2>/dev/null || true

NGINX_RPS=$(echo "${RESULTS[1]}" | cut -d'|' -f2)
NGINX_CPU=$(echo "${RESULTS[1]}" | cut -d'|' -f5)
echo
echo "auditgate proxy benchmark: $(nproc) cores, $(uname -r), ${SECONDS_PER_CASE}s per case, $CONNECTIONS connections, wrk on CPU $WRK_CPU, upstream+proxy on CPU $SERVER_CPU"
printf '%-52s %11s %9s %9s %12s %9s %9s  %s\n' "case" "req/s" "p50" "p99" "CPU µs/req" "rps/nginx" "cpu/nginx" "entries"
for row in "${RESULTS[@]}"; do
  IFS='|' read -r label rps p50 p99 cpu check errors <<<"$row"
  ratio=$(python3 -c "print(f'{$rps/$NGINX_RPS:.2f}x')")
  cpu_ratio="-"
  [ "$cpu" != "-" ] && cpu_ratio=$(python3 -c "print(f'{$cpu/$NGINX_CPU:.2f}x')")
  printf '%-52s %11s %9s %9s %12s %9s %9s  %s %s\n' "$label" "$rps" "$p50" "$p99" "$cpu" "$ratio" "$cpu_ratio" "$check" "$errors"
done
echo
printf '%-38s %12s\n' "auditgate memory" "RSS MB"
for row in "${MEMORY[@]}"; do
  IFS='|' read -r label mb <<<"$row"
  printf '%-52s %12s\n' "$label" "$mb"
done
