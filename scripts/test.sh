#!/usr/bin/env bash
# Runs the already-built tests (`swift test --skip-build ARGS…`) with TMPDIR pointed at a fresh directory that
# is removed afterwards: the tests write models, shards and probe directories under the temporary directory,
# and without this every run left its files in /tmp (tens of GB over a few hundred runs).
set -uo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d "${TMPDIR:-/tmp}/llamaprobe-test.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
TMPDIR=$tmp ${SWIFT:-swift} test --skip-build "$@"
