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
# The verdict also comes from swift-testing's xUnit report, written by the test process when the run ends:
# twice the console output stopped mid-run while the process went on and exited 0 (its standard output lost,
# cause not found); the report then still says whether every test ran and passed. A process that really
# ended early writes no report.
# Up to two attempts, and only for a run cut short (never for a failure): said on stderr when it happens.
for attempt in 1 2; do
  rm -f "$tmp"/xunit*.xml
  TMPDIR="$tmp/t" ${SWIFT:-swift} test --skip-build --xunit-output "$tmp/xunit.xml" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then exit "$rc"; fi
  grep -Eq "Test run with [0-9]+ tests? .*passed" "$log" && exit 0
  report="$tmp/xunit-swift-testing.xml"
  if [ -f "$report" ] && grep -Eq '<testsuite name="TestResults" errors="0" tests="[1-9][0-9]*" failures="0"' "$report"; then
    n=$(grep -Eo '<testsuite name="TestResults" errors="0" tests="[0-9]+"' "$report" | grep -Eo '[0-9]+"$' | tr -d '"')
    echo "scripts/test.sh: the console output stopped early, but the run finished: swift-testing's report lists $n tests, 0 failures, 0 errors" >&2
    exit 0
  fi
  echo "scripts/test.sh: swift test exited 0 but the test run did not finish (no closing 'Test run with … passed' line, no complete report): the test process ended early (attempt $attempt of 2)" >&2
done
exit 1
