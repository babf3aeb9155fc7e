#!/usr/bin/env python3
"""Writes a tiny text model GGUF (llama or gemma3 architecture) with
deterministic random weights, for plumbing and parity tests of the vision
service: paired with a projector of the same width it makes a complete
vision-language model (a gemma3 one of width 128 fits
../shared/models/mmproj-tinygemma3.gguf). The tokenizer (512-token
SentencePiece vocabulary) is copied from a real model, stories260K.gguf, so
prompts tokenize as they would there; a chat template is written into the
file so the template path of the server is exercised too.

Uses llama.cpp's gguf-py (PYTHONPATH=third_party/llama.cpp/gguf-py) and
Debian's python3-numpy. Same arguments, same bytes.

    gen_tiny_text_model.py OUT.gguf --tokenizer-from stories260K.gguf
        [--arch llama|gemma3] [--embd 128] [--layers 2] [--seed 7]
"""
import argparse
import sys

import numpy as np
import gguf

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def field_value(reader, key):
    field = reader.fields[key]
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i][0].item() for i in field.data]
    return field.parts[field.data[0]][0].item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output")
    parser.add_argument("--tokenizer-from", required=True, help="a GGUF with a llama (SentencePiece) tokenizer")
    parser.add_argument("--arch", choices=["llama", "gemma3"], default="llama")
    parser.add_argument("--embd", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    source = gguf.GGUFReader(args.tokenizer_from)
    tokens = field_value(source, "tokenizer.ggml.tokens")
    scores = field_value(source, "tokenizer.ggml.scores")
    token_types = field_value(source, "tokenizer.ggml.token_type")
    n_vocab = len(tokens)

    arch = args.arch
    n_embd, n_layer = args.embd, args.layers
    n_head, n_head_kv = 4, 2
    head_dim = n_embd // n_head
    n_ff = n_embd * 3
    rng = np.random.RandomState(args.seed)

    def weight(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(n):
        # gemma norms scale by (1 + w) in the checkpoint; GGUF stores 1 + w.
        return (1.0 + rng.standard_normal(n) * 0.05).astype(np.float32)

    writer = gguf.GGUFWriter(args.output, arch)
    writer.add_string("general.name", f"mmserve tiny random {arch}")
    writer.add_context_length(2048)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    if arch == "gemma3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    else:
        writer.add_rope_dimension_count(head_dim)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    writer.add_bos_token_id(field_value(source, "tokenizer.ggml.bos_token_id"))
    writer.add_eos_token_id(field_value(source, "tokenizer.ggml.eos_token_id"))
    writer.add_unk_token_id(field_value(source, "tokenizer.ggml.unknown_token_id"))
    writer.add_add_bos_token(True)
    writer.add_chat_template(GEMMA if arch == "gemma3" else CHATML)

    # Only normal tokens can win the argmax: byte, control and unknown tokens
    # get zero output rows, so a greedy answer is always valid UTF-8 text
    # that two programs can compare as strings.
    normal = (np.array(token_types) == 1).astype(np.float32)[:, None]

    # numpy shapes are ggml's ne reversed.
    # gemma multiplies input embeddings by sqrt(n_embd) and normalises each
    # block's output: small embeddings keep the current token from deciding
    # the next one alone (random gemma weights still fall into repeating one
    # token; which one depends on the prompt and the image).
    embeddings = weight(n_vocab, n_embd, scale=0.1 if arch == "gemma3" else 0.5)
    writer.add_tensor("token_embd.weight", embeddings)
    writer.add_tensor("output_norm.weight", norm(n_embd))
    for i in range(n_layer):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", norm(n_embd))
        writer.add_tensor(p + "attn_q.weight", weight(n_head * head_dim, n_embd))
        writer.add_tensor(p + "attn_k.weight", weight(n_head_kv * head_dim, n_embd))
        writer.add_tensor(p + "attn_v.weight", weight(n_head_kv * head_dim, n_embd))
        writer.add_tensor(p + "attn_output.weight", weight(n_embd, n_head * head_dim))
        writer.add_tensor(p + "ffn_norm.weight", norm(n_embd))
        writer.add_tensor(p + "ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(p + "ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(p + "ffn_down.weight", weight(n_embd, n_ff))
        if arch == "gemma3":
            writer.add_tensor(p + "attn_q_norm.weight", norm(head_dim))
            writer.add_tensor(p + "attn_k_norm.weight", norm(head_dim))
            writer.add_tensor(p + "post_attention_norm.weight", norm(n_embd))
            writer.add_tensor(p + "post_ffw_norm.weight", norm(n_embd))
    # An output matrix of its own (gemma3 accepts one instead of the tied
    # embeddings), large enough that greedy choices are not near-ties that
    # rounding differences between two programs could flip.
    writer.add_tensor("output.weight", weight(n_vocab, n_embd, scale=0.5) * normal)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
