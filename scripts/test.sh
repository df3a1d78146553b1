#!/usr/bin/env bash
# Runs the already-built tests (`swift test --skip-build ARGS…`) with TMPDIR pointed at a fresh directory that
# is removed afterwards: the tests write models, shards and probe directories under the temporary directory,
# and without this every run left its files in /tmp (tens of GB over a few hundred runs).
#
# A run counts as passed only when swift-testing printed its closing "Test run with N tests … passed" line:
# several times on this machine `swift test` exited 0 after the test process had ended early (its output stopped
# mid-run, no summary), which would have let CI pass a run that never finished.
set -uo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d "${TMPDIR:-/tmp}/llamaprobe-test.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
log="$tmp/swift-test.log"
mkdir -p "$tmp/t"
# Up to two attempts, and only for a run cut short (never for a failure): said on stderr when it happens.
for attempt in 1 2; do
  TMPDIR="$tmp/t" ${SWIFT:-swift} test --skip-build "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then exit "$rc"; fi
  grep -Eq "Test run with [0-9]+ tests? .*passed" "$log" && exit 0
  echo "scripts/test.sh: swift test exited 0 but the test run did not finish (no closing 'Test run with … passed' line): the test process ended early (attempt $attempt of 2)" >&2
done
exit 1
