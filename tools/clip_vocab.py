#!/usr/bin/env python3
"""Trains a small byte-level BPE in CLIP's format and writes it as a diffusers
tokenizer folder (vocab.json, merges.txt, tokenizer_config.json,
special_tokens_map.json), for tests that need a CLIP tokenizer without
downloading one.

The vocabulary is laid out as openai/CLIP's simple_tokenizer.py builds it:
the 256 bytes_to_unicode() characters, the same 256 with "</w>" appended, one
token per merge (the two symbols concatenated), then "<|startoftext|>" and
"<|endoftext|>". Words are cleaned (HTML unescaped twice, whitespace runs
collapsed, lower-cased; no ftfy), split with CLIP's pattern and byte-encoded;
the last symbol of a word carries "</w>".

Training is deterministic: each step merges the most frequent adjacent pair,
ties broken by the smaller (first, second) pair in code-point order. A pair
whose concatenation is already a token is never chosen, so every merge adds
exactly one new token and the ids stay contiguous (512 + merges + 2 tokens).
Training stops early when no pair is left.

  clip_vocab.py OUT_DIR NUM_MERGES [PAD_TOKEN] < corpus.txt
"""
import html
import json
import os
import sys
import unicodedata

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"

# Unicode White_Space (what \s matches in the `regex` module CLIP uses).
_WHITESPACE = frozenset(
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
    + list(range(0x2000, 0x200B)))


def bytes_to_unicode():
    """CLIP's (and GPT-2's) byte -> printable character table, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _is_space(ch):
    return ord(ch) in _WHITESPACE


def _is_letter(ch):
    return unicodedata.category(ch).startswith("L")


def _is_number(ch):
    return unicodedata.category(ch).startswith("N")


def clean(text):
    text = html.unescape(html.unescape(text))
    words, current = [], []
    for ch in text:
        if _is_space(ch):
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return " ".join(words).lower()


def pretokenize(text):
    """CLIP's pattern on cleaned text; returns (word, is_special) pairs."""
    out = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if _is_space(ch):
            i += 1
            continue
        special = next((s for s in (BOS, EOS) if text.startswith(s, i)), None)
        if special:
            out.append((special, True))
            i += len(special)
            continue
        if ch == "'":
            suffix = next((s for s in ("s", "t", "re", "ve", "m", "ll", "d") if text.startswith(s, i + 1)), None)
            if suffix:
                out.append(("'" + suffix, False))
                i += 1 + len(suffix)
                continue
        j = i + 1
        if _is_letter(ch):
            while j < n and _is_letter(text[j]):
                j += 1
        elif not _is_number(ch):
            while j < n and not (_is_space(text[j]) or _is_letter(text[j]) or _is_number(text[j])):
                j += 1
        out.append((text[i:j], False))
        i = j
    return out


def build_vocab(corpus_text, num_merges):
    """Returns (vocab: token -> id, merges: [(first, second), ...] in rank order)."""
    byte_encoder = bytes_to_unicode()
    base = list(byte_encoder.values())
    tokens = base + [b + "</w>" for b in base]
    known = set(tokens) | {BOS, EOS}

    counts = {}
    for word, special in pretokenize(clean(corpus_text)):
        if special:
            continue
        encoded = "".join(byte_encoder[b] for b in word.encode("utf-8", "surrogateescape"))
        counts[encoded] = counts.get(encoded, 0) + 1
    words = []  # [symbols (list), count]
    for encoded in sorted(counts):
        words.append([list(encoded[:-1]) + [encoded[-1] + "</w>"], counts[encoded]])

    pair_counts = {}
    where = {}  # pair -> set of word indices that contain it
    for index, (symbols, count) in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + count
            where.setdefault(pair, set()).add(index)

    merges = []
    while len(merges) < num_merges:
        best = None
        for pair, count in pair_counts.items():
            if count <= 0 or pair[0] + pair[1] in known:
                continue
            if best is None or count > best[0] or (count == best[0] and pair < best[1]):
                best = (count, pair)
        if best is None:
            break
        first, second = pair = best[1]
        merged = first + second
        merges.append(pair)
        tokens.append(merged)
        known.add(merged)
        for index in sorted(where.pop(pair, ())):
            symbols, count = words[index]
            for old in zip(symbols, symbols[1:]):
                pair_counts[old] -= count
            out = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words[index][0] = out
            for new in zip(out, out[1:]):
                pair_counts[new] = pair_counts.get(new, 0) + count
                where.setdefault(new, set()).add(index)
        pair_counts.pop(pair, None)

    tokens += [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate token"
    return vocab, merges


def write_tokenizer_files(out_dir, vocab, merges, pad_token):
    """Writes the four files of a diffusers `tokenizer/` folder, as Hugging Face writes them."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for first, second in merges:
            f.write(f"{first} {second}\n")
    config = {
        "model_max_length": 77,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "tokenizer_class": "CLIPTokenizer",
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, ensure_ascii=False, indent=2)


def main(argv):
    if len(argv) not in (3, 4):
        sys.exit(__doc__)
    corpus = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    vocab, merges = build_vocab(corpus, int(argv[2]))
    write_tokenizer_files(argv[1], vocab, merges, argv[3] if len(argv) == 4 else EOS)
    print(f"{argv[1]}: {len(vocab)} tokens, {len(merges)} merges")


if __name__ == "__main__":
    main(sys.argv)
