#!/usr/bin/env python3
"""Writes a Whisper model in whisper.cpp's ggml format with deterministic
random weights, for plumbing tests and benchmarks of the speech service.

The hyper-parameters' vocabulary size, the mel filters and the vocabulary
come from a whisper.cpp file that has them but no tensors
(../shared/models/for-tests-ggml-tiny.bin: multilingual, or
for-tests-ggml-tiny.en.bin: English-only); width and depth are chosen here.
n_audio_ctx 1500 and n_text_ctx 448 by default, so that real 30 s windows
work. Debian's python3-numpy only. Same arguments, same bytes.

    gen_tiny_whisper_model.py OUT.bin --from for-tests-ggml-tiny.bin
        [--shape small|tiny] [--state 64] [--heads 2] [--layers 3]
        [--ftype f16|f32] [--seed 0] [--audio-ctx 1500] [--text-ctx 448]

--shape small (the default) is 64 wide with 2 heads and 3 layers (not 2:
whisper.cpp takes a 2-decoder-layer model for distil-whisper and turns
timestamps off); --shape tiny writes whisper-tiny's shapes (384, 6 heads,
4 layers) for benchmarks that should cost what the real tiny model costs.
--state/--heads/--layers override the shape's.

The text is random tokens, but the decoder is shaped (decoder_structure)
so that greedy decoding is confident (no temperature fallbacks) and
transcript-like: segments of 22 tokens, 5 s long, between timestamps,
ending at the audio's end or after 30 s with <|endoftext|>.

File layout (whisper.cpp src/whisper.cpp, whisper_model_load), all
little-endian int32 unless said: magic 0x67676d6c; n_vocab, n_audio_ctx,
n_audio_state, n_audio_head, n_audio_layer, n_text_ctx, n_text_state,
n_text_head, n_text_layer, n_mels, ftype (0 f32, 1 f16); mel filters: n_mel,
n_fft, n_mel*n_fft float32; vocabulary: count, then per word uint32 length
and bytes (the loader adds the special tokens up to n_vocab itself); then
tensors until EOF: n_dims, name length, type (0 f32, 1 f16), ne[0..n_dims),
name, data (ne[0] varies fastest). 2-D weight matrices and the token
embedding are of the file's ftype, the conv kernels f16 unless the file is
f32, everything else (1-D, conv biases [1, n], positional embeddings) f32.
"""
import argparse
import struct
import sys

import numpy as np

GGML_FILE_MAGIC = 0x67676D6C
SHAPES = {"small": (64, 2, 3), "tiny": (384, 6, 4)}  # state, heads, layers


def read_source(path):
    """The hparams, mel-filter block and vocabulary block of a whisper.cpp file, as bytes."""
    with open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack_from("<I", data, 0)
    if magic != GGML_FILE_MAGIC:
        raise SystemExit(f"{path}: not a whisper.cpp ggml file (magic {magic:#x})")
    hparams = list(struct.unpack_from("<11i", data, 4))
    offset = 4 + 11 * 4
    n_mel, n_fft = struct.unpack_from("<2i", data, offset)
    filters_end = offset + 8 + 4 * n_mel * n_fft
    filters = data[offset:filters_end]
    offset = filters_end
    n_words, = struct.unpack_from("<i", data, offset)
    offset += 4
    for _ in range(n_words):
        length, = struct.unpack_from("<I", data, offset)
        offset += 4 + length
    vocab = data[filters_end:offset]
    return hparams, n_mel, filters, vocab


def sinusoids(length, channels, max_timescale=10000.0):
    """Whisper's encoder positional embedding (openai/whisper model.py)."""
    increment = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-increment * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def decoder_structure(rng, state, text_ctx, n_vocab, token_eot, token_beg, prompt,
                      embd_scale=0.02, segment_s=5.0, segment_tokens=24, segments=6):
    """Positional and token embeddings and the final layer norm's gain of a
    decoder that writes transcript-shaped random text.

    The blocks add little (their output projections are scaled down), so the
    residual stream is mostly the positional embedding: the next token is a
    function of the position, nudged by the audio through cross-attention.
    The final layer norm's gain makes the logits confident (std ~8), so greedy
    decoding passes whisper.cpp's log-probability threshold at temperature 0
    (no fallbacks). Unit directions, orthogonal to each other and to the
    all-ones vector (so the layer norm keeps them), carry the structure, in
    periods of segment_tokens positions counted from the first sampled one:
      to_timestamp: positions 0 and segment_tokens-1 of each period point
        along it, the others against it; every timestamp token's embedding
        points along it, so those positions sample a timestamp and the
        others text.
      a time plane: at those timestamp positions the embedding points at the
        angle of the time that timestamp should have (period k opens at
        k*segment_s and closes at (k+1)*segment_s); a timestamp token points
        at the angle of its own time, so the nearest time wins.
      to_eot: position 0 of period `segments` points along it, as does
        <|endoftext|>'s embedding.
    A 30 s window thus decodes as <|0.00|> 22 tokens <|5.00|><|5.00|> ...
    <|30.00|><|endoftext|>, or ends earlier when a segment ends past the
    audio (whisper.cpp's end-of-audio rule). Windows conditioned on earlier
    text start at later positions and get other segment boundaries.
    """
    basis, _ = np.linalg.qr(np.column_stack([np.ones(state), rng.standard_normal((state, 4))]))
    directions = basis[:, 1:].T
    to_eot, to_timestamp, time_x, time_y = directions

    def without_directions(x):
        return x - (x @ directions.T) @ directions

    omega = 2 * np.pi / 30.0  # one turn per 30 s window
    step = np.arange(text_ctx) - (prompt - 1)  # 0 = the first sampled token
    period, phase = np.divmod(step, segment_tokens)
    is_timestamp = (step >= 0) & ((phase == 0) | (phase == segment_tokens - 1))
    is_eot = (step >= 0) & (phase == 0) & (period == segments)
    is_timestamp &= ~is_eot
    when = (period + (phase == segment_tokens - 1)) * segment_s
    positions = without_directions(rng.standard_normal((text_ctx, state)))
    positions += 2.0 * np.where(is_eot, 1.0, -1.0)[:, None] * to_eot
    positions += 2.0 * np.where(is_timestamp, 1.0, -1.0)[:, None] * to_timestamp
    positions += 6.0 * is_timestamp[:, None] * (np.cos(omega * when)[:, None] * time_x +
                                                np.sin(omega * when)[:, None] * time_y)

    token_embedding = without_directions(rng.standard_normal((n_vocab, state)) * embd_scale)
    boost = 3.0 * embd_scale * np.sqrt(state)
    token_embedding[token_eot] += 2.0 * boost * to_eot
    seconds = np.arange(n_vocab - token_beg) * 0.02
    token_embedding[token_beg:] = boost * (to_timestamp[None, :] + 3.0 * (
        np.cos(omega * seconds)[:, None] * time_x + np.sin(omega * seconds)[:, None] * time_y))
    logit_gain = 8.0 / (embd_scale * np.sqrt(state))
    return positions.astype(np.float32), token_embedding.astype(np.float32), logit_gain


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output")
    parser.add_argument("--from", dest="source", required=True,
                        help="whisper.cpp file with the vocabulary and mel filters (e.g. for-tests-ggml-tiny.bin)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small",
                        help="small (64 wide, 2 heads, 3 layers) or tiny (whisper-tiny: 384, 6, 4)")
    parser.add_argument("--state", type=int, help="n_audio_state = n_text_state (overrides --shape)")
    parser.add_argument("--heads", type=int, help="attention heads (overrides --shape)")
    parser.add_argument("--layers", type=int, help="encoder and decoder layers (overrides --shape)")
    parser.add_argument("--ftype", choices=["f16", "f32"], default="f16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--audio-ctx", type=int, default=1500)
    parser.add_argument("--text-ctx", type=int, default=448)
    args = parser.parse_args()

    state, heads, layers = SHAPES[args.shape]
    state = args.state or state
    heads = args.heads or heads
    layers = args.layers or layers
    if state % heads:
        raise SystemExit(f"--state {state} is not a multiple of --heads {heads}")
    if layers == 2:
        print("note: whisper.cpp takes a model with 2 decoder layers for distil-whisper's first release "
              "and forces no_timestamps on it", file=sys.stderr)

    hparams, n_mel, filters, vocab = read_source(args.source)
    n_vocab, n_mels = hparams[0], hparams[9]
    if n_mel != n_mels:
        raise SystemExit(f"{args.source}: {n_mel} mel filters for n_mels {n_mels}")
    f16 = args.ftype == "f16"
    hparams = [n_vocab, args.audio_ctx, state, heads, layers, args.text_ctx, state, heads, layers, n_mels,
               1 if f16 else 0]

    rng = np.random.default_rng(args.seed)
    tensors = []  # (name, numpy array in PyTorch order, ggml type)

    def add(name, array, kind):
        # kind: "matrix" (the model's ftype), "conv" (f16 unless f32), "f32"
        ttype = 1 if f16 and kind in ("matrix", "conv") else 0
        tensors.append((name, array, ttype))

    def normal(*shape, scale=0.02):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def linear(prefix, n_out, n_in, bias=True, gain=1.0):
        add(prefix + ".weight", normal(n_out, n_in, scale=gain * n_in ** -0.5), "matrix")
        if bias:
            add(prefix + ".bias", normal(n_out), "f32")

    def layer_norm(prefix, gain=1.0):
        add(prefix + ".weight", (gain * (1.0 + normal(state))).astype(np.float32), "f32")
        add(prefix + ".bias", normal(state), "f32")

    def attention(prefix, gain):
        linear(prefix + ".query", state, state)
        linear(prefix + ".key", state, state, bias=False)
        linear(prefix + ".value", state, state)
        linear(prefix + ".out", state, state, gain=gain)

    def block(prefix, cross, gain):
        attention(prefix + ".attn", gain)
        layer_norm(prefix + ".attn_ln")
        if cross:
            attention(prefix + ".cross_attn", gain)
            layer_norm(prefix + ".cross_attn_ln")
        linear(prefix + ".mlp.0", 4 * state, state)
        linear(prefix + ".mlp.2", state, 4 * state, gain=gain)
        layer_norm(prefix + ".mlp_ln")

    # Encoder: two convolutions over the mel frames, sinusoidal positions.
    add("encoder.positional_embedding", sinusoids(args.audio_ctx, state), "f32")
    add("encoder.conv1.weight", normal(state, n_mels, 3, scale=(3 * n_mels) ** -0.5), "conv")
    add("encoder.conv1.bias", normal(state, 1), "f32")  # [n] stored as [n, 1], as whisper.cpp's converter does
    add("encoder.conv2.weight", normal(state, state, 3, scale=(3 * state) ** -0.5), "conv")
    add("encoder.conv2.bias", normal(state, 1), "f32")
    for i in range(layers):
        block(f"encoder.blocks.{i}", cross=False, gain=1.0)
    layer_norm("encoder.ln_post")

    # Decoder. Purely random weights make greedy decoding emit unlikely tokens
    # until the window's token budget is spent, with temperature fallbacks:
    # slow, and never a timestamp or an end. So the decoder is shaped (see
    # decoder_structure): random text, but confident, in segments that
    # start and end with timestamps, ended by <|endoftext|>.
    multilingual = n_vocab >= 51865
    token_eot = 50256 + multilingual
    n_langs = n_vocab - 51765 - multilingual
    token_beg = 50363 + (n_langs - 98 if multilingual else 0)
    prompt = 3 if multilingual else 1  # <|startoftranscript|> [<|lang|> <|transcribe|>]
    positions, token_embedding, logit_gain = decoder_structure(
        rng, state, args.text_ctx, n_vocab, token_eot, token_beg, prompt)
    add("decoder.positional_embedding", positions, "f32")
    add("decoder.token_embedding.weight", token_embedding, "matrix")
    for i in range(layers):
        block(f"decoder.blocks.{i}", cross=True, gain=0.1)
    layer_norm("decoder.ln", gain=logit_gain)

    with open(args.output, "wb") as out:
        out.write(struct.pack("<I", GGML_FILE_MAGIC))
        out.write(struct.pack("<11i", *hparams))
        out.write(filters)
        out.write(vocab)
        for name, array, ttype in tensors:
            encoded = name.encode()
            dims = array.shape[::-1]  # ggml's ne: the fastest-varying dimension first
            out.write(struct.pack(f"<3i{len(dims)}i", len(dims), len(encoded), ttype, *dims))
            out.write(encoded)
            out.write(np.ascontiguousarray(array, dtype="<f2" if ttype == 1 else "<f4").tobytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
