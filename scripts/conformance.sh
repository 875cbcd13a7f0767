#!/usr/bin/env bash
# Runs the OCI distribution-spec conformance suite (v1.1: pull, push, content
# discovery, content management) against a fresh Cairn and prints a summary.
#
# The suite itself is not part of this repository. Give it one of two ways:
#   CONFORMANCE_BIN=/path/to/conformance.test   a test binary already built from
#                                               the suite's conformance/ directory
#                                               (`go test -c` there), or
#   nothing, with a Go toolchain and network:   the script clones the suite at
#                                               $CONFORMANCE_REF and builds it.
#
# What it does: starts `cairn serve` on a free loopback port from a temporary
# directory (fresh SQLite + blobs under ./data there, so every run starts empty),
# waits for /v2/, runs the suite with the OCI_* variables below, stops Cairn and
# prints pass/fail/skip counts per workflow. Exit status: 0 when nothing failed.
#
# Environment (all optional):
#   CONFORMANCE_BIN       prebuilt suite binary (see above)
#   CONFORMANCE_REPO      git URL of the distribution-spec repository
#   CONFORMANCE_REF       tag to build when CONFORMANCE_BIN is unset (v1.1.1)
#   CAIRN_BIN             cairn binary (default target/release/cairn, built if missing)
#   CONFORMANCE_OUT       directory for junit.xml, report.html, cairn.log and the
#                         suite output (default: a new temporary directory, kept)
#   CONFORMANCE_MUTABLE   see below (default 1)
#   OCI_NAMESPACE, OCI_CROSSMOUNT_NAMESPACE, OCI_DEBUG, OCI_HIDE_SKIPPED_WORKFLOWS,
#   OCI_DELETE_MANIFEST_BEFORE_BLOBS, OCI_AUTOMATIC_CROSSMOUNT   passed to the suite
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '==> %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------
# TAG MUTABILITY FOR THE CONFORMANCE NAMESPACE
#
# The suite re-pushes tags to other digests and deletes tags. Cairn's
# immutability policy (see [immutability] in config/cairn.example.toml) makes
# every tag immutable unless a rule says otherwise, so by default this script
# adds a rule making the conformance repositories mutable. Set
# CONFORMANCE_MUTABLE=0 to run against the default (all tags immutable) policy
# instead, e.g. to see which parts of the suite the policy refuses.
CONFORMANCE_MUTABLE=${CONFORMANCE_MUTABLE:-1}
# The repositories the rule covers (globs, as in [[immutability.rules]]).
CONFORMANCE_MUTABLE_REPOSITORIES=${CONFORMANCE_MUTABLE_REPOSITORIES:-'"conformance/**"'}
# ---------------------------------------------------------------------------

CONFORMANCE_REPO=${CONFORMANCE_REPO:-https://github.com/opencontainers/distribution-spec.git}
CONFORMANCE_REF=${CONFORMANCE_REF:-v1.1.1}

work=$(mktemp -d "${TMPDIR:-/tmp}/cairn-conformance.XXXXXX")
out=${CONFORMANCE_OUT:-$work/report}
mkdir -p "$out"
out=$(cd "$out" && pwd)

cairn_pid=""
cleanup() {
  if [ -n "$cairn_pid" ] && kill -0 "$cairn_pid" 2>/dev/null; then
    kill -TERM "$cairn_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$cairn_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$cairn_pid" 2>/dev/null || true
  fi
  rm -rf "$work/run" "$work/src" "$work/conformance.test"
  rmdir "$work" 2>/dev/null || true
}
trap cleanup EXIT

# ---- the suite --------------------------------------------------------------
if [ -z "${CONFORMANCE_BIN:-}" ]; then
  command -v go >/dev/null || { log "CONFORMANCE_BIN is unset and no Go toolchain is installed"; exit 2; }
  log "building the conformance suite at $CONFORMANCE_REF"
  git clone --quiet --depth 1 --branch "$CONFORMANCE_REF" "$CONFORMANCE_REPO" "$work/src"
  (cd "$work/src/conformance" && go test -c -o "$work/conformance.test")
  CONFORMANCE_BIN=$work/conformance.test
fi
CONFORMANCE_BIN=$(cd "$(dirname "$CONFORMANCE_BIN")" && pwd)/$(basename "$CONFORMANCE_BIN")
[ -x "$CONFORMANCE_BIN" ] || { log "not executable: $CONFORMANCE_BIN"; exit 2; }

# ---- Cairn ------------------------------------------------------------------
CAIRN_BIN=${CAIRN_BIN:-$root/target/release/cairn}
if [ ! -x "$CAIRN_BIN" ]; then
  log "building cairn (release)"
  cargo build --release --quiet
fi
CAIRN_BIN=$(cd "$(dirname "$CAIRN_BIN")" && pwd)/$(basename "$CAIRN_BIN")

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
mkdir -p "$work/run"
{
  printf 'listen = "127.0.0.1:%s"\n\n' "$port"
  printf '[database]\nurl = "sqlite://./data/cairn.db"\n\n'
  printf '[storage]\nurl = "file://./data/blobs"\n\n'
  if [ "$CONFORMANCE_MUTABLE" = 1 ]; then
    printf '[[immutability.rules]]\nname = "conformance"\nrepositories = [%s]\nmutability = "mutable"\n' \
      "$CONFORMANCE_MUTABLE_REPOSITORIES"
  fi
} >"$work/run/cairn.toml"

log "starting cairn on 127.0.0.1:$port (data in $work/run/data)"
# CAIRN_* variables of the caller's environment would override the file; drop them.
(cd "$work/run" && exec env -u CAIRN_LISTEN -u CAIRN_CONFIG -u CAIRN_DATABASE__URL -u CAIRN_STORAGE__URL "$CAIRN_BIN" serve --config "$work/run/cairn.toml") \
  >"$out/cairn.log" 2>&1 &
cairn_pid=$!
for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null; then break; fi
  kill -0 "$cairn_pid" 2>/dev/null || { log "cairn exited:"; cat "$out/cairn.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" || { log "cairn did not answer /v2/"; exit 1; }

# ---- run --------------------------------------------------------------------
export OCI_ROOT_URL="http://127.0.0.1:$port"
export OCI_NAMESPACE=${OCI_NAMESPACE:-conformance/test}
export OCI_CROSSMOUNT_NAMESPACE=${OCI_CROSSMOUNT_NAMESPACE:-conformance/other}
export OCI_TEST_PULL=1 OCI_TEST_PUSH=1 OCI_TEST_CONTENT_DISCOVERY=1 OCI_TEST_CONTENT_MANAGEMENT=1
export OCI_HIDE_SKIPPED_WORKFLOWS=${OCI_HIDE_SKIPPED_WORKFLOWS:-0}
export OCI_DEBUG=${OCI_DEBUG:-1}
export OCI_DELETE_MANIFEST_BEFORE_BLOBS=${OCI_DELETE_MANIFEST_BEFORE_BLOBS:-1}
export OCI_REPORT_DIR="$out"
export ACK_GINKGO_DEPRECATIONS=${ACK_GINKGO_DEPRECATIONS:-1.16.5}

log "running $CONFORMANCE_BIN against $OCI_ROOT_URL (output in $out)"
set +e
(cd "$out" && "$CONFORMANCE_BIN" -test.v) >"$out/suite.log" 2>&1
status=$?
set -e

# ---- summary ----------------------------------------------------------------
python3 - "$out/junit.xml" <<'PY' || true
import sys, xml.etree.ElementTree as ET
try:
    tree = ET.parse(sys.argv[1])
except Exception as e:
    print("no junit report (%s); see suite.log" % e)
    sys.exit(0)
order = ["Pull", "Push", "Content Discovery", "Content Management"]
counts = {w: [0, 0, 0] for w in order}
failed = []
for tc in tree.iter("testcase"):
    name = tc.get("name", "")
    if "[BeforeSuite]" in name or "[AfterSuite]" in name or "[ReportAfterSuite]" in name:
        continue
    wf = next((w for w in sorted(order, key=len, reverse=True) if " %s " % w in " %s " % name), "other")
    counts.setdefault(wf, [0, 0, 0])
    if tc.find("failure") is not None or tc.find("error") is not None:
        counts[wf][1] += 1
        failed.append(name)
    elif tc.find("skipped") is not None:
        counts[wf][2] += 1
    else:
        counts[wf][0] += 1
print("\nOCI distribution-spec conformance")
for w, (p, f, s) in counts.items():
    if p or f or s:
        print("  %-20s %3d passed, %3d failed, %3d skipped" % (w + ":", p, f, s))
for n in failed:
    print("  FAILED: " + n)
t = [sum(c[i] for c in counts.values()) for i in range(3)]
print("conformance: %d passed, %d failed, %d skipped" % tuple(t))
PY
log "suite exit status $status; full output: $out/suite.log, server log: $out/cairn.log"
exit "$status"
