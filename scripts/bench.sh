#!/usr/bin/env bash
# Benchmarks Cairn against the reference registry (CNCF distribution 2.8, Debian's
# `docker-registry`) with target/release/cairn-bench, then prints a report.
#
# Registries, interleaved case by case (the order rotates every case, so a change
# in the machine's load hits all of them alike):
#   cairn-sqlite    Cairn's embedded default: SQLite + local disk
#   cairn-postgres  Cairn with PostgreSQL (127.0.0.1:5432, a fresh database per run)
#   distribution    /usr/bin/docker-registry serve, filesystem storage
# Every run gets a freshly started server and an empty storage directory
# (target/bench/data/…, deleted afterwards).
#
# Environment:
#   REPS=3          repetitions of the whole matrix
#   LARGE=1         include the 512 MiB cases (LARGE=0 for a quick pass)
#   CASES=regex     only the cases whose id matches (e.g. 'manifest|tags')
#   REGISTRIES="cairn-sqlite cairn-postgres distribution"
#   DURATION=1.0    seconds per small case (large cases are bounded by op counts)
#   PORT=15500      first of three 127.0.0.1 ports to use
#   BENCH_PG_PORT=15432
#                   port of the benchmark's own PostgreSQL server (durable
#                   defaults; started from target/bench-pg if nothing answers)
#   BENCH_POSTGRES_URL=postgres://user:pw@host:port/postgres
#                   admin URL of another PostgreSQL server to use instead
#   SKIP_LIMITS=1   do not measure the machine's limits again
# Output: target/bench/results.jsonl (one JSON line per run), env.json, limits.json,
# logs/; the report is printed and saved as target/bench/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

REPS=${REPS:-3}
LARGE=${LARGE:-1}
CASES=${CASES:-.}
REGISTRIES=${REGISTRIES:-"cairn-sqlite cairn-postgres distribution"}
DURATION=${DURATION:-1.0}
PORT=${PORT:-15500}
BENCH_PG_PORT=${BENCH_PG_PORT:-15432}

out=$root/target/bench
data=$out/data
logs=$out/logs
results=$out/results.jsonl
bench=$root/target/release/cairn-bench
cairn=$root/target/release/cairn
registry_bin=/usr/bin/docker-registry

log() { printf '==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# shellcheck source=scripts/postgres.sh
source "$root/scripts/postgres.sh"

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# ---- build and tools ----------------------------------------------------------
log "cargo build --release"
cargo build --release --locked >&2
apt_install docker-registry postgresql curl openssl

# ---- PostgreSQL ----------------------------------------------------------------
# A server of the benchmark's own, with PostgreSQL's durable defaults (fsync on,
# synchronous_commit on): a push is acknowledged only once its commit is on disk,
# as in production. (The test suite's server runs with fsync=off, which would
# flatter every commit.) Set BENCH_POSTGRES_URL to use another server.
if [[ $REGISTRIES == *cairn-postgres* && -z ${BENCH_POSTGRES_URL:-} ]] &&
  ! pg_isready -q -h 127.0.0.1 -p "$BENCH_PG_PORT"; then
  log "starting the benchmark's PostgreSQL server on 127.0.0.1:$BENCH_PG_PORT"
  start_private_postgres "$BENCH_PG_PORT" "$root/target/bench-pg"
fi
BENCH_POSTGRES_URL=${BENCH_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:$BENCH_PG_PORT/postgres}
pg_base=${BENCH_POSTGRES_URL%/*}   # postgres://user:pw@host:port

# ---- output ---------------------------------------------------------------------
mkdir -p "$out" "$logs"
rm -rf "$data"; mkdir -p "$data"
# Every run's storage is deleted after it, and on ext4 the next run's files would
# be created in the same block group, where the inode allocator steps over each
# inode freed in the last 30 s (dirty_expire_centisecs), reading its inode table
# block to check (`recently_deleted`): a run right after another pushed 4 KiB
# blobs at half the rate of one on a quiet disk, and `perf` put 23% of the
# server's CPU in that check. With the top-directory flag the allocator spreads
# the directories made under $data across block groups, so each run starts in a
# group of its own, as a registry's storage on a disk does. Ignored where the
# file system has no such flag.
chattr +T "$data" 2>/dev/null || true
if [ -s "$results" ]; then mv "$results" "$out/results.$(date +%Y%m%d-%H%M%S).jsonl"; fi
: > "$results"

# ---- the matrix -----------------------------------------------------------------
# id | cairn-bench arguments. Small cases run for $DURATION seconds. Large ones are
# bounded by an operation count (at least one per worker) and a time limit, whichever
# comes first (operations in flight always finish): with 16 workers, all 16 start at
# once, so 16 x 512 MiB = 8 GiB moves in those runs.
d=$DURATION
matrix=(
  "push-4KiB-c1|--scenario blob-push --size 4KiB --concurrency 1 --duration $d"
  "push-4KiB-c16|--scenario blob-push --size 4KiB --concurrency 16 --duration $d"
  "push-1MiB-c1|--scenario blob-push --size 1MiB --concurrency 1 --duration $d"
  "push-1MiB-c16|--scenario blob-push --size 1MiB --concurrency 16 --duration $d"
  "push-64MiB-c1|--scenario blob-push --size 64MiB --concurrency 1 --ops 8 --duration 4"
  "push-64MiB-c16|--scenario blob-push --size 64MiB --concurrency 16 --ops 16 --duration 4"
  "push-512MiB-c1|--scenario blob-push --size 512MiB --concurrency 1 --ops 3 --duration 6"
  "push-512MiB-c16|--scenario blob-push --size 512MiB --concurrency 16 --ops 16 --duration 6"
  "push-chunked-64MiB-c1|--scenario blob-push-chunked --size 64MiB --chunk-size 5MiB --concurrency 1 --ops 6 --duration 4"
  "push-chunked-64MiB-c16|--scenario blob-push-chunked --size 64MiB --chunk-size 5MiB --concurrency 16 --ops 16 --duration 4"
)
for size in 4KiB 1MiB 64MiB 512MiB; do
  for c in 1 16; do
    bound="--duration $d"
    if [ "$size" = 512MiB ]; then bound="--ops $(( c == 1 ? 6 : 16 )) --duration 4"; fi
    for v in "" -verify; do
      matrix+=("pull$v-$size-c$c|--scenario blob-pull$v --size $size --concurrency $c $bound")
    done
  done
done
matrix+=(
  "manifest-push-c1|--scenario manifest-push --concurrency 1 --duration $d"
  "manifest-push-c16|--scenario manifest-push --concurrency 16 --duration $d"
)
for by in tag digest; do
  for c in 1 16 64; do
    matrix+=("manifest-pull-$by-c$c|--scenario manifest-pull-$by --concurrency $c --duration $d")
  done
done
# One listing is ten requests in sequence: at c1 it measures the loopback round
# trip, at c16 how many listings the server can serve.
matrix+=(
  "tags-list-1000-n100|--scenario tag-list --tags 1000 --page 100 --concurrency 1 --duration $d"
  "tags-list-1000-n100-c16|--scenario tag-list --tags 1000 --page 100 --concurrency 16 --duration $d"
)

selected=()
for entry in "${matrix[@]}"; do
  id=${entry%%|*}
  [[ $LARGE == 0 && $id == *512MiB* ]] && continue
  [[ $id =~ $CASES ]] || continue
  selected+=("$entry")
done
read -r -a regs <<< "$REGISTRIES"

# ---- servers --------------------------------------------------------------------
server_pid=""
server_url=""
pg_db=""

wait_up() { # url pid logfile
  for _ in $(seq 1 200); do
    curl -sf -o /dev/null "$1/v2/" && return 0
    kill -0 "$2" 2>/dev/null || { echo "server exited; log:" >&2; tail -n 20 "$3" >&2; return 1; }
    sleep 0.05
  done
  echo "server did not answer on $1" >&2; return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_server() { # registry dir port runlog
  local reg=$1 dir=$2 port=$3 runlog=$4
  port_free "$port" || { echo "port $port is in use; set PORT" >&2; return 1; }
  server_url="http://127.0.0.1:$port"
  mkdir -p "$dir"
  case $reg in
    cairn-sqlite|cairn-postgres)
      local db="sqlite://$dir/cairn.db"
      if [ "$reg" = cairn-postgres ]; then
        pg_db="cairn_bench_$$_${RANDOM}${RANDOM}"
        psql -q "$BENCH_POSTGRES_URL" -c "CREATE DATABASE $pg_db" >/dev/null
        db="$pg_base/$pg_db"
      fi
      CAIRN_LISTEN="127.0.0.1:$port" CAIRN_DATABASE__URL="$db" \
        CAIRN_STORAGE__URL="file://$dir/blobs" CAIRN_LOG__LEVEL=warn \
        CAIRN_SHUTDOWN_TIMEOUT_SECS=5 \
        env -u CAIRN_LOG -u CAIRN_CONFIG "$cairn" serve >"$runlog" 2>&1 &
      server_pid=$!
      ;;
    distribution)
      cat > "$dir/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
EOF
      "$registry_bin" serve "$dir/config.yml" >"$runlog" 2>&1 &
      server_pid=$!
      ;;
    *) echo "unknown registry $reg" >&2; return 1 ;;
  esac
  wait_up "$server_url" "$server_pid" "$runlog"
}

stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
  if [ -n "$pg_db" ]; then
    psql -q "$BENCH_POSTGRES_URL" -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null || true
    pg_db=""
  fi
}
trap 'stop_server; rm -rf "$data"' EXIT

# ---- machine description and limits ----------------------------------------------
json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
pg_fsync=null
if [[ $REGISTRIES == *cairn-postgres* ]]; then
  pg_fsync=$(json_str "$(psql -qtA "$BENCH_POSTGRES_URL" -c "SELECT current_setting('fsync') || ', synchronous_commit=' || current_setting('synchronous_commit')" 2>/dev/null || echo '?')")
fi
write_env() { # file phase
  cat > "$1" <<EOF
{"nproc": $(nproc), "cpu": $(json_str "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"),
 "mem": $(json_str "$(free -h | awk '/^Mem:/{print $2" total, "$7" available"}')"),
 "kernel": $(json_str "$(uname -r)"),
 "disk": $(json_str "$(df -h "$out" | awk 'NR==2{print $1" ("$2", "$4" free) on "$6}')"),
 "loadavg_start": $(json_str "$load_start"), "loadavg_end": $(json_str "$(cut -d' ' -f1-3 /proc/loadavg)"),
 "started": $(json_str "$started"), "elapsed_s": ${elapsed:-null},
 "reps": $REPS, "duration": $DURATION, "large": $LARGE, "cases": ${#selected[@]},
 "registries": $(json_str "$REGISTRIES"),
 "git": $(json_str "$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo '+dirty')"),
 "distribution": $(json_str "$("$registry_bin" --version 2>/dev/null | awk '{print $NF}')"),
 "postgres_fsync": $pg_fsync}
EOF
}
started=$(date -Is)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# The disk's write+fsync throughput, twice: one 1 GiB file (the sustained
# rate), and the median of seven 64 MiB files, each written and fsynced as a
# 64 MiB blob push does (a fixed cost per fsync weighs more there). This VM's
# disk varies from minute to minute, so it is measured again after the matrix.
# Prints "<1 GiB MB/s> <64 MiB median MB/s>".
disk_limits() {
  python3 - "$data/disk.test" <<'EOF'
import os, statistics, sys, time
path = sys.argv[1]
buf = b"\0" * (1 << 20)
def write_fsync(mib):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    start = time.perf_counter()
    for _ in range(mib):
        os.write(fd, buf)
    os.fsync(fd)
    took = time.perf_counter() - start
    os.close(fd)
    os.unlink(path)
    return mib * (1 << 20) / took / 1e6
big = write_fsync(1024)
small = statistics.median(write_fsync(64) for _ in range(7))
print(round(big, 1), round(small, 1))
EOF
}

if [ "${SKIP_LIMITS:-0}" != 1 ] || [ ! -s "$out/limits.json" ]; then
  log "measuring the machine's limits"
  sha=$(openssl speed -bytes 1048576 -seconds 3 sha256 2>/dev/null | awk '/^sha256/{print $2}' | tr -d k)
  sha_mbs=$(python3 -c "print(round(float('${sha:-0}')*1000/1e6, 1))")
  tcp_mbs=$(python3 - <<'EOF'
import socket, threading, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]
got = [0]
def recv():
    c, _ = srv.accept()
    buf = bytearray(1 << 20); v = memoryview(buf)
    while True:
        n = c.recv_into(v)
        if not n: break
        got[0] += n
t = threading.Thread(target=recv); t.start()
s = socket.create_connection(("127.0.0.1", port))
chunk = b"\0" * (1 << 20)
start = time.time()
while time.time() - start < 3:
    for _ in range(64): s.sendall(chunk)
s.close(); t.join()
print(round(got[0] / (time.time() - start) / 1e6, 1))
EOF
)
  # The loopback round trip between two processes: a request of the
  # benchmark at concurrency 1 cannot take less, so a tag listing that takes
  # ten requests is bounded by ten of these.
  rtt_us=$(python3 - <<'EOF'
import os, socket, statistics, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]
if os.fork() == 0:
    c, _ = srv.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(4096)
        if not d: os._exit(0)
        c.sendall(d)
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg = b"\0" * 200
def rounds(n):
    start = time.perf_counter()
    for _ in range(n):
        s.sendall(msg)
        got = 0
        while got < len(msg):
            got += len(s.recv(4096))
    return (time.perf_counter() - start) / n * 1e6
rounds(1000)
print(round(statistics.median(rounds(4000) for _ in range(5)), 1))
s.close(); os.wait()
EOF
)
  read -r dd_mbs dd64_mbs <<< "$(disk_limits)"
  cat > "$out/limits.json" <<EOF
{"sha256_one_core_mb_s": $sha_mbs, "sha256_tool": "openssl speed -bytes 1048576 -seconds 3 sha256",
 "loopback_tcp_mb_s": $tcp_mbs, "loopback_tool": "python3 socket sender/receiver, 1 MiB sends, 3 s",
 "loopback_rtt_us": ${rtt_us:-null}, "loopback_rtt_tool": "two python3 processes, 200-byte ping-pong with TCP_NODELAY, median of 5 x 4000",
 "disk_write_fsync_mb_s": $dd_mbs, "disk_tool": "1 GiB in 1 MiB writes, then fsync, into target/bench",
 "disk_64mib_write_fsync_mb_s": $dd64_mbs, "disk_64mib_tool": "median of 7 files of 64 MiB, each written in 1 MiB writes and fsynced, into target/bench"}
EOF
  log "limits: $(tr -d '\n' < "$out/limits.json")"
fi

# ---- run ------------------------------------------------------------------------
t0=$(date +%s)
total=$(( REPS * ${#selected[@]} * ${#regs[@]} ))
n=0
for rep in $(seq 1 "$REPS"); do
  for ci in "${!selected[@]}"; do
    entry=${selected[$ci]}
    id=${entry%%|*}
    read -r -a args <<< "${entry#*|}"
    for k in "${!regs[@]}"; do
      reg=${regs[$(( (k + ci + rep) % ${#regs[@]} ))]}
      port=$(( PORT + (k + ci + rep) % ${#regs[@]} ))
      n=$((n + 1))
      dir=$data/$reg-$rep-$id
      runlog=$logs/$reg-$rep-$id.log
      printf '[%d/%d %4ss] rep %d %-26s %-15s ' "$n" "$total" "$(( $(date +%s) - t0 ))" "$rep" "$id" "$reg" >&2
      if ! start_server "$reg" "$dir" "$port" "$runlog"; then
        echo "FAILED to start" >&2
        stop_server; rm -rf "$dir"; continue
      fi
      line=$("$bench" --url "$server_url" --label "$reg" --pid "$server_pid" \
        --meta "case=$id" --meta "rep=$rep" "${args[@]}" 2>>"$runlog" || true)
      ts=$(date +%s%N)
      stop_server
      rm -rf "$dir"   # slow with many small files on a disk mounted with `discard`
      clean_ms=$(( ($(date +%s%N) - ts) / 1000000 ))
      if [ -z "$line" ]; then line="{\"case\":\"$id\",\"registry\":\"$reg\",\"rep\":\"$rep\",\"setup_error\":\"no output\"}"; fi
      echo "$line" >> "$results"
      python3 -c '
import json,sys
r=json.loads(sys.argv[1])
if "setup_error" in r: print("SETUP ERROR:", r["setup_error"][:200]); sys.exit()
print("%8.1f ops/s %7.1f MB/s p50 %8.2f ms p99 %8.2f ms err %d (setup %.1fs, stop+clean %.1fs)%s" % (r["ops_per_s"],
  r["mb_per_s"], r["p50_ms"] or 0, r["p99_ms"] or 0, r["errors"], r["setup_s"], float(sys.argv[2]) / 1000,
  (" first: " + r["first_error"][:120]) if r["first_error"] else ""))' "$line" "$clean_ms" >&2
    done
  done
done
elapsed=$(( $(date +%s) - t0 ))
write_env "$out/env.json"
log "matrix took ${elapsed}s"
read -r dd_mbs dd64_mbs <<< "$(disk_limits)"
cat > "$out/limits_end.json" <<EOF
{"disk_write_fsync_mb_s": $dd_mbs, "disk_64mib_write_fsync_mb_s": $dd64_mbs}
EOF
log "disk after the matrix: $(tr -d '\n' < "$out/limits_end.json")"

python3 "$root/scripts/bench_report.py" "$out" | tee "$out/report.md"
