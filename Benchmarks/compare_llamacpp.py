#!/usr/bin/env python3
"""Prompt processing per layer: llamaprobe against llama.cpp's llama-bench, on the same GGUF files, same
threads, runs interleaved (A B A B ...) so both see the same machine state.

    python3 Benchmarks/compare_llamacpp.py --llama-bench /path/to/llama-bench [--preset llama-2-13b]
        [--tokens 128] [--threads 1 2] [--rounds 3] [--work /tmp/llamaprobe-vs-llamacpp] [--kernel auto ...]

It writes two GGUF files with llamaprobe itself (`synth --dtype bf16` then `quantize`, Q8_0): the preset's
shapes with 1 and with 4 layers. Both programs stop the last layer at the last token after attention
(llama-bench asks for the last token's output; `llamaprobe bench --positions last`), so the per-layer time
is (t(4 layers) - t(1 layer)) / 3 for both, from whole-model tokens/s. llama.cpp is not a dependency of the
project: build llama-bench yourself (docs/performance.md says how).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LP = os.path.join(ROOT, ".build", "release", "llamaprobe")


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    return r.stdout


def make_gguf(work, preset, layers):
    path = os.path.join(work, f"{preset}-L{layers}.gguf")
    if not os.path.exists(path):
        hf = os.path.join(work, f"{preset}-L{layers}-hf")
        run([LP, "synth", "--preset", preset, "--layers", str(layers), "--dtype", "bf16", "--out", hf])
        run([LP, "quantize", "--model", hf, "--out", path])
    return path


LLAMA_BENCH_EXTRA = []


def llama_cpp_tps(bench, model, tokens, threads, reps):
    out = json.loads(run([bench, "-m", model, "-p", str(tokens), "-n", "0", "-t", str(threads), "-r", str(reps), "-o", "json"]
                         + LLAMA_BENCH_EXTRA))
    return out[0]["avg_ts"]


def ours_tps(model, tokens, threads, reps, kernel):
    out = json.loads(run([LP, "bench", "--model", model, "--tokens", str(tokens), "--threads", str(threads),
                          "--repeats", str(reps), "--positions", "last", "--kernel", kernel, "--json"]))
    return out["model_tokens_per_second"], out["sgemm_gflops"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--preset", default="llama-2-13b")
    ap.add_argument("--no-repack", action="store_true",
                    help="pass --repack 0 to llama-bench (its AMX repacking dies with SIGILL on hosts that do not grant AMX)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kernel", nargs="+", default=["auto"])
    ap.add_argument("--work", default="/tmp/llamaprobe-vs-llamacpp")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    if a.no_repack:
        LLAMA_BENCH_EXTRA.extend(["--repack", "0"])
    l1, l4 = make_gguf(a.work, a.preset, 1), make_gguf(a.work, a.preset, 4)
    flops = None
    for t in a.threads:
        per = {"llama.cpp": []}
        per.update({k: [] for k in a.kernel})
        sgemm = []
        for _ in range(a.rounds):
            t1 = a.tokens / llama_cpp_tps(a.llama_bench, l1, a.tokens, t, a.reps)
            t4 = a.tokens / llama_cpp_tps(a.llama_bench, l4, a.tokens, t, a.reps)
            per["llama.cpp"].append((t4 - t1) / 3)
            for k in a.kernel:
                (s1, g), (s4, _) = ours_tps(l1, a.tokens, t, a.reps, k), ours_tps(l4, a.tokens, t, a.reps, k)
                per[k].append((a.tokens / s4 - a.tokens / s1) / 3)
                sgemm.append(g)
        base = statistics.median(per["llama.cpp"])
        print(f"{a.preset}, {a.tokens} tokens, {t} thread(s), {a.rounds} interleaved rounds (medians):")
        print(f"  OpenBLAS sgemm on the layer's projections: {statistics.median(sgemm):.1f} GFLOP/s")
        for name, xs in per.items():
            m = statistics.median(xs)
            print(f"  {name:>16}: {1000 * m:7.1f} ms per layer ({a.tokens / m:6.1f} tokens/s per layer), "
                  f"{base / m:4.2f}x llama.cpp   [rounds: {', '.join(f'{1000 * x:.0f}' for x in xs)} ms]")


if __name__ == "__main__":
    main()
