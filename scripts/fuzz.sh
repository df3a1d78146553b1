#!/usr/bin/env bash
# Fuzz the file readers with libFuzzer + AddressSanitizer (docs/reliability.md).
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]    default: 60 s, every target
#   FUZZ_JOBS=N runs N targets at a time (default 1).
# Builds `llamaprobe-fuzz` in .build-fuzz, seeds .fuzz/corpus/TARGET with the valid files the project writes
# (and what earlier runs kept), runs each target, and copies every crash, timeout or out-of-memory input to
# .fuzz/findings/TARGET/. A finding becomes a regression test by copying it to Fuzz/regressions/TARGET/.
# Reproduce one: LLAMAPROBE_FUZZ_TARGET=TARGET .build-fuzz/debug/llamaprobe-fuzz FILE
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
# (ld.gold warns about every ASan symbol it cannot export: harmless, filtered.)
build() {
  swift build --sanitize fuzzer --sanitize address --scratch-path .build-fuzz --product llamaprobe-fuzz 2>&1 \
    | { grep -v "Cannot export local symbol" || true; }
  [ "${PIPESTATUS[0]}" -eq 0 ]
}
build
bin=.build-fuzz/debug/llamaprobe-fuzz
# At run time: no leak checking (it needs ptrace, unavailable in some sandboxes, where it hangs) and no Swift
# backtracer (it forks a helper that outlives the crash); a run longer than 10 s or above 2 GiB is a finding.
# (Exported after the build: builds have left the readers uninstrumented, see the counter check below.)
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 SWIFT_BACKTRACE=enable=no
# An incremental build has been seen to leave the readers uninstrumented (a fuzzer without coverage feedback
# only mutates its seeds blindly): check the counters, and rebuild from scratch when they are missing.
counters() { (LLAMAPROBE_FUZZ_TARGET=split "$bin" -runs=1 2>&1 || true) | sed -n 's/.*(\([0-9]*\) inline 8-bit counters).*/\1/p' | head -1; }
if [ "$(counters)" -lt 5000 ] 2>/dev/null || [ -z "$(counters)" ]; then
  echo "fuzz: the driver has only $(counters) coverage counters: rebuilding .build-fuzz from scratch"
  rm -rf .build-fuzz
  (unset ASAN_OPTIONS SWIFT_BACKTRACE; build)
  [ "$(counters)" -ge 5000 ] || { echo "fuzz: the readers are not instrumented for coverage" >&2; exit 1; }
fi
echo "fuzz: $(counters) coverage counters"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  # The target names, from the driver's own list.
  targets=($( (LLAMAPROBE_FUZZ_TARGET=? "$bin" 2>&1 || true) | sed -n "s/.*one of: //p" | tr -d ,))
fi
mkdir -p .fuzz
run_target() {
  local t=$1 seconds=$2 bin=$3
  local corpus=.fuzz/corpus/$t findings=.fuzz/findings/$t
  mkdir -p "$corpus" "$findings"
  LLAMAPROBE_FUZZ_TARGET=$t LLAMAPROBE_FUZZ_SEEDS="$corpus" "$bin" -runs=0 >/dev/null 2>&1 || true
  for f in Fuzz/regressions/$t/*; do if [ -f "$f" ]; then cp "$f" "$corpus/"; fi; done
  LLAMAPROBE_FUZZ_TARGET=$t "$bin" "$corpus" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -artifact_prefix="$findings/" -print_final_stats=1 > ".fuzz/$t.log" 2>&1 || true
  local execs cov n
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' ".fuzz/$t.log" | tail -1)
  cov=$(grep -oE "cov: [0-9]+" ".fuzz/$t.log" | tail -1)
  n=$(find "$findings" -type f | wc -l)
  echo "fuzz: $t: ${seconds}s, ${execs:-?} executions, ${cov:-cov: ?} edges, $n finding(s) in $findings"
}
export -f run_target
printf '%s\n' "${targets[@]}" | xargs -P "${FUZZ_JOBS:-1}" -I{} bash -c 'run_target "$@"' _ {} "$seconds" "$bin"
