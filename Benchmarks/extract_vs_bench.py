#!/usr/bin/env python3
"""Extraction throughput against the pure forward throughput of `llamaprobe bench`, same model, same prompt
length, same threads, interleaved rounds; plus the shard compression ratio of each dtype.

    python3 Benchmarks/extract_vs_bench.py --model MODEL.gguf [--tokens 128] [--rows 64] [--threads 2] [--rounds 3]

Writes a CSV whose every row renders (llama2-chat template + readout suffix) to exactly --tokens tokens, runs
`llamaprobe extract` on it and `llamaprobe bench --positions last --tokens N` (extraction computes the last
layer only for the last token too), and prints tokens/s of both and their ratio.
"""
import argparse, json, os, re, shutil, statistics, subprocess, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LP = os.path.join(ROOT, ".build", "release", "llamaprobe")
LABELS = ["very_happy", "happy", "slightly_positive", "neutral", "slightly_negative", "sad", "very_sad"]


def ids(model, text):
    return subprocess.run([LP, "tokenize", "--model", model, "--ids", text], capture_output=True, text=True, check=True).stdout.split()


def exact_message(model, tokens, seed):
    words = open(os.path.join(ROOT, "data", "tokenizer", "corpus.txt")).read().split()
    start = (seed * 97) % (len(words) - 4000)
    lo, hi = 1, 3000
    while lo < hi:   # the longest prefix of words that fits
        mid = (lo + hi + 1) // 2
        if len(ids(model, " ".join(words[start:start + mid]))) <= tokens: lo = mid
        else: hi = mid - 1
    msg = " ".join(words[start:start + lo])
    while len(ids(model, msg)) < tokens:
        msg += " a"
    return msg if len(ids(model, msg)) == tokens else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="llamaprobe-extract-bench-")
    msgs, seed = [], 0
    while len(msgs) < a.rows:
        m = exact_message(a.model, a.tokens, seed); seed += 1
        if m: msgs.append(m)
    with open(os.path.join(work, "d.csv"), "w") as f:
        f.write("message,label\n")
        for i, m in enumerate(msgs):
            f.write('"%s",%s\n' % (m.replace('"', '""'), LABELS[i % 7]))
    ext, ben = [], []
    for _ in range(a.rounds):
        out = os.path.join(work, "shards")
        shutil.rmtree(out, ignore_errors=True)
        r = subprocess.run([LP, "extract", "--model", a.model, "--data", os.path.join(work, "d.csv"), "--out", out,
                            "--threads", str(a.threads)], capture_output=True, text=True, check=True)
        ext.append(float(re.search(r"= ([0-9.]+) tokens/s", r.stderr).group(1)))
        b = json.loads(subprocess.run([LP, "bench", "--model", a.model, "--tokens", str(a.tokens), "--threads", str(a.threads),
                                       "--positions", "last", "--repeats", "5", "--json"], capture_output=True, text=True, check=True).stdout)
        ben.append(b["model_tokens_per_second"])
    e, b = statistics.median(ext), statistics.median(ben)
    print(f"{a.model}: {a.rows} rows of {a.tokens} tokens, {a.threads} threads, {a.rounds} rounds (medians)")
    print(f"  extract: {e:.1f} tokens/s   bench (pure forward): {b:.1f} tokens/s   extract/bench = {e / b:.3f}")
    print(f"  rounds: extract {ext}, bench {ben}")
    for dt in ["f32", "f16", "bf16"]:
        out = os.path.join(work, "shards-" + dt)
        subprocess.run([LP, "extract", "--model", a.model, "--data", os.path.join(work, "d.csv"), "--out", out,
                        "--threads", str(a.threads), "--dtype", dt], capture_output=True, check=True)
        info = subprocess.run([LP, "shards", "info", out], capture_output=True, text=True, check=True).stdout
        print(f"  {dt}: " + [l for l in info.splitlines() if l.startswith("size:")][0])
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
