// libFuzzer target: the multipart/form-data parser the speech API runs on
// every upload. Input: a Content-Type value, a newline, then the body. The
// body is parsed twice, whole and in uneven pieces (as it arrives from a
// socket): both must give the same form or the same error, and every limit
// must hold.
#include "api/multipart_form.hpp"

#include <cstdio>
#include <cstdlib>

using namespace mmserve;
using namespace mmserve::api;

namespace {

struct Outcome {
  int status = 0; // 0: parsed
  std::string code;
  MultipartForm form;
};

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "invariant broken: %s\n", what);
  std::abort();
}

MultipartLimits small_limits() {
  MultipartLimits limits;
  limits.max_file_bytes = 2048;
  limits.max_field_bytes = 128;
  limits.max_header_bytes = 256;
  limits.max_parts = 8;
  return limits;
}

Outcome parse(const std::string& boundary, std::string_view body, bool pieces) {
  Outcome outcome;
  try {
    MultipartParser parser(boundary, small_limits());
    parser.set_size_hint(body.size());
    if (pieces) {
      // Piece sizes cycle through ones that split delimiters and CRLFs.
      static constexpr size_t kSizes[] = {1, 5, 2, 64, 3, 17, 300};
      for (size_t at = 0, i = 0; at < body.size(); at += kSizes[i++ % 7])
        parser.feed(body.substr(at, kSizes[i % 7]));
    } else {
      parser.feed(body);
    }
    outcome.form = parser.finish();
  } catch (const ApiError& error) {
    outcome.status = error.status();
    outcome.code = error.code();
  }
  return outcome;
}

bool same_file(const std::optional<FormFile>& a, const std::optional<FormFile>& b) {
  if (a.has_value() != b.has_value()) return false;
  return !a || (a->field == b->field && a->filename == b->filename && a->content_type == b->content_type &&
                a->data == b->data);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t newline = input.find('\n');
  if (newline == std::string_view::npos) return 0;
  const auto boundary = multipart_boundary(input.substr(0, newline));
  if (!boundary) return 0;
  if (boundary->empty() || boundary->size() > 70) fail("boundary outside RFC 2046's 1..70 characters");
  const std::string_view body = input.substr(newline + 1);

  const Outcome whole = parse(*boundary, body, false);
  const Outcome pieces = parse(*boundary, body, true);
  if (whole.status != pieces.status || whole.code != pieces.code) {
    std::fprintf(stderr, "whole: %d %s, in pieces: %d %s\n", whole.status, whole.code.c_str(), pieces.status,
                 pieces.code.c_str());
    fail("the outcome depends on how the body is split");
  }
  if (whole.status != 0) {
    if (whole.status != 400 && whole.status != 413) fail("unexpected status");
    return 0;
  }
  if (whole.form.fields != pieces.form.fields || !same_file(whole.form.file, pieces.form.file)) {
    fail("the form depends on how the body is split");
  }
  const MultipartLimits limits = small_limits();
  if (whole.form.fields.size() > static_cast<size_t>(limits.max_parts)) fail("more parts than max_parts");
  for (const auto& [name, value] : whole.form.fields) {
    if (value.size() > limits.max_field_bytes) fail("a field passed max_field_bytes");
    if (name.empty()) fail("a field without a name");
  }
  if (whole.form.file && whole.form.file->data.size() > limits.max_file_bytes) fail("the file passed max_file_bytes");
  return 0;
}
