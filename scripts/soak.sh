#!/usr/bin/env bash
# A bounded soak run: the release build of Cairn under a steady mix of pushes and
# pulls (cairn-bench --scenario soak) for $MINUTES minutes, reporting per minute
# the server's RSS (VmRSS from /proc/<pid>/status), ops/s, p50/p99 latency and
# errors, then a Markdown table of those lines.
#
# Only 127.0.0.1 is used; every loop is bounded (the run by --duration, waits
# by a count). The server runs on a fresh data directory (target/soak/data,
# deleted afterwards) and, for DB=postgres, a fresh database it drops again.
#
# Environment:
#   MINUTES=10        length of the timed phase
#   CONCURRENCY=32    operations in flight
#   SIZE=64KiB        size of the pushed and pulled blobs
#   DB=sqlite         or postgres (the server at SOAK_POSTGRES_URL)
#   PORT=15600        127.0.0.1 port of the server
#   SOAK_POSTGRES_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres
# Output: target/soak/<db>.jsonl (one line per minute, then the summary line),
# target/soak/<db>.md (the table), target/soak/<db>.log (the server's log).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

MINUTES=${MINUTES:-10}
CONCURRENCY=${CONCURRENCY:-32}
SIZE=${SIZE:-64KiB}
DB=${DB:-sqlite}
PORT=${PORT:-15600}
SOAK_POSTGRES_URL=${SOAK_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}

out=$root/target/soak
data=$out/data
results=$out/$DB.jsonl
table=$out/$DB.md
runlog=$out/$DB.log
cairn=$root/target/release/cairn
bench=$root/target/release/cairn-bench

log() { printf '==> %s\n' "$*" >&2; }

log "cargo build --release"
cargo build --release --locked >&2

mkdir -p "$out"
rm -rf "$data"; mkdir -p "$data"
url="http://127.0.0.1:$PORT"
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "port $PORT is in use; set PORT" >&2; exit 1
fi

pg_db=""
db_url="sqlite://$data/cairn.db"
if [ "$DB" = postgres ]; then
  pg_isready -q -d "$SOAK_POSTGRES_URL" || { echo "no PostgreSQL answers at $SOAK_POSTGRES_URL (scripts/test.sh starts one on 127.0.0.1:5432)" >&2; exit 1; }
  pg_db="cairn_soak_$$"
  psql -q "$SOAK_POSTGRES_URL" -c "CREATE DATABASE $pg_db" >/dev/null
  db_url="${SOAK_POSTGRES_URL%/*}/$pg_db"
fi

server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ -n "$pg_db" ]; then
    psql -q "$SOAK_POSTGRES_URL" -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null || true
  fi
  rm -rf "$data"
}
trap cleanup EXIT

CAIRN_LISTEN="127.0.0.1:$PORT" CAIRN_DATABASE__URL="$db_url" \
  CAIRN_STORAGE__URL="file://$data/blobs" CAIRN_LOG__LEVEL=warn \
  CAIRN_SHUTDOWN_TIMEOUT_SECS=5 \
  env -u CAIRN_LOG -u CAIRN_CONFIG "$cairn" serve >"$runlog" 2>&1 &
server_pid=$!
for _ in $(seq 1 200); do
  curl -sf -o /dev/null "$url/v2/" && break
  kill -0 "$server_pid" 2>/dev/null || { echo "server exited:" >&2; tail -n 20 "$runlog" >&2; exit 1; }
  sleep 0.05
done

log "soak: $DB, $MINUTES min, concurrency $CONCURRENCY, blobs of $SIZE (load $(cut -d' ' -f1-3 /proc/loadavg))"
"$bench" --url "$url" --label "cairn-$DB" --scenario soak --size "$SIZE" \
  --concurrency "$CONCURRENCY" --duration "$((MINUTES * 60))" --report-every 60 \
  --max-errors 1000 --timeout 60 --pid "$server_pid" \
  --meta "nproc=$(nproc)" --meta "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)" | tee "$results"

python3 - "$results" "$DB" > "$table" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"| minute | server RSS (MiB) | ops/s | p50 (ms) | p99 (ms) | errors |  ({sys.argv[2]})")
print("|---:|---:|---:|---:|---:|---:|")
for r in rows:
    if "interval" in r:
        print(f"| {r['interval']} | {r['server_rss_mib']} | {r['ops_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} |")
s = [r for r in rows if "interval" not in r]
if s:
    s = s[-1]
    print(f"| all | peak {s['server_peak_rss_mib']} (start {s['server_rss_start_mib']}) | {s['ops_per_s']} | {s['p50_ms']} | {s['p99_ms']} | {s['errors']} |")
EOF
cat "$table"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$table"
