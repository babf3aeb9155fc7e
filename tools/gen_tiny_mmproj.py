#!/usr/bin/env python3
"""Writes a tiny libmtmd vision projector (CLIP ViT + Gemma 3 style
projection) with deterministic random weights, for plumbing tests of the
vision service. Its output size matches a chosen text model, so
../shared/models/stories260K.gguf (n_embd 64), a real trained text model,
can take images.

Uses llama.cpp's gguf-py (PYTHONPATH=third_party/llama.cpp/gguf-py) and
Debian's python3-numpy. Same arguments, same bytes.

    gen_tiny_mmproj.py OUT.gguf [--text-embd 64] [--seed 1234]
        [--image-size 32 --patch-size 2 --width 128 --blocks 4]

The benchmark uses a larger LLaVA-type encoder (--projector mlp
--image-size 224 --patch-size 14 --width 512 --blocks 8) so that encoding
an image costs what it costs in real models relative to the text side.
"""
import argparse
import sys

import numpy as np
import gguf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output")
    parser.add_argument("--text-embd", type=int, default=64, help="n_embd of the text model it feeds")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--projector", choices=["gemma3", "mlp"], default="gemma3",
                        help="gemma3 (pooled, non-causal image attention) or mlp (LLaVA 1.5)")
    args = parser.parse_args()

    image_size, patch_size = args.image_size, args.patch_size
    width, blocks, heads = args.width, args.blocks, 4
    ffn = 4 * width
    n_patches = (image_size // patch_size) ** 2
    rng = np.random.RandomState(args.seed)

    def weight(*shape, scale=0.02):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(args.output, "clip")
    writer.add_string("general.type", "clip-vision")
    writer.add_string("general.name", "mmserve tiny random projector")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", args.projector)
    writer.add_uint32("clip.vision.image_size", image_size)
    writer.add_uint32("clip.vision.patch_size", patch_size)
    writer.add_uint32("clip.vision.embedding_length", width)
    writer.add_uint32("clip.vision.feed_forward_length", ffn)
    writer.add_uint32("clip.vision.block_count", blocks)
    writer.add_uint32("clip.vision.attention.head_count", heads)
    writer.add_uint32("clip.vision.projection_dim", args.text_embd)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.projector.scale_factor", 1)

    # numpy shapes are ggml's ne reversed.
    writer.add_tensor("v.patch_embd.weight", weight(width, 3, patch_size, patch_size))
    writer.add_tensor("v.patch_embd.bias", weight(width))
    writer.add_tensor("v.position_embd.weight", weight(n_patches, width))
    for b in range(blocks):
        p = f"v.blk.{b}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(p + name + ".weight", weight(width, width))
            writer.add_tensor(p + name + ".bias", weight(width))
        writer.add_tensor(p + "ln1.weight", np.ones(width, np.float32))
        writer.add_tensor(p + "ln1.bias", np.zeros(width, np.float32))
        writer.add_tensor(p + "ln2.weight", np.ones(width, np.float32))
        writer.add_tensor(p + "ln2.bias", np.zeros(width, np.float32))
        writer.add_tensor(p + "ffn_up.weight", weight(ffn, width))
        writer.add_tensor(p + "ffn_up.bias", weight(ffn))
        writer.add_tensor(p + "ffn_down.weight", weight(width, ffn))
        writer.add_tensor(p + "ffn_down.bias", weight(width))
    writer.add_tensor("v.post_ln.weight", np.ones(width, np.float32))
    writer.add_tensor("v.post_ln.bias", np.zeros(width, np.float32))
    if args.projector == "gemma3":
        writer.add_tensor("mm.soft_emb_norm.weight", np.ones(width, np.float32))
        # Large enough that the image visibly steers the text model.
        writer.add_tensor("mm.input_projection.weight", weight(args.text_embd, width, scale=0.5).T.copy())
    else:  # LLaVA's two-layer MLP: width -> hidden -> text_embd
        hidden = 4 * args.text_embd
        writer.add_tensor("mm.0.weight", weight(hidden, width, scale=0.1))
        writer.add_tensor("mm.0.bias", weight(hidden))
        writer.add_tensor("mm.2.weight", weight(args.text_embd, hidden, scale=0.5))
        writer.add_tensor("mm.2.bias", weight(args.text_embd))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
