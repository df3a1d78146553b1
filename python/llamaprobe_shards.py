"""Read llamaprobe shard directories (docs/shards.md) with numpy and zstandard.

    from llamaprobe_shards import read_directory
    data, meta = read_directory("shards/")      # every worker's shards, rows in input order
    data["resid_post"].shape                    # (rows, layers, d_model)
    data["label"], data["row"], meta["labels"]  # class ids, input row numbers, class names

Only the shards the manifests list are read (their sizes and SHA-256 are checked); BF16 becomes float32,
F16 stays float16 (pass dtype=np.float32 to convert).
"""
import hashlib
import json
import os
import re

import numpy as np
import zstandard

_TYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
_SHARD_NAME = re.compile(r"shard-(\d{5})-(\d{5})\.safetensors\.zst")


def _array(body, entry):
    begin, end = entry["data_offsets"]
    raw = body[begin:end]
    if entry["dtype"] == "BF16":
        return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])
    return np.frombuffer(raw, _TYPES[entry["dtype"]]).reshape(entry["shape"])


def read_shard(path, raw=None):
    """One shard: (arrays, metadata). `arrays` has resid_post [n, layers, d_model] (or, extracted with --hooks,
    one array per hook point named by the hook), label, row, n_tokens."""
    if raw is None:
        with open(path, "rb") as f:
            raw = f.read()
    content = zstandard.ZstdDecompressor().decompress(raw)
    n = int.from_bytes(content[:8], "little")
    header = json.loads(content[8:8 + n])
    body = memoryview(content)[8 + n:]
    arrays = {k: _array(body, v) for k, v in header.items() if k != "__metadata__"}
    meta = dict(header.get("__metadata__", {}))
    for key in ("labels", "layers", "readout"):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return arrays, meta


def read_directory(directory, dtype=None, verify=True):
    """Every shard every manifest lists, concatenated and sorted by input row.

    Returns (data, meta): data has resid_post [rows, layers, d_model] (one array per hook point the readout's
    "hooks" lists, resid_post alone by default), label, row, n_tokens; meta is the shard
    metadata (labels, layers, model fingerprint, readout) plus "manifests" (the parsed manifest files).
    Raises ValueError for a manifest entry that is not a plain shard name, a missing, resized or corrupt shard
    (verify=True checks each SHA-256), workers that disagree, or a row present twice.
    """
    names = sorted(f for f in os.listdir(directory) if re.fullmatch(r"manifest-\d{5}\.json", f))
    if not names:
        raise ValueError(f"{directory}: no manifest-*.json: not a shard directory")
    manifests = []
    for name in names:
        with open(os.path.join(directory, name)) as f:
            manifests.append(json.load(f))
    first = manifests[0]["metadata"]
    parts = []
    for m in manifests:
        if m["metadata"] != first:
            raise ValueError(f"{directory}: worker {m['worker']} was written with another model, readout or layout")
        for s in m["shards"]:
            if not _SHARD_NAME.fullmatch(s["file"]):
                raise ValueError(f"{directory}: manifest entry {s['file']!r} is not a plain shard file name")
            path = os.path.join(directory, s["file"])
            with open(path, "rb") as f:
                raw = f.read()
            if len(raw) != s["bytes"] or (verify and hashlib.sha256(raw).hexdigest() != s["sha256"]):
                raise ValueError(f"{path}: size or checksum differs from the manifest (corrupt or modified)")
            arrays, _ = read_shard(path, raw)
            parts.append(arrays)
    readout = first.get("readout")
    readout = json.loads(readout) if isinstance(readout, str) else readout
    hooks = (readout or {}).get("hooks") or ["resid_post"]
    data = {k: np.concatenate([p[k] for p in parts]) for k in (*hooks, "label", "row", "n_tokens")}
    order = np.argsort(data["row"], kind="stable")
    data = {k: v[order] for k, v in data.items()}
    if len(data["row"]) > 1 and (np.diff(data["row"]) == 0).any():
        raise ValueError(f"{directory}: a row appears in two shards")
    if dtype is not None:
        for h in hooks:
            data[h] = data[h].astype(dtype)
    meta = {k: json.loads(v) if k in ("labels", "layers", "readout") and isinstance(v, str) else v for k, v in first.items()}
    meta["manifests"] = manifests
    return data, meta
