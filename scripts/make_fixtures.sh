#!/bin/bash
# Regenerates every reference fixture under Tests/fixtures with Hugging Face transformers / PyTorch /
# scikit-learn (scripts/setup.sh --fixtures installs them), in dependency order: the later scripts read
# the fixture models the first ones write. Each script says what it writes; the outputs are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts=(
  Tests/fixtures/make_fixtures.py                      # LLaMA fixture models, tokenizer, residuals
  Tests/fixtures/make_arch_fixtures.py                 # Llama-3 rope, Qwen2, Mistral models + residuals
  Tests/fixtures/make_window_fixtures.py               # sliding-window attention (reads the arch models)
  Tests/fixtures/make_bf16_fixtures.py                 # bf16 checkpoints of the arch models
  Tests/fixtures/make_bpe_fixtures.py                  # tokenizer.json (byte-level BPE) ids
  Tests/fixtures/hooks/make_hook_fixtures.py           # resid_pre/attn_out/resid_mid/mlp_out/resid_post
  Tests/fixtures/hooks/make_readout_fixtures.py        # hooks × positions through extract
  Tests/fixtures/generation/make_generation_fixtures.py
  Tests/fixtures/gguf/make_gguf_fixtures.py
  Tests/fixtures/probe/make_probe_fixtures.py          # the PyTorch reference recipe
  Tests/fixtures/probe/make_cv_fixtures.py             # scikit-learn StratifiedKFold
  Tests/fixtures/probe/make_logistic_fixtures.py       # scikit-learn LogisticRegression
)
for s in "${scripts[@]}"; do
  echo "== $s"
  python3 "$s"
done
# Scripts added since (not in the list above) still run, after the listed ones.
for s in $(find Tests/fixtures -name 'make_*.py' | sort); do
  case " ${scripts[*]} " in *" $s "*) ;; *) echo "== $s"; python3 "$s" ;; esac
done
