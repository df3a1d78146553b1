#!/usr/bin/env bash
# Idempotent, non-interactive setup for a fresh Debian machine.
#   scripts/setup.sh             system libraries (+ the small Python packages tests use)
#   scripts/setup.sh --fixtures  also torch + transformers, to regenerate Tests/fixtures
set -euo pipefail

APT_PACKAGES=(libopenblas-dev libsentencepiece-dev libzstd-dev pkg-config)
PIP_TEST_PACKAGES=(numpy zstandard)   # the shard-reading test reads shards from Python
PIP_FIXTURE_PACKAGES=(torch "transformers==4.57.*" safetensors sentencepiece numpy scikit-learn)

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo_if_needed apt-get update -qq
  sudo_if_needed apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

pip_install() {
  local need=()
  for spec in "$@"; do
    name=${spec%%[=<>]*}
    python3 -c "import importlib.util,sys; m={'scikit-learn':'sklearn'}.get('$name','$name'); sys.exit(0 if importlib.util.find_spec(m) else 1)" 2>/dev/null || need+=("$spec")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: pip installing ${need[*]}"
    python3 -m pip install -q "${need[@]}"
  fi
}

if command -v python3 >/dev/null; then
  if [ ${#PIP_TEST_PACKAGES[@]} -gt 0 ]; then pip_install "${PIP_TEST_PACKAGES[@]}"; fi
  if [ "${1:-}" = "--fixtures" ]; then pip_install "${PIP_FIXTURE_PACKAGES[@]}"; fi
fi
echo "setup: ok"
