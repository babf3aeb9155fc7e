// multipart/form-data request bodies (RFC 7578), parsed as they arrive: the
// body is never held whole, text fields are kept (bounded) and the one file
// part is appended straight into its own buffer, so an upload exists in
// memory exactly once.
#pragma once

#include "core/http_exchange.hpp"
#include "core/task.hpp"

#include <optional>
#include <string>
#include <vector>

namespace mmserve::api {

struct FormFile {
  std::string field;
  std::string filename;
  std::string content_type;
  std::string data;
};

struct MultipartForm {
  std::vector<std::pair<std::string, std::string>> fields; // text fields, in order (names may repeat)
  std::optional<FormFile> file;

  // The last value of a field, or nullopt.
  std::optional<std::string> field(std::string_view name) const;
  // Every value of a field ("timestamp_granularities[]" and the like).
  std::vector<std::string> all(std::string_view name) const;
};

struct MultipartLimits {
  std::string file_field = "file"; // the only part taken as a file
  uint64_t max_file_bytes = 100ull << 20;
  size_t max_field_bytes = 64 << 10;
  size_t max_header_bytes = 8 << 10; // one part's headers
  int max_parts = 64;
};

// The boundary of a multipart/form-data Content-Type, or nullopt.
std::optional<std::string> multipart_boundary(std::string_view content_type);

// Incremental parser; feed() the body piece by piece, then finish().
// Throws ApiError: 400 `invalid_multipart` for malformed bodies, 413 when
// the file or a field passes its limit.
class MultipartParser {
public:
  MultipartParser(std::string boundary, MultipartLimits limits);
  // The body's declared length: the file's buffer is reserved once at that size.
  void set_size_hint(uint64_t bytes) { size_hint_ = bytes; }
  void feed(std::string_view data);
  MultipartForm finish();

private:
  enum class State { preamble, headers, content, done };
  void parse_headers(std::string_view block);
  void append_content(std::string_view data);
  void end_part();

  std::string delimiter_; // "\r\n--" + boundary
  MultipartLimits limits_;
  State state_ = State::preamble;
  std::string pending_; // bytes not yet consumed (at most a delimiter's worth inside content)
  MultipartForm form_;
  int parts_ = 0;
  uint64_t size_hint_ = 0;
  uint64_t preamble_bytes_ = 0; // skipped while looking for a delimiter
  bool in_file_ = false;
  std::string field_name_;
  std::string field_value_;
};

// Reads the request body as multipart/form-data: 415 for another
// Content-Type, 400 without a boundary. (In multipart_read.cpp: the parser
// above needs no HTTP core.)
Task<MultipartForm> read_multipart_form(http::HttpExchange& exchange, MultipartLimits limits);

} // namespace mmserve::api
