// The CLIP BPE tokenizer against an independent Python port of openai/CLIP's
// simple_tokenizer.py (tools/clip_tokenize_reference.py), on a vocabulary
// trained by tools/clip_vocab.py; chunking for the pipeline, bad files, and
// invalid UTF-8.
#include "engines/diffusion/clip_tokenizer.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace mmserve::diffusion;
namespace fs = std::filesystem;

namespace {

const std::string kPython = "/usr/bin/python3";
const std::string kTools = std::string(MMSERVE_SOURCE_DIR) + "/tools/";

const char* const kCorpus =
    R"(a photo of a cat sitting on a red sofa, highly detailed, 4k, 8k uhd, masterpiece, best quality.
a painting of a dog in the style of van gogh, oil on canvas, trending on artstation.
portrait of a woman with long hair, soft lighting, sharp focus, cinematic, photorealistic.
a castle on a hill at sunset, fantasy landscape, digital art, concept art, matte painting.
don't stop, it's what we've got; i'm sure they'll say he'd come. the quick brown fox jumps over the lazy dog.
café au lait, naïve résumé, crème brûlée, à la carte. straße. привет мир. ΟΔΟΣ σοφια.
東京の夜景 美しい 一只猫 桌子 한국어 텍스트 😀 🎉 party time. 1024x768 resolution, 3.14159, 1,000,000.
fish & chips <3 > "quoted" 'single' e-mail: user@example.com https://example.com/a?b=c snake_case kebab-case.
)";

// A prompt as a JSON string literal; bytes that are not valid UTF-8 are written as they are (the
// reference reads stdin with errors="surrogateescape").
std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (byte < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", byte);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

class ClipTokenizerTest : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("mmserve-clip-tokenizer-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    std::ofstream(dir_ / "corpus.txt", std::ios::binary) << kCorpus;
    for (const auto& [name, pad] : {std::pair{"sd1", ""}, std::pair{"sd2", " '!'"}}) {
      const std::string command = kPython + " " + kTools + "clip_vocab.py " + (dir_ / name).string() + " 300" + pad +
                                  " < " + (dir_ / "corpus.txt").string() + " > /dev/null";
      ASSERT_EQ(std::system(command.c_str()), 0) << command;
    }
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  // The reference's ids for each prompt.
  static std::vector<std::vector<int>> reference(const fs::path& tokenizer, const std::vector<std::string>& prompts) {
    {
      std::ofstream in(dir_ / "prompts.jsonl", std::ios::binary);
      for (const auto& prompt : prompts)
        in << json_string(prompt) << '\n';
    }
    const std::string command = kPython + " " + kTools + "clip_tokenize_reference.py " + tokenizer.string() + " < " +
                                (dir_ / "prompts.jsonl").string() + " > " + (dir_ / "ids.jsonl").string();
    EXPECT_EQ(std::system(command.c_str()), 0) << command;
    std::vector<std::vector<int>> ids;
    std::istringstream lines(read_text(dir_ / "ids.jsonl"));
    for (std::string line; std::getline(lines, line);)
      ids.push_back(nlohmann::json::parse(line).get<std::vector<int>>());
    return ids;
  }

  static std::string long_prompt() {
    std::string prompt;
    for (int i = 0; i < 12; ++i)
      prompt += "masterpiece, best quality, a photo of a cat sitting on a red sofa, ";
    return prompt;
  }

  static inline fs::path dir_;
};

TEST_F(ClipTokenizerTest, VocabularyLayout) {
  const ClipTokenizer tokenizer(dir_ / "sd1");
  const auto vocab = nlohmann::json::parse(read_text(dir_ / "sd1" / "vocab.json"));
  EXPECT_EQ(tokenizer.vocab_size(), vocab.size());
  EXPECT_EQ(tokenizer.vocab_size(), 512u + 300u + 2u);
  EXPECT_EQ(tokenizer.bos_id(), static_cast<int>(tokenizer.vocab_size()) - 2);
  EXPECT_EQ(tokenizer.eos_id(), static_cast<int>(tokenizer.vocab_size()) - 1);
  EXPECT_EQ(tokenizer.pad_id(), tokenizer.eos_id());
  EXPECT_EQ(vocab["!"], 0);
  EXPECT_EQ(vocab["!</w>"], 256);
  const auto merges = read_text(dir_ / "sd1" / "merges.txt");
  EXPECT_TRUE(merges.starts_with("#version: 0.2\n"));

  const ClipTokenizer sd2(dir_ / "sd2");
  EXPECT_EQ(sd2.pad_id(), 0); // "!"
  EXPECT_EQ(sd2.eos_id(), tokenizer.eos_id());
}

TEST_F(ClipTokenizerTest, MatchesReference) {
  const std::vector<std::string> prompts = {
      "a photo of a cat",
      "A PHOTO OF A CAT",
      "Hello, World!!!",
      "1024x768 resolution, 4k, 8K UHD",
      "don't stop, it's what we've got; I'm sure they'll say he'd",
      "DON'T SHOUT, IT'S LOUD",
      "café au lait, naïve résumé",
      "Crème Brûlée À LA CARTE",
      "東京の夜景、美しい",
      "一只猫 sitting on 桌子",
      "😀🎉 party time 🐱‍👤",
      "   lots    of\t\twhitespace \n\n here   ",
      "fish &amp; chips &lt;3 &gt; &quot;quoted&quot; &#39;single&#39; &apos;",
      "&amp;amp; double &amp;lt; escaped &AMP;gt;",
      "&#x1F600; &#128512; &#0; &#x80; &#x9D; &#xD800; &#1114112; &#12; &#11; &#xFFFE; &#99999999999;",
      "&ampfoo &copy2024 &eacute &notanentity; &; & alone &#x; &#;",
      "",
      "     ",
      long_prompt(),
      "<|startoftext|>hello<|endoftext|>",
      "!<|endoftext|> 'twas <|StartOfText|>",
      "ΟΔΟΣ ΣΟΦΙΑ Σ ΑΣ. ΣΑΣ",
      "İstanbul",
      "Straße STRASSE",
      "Привет, МИР",
      "x²+y³=z¹ ½ Ⅻ ①",
      "e-mail: user@example.com, https://example.com/a?b=c",
      "snake_case and camelCase and kebab-case",
      "tabs\tand\r\nnewlines\u2028sep\u0085next",
      "non\u00A0breaking\u3000ideographic\u2009space",
      "zero\u200Bwidth\u200Djoiner",
      "''quoted'' 's 't 're 've 'm 'll 'd 'x",
      "3.14159 and 1,000,000",
      "a\xcc\x81 combining e\xcc\x81",
      "한국어 텍스트",
      "العربية مرحبا",
      "हिन्दी",
      "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ １２３",
      "repeated repeated repeated repeated words words",
      "\x01\x02 control \x7f chars",
      "a\xff\xfe b\xc3( \xed\xa0\x80 \xf4\x90\x80\x80 \xe2\x82 \xc0\xaf end\x80",
      "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
  };
  ASSERT_GE(prompts.size(), 40u);
  const ClipTokenizer tokenizer(dir_ / "sd1");
  const auto expected = reference(dir_ / "sd1", prompts);
  ASSERT_EQ(expected.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(tokenizer.encode(prompts[i]), expected[i]) << "prompt " << i << ": " << prompts[i];
    EXPECT_EQ(tokenizer.encode(prompts[i]), expected[i]) << "prompt " << i << " (cached): " << prompts[i];
  }
  EXPECT_TRUE(expected[16].empty());
  EXPECT_GT(expected[18].size(), 75u);

  // Many threads sharing one tokenizer (and its cache) get the same ids.
  std::vector<std::thread> threads;
  std::vector<int> mismatches(8, 0);
  for (size_t t = 0; t < mismatches.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round)
        for (size_t i = 0; i < prompts.size(); ++i)
          if (tokenizer.encode(prompts[(i + t) % prompts.size()]) != expected[(i + t) % prompts.size()])
            ++mismatches[t];
    });
  }
  for (auto& thread : threads)
    thread.join();
  for (const int count : mismatches)
    EXPECT_EQ(count, 0);
}

// Random concatenations of awkward fragments: entity edges, contractions, sigma, special tokens
// split across fragments, invalid bytes next to valid ones.
TEST_F(ClipTokenizerTest, RandomPromptsMatchReference) {
  const std::vector<std::string> fragments = {
      "a",         "cat",      "PHOTO",       " ",
      "  ",        "\t",       "\n",          ",",
      ".",         "!",        "'",           "s",
      "t",         "ll",       "re",          "'s",
      "&",         "amp",      ";",           "&amp;",
      "&lt",       "#",        "#x",          "1",
      "42",        "x",        "F",           "&#",
      "&#x",       "eacute",   "Σ",           "σ",
      "ΟΔΟ",       "İ",        "é",           "E\xcc\x81",
      "東京",      "😀",        "\u200d",      "<|",
      "endoftext", "|>",       "startoftext", "<|endoftext|>",
      "\xff",      "\xc3",     "\xe2\x82",    "\x80",
      "\u00a0",    "\u3000",   "²",           "½",
      "-",         "__",       "...",         "Straße",
      "МИР",       "ＦＵＬＬ", "\x01",        "\"",
      "\\",        "'S",       "'LL",         "don",
  };
  std::mt19937 generator(1234);
  std::uniform_int_distribution<size_t> pick(0, fragments.size() - 1);
  std::uniform_int_distribution<int> length(0, 30);
  std::vector<std::string> prompts;
  for (int i = 0; i < 400; ++i) {
    std::string prompt;
    for (int n = length(generator); n > 0; --n)
      prompt += fragments[pick(generator)];
    prompts.push_back(prompt);
  }
  const ClipTokenizer tokenizer(dir_ / "sd1");
  const auto expected = reference(dir_ / "sd1", prompts);
  ASSERT_EQ(expected.size(), prompts.size());
  int mismatches = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto ids = tokenizer.encode(prompts[i]);
    if (ids != expected[i] && ++mismatches <= 5) ADD_FAILURE() << "prompt " << i << ": " << json_string(prompts[i]);
  }
  EXPECT_EQ(mismatches, 0);
}

void expect_chunk(const ClipTokenizer& tokenizer, const std::vector<int>& chunk, const std::vector<int>& content) {
  ASSERT_EQ(chunk.size(), static_cast<size_t>(ClipTokenizer::kChunkLength));
  EXPECT_EQ(chunk.front(), tokenizer.bos_id());
  EXPECT_EQ(std::vector<int>(chunk.begin() + 1, chunk.begin() + 1 + static_cast<std::ptrdiff_t>(content.size())),
            content);
  EXPECT_EQ(chunk[content.size() + 1], tokenizer.eos_id());
  for (size_t i = content.size() + 2; i < chunk.size(); ++i)
    EXPECT_EQ(chunk[i], tokenizer.pad_id()) << i;
  EXPECT_TRUE(chunk.back() == tokenizer.eos_id() || chunk.back() == tokenizer.pad_id());
}

TEST_F(ClipTokenizerTest, Chunks) {
  for (const char* name : {"sd1", "sd2"}) {
    SCOPED_TRACE(name);
    const ClipTokenizer tokenizer(dir_ / name);

    const auto empty = tokenizer.encode_chunks("");
    ASSERT_EQ(empty.size(), 1u);
    expect_chunk(tokenizer, empty[0], {});
    EXPECT_EQ(tokenizer.encode_chunks("  \t ").size(), 1u);

    const auto ids = tokenizer.encode("a photo of a cat");
    const auto single = tokenizer.encode_chunks("a photo of a cat");
    ASSERT_EQ(single.size(), 1u);
    expect_chunk(tokenizer, single[0], ids);

    // 200 words of one token each: 75 + 75 + 50.
    const char* const words[] = {"a", "cat", "photo", "of", "the"};
    std::string prompt;
    for (int i = 0; i < 200; ++i) {
      ASSERT_EQ(tokenizer.encode(words[i % 5]).size(), 1u) << words[i % 5];
      prompt += std::string(words[i % 5]) + " ";
    }
    const auto all = tokenizer.encode(prompt);
    ASSERT_EQ(all.size(), 200u);
    const auto chunks = tokenizer.encode_chunks(prompt);
    ASSERT_EQ(chunks.size(), 3u);
    for (size_t c = 0; c < chunks.size(); ++c) {
      const auto begin = all.begin() + static_cast<std::ptrdiff_t>(75 * c);
      const auto end = all.begin() + static_cast<std::ptrdiff_t>(std::min<size_t>(75 * (c + 1), all.size()));
      expect_chunk(tokenizer, chunks[c], std::vector<int>(begin, end));
    }
    EXPECT_EQ(chunks[0].back(), tokenizer.eos_id()); // full chunks end with EOS
    EXPECT_EQ(chunks[2].back(), tokenizer.pad_id());

    // Exactly 75 ids fill one chunk; 76 spill into a second.
    std::string a75, a76;
    for (int i = 0; i < 75; ++i)
      a75 += "a ";
    a76 = a75 + "a";
    EXPECT_EQ(tokenizer.encode_chunks(a75).size(), 1u);
    const auto spill = tokenizer.encode_chunks(a76);
    ASSERT_EQ(spill.size(), 2u);
    expect_chunk(tokenizer, spill[1], {tokenizer.encode("a")[0]});
  }
}

TEST_F(ClipTokenizerTest, InvalidUtf8Survives) {
  const ClipTokenizer tokenizer(dir_ / "sd1");
  const std::string text = "a\xff\xfe b\xc3( \xed\xa0\x80 end\x80";
  std::vector<int> ids;
  ASSERT_NO_THROW(ids = tokenizer.encode(text));
  // Decode the ids back to bytes: the invalid bytes are still there.
  const auto vocab = nlohmann::json::parse(read_text(dir_ / "sd1" / "vocab.json"));
  std::vector<std::string> tokens(vocab.size());
  for (const auto& [token, id] : vocab.items())
    tokens[id.get<size_t>()] = token;
  std::map<std::string, unsigned char> byte_decoder; // inverse of bytes_to_unicode()
  for (int b = 0, extra = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const int cpt = printable ? b : 256 + extra++;
    std::string utf8;
    if (cpt < 0x80) {
      utf8 = std::string(1, static_cast<char>(cpt));
    } else {
      utf8 = {static_cast<char>(0xC0 | cpt >> 6), static_cast<char>(0x80 | (cpt & 0x3F))};
    }
    byte_decoder[utf8] = static_cast<unsigned char>(b);
  }
  std::string decoded;
  for (const int id : ids) {
    std::string token = tokens[static_cast<size_t>(id)];
    const bool word_end = token.ends_with("</w>");
    if (word_end) token.resize(token.size() - 4);
    for (size_t i = 0; i < token.size();) {
      const size_t length = (static_cast<unsigned char>(token[i]) & 0xE0) == 0xC0 ? 2 : 1;
      const auto found = byte_decoder.find(token.substr(i, length));
      ASSERT_NE(found, byte_decoder.end()) << token;
      decoded += static_cast<char>(found->second);
      i += length;
    }
    if (word_end) decoded += ' ';
  }
  EXPECT_EQ(decoded, "a \xff\xfe b \xc3( \xed\xa0\x80 end \x80 ");
  EXPECT_EQ(tokenizer.encode_chunks(text)[0].size(), 77u);
  // Truncated sequences at the very end.
  for (const char* tail : {"\xe2", "\xe2\x82", "\xf0\x9f\x98", "\xc3"})
    EXPECT_EQ(tokenizer.encode(std::string("x") + tail).size() >= 2, true) << tail;
}

// Copies the sd1 folder to `name` for a test to break it.
fs::path copy_tokenizer(const fs::path& from, const fs::path& to) {
  fs::remove_all(to);
  fs::copy(from, to, fs::copy_options::recursive);
  return to;
}

template <typename F> std::string error_of(F&& construct) {
  try {
    construct();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST_F(ClipTokenizerTest, BadFiles) {
  const auto broken = dir_ / "broken";

  copy_tokenizer(dir_ / "sd1", broken);
  fs::remove(broken / "vocab.json");
  EXPECT_NE(error_of([&] { ClipTokenizer t(broken); }).find("vocab.json"), std::string::npos);

  copy_tokenizer(dir_ / "sd1", broken);
  fs::remove(broken / "merges.txt");
  EXPECT_NE(error_of([&] { ClipTokenizer t(broken); }).find("merges.txt"), std::string::npos);

  copy_tokenizer(dir_ / "sd1", broken);
  std::ofstream(broken / "merges.txt", std::ios::app) << "a b c\n";
  auto message = error_of([&] { ClipTokenizer t(broken); });
  EXPECT_NE(message.find("merges.txt"), std::string::npos) << message;
  EXPECT_NE(message.find("line"), std::string::npos) << message;

  copy_tokenizer(dir_ / "sd1", broken);
  std::ofstream(broken / "merges.txt", std::ios::app) << "lonely\n";
  message = error_of([&] { ClipTokenizer t(broken); });
  EXPECT_NE(message.find("merges.txt"), std::string::npos) << message;

  copy_tokenizer(dir_ / "sd1", broken);
  std::ofstream(broken / "vocab.json", std::ios::trunc) << "{\"a\": 0,";
  message = error_of([&] { ClipTokenizer t(broken); });
  EXPECT_NE(message.find("vocab.json"), std::string::npos) << message;

  copy_tokenizer(dir_ / "sd1", broken);
  std::ofstream(broken / "vocab.json", std::ios::trunc) << "{\"a\": \"zero\"}";
  message = error_of([&] { ClipTokenizer t(broken); });
  EXPECT_NE(message.find("vocab.json"), std::string::npos) << message;

  copy_tokenizer(dir_ / "sd1", broken);
  std::ofstream(broken / "special_tokens_map.json", std::ios::trunc) << "{\"pad_token\": \"<|nope|>\"}";
  message = error_of([&] { ClipTokenizer t(broken); });
  EXPECT_NE(message.find("<|nope|>"), std::string::npos) << message;

  copy_tokenizer(dir_ / "sd1", broken);
  std::ofstream(broken / "tokenizer_config.json", std::ios::trunc) << "not json";
  message = error_of([&] { ClipTokenizer t(broken); });
  EXPECT_NE(message.find("tokenizer_config.json"), std::string::npos) << message;

  // AddedToken objects and missing config files are fine.
  copy_tokenizer(dir_ / "sd1", broken);
  fs::remove(broken / "tokenizer_config.json");
  std::ofstream(broken / "special_tokens_map.json", std::ios::trunc)
      << R"({"pad_token": {"content": "!", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false}})";
  const ClipTokenizer objects(broken);
  EXPECT_EQ(objects.pad_id(), 0);
  fs::remove(broken / "special_tokens_map.json");
  const ClipTokenizer defaults(broken);
  EXPECT_EQ(defaults.pad_id(), defaults.eos_id());

  EXPECT_THROW(ClipTokenizer(dir_ / "does-not-exist"), std::runtime_error);
}

} // namespace
