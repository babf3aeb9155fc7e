#include "api/multipart_form.hpp"

#include <gtest/gtest.h>

#include <random>

using namespace mmserve;
using namespace mmserve::api;

namespace {

const std::string kBoundary = "----mmserveBoundary7MA4YWxk";

std::string part(const std::string& disposition, const std::string& content, const std::string& type = "") {
  std::string out = "--" + kBoundary + "\r\nContent-Disposition: form-data; " + disposition + "\r\n";
  if (!type.empty()) out += "Content-Type: " + type + "\r\n";
  return out + "\r\n" + content + "\r\n";
}

std::string closing() {
  return "--" + kBoundary + "--\r\n";
}

// Binary audio-like bytes that contain CRLFs, dashes and a near-boundary.
std::string tricky_file() {
  std::string data = "RIFF\r\n--\r\n--" + kBoundary.substr(0, 10) + "\0\xff\r\n";
  data.push_back('\0');
  for (int i = 0; i < 5000; ++i)
    data.push_back(static_cast<char>(i * 37 % 256));
  return data;
}

MultipartForm parse_in_pieces(const std::string& body, size_t piece, MultipartLimits limits = {}) {
  MultipartParser parser(kBoundary, limits);
  for (size_t at = 0; at < body.size(); at += piece)
    parser.feed(std::string_view(body).substr(at, piece));
  return parser.finish();
}

int status_of(const std::function<void()>& action, std::string* code = nullptr) {
  try {
    action();
  } catch (const ApiError& error) {
    if (code) *code = error.code();
    return error.status();
  }
  return 0;
}

} // namespace

TEST(MultipartForm, ParsesFieldsAndFileWhateverTheChunking) {
  const std::string file = tricky_file();
  const std::string body = "preamble to ignore\r\n" + part(R"(name="model")", "whisper-1") +
                           part(R"(name="file"; filename="a \"quoted\".wav")", file, "audio/wav") +
                           part(R"(name="timestamp_granularities[]")", "word") +
                           part(R"(name="timestamp_granularities[]")", "segment") + closing() + "epilogue";
  for (size_t piece : {size_t{1}, size_t{7}, size_t{64}, size_t{4096}, body.size()}) {
    const MultipartForm form = parse_in_pieces(body, piece);
    ASSERT_TRUE(form.file.has_value()) << "piece " << piece;
    EXPECT_EQ(form.file->data, file) << "piece " << piece;
    EXPECT_EQ(form.file->filename, "a \"quoted\".wav");
    EXPECT_EQ(form.file->content_type, "audio/wav");
    EXPECT_EQ(form.field("model"), "whisper-1");
    EXPECT_EQ(form.all("timestamp_granularities[]"), (std::vector<std::string>{"word", "segment"}));
    EXPECT_FALSE(form.field("language").has_value());
  }
}

TEST(MultipartForm, RandomSplitsGiveTheSameForm) {
  const std::string file = tricky_file();
  const std::string body =
      part(R"(name="file"; filename="x.mp3")", file) + part(R"(name="language")", "de") + closing();
  std::mt19937 random(7);
  for (int round = 0; round < 50; ++round) {
    MultipartParser parser(kBoundary, {});
    size_t at = 0;
    while (at < body.size()) {
      const size_t piece = std::uniform_int_distribution<size_t>(1, 90)(random);
      parser.feed(std::string_view(body).substr(at, piece));
      at += piece;
    }
    const MultipartForm form = parser.finish();
    ASSERT_EQ(form.file->data, file);
    ASSERT_EQ(form.field("language"), "de");
  }
}

TEST(MultipartForm, EmptyFieldValueAndEmptyFile) {
  const std::string body = part(R"(name="prompt")", "") + part(R"(name="file"; filename="e.wav")", "") + closing();
  const MultipartForm form = parse_in_pieces(body, 3);
  EXPECT_EQ(form.field("prompt"), "");
  ASSERT_TRUE(form.file.has_value());
  EXPECT_TRUE(form.file->data.empty());
}

TEST(MultipartForm, BoundaryFromContentType) {
  EXPECT_EQ(multipart_boundary("multipart/form-data; boundary=abc"), "abc");
  EXPECT_EQ(multipart_boundary("Multipart/Form-Data; charset=utf-8; boundary=\"a b;c\""), "a b;c");
  EXPECT_FALSE(multipart_boundary("multipart/form-data").has_value());
  EXPECT_FALSE(multipart_boundary("multipart/mixed; boundary=abc").has_value());
  EXPECT_FALSE(multipart_boundary("application/json").has_value());
  // Found by the multipart fuzzer: an unterminated quote threw instead.
  EXPECT_FALSE(multipart_boundary("multipart/form-data; boundary=\"abc").has_value());
  EXPECT_FALSE(multipart_boundary("multipart/form-data; boundary=" + std::string(71, 'x')).has_value());
}

TEST(MultipartForm, MalformedBodiesAre400) {
  std::string code;
  // No closing delimiter.
  EXPECT_EQ(status_of([&] { parse_in_pieces(part(R"(name="model")", "x"), 5); }, &code), 400);
  EXPECT_EQ(code, "invalid_multipart");
  // No delimiter at all.
  EXPECT_EQ(status_of([&] { parse_in_pieces(std::string(100000, 'a'), 1000); }, &code), 400);
  // A part without a name.
  EXPECT_EQ(status_of([&] { parse_in_pieces(part(R"(filename="a.wav")", "x") + closing(), 4); }, &code), 400);
  // Not form-data.
  EXPECT_EQ(status_of([&] {
              parse_in_pieces(
                  "--" + kBoundary + "\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx\r\n" + closing(), 9);
            }),
            400);
  // Headers that never end.
  EXPECT_EQ(status_of([&] { parse_in_pieces("--" + kBoundary + "\r\nX: " + std::string(20000, 'h'), 100); }), 400);
  // Two files.
  EXPECT_EQ(status_of([&] {
              parse_in_pieces(
                  part(R"(name="file"; filename="a")", "1") + part(R"(name="file"; filename="b")", "2") + closing(), 8);
            }),
            400);
  // A file where a text field belongs.
  EXPECT_EQ(status_of([&] { parse_in_pieces(part(R"(name="model"; filename="m.bin")", "x") + closing(), 8); }, &code),
            400);
  EXPECT_EQ(code, "invalid_type");
}

TEST(MultipartForm, LimitsAre413) {
  MultipartLimits limits;
  limits.max_file_bytes = 1000;
  limits.max_field_bytes = 10;
  EXPECT_EQ(status_of([&] {
              parse_in_pieces(part(R"(name="file"; filename="a")", std::string(1001, 'x')) + closing(), 100, limits);
            }),
            413);
  EXPECT_NO_THROW(
      parse_in_pieces(part(R"(name="file"; filename="a")", std::string(1000, 'x')) + closing(), 100, limits));
  EXPECT_EQ(status_of([&] { parse_in_pieces(part(R"(name="prompt")", std::string(11, 'p')) + closing(), 3, limits); }),
            413);
  limits.max_parts = 3;
  std::string many;
  for (int i = 0; i < 4; ++i)
    many += part("name=\"f" + std::to_string(i) + "\"", "v");
  EXPECT_EQ(status_of([&] { parse_in_pieces(many + closing(), 16, limits); }), 400);
}

// Found by the multipart fuzzer (whole and piecewise parses must agree): the
// preamble and header bounds were checked only while waiting for more
// bytes, so a body that arrived in one read skipped them.
TEST(MultipartForm, BoundsHoldHoweverTheBodyArrives) {
  MultipartLimits limits;
  limits.max_header_bytes = 256;
  const std::string long_preamble = std::string(300, 'p') + "\r\n" + part(R"(name="model")", "whisper-1") + closing();
  const std::string long_headers =
      "--" + kBoundary + "\r\nContent-Disposition: form-data; name=\"model\"\r\nX-Pad: " + std::string(300, 'h') +
      "\r\n\r\nwhisper-1\r\n" + closing();
  // Headers of exactly the limit (the block before CRLFCRLF) pass.
  const std::string prefix = "Content-Disposition: form-data; name=\"model\"\r\nX-Pad: ";
  const std::string at_limit =
      "--" + kBoundary + "\r\n" + prefix + std::string(256 - prefix.size(), 'h') + "\r\n\r\nwhisper-1\r\n" + closing();
  for (size_t piece : {size_t{1}, size_t{3}, size_t{64}, size_t{100000}}) {
    std::string code;
    EXPECT_EQ(status_of([&] { parse_in_pieces(long_preamble, piece, limits); }, &code), 400) << "piece " << piece;
    EXPECT_EQ(code, "invalid_multipart");
    EXPECT_EQ(status_of([&] { parse_in_pieces(long_headers, piece, limits); }, &code), 400) << "piece " << piece;
    EXPECT_EQ(code, "invalid_multipart");
    EXPECT_EQ(status_of([&] { parse_in_pieces(at_limit, piece, limits); }), 0) << "piece " << piece;
  }
}
