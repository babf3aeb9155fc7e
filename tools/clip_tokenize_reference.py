#!/usr/bin/env python3
"""An independent Python port of openai/CLIP's tokenizer, for checking
mmserve's C++ one (src/engines/diffusion/clip_tokenizer.cpp).

  clip_tokenize_reference.py TOKENIZER_DIR < prompts.jsonl

TOKENIZER_DIR is a diffusers tokenizer folder (vocab.json, merges.txt,
tokenizer_config.json). Each stdin line is one prompt as a JSON string; for
each, one line with a JSON list of token ids (no BOS/EOS) is printed.

Follows openai/CLIP clip/simple_tokenizer.py (bytes_to_unicode, basic_clean,
whitespace_clean, the pre-tokenizer pattern, bpe, encode) and Hugging Face
transformers' CLIPTokenizer (vocab.json ids, merges.txt ranks after the
"#version" line, unknown tokens -> unk_token), with these differences:
  * no ftfy.fix_text (it is not installed here; it would also NFC-normalize
    and fix mojibake);
  * Python's `re` has no \\p{L}/\\p{N}, so the pattern
      <\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+
    is matched by hand: letters are unicodedata categories L*, numbers N*,
    \\s is the Unicode White_Space property (as in the `regex` module);
  * stdin is decoded with errors="surrogateescape", so invalid UTF-8 bytes
    inside a prompt line reach the tokenizer as U+DC80..U+DCFF and are
    byte-encoded back to the original byte (a lone \\udcXX JSON escape is
    read the same way). They count as neither letter, number nor space.
"""
import html
import json
import os
import sys
import unicodedata

SPECIALS = ("<|startoftext|>", "<|endoftext|>")
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")  # after "'", in the pattern's order
WHITE_SPACE = frozenset([0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F,
                         0x3000] + list(range(0x2000, 0x200B)))


def bytes_to_unicode():
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def is_space(ch):
    return ord(ch) in WHITE_SPACE


def is_letter(ch):
    return unicodedata.category(ch)[0] == "L"


def is_number(ch):
    return unicodedata.category(ch)[0] == "N"


def whitespace_clean(text):
    # re.sub(r'\s+', ' ', text).strip()
    out, pending = [], False
    for ch in text:
        if is_space(ch):
            pending = True
            continue
        if pending and out:
            out.append(" ")
        pending = False
        out.append(ch)
    return "".join(out)


def basic_clean(text):
    # ftfy.fix_text(text) is left out (see above).
    return html.unescape(html.unescape(text)).strip("".join(map(chr, WHITE_SPACE)))


def find_words(text):
    """re.findall(pattern, text) for CLIP's pattern."""
    words, i, n = [], 0, len(text)
    while i < n:
        special = next((s for s in SPECIALS if text.startswith(s, i)), None)
        if special is not None:
            words.append(special)
            i += len(special)
            continue
        ch = text[i]
        if ch == "'":
            tail = next((c for c in CONTRACTIONS if text.startswith(c, i + 1)), None)
            if tail is not None:
                words.append("'" + tail)
                i += 1 + len(tail)
                continue
        if is_letter(ch):
            j = i + 1
            while j < n and is_letter(text[j]):
                j += 1
        elif is_number(ch):
            j = i + 1
        elif is_space(ch):
            i += 1  # matched by no alternative: findall skips it
            continue
        else:
            j = i + 1
            while j < n and not (is_space(text[j]) or is_letter(text[j]) or is_number(text[j])):
                j += 1
        words.append(text[i:j])
        i = j
    return words


def get_pairs(word):
    return set(zip(word, word[1:]))


class Tokenizer:
    def __init__(self, folder):
        with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
            self.encoder = json.load(f)
        with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
            lines = f.read().strip().split("\n")
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        merges = [tuple(line.split()) for line in lines if line.strip()]
        self.ranks = dict(zip(merges, range(len(merges))))
        unk = "<|endoftext|>"
        config_path = os.path.join(folder, "tokenizer_config.json")
        if os.path.exists(config_path):
            with open(config_path, encoding="utf-8") as f:
                value = json.load(f).get("unk_token", unk)
            unk = value["content"] if isinstance(value, dict) else value
        self.unk_id = self.encoder[unk]
        self.byte_encoder = bytes_to_unicode()
        self.cache = {s: s for s in SPECIALS}

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = get_pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if bigram not in self.ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = get_pairs(word)
        result = " ".join(word)
        self.cache[token] = result
        return result

    def encode(self, text):
        ids = []
        text = whitespace_clean(basic_clean(text)).lower()
        for word in find_words(text):
            if word in SPECIALS:
                encoded = word
            else:
                encoded = "".join(self.byte_encoder[b] for b in word.encode("utf-8", "surrogateescape"))
            ids.extend(self.encoder.get(piece, self.unk_id) for piece in self.bpe(encoded).split(" "))
        return ids


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__)
    tokenizer = Tokenizer(argv[1])
    out = []
    for raw in sys.stdin.buffer.read().split(b"\n"):
        line = raw.decode("utf-8", "surrogateescape")
        if not line.strip():
            continue
        out.append(json.dumps(tokenizer.encode(json.loads(line))))
    sys.stdout.write("".join(s + "\n" for s in out))


if __name__ == "__main__":
    main(sys.argv)
