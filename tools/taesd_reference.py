#!/usr/bin/env python3
"""An independent TAESD in numpy, for checking mmserve's ggml one.

Written from TAESD's published architecture (madebyollin/taesd: Conv2d 3x3
padding 1, ReLU, Block = conv-relu-conv-relu-conv plus skip then ReLU,
nearest 2x upsampling, stride-2 convolutions in the encoder, tanh(x/3)*3
clamp on the decoder input), reading the .safetensors file by hand.

  taesd_reference.py decode WEIGHTS IN OUT C H W   # IN: f32 latent CxHxW; OUT: f32 3x8Hx8W
  taesd_reference.py encode WEIGHTS IN OUT C H W   # IN: f32 image 3xHxW; OUT: f32 latent
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_numpy import read_safetensors  # noqa: E402


def load(path):
    return {name: values.astype(np.float64) for name, values in read_safetensors(path).items()}


def conv(x, w, b=None, stride=1):
    """x: C x H x W, w: O x C x k x k (padding k//2), as torch.nn.Conv2d."""
    k = w.shape[2]
    pad = k // 2
    c, h, width = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    out_h = (h + 2 * pad - k) // stride + 1
    out_w = (width + 2 * pad - k) // stride + 1
    out = np.zeros((w.shape[0], out_h, out_w))
    for dy in range(k):
        for dx in range(k):
            patch = padded[:, dy:dy + stride * out_h:stride, dx:dx + stride * out_w:stride]
            out += np.einsum("oc,chw->ohw", w[:, :, dy, dx], patch)
    if b is not None:
        out += b[:, None, None]
    return out


def relu(x):
    return np.maximum(x, 0)


def block(t, x, prefix):
    h = relu(conv(x, t[f"{prefix}.conv.0.weight"], t[f"{prefix}.conv.0.bias"]))
    h = relu(conv(h, t[f"{prefix}.conv.2.weight"], t[f"{prefix}.conv.2.bias"]))
    h = conv(h, t[f"{prefix}.conv.4.weight"], t[f"{prefix}.conv.4.bias"])
    skip = conv(x, t[f"{prefix}.skip.weight"]) if f"{prefix}.skip.weight" in t else x
    return relu(h + skip)


def decode(t, z):
    x = np.tanh(z / 3) * 3
    x = relu(conv(x, t["1.weight"], t["1.bias"]))
    index = 3
    for _ in range(3):
        for _ in range(3):
            x = block(t, x, str(index))
            index += 1
        x = x.repeat(2, axis=1).repeat(2, axis=2)  # nearest 2x
        index += 1
        x = conv(x, t[f"{index}.weight"], t.get(f"{index}.bias"))
        index += 1
    x = block(t, x, "18")
    return conv(x, t["19.weight"], t["19.bias"])


def encode(t, image):
    x = conv(image, t["0.weight"], t["0.bias"])
    x = block(t, x, "1")
    index = 2
    for _ in range(3):
        x = conv(x, t[f"{index}.weight"], t.get(f"{index}.bias"), stride=2)
        index += 1
        for _ in range(3):
            x = block(t, x, str(index))
            index += 1
    return conv(x, t["14.weight"], t["14.bias"])


def main():
    mode, weights, source, dest, c, h, w = sys.argv[1:8]
    x = np.fromfile(source, dtype=np.float32).reshape(int(c), int(h), int(w)).astype(np.float64)
    tensors = load(weights)
    y = decode(tensors, x) if mode == "decode" else encode(tensors, x)
    y.astype(np.float32).tofile(dest)


if __name__ == "__main__":
    main()
