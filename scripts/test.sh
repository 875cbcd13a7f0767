#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what is missing
# (PostgreSQL, skopeo, podman, buildah, oras, moto, openssl, Chromium and
# chromedriver for the web console's browser test, docker-compose), starts a PostgreSQL server on 127.0.0.1:5432
# if none answers there, then validates docker-compose.yml and runs formatting, lint and every test.
#
# A missing PostgreSQL or client tool is always a failure, never a skip (with
# CI=true as without). Environment:
#   CAIRN_TEST_POSTGRES_URL  use this server instead of starting one
#   CAIRN_TEST_S3_ENDPOINT   use this S3-compatible server instead of moto
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '\n==> %s\n' "$*"; }

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

# ---- tools ------------------------------------------------------------------
apt_install postgresql skopeo podman buildah uidmap fuse-overlayfs python3 python3-pip \
  openssl chromium chromium-driver
# The end-to-end tests (tests/api/e2e.rs) also drive the Docker Engine; any
# install works (docker.io if there is none), but the daemon must be running.
command -v docker >/dev/null 2>&1 || apt_install docker.io
# oras-py, the ORAS Python SDK (tests/e2e/oras_client.py). Debian's own python3
# is "externally managed" (PEP 668), hence the fallback flag.
if ! python3 -c 'import oras.provider' 2>/dev/null; then
  log "installing oras (PyPI)"
  python3 -m pip install -q 'oras==0.2.*' 2>/dev/null \
    || python3 -m pip install -q --break-system-packages 'oras==0.2.*'
fi

# moto, an S3-compatible server (PyPI), for the tests that keep blobs in S3
# (tests/api/s3.rs); the test harness starts it itself on a free port.
if ! command -v moto_server >/dev/null 2>&1; then
  log "installing moto[server] (PyPI)"
  python3 -m pip install -q 'moto[server]==5.*' 2>/dev/null \
    || python3 -m pip install -q --break-system-packages 'moto[server]==5.*'
fi

# ---- PostgreSQL ---------------------------------------------------------------
export CAIRN_TEST_POSTGRES_URL=${CAIRN_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
if ! pg_up; then
  log "starting a private PostgreSQL server on 127.0.0.1:5432"
  # Tests need no durability across a crash of this machine: fsync off.
  start_private_postgres 5432 "$root/target/pgdata" -c fsync=off -c max_wal_size=256MB
fi
pg_up || { echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
# Each test creates its own database (about 9 MB each, some 240 a run); they
# are dropped after the tests, and those an interrupted run left here.
drop_test_databases() {
  psql "$CAIRN_TEST_POSTGRES_URL" -Atqc \
    "SELECT datname FROM pg_database WHERE datname LIKE 'cairn\_test\_%'" 2>/dev/null |
    while read -r db; do psql "$CAIRN_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true; done
}
drop_test_databases

# docker-compose.yml is checked with whichever Compose there is: the
# `docker compose` plugin, else docker-compose (v1), else Debian's docker-compose.
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose
  compose=(docker-compose)
fi

# ---- checks and tests -------------------------------------------------------
log "${compose[*]} config (docker-compose.yml)"
"${compose[@]}" -f docker-compose.yml config -q
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --features otel -- -D warnings
log "cargo test --features otel (span export)"
cargo test --locked --features otel --test api -- --test-threads 4 otlp
log "cargo test"
cargo test --locked --all-targets -- --test-threads 4
# The API tests whose subject is stored bytes, again with every TestApp's blobs
# in a fresh moto bucket instead of a local directory (tests/api/helpers.rs).
# The test binary is already built; the run takes about 100 s on two cores.
log "cargo test: API tests with blobs on S3 (CAIRN_TEST_STORAGE=s3)"
CAIRN_TEST_STORAGE=s3 cargo test --locked --test api -- --test-threads 4 \
  blobs:: uploads:: manifests:: immutability:: listing:: protocol:: retention::
drop_test_databases

# ---- fuzzing (bounded) --------------------------------------------------------
# Each target replays its committed seeds (fuzz/corpus/<target>) and crash
# regressions (fuzz/regressions/<target>), then fuzzes for FUZZ_SECONDS. New
# inputs go to a scratch directory, so the tree is never modified. cargo-fuzz
# needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
# Unoptimised builds without a sanitizer: the targets fuzz safe Rust, where what
# is found is a panic (overflow checks on), and the build costs minutes, not tens.
FUZZ_SECONDS=${FUZZ_SECONDS:-15}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  log "installing cargo-fuzz (crates.io)"
  cargo install cargo-fuzz --locked
fi
log "cargo fuzz: every target for ${FUZZ_SECONDS}s"
fuzz_scratch=$(mktemp -d)
trap 'rm -rf "$fuzz_scratch"' EXIT
(
  cd fuzz
  export RUSTC_BOOTSTRAP=1
  cargo fuzz build --dev -s none
  for target in $(cargo fuzz list); do
    mkdir -p "$fuzz_scratch/$target" "corpus/$target" "regressions/$target"
    cargo fuzz run --dev -s none "$target" "$fuzz_scratch/$target" "corpus/$target" "regressions/$target" -- \
      -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      2>"$fuzz_scratch/$target.log" || { tail -n 40 "$fuzz_scratch/$target.log" >&2; exit 1; }
    grep -E '^stat::number_of_executed_units|^Done' "$fuzz_scratch/$target.log" | sed "s/^/$target: /" || true
  done
)
