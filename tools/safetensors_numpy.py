"""Reads a .safetensors file into numpy float32 arrays (F32, F16 and BF16),
for the reference implementations in this folder (Debian python3-numpy only)."""
import json
import struct

import numpy as np


def read_safetensors(path, skip_unsupported=False):
    """{name: float32 array in the file's shape}. Other dtypes (position_ids and
    the like) are skipped when skip_unsupported, else refused."""
    with open(path, "rb") as f:
        data = f.read()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    base = 8 + size
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = data[base + begin:base + end]
        if entry["dtype"] == "F32":
            values = np.frombuffer(raw, dtype="<f4")
        elif entry["dtype"] == "F16":
            values = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif entry["dtype"] == "BF16":
            values = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif skip_unsupported:
            continue
        else:
            raise SystemExit(f"{name}: unsupported dtype {entry['dtype']}")
        tensors[name] = values.astype(np.float32).reshape(entry["shape"])
    return tensors
