// read_multipart_form: the HTTP side of multipart_form (the parser itself is
// I/O-free there, so the sanitizer and fuzz build compiles it without the
// HTTP core).
#include "api/multipart_form.hpp"
#include "core/task.hpp"
#include "core/text.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

namespace mmserve::api {
namespace {

bool starts_with_multipart(std::string_view content_type) {
  constexpr std::string_view kType = "multipart/form-data";
  return text::iequals(content_type.substr(0, kType.size()), kType);
}

} // namespace

Task<MultipartForm> read_multipart_form(http::HttpExchange& exchange, MultipartLimits limits) {
  const std::string content_type = exchange.header(http::bhttp::field::content_type);
  if (!starts_with_multipart(content_type)) {
    throw ApiError::unsupported_media_type(
        fmt::format("Unsupported Content-Type '{}': this endpoint takes multipart/form-data.",
                    content_type.empty() ? "(none)" : content_type));
  }
  const auto boundary = multipart_boundary(content_type);
  if (!boundary) {
    throw ApiError::bad_request("The multipart/form-data Content-Type has no valid boundary parameter.", std::nullopt,
                                "invalid_multipart");
  }
  MultipartParser parser(*boundary, std::move(limits));
  if (const auto length = exchange.content_length()) parser.set_size_hint(*length);
  for (;;) {
    const std::string_view chunk = co_await exchange.read_body_chunk();
    if (chunk.empty()) break;
    parser.feed(chunk);
  }
  co_return parser.finish();
}

} // namespace mmserve::api
