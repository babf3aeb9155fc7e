// CLIP's byte-level BPE tokenizer (openai/CLIP simple_tokenizer.py, Hugging
// Face CLIPTokenizer) over a diffusers `tokenizer/` folder: vocab.json gives
// the ids, merges.txt the merge ranks, tokenizer_config.json and
// special_tokens_map.json the special tokens. Text is cleaned as CLIP does
// (HTML entities unescaped twice, whitespace runs collapsed, lower-cased),
// split with CLIP's pattern
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// (code points classified with llama.cpp's Unicode tables), byte-encoded and
// merged. Not done: ftfy.fix_text (mojibake repair and NFC normalization).
// Invalid UTF-8 is kept, not replaced: each byte that is not part of a valid
// sequence becomes a symbol of its own (as Python's "surrogateescape" reads
// it) that counts as punctuation, and is byte-encoded as that raw byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace mmserve::diffusion {

class ClipTokenizer {
public:
  // vocab.json + merges.txt of a diffusers tokenizer folder; bos/eos/unk/pad tokens from its
  // tokenizer_config.json, overridden by special_tokens_map.json (both optional; pad defaults to
  // "<|endoftext|>" as in SD 1.x, SD 2.x and SDXL's second tokenizer use "!").
  // Throws std::runtime_error naming the file and the problem.
  explicit ClipTokenizer(const std::filesystem::path& tokenizer_dir);
  ClipTokenizer(const ClipTokenizer&) = delete;
  ClipTokenizer& operator=(const ClipTokenizer&) = delete;

  // BPE ids without BOS/EOS. Thread-safe.
  std::vector<int> encode(std::string_view text) const;
  // The pipeline's input: chunks of kChunkLength ids, [BOS, up to 75 ids, EOS, pad...]; a long prompt
  // gives several chunks (split every 75 ids), an empty one a single [BOS, EOS, pad...].
  std::vector<std::vector<int>> encode_chunks(std::string_view text) const;

  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  int pad_id() const { return pad_id_; }
  int unk_id() const { return unk_id_; }
  size_t vocab_size() const { return encoder_.size(); }

  static constexpr int kChunkLength = 77;

private:
  // The ids of one pre-tokenized word given as its UTF-8 (or raw) bytes.
  std::vector<int> bpe(const std::string& word) const;
  int rank(const std::string& first, const std::string& second, std::string& scratch) const;
  int token_id(const std::string& token) const;

  std::unordered_map<std::string, int> encoder_;
  std::unordered_map<std::string, int> ranks_; // "first second" -> rank (line order in merges.txt)
  std::string byte_symbols_[256];              // bytes_to_unicode(), UTF-8 encoded
  int bos_id_ = 0, eos_id_ = 0, pad_id_ = 0, unk_id_ = 0;

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int>> cache_; // word bytes -> ids
};

} // namespace mmserve::diffusion
