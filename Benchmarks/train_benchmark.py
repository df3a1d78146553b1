#!/usr/bin/env python3
"""`llamaprobe train` against the PyTorch reading-probe recipe, on the same synthetic data, in one run.

LLaMA-2-13B scale by default: N = 2000 rows, 40 layers, d_model 5120, 7 classes (1.6 GB of f32
activations). The data is made here (class means + noise, seeded), written to a .npy, turned into shards with
`llamaprobe shards import` (ShardWriter), then:

  1. `llamaprobe train --shards DIR --threads T` (all layers, 50 epochs) under /usr/bin/time -v;
  2. the recipe of ../shared/reference/reading-probe-training.md in PyTorch on CPU with
     torch.set_num_threads(T): for each layer a fresh Probe (Linear + Sigmoid, N(0, 0.02)), Adam
     (lr 1e-3, betas (0.9, 0.95), weight decay 0.1) and ReduceLROnPlateau(factor 0.75, patience 0); 50 epochs
     of DataLoader(batch 200, shuffle) batches, BCELoss on one-hot targets, validation every 10 epochs in
     batches of 400, torch.save of the best and final checkpoints — also under /usr/bin/time -v.
     `--variant layer-tensor` (default) gives the DataLoader a TensorDataset of the layer's own contiguous
     [N, d_model] slice, made once per layer; `--variant dict-collate` is the reference code literally
     (a Dataset returning {"resids": [layers, d_model], "label"} and `batch["resids"][:, layer, :]`, so every
     batch of every layer collates all 40 layers: ~100x slower, hours at this scale).

Both use the same split (scikit-learn's train_test_split with random_state 12345; llamaprobe computes the
identical one). Reported: wall time of training (llamaprobe: its own "trained ... in" figure; PyTorch: the
per-layer loops), whole-process wall time, peak RSS, and the ratio.

    swift build -c release
    python3 Benchmarks/train_benchmark.py --llamaprobe .build/release/llamaprobe --work /tmp/probe-bench --threads 2 --torch-threads 2,1

Needs numpy, torch and scikit-learn; about 5 GB of disk in --work (the .npy and the shards).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np


def make_data(work, n, layers, d, classes, seed):
    npy = os.path.join(work, "acts.npy")
    lab = os.path.join(work, "labels.npy")
    if os.path.exists(npy) and os.path.exists(lab):
        a = np.load(npy, mmap_mode="r")
        if a.shape == (n, layers, d):
            return npy, lab
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n).astype(np.int64)
    np.save(lab, labels)
    a = np.lib.format.open_memmap(npy + ".tmp.npy", mode="w+", dtype=np.float32, shape=(n, layers, d))
    means = rng.normal(size=(layers, classes, d)).astype(np.float32)
    for l in range(layers):
        # the class signal grows with depth, so later layers separate the classes better
        scale = 0.02 + 0.1 * l / max(1, layers - 1)
        for start in range(0, n, 500):
            stop = min(n, start + 500)
            a[start:stop, l, :] = means[l][labels[start:stop]] * scale + rng.normal(size=(stop - start, d)).astype(np.float32)
    a.flush()
    del a
    os.replace(npy + ".tmp.npy", npy)
    return npy, lab


def timed(cmd, env=None):
    """Runs cmd under /usr/bin/time -v; returns (stdout+stderr text, wall seconds, peak RSS bytes)."""
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout[-4000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stdout).group(1)) * 1024
    return p.stdout, wall, rss


# ---- the PyTorch recipe (run as a subprocess: `train_benchmark.py --reference ...`) ---------------------

def reference(args):
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
    from sklearn.model_selection import train_test_split

    torch.set_num_threads(args.threads)
    t_load = time.time()
    resids = torch.from_numpy(np.load(os.path.join(args.work, "acts.npy")))     # [N, layers, d_model] f32, in RAM
    labels = torch.from_numpy(np.load(os.path.join(args.work, "labels.npy")))
    n, layers, d = resids.shape
    classes = int(labels.max()) + 1
    t_load = time.time() - t_load

    class CustomDataset(Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return {"resids": resids[i], "label": labels[i]}

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = nn.Sequential(nn.Linear(d, classes), nn.Sigmoid())
            nn.init.normal_(self.classifier[0].weight, 0.0, 0.02)
            nn.init.zeros_(self.classifier[0].bias)

        def forward(self, x):
            return (self.classifier(x),)

        def configure_optimizers(self):
            decay = [self.classifier[0].weight, self.classifier[0].bias]
            return torch.optim.Adam([{"params": decay, "weight_decay": 0.1}], lr=1e-3, betas=(0.9, 0.95))

    train_idx, val_idx = train_test_split(range(n), test_size=0.2, stratify=labels.numpy(), random_state=12345)

    def loaders(layer):
        """(train loader, test loader, batch -> (resid, target)) for one layer."""
        if args.variant == "dict-collate":
            ds = CustomDataset()
            train = DataLoader(Subset(ds, train_idx), batch_size=200, shuffle=True, num_workers=0)
            test = DataLoader(Subset(ds, val_idx), batch_size=400, shuffle=False, num_workers=0)
            return train, test, lambda b: (b["resids"][:, layer, :], b["label"])
        x = resids[:, layer, :].contiguous()
        train = DataLoader(TensorDataset(x[train_idx], labels[train_idx]), batch_size=200, shuffle=True, num_workers=0)
        test = DataLoader(TensorDataset(x[val_idx], labels[val_idx]), batch_size=400, shuffle=False, num_workers=0)
        return train, test, lambda b: (b[0], b[1])

    out = os.path.join(args.work, "reference_checkpoints")
    os.makedirs(out, exist_ok=True)

    def one_hot(t):
        o = torch.zeros(t.shape[0], classes)
        o.scatter_(1, t.unsqueeze(1), 1)
        return o

    t0 = time.time()
    best_by_layer = []
    for layer in range(layers):
        train_loader, test_loader, unpack = loaders(layer)
        probe = Probe()
        optimizer = probe.configure_optimizers()
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.75, patience=0)
        best = 0.0
        for epoch in range(1, args.epochs + 1):
            probe.train()
            total_loss, correct, total = 0.0, 0, 0
            for batch in train_loader:
                optimizer.zero_grad()
                resid, target = unpack(batch)
                output = probe(resid)
                loss = nn.BCELoss()(output[0], one_hot(target))
                loss.backward()
                optimizer.step()
                correct += (torch.argmax(output[0], dim=1) == target).sum().item()
                total += target.size(0)
                total_loss += loss.item()
            scheduler.step(total_loss / len(train_loader))
            if epoch % 10 == 0:
                probe.eval()
                vc, vt = 0, 0
                with torch.no_grad():
                    for batch in test_loader:
                        resid, target = unpack(batch)
                        output = probe(resid)
                        vc += (torch.argmax(output[0], dim=1) == target).sum().item()
                        vt += target.size(0)
                if vc / vt > best:
                    best = vc / vt
                    torch.save(probe.state_dict(), os.path.join(out, f"probe_at_layer_{layer}.pth"))
        torch.save(probe.state_dict(), os.path.join(out, f"probe_at_layer_{layer}_final.pth"))
        best_by_layer.append(best)
        print(f"layer {layer}: best val accuracy {best:.4f} ({time.time() - t0:.1f} s)", flush=True)
    print(json.dumps({"train_seconds": time.time() - t0, "load_seconds": t_load, "best": best_by_layer, "torch": torch.__version__}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llamaprobe", default=".build/release/llamaprobe")
    ap.add_argument("--work", default="/tmp/probe-bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--d-model", type=int, default=5120)
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--dtype", default="f32", help="shard storage type for the import (f32 or f16)")
    ap.add_argument("--variant", choices=["layer-tensor", "dict-collate"], default="layer-tensor",
                    help="how the PyTorch reference feeds a layer's data (see above)")
    ap.add_argument("--torch-threads", default=None,
                    help="comma-separated torch thread counts to run the reference with (default: --threads), e.g. 2,1")
    ap.add_argument("--skip-reference", action="store_true", help="only run llamaprobe")
    ap.add_argument("--train-args", default="",
                    help="extra flags for every llamaprobe train run, e.g. '--max-memory 512M --layers 0-9'")
    ap.add_argument("--runs", default=None,
                    help="also time llamaprobe with these extra train flags (e.g. '--seeds 5 --cv 5') against the single run")
    ap.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        reference(args)
        return
    os.makedirs(args.work, exist_ok=True)
    npy, lab = make_data(args.work, args.rows, args.layers, args.d_model, args.classes, seed=5)
    shards = os.path.join(args.work, f"shards-{args.dtype}")
    if not os.path.exists(os.path.join(shards, "manifest-00000.json")):
        t0 = time.time()
        subprocess.run([args.llamaprobe, "shards", "import", "--activations", npy, "--labels", lab, "--out", shards,
                        "--dtype", args.dtype], check=True)
        print(f"import: {time.time() - t0:.1f} s")
    data_bytes = args.rows * args.layers * args.d_model * 4
    out = os.path.join(args.work, "ours")
    subprocess.run(["rm", "-rf", out])
    text, ours_wall, ours_rss = timed([args.llamaprobe, "train", "--shards", shards, "--out", out, "--threads", str(args.threads),
                                       "--epochs", str(args.epochs)] + args.train_args.split())
    m = re.search(r"trained \d+ layers in ([\d.]+) s .*loaded in ([\d.]+) s", text)
    ours_train, ours_load = float(m.group(1)), float(m.group(2))
    print(text.split("\tCommand being timed")[0].strip())
    result = {"rows": args.rows, "layers": args.layers, "d_model": args.d_model, "classes": args.classes, "epochs": args.epochs,
              "threads": args.threads, "shard_dtype": args.dtype, "f32_data_bytes": data_bytes,
              "llamaprobe": {"train_seconds": ours_train, "load_seconds": ours_load, "wall_seconds": ours_wall, "peak_rss_bytes": ours_rss}}
    if not args.skip_reference:
        torch_threads = [int(t) for t in args.torch_threads.split(",")] if args.torch_threads else [args.threads]
        result["pytorch"] = []
        for tt in torch_threads:
            text, ref_wall, ref_rss = timed([sys.executable, os.path.abspath(__file__), "--reference", "--work", args.work,
                                             "--threads", str(tt), "--epochs", str(args.epochs), "--variant", args.variant])
            ref = json.loads(text.strip().split("\n\tCommand being timed")[0].strip().split("\n")[-1])
            result["pytorch"].append({"torch_threads": tt, "train_seconds": ref["train_seconds"], "load_seconds": ref["load_seconds"],
                                      "wall_seconds": ref_wall, "peak_rss_bytes": ref_rss, "variant": args.variant, "torch": ref["torch"],
                                      "ratio_train": ref["train_seconds"] / max(ours_train, 1e-3), "ratio_wall": ref_wall / ours_wall})
    if args.runs:
        out_runs = os.path.join(args.work, "ours-runs")
        subprocess.run(["rm", "-rf", out_runs])
        text, runs_wall, runs_rss = timed([args.llamaprobe, "train", "--shards", shards, "--out", out_runs, "--threads", str(args.threads),
                                           "--epochs", str(args.epochs)] + args.train_args.split() + args.runs.split())
        m = re.search(r"trained \d+ layers in ([\d.]+) s .*loaded in ([\d.]+) s", text)
        n_runs = re.search(r"(\d+) runs \(", text)
        result["llamaprobe_runs"] = {"flags": args.runs, "runs": int(n_runs.group(1)) if n_runs else 1,
                                     "train_seconds": float(m.group(1)), "load_seconds": float(m.group(2)),
                                     "wall_seconds": runs_wall, "peak_rss_bytes": runs_rss,
                                     "ratio_train": float(m.group(1)) / max(ours_train, 1e-3), "ratio_wall": runs_wall / ours_wall}
        print(text.split("\tCommand being timed")[0].strip())
    print(json.dumps(result, indent=1))
    gib = 1 << 30
    print(f"\nllamaprobe: training {ours_train:.1f} s (+ {ours_load:.1f} s decoding shards), whole run {ours_wall:.1f} s, "
          f"peak RSS {ours_rss / gib:.2f} GiB = {ours_rss / data_bytes:.2f} x the f32 data ({data_bytes / gib:.2f} GiB)")
    if "llamaprobe_runs" in result:
        r = result["llamaprobe_runs"]
        print(f"llamaprobe {r['flags']} ({r['runs']} runs): training {r['train_seconds']:.1f} s (+ {r['load_seconds']:.1f} s decoding shards, once), "
              f"whole run {r['wall_seconds']:.1f} s, peak RSS {r['peak_rss_bytes'] / gib:.2f} GiB; "
              f"{r['ratio_train']:.1f}x the single run's training, {r['ratio_wall']:.1f}x its whole run")
    for p in result.get("pytorch", []):
        print(f"PyTorch ({p['torch_threads']} thread{'s' if p['torch_threads'] > 1 else ''}): training {p['train_seconds']:.1f} s, "
              f"whole run {p['wall_seconds']:.1f} s, peak RSS {p['peak_rss_bytes'] / gib:.2f} GiB; "
              f"ratio {p['ratio_train']:.1f}x (training), {p['ratio_wall']:.1f}x (whole runs)")

if __name__ == "__main__":
    main()
