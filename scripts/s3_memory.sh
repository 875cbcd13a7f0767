#!/usr/bin/env bash
# Peak memory of `cairn serve` while it takes 2 GiB pushes into S3 (a moto
# server): one monolithic streamed push (POST, then PUT with the whole body)
# and one chunked push (POST, PATCHes of 64 MiB, PUT). cairn-bench reports the
# server's peak RSS (VmHWM, reset before each timed push) for each.
#
#   scripts/s3_memory.sh                 # release build
#   PROFILE=debug scripts/s3_memory.sh   # the test build's binaries
#   SIZE=512MiB scripts/s3_memory.sh     # a smaller blob
#
# Needs moto_server (`pip install 'moto[server]==5.*'`, as scripts/test.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
profile=${PROFILE:-release}
size=${SIZE:-2GiB}
chunk=${CHUNK:-64MiB}
target=${CARGO_TARGET_DIR:-$root/target}

if [ "$profile" = release ]; then
  cargo build --release --locked --bin cairn --bin cairn-bench
else
  cargo build --locked --bin cairn --bin cairn-bench
fi
bin="$target/$profile"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

moto_port=$(free_port)
moto_server -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
pids+=($!)
endpoint="http://127.0.0.1:$moto_port"
for _ in $(seq 1 100); do curl -fs "$endpoint" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs -X PUT "$endpoint/cairn-memory" >/dev/null

port=$(free_port)
(
  cd "$work"
  CAIRN_LISTEN=127.0.0.1:$port \
  CAIRN_DATABASE__URL="sqlite://$work/cairn.db" \
  CAIRN_STORAGE__URL=s3://cairn-memory/registry \
  CAIRN_STORAGE__S3__ENDPOINT="$endpoint" \
  CAIRN_STORAGE__S3__REGION=us-east-1 \
  CAIRN_STORAGE__S3__PATH_STYLE=true \
  CAIRN_STORAGE__S3__ALLOW_HTTP=true \
  CAIRN_STORAGE__S3__ACCESS_KEY_ID=cairn-memory \
  CAIRN_STORAGE__S3__SECRET_ACCESS_KEY=cairn-memory-secret \
  CAIRN_GC__INTERVAL_SECS=0 \
  CAIRN_LOG__LEVEL=warn \
  exec "$bin/cairn" serve
) &
server=$!
pids+=($server)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done

for scenario in blob-push blob-push-chunked; do
  "$bin/cairn-bench" --url "http://127.0.0.1:$port" --label "cairn-s3-$profile" \
    --scenario "$scenario" --size "$size" --chunk-size "$chunk" \
    --concurrency 1 --ops 1 --duration 0 --pid "$server"
done
echo "server VmHWM over its whole life: $(grep VmHWM "/proc/$server/status" | awk '{print $2, $3}')"
