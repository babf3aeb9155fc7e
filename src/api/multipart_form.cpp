#include "api/multipart_form.hpp"
#include "core/text.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

namespace mmserve::api {
namespace {

ApiError malformed(const std::string& why) {
  return ApiError::bad_request("Malformed multipart/form-data body: " + why + ".", std::nullopt, "invalid_multipart");
}

// The parameters of a header value like `form-data; name="file"; filename="a.mp3"`.
std::vector<std::pair<std::string, std::string>> header_parameters(std::string_view value) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t i = value.find(';');
  while (i != std::string_view::npos && i < value.size()) {
    ++i;
    while (i < value.size() && (value[i] == ' ' || value[i] == '\t'))
      ++i;
    const size_t eq = value.find('=', i);
    if (eq == std::string_view::npos) break;
    std::string name = text::lowered(text::trim_blanks(value.substr(i, eq - i)));
    i = eq + 1;
    std::string parsed;
    if (i < value.size() && value[i] == '"') {
      ++i;
      while (i < value.size() && value[i] != '"') {
        if (value[i] == '\\' && i + 1 < value.size()) ++i;
        parsed += value[i++];
      }
      if (i >= value.size()) throw malformed("unterminated quoted string in a part header");
      ++i; // closing quote
      i = value.find(';', i);
    } else {
      const size_t end = value.find(';', i);
      parsed = std::string(text::trim_blanks(value.substr(i, end == std::string_view::npos ? end : end - i)));
      i = end;
    }
    out.emplace_back(std::move(name), std::move(parsed));
  }
  return out;
}

} // namespace

std::optional<std::string> MultipartForm::field(std::string_view name) const {
  std::optional<std::string> value;
  for (const auto& [key, text] : fields) {
    if (key == name) value = text;
  }
  return value;
}

std::vector<std::string> MultipartForm::all(std::string_view name) const {
  std::vector<std::string> values;
  for (const auto& [key, text] : fields) {
    if (key == name) values.push_back(text);
  }
  return values;
}

std::optional<std::string> multipart_boundary(std::string_view content_type) {
  const std::string type = text::lowered(text::trim_blanks(content_type.substr(0, content_type.find(';'))));
  if (type != "multipart/form-data") return std::nullopt;
  try {
    for (auto& [name, value] : header_parameters(content_type)) {
      // RFC 2046: 1 to 70 characters.
      if (name == "boundary" && !value.empty() && value.size() <= 70) return value;
    }
  } catch (const ApiError&) {
    // An unterminated quote (found by the multipart fuzzer): no boundary,
    // not an error about "a part header" of a body not yet read.
  }
  return std::nullopt;
}

MultipartParser::MultipartParser(std::string boundary, MultipartLimits limits)
    : delimiter_("\r\n--" + boundary), limits_(std::move(limits)) {
  // The first delimiter has no preceding CRLF; pretend it had one.
  pending_ = "\r\n";
}

void MultipartParser::feed(std::string_view data) {
  pending_.append(data);
  for (;;) {
    switch (state_) {
    case State::preamble: {
      const size_t at = pending_.find(delimiter_);
      if (at == std::string::npos) {
        // Keep only what could still be the start of the delimiter.
        if (pending_.size() > delimiter_.size()) {
          preamble_bytes_ += pending_.size() - delimiter_.size();
          pending_.erase(0, pending_.size() - delimiter_.size());
        }
        if (preamble_bytes_ > limits_.max_header_bytes) throw malformed("no boundary delimiter where one was expected");
        return;
      }
      // The same bound whether the delimiter came in this piece or later ones:
      // a body's fate must not depend on how the network split it.
      if (preamble_bytes_ + at > limits_.max_header_bytes)
        throw malformed("no boundary delimiter where one was expected");
      const size_t after = at + delimiter_.size();
      if (pending_.size() < after + 2) return;
      if (pending_.compare(after, 2, "--") == 0) {
        state_ = State::done;
        pending_.clear();
        return;
      }
      if (pending_.compare(after, 2, "\r\n") != 0) throw malformed("a boundary delimiter is not followed by CRLF");
      pending_.erase(0, after + 2);
      preamble_bytes_ = 0;
      state_ = State::headers;
      break;
    }
    case State::headers: {
      // Bounded whether the headers' end is in this piece or not (up to 3
      // bytes kept here may be the start of the CRLFCRLF).
      const size_t end = pending_.find("\r\n\r\n");
      if (end == std::string::npos ? pending_.size() > limits_.max_header_bytes + 3 : end > limits_.max_header_bytes) {
        throw malformed("a part's headers are too large");
      }
      if (end == std::string::npos) return;
      if (++parts_ > limits_.max_parts) throw malformed(fmt::format("more than {} parts", limits_.max_parts));
      parse_headers(std::string_view(pending_).substr(0, end));
      pending_.erase(0, end + 4);
      state_ = State::content;
      break;
    }
    case State::content: {
      const size_t at = pending_.find(delimiter_);
      if (at == std::string::npos) {
        // Everything but a possible partial delimiter at the end is content.
        if (pending_.size() > delimiter_.size()) {
          const size_t safe = pending_.size() - delimiter_.size();
          append_content(std::string_view(pending_).substr(0, safe));
          pending_.erase(0, safe);
        }
        return;
      }
      append_content(std::string_view(pending_).substr(0, at));
      end_part();
      pending_.erase(0, at); // the delimiter is handled by the preamble state
      state_ = State::preamble;
      break;
    }
    case State::done: pending_.clear(); return; // the epilogue is ignored
    }
  }
}

void MultipartParser::parse_headers(std::string_view block) {
  std::string name;
  std::string filename;
  std::string content_type;
  bool has_filename = false;
  bool disposition = false;
  size_t start = 0;
  while (start <= block.size()) {
    size_t end = block.find("\r\n", start);
    if (end == std::string_view::npos) end = block.size();
    const std::string_view line = block.substr(start, end - start);
    start = end + 2;
    if (line.empty()) continue;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) throw malformed("a part header has no colon");
    const std::string key = text::lowered(text::trim_blanks(line.substr(0, colon)));
    const std::string_view value = text::trim_blanks(line.substr(colon + 1));
    if (key == "content-disposition") {
      if (text::lowered(text::trim_blanks(value.substr(0, value.find(';')))) != "form-data") {
        throw malformed("a part's Content-Disposition is not form-data");
      }
      disposition = true;
      for (auto& [param, text] : header_parameters(value)) {
        if (param == "name") name = text;
        if (param == "filename") {
          filename = text;
          has_filename = true;
        }
      }
    } else if (key == "content-type") {
      content_type = std::string(value);
    }
  }
  if (!disposition || name.empty()) throw malformed("a part has no Content-Disposition name");
  in_file_ = name == limits_.file_field;
  if (in_file_ && form_.file) {
    throw ApiError::bad_request(fmt::format("Only one '{}' may be uploaded per request.", name), name,
                                "invalid_multipart");
  }
  if (!in_file_ && has_filename) {
    throw ApiError::bad_request(
        fmt::format("Unexpected file in field '{}': only '{}' takes a file.", name, limits_.file_field), name,
        "invalid_type");
  }
  if (in_file_) {
    form_.file = FormFile{name, filename, content_type, {}};
    // Reserved up front: growing by doubling would briefly hold the upload twice.
    if (size_hint_ > 0) form_.file->data.reserve(std::min<uint64_t>(size_hint_, limits_.max_file_bytes));
  } else {
    field_name_ = name;
    field_value_.clear();
  }
}

void MultipartParser::append_content(std::string_view data) {
  if (in_file_) {
    if (form_.file->data.size() + data.size() > limits_.max_file_bytes) {
      throw ApiError::payload_too_large(
          fmt::format("The uploaded file is larger than the limit of {} bytes.", limits_.max_file_bytes));
    }
    form_.file->data.append(data);
    return;
  }
  if (field_value_.size() + data.size() > limits_.max_field_bytes) {
    throw ApiError::payload_too_large(
        fmt::format("The form field '{}' is longer than {} bytes.", field_name_, limits_.max_field_bytes));
  }
  field_value_.append(data);
}

void MultipartParser::end_part() {
  if (!in_file_) form_.fields.emplace_back(std::move(field_name_), std::move(field_value_));
  in_file_ = false;
}

MultipartForm MultipartParser::finish() {
  if (state_ != State::done) throw malformed("the body ends before the closing boundary");
  return std::move(form_);
}

} // namespace mmserve::api
