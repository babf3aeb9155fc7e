#include "storage/sigv4.hpp"

#include "core/text.hpp"
#include "storage/digest.hpp"

#include <algorithm>
#include <ctime>
#include <fmt/format.h>
#include <stdexcept>

namespace mmserve::storage::sigv4 {
namespace {

// Leading and trailing blanks dropped, inner runs of spaces made one.
std::string trimmed_value(std::string_view value) {
  std::string out;
  bool space = false;
  for (char c : value) {
    if (c == ' ' || c == '\t') {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

std::string date_of(std::string_view amz_date) {
  return std::string(amz_date.substr(0, 8));
}

std::string credential_scope(std::string_view amz_date, const Scope& scope) {
  return fmt::format("{}/{}/{}/aws4_request", date_of(amz_date), scope.region, scope.service);
}

} // namespace

std::string uri_encode(std::string_view text, bool encode_slash) {
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || (c == '/' && !encode_slash)) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

std::string amz_date(std::chrono::system_clock::time_point time) {
  const std::time_t seconds = std::chrono::system_clock::to_time_t(time);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y%m%dT%H%M%SZ", &utc);
  return text;
}

std::string canonical_query(const Pairs& query) {
  std::vector<std::pair<std::string, std::string>> encoded;
  encoded.reserve(query.size());
  for (const auto& [name, value] : query)
    encoded.emplace_back(uri_encode(name, true), uri_encode(value, true));
  std::sort(encoded.begin(), encoded.end());
  std::string out;
  for (const auto& [name, value] : encoded) {
    if (!out.empty()) out += '&';
    out += name + "=" + value;
  }
  return out;
}

std::string canonical_request(const Request& request, std::string* signed_headers) {
  // Sorted by lower-case name; repeated names joined by commas in the order given.
  std::vector<std::pair<std::string, std::string>> headers;
  for (const auto& [name, value] : request.headers) {
    const std::string key = text::lowered(name);
    auto it = std::find_if(headers.begin(), headers.end(), [&](const auto& entry) { return entry.first == key; });
    if (it == headers.end())
      headers.emplace_back(key, trimmed_value(value));
    else
      it->second.append(",").append(trimmed_value(value));
  }
  std::stable_sort(headers.begin(), headers.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::string canonical_headers;
  std::string names;
  for (const auto& [name, value] : headers) {
    canonical_headers += name + ":" + value + "\n";
    if (!names.empty()) names += ';';
    names += name;
  }
  if (signed_headers) *signed_headers = names;
  return fmt::format("{}\n{}\n{}\n{}\n{}\n{}", request.method, request.canonical_uri, canonical_query(request.query),
                     canonical_headers, names, request.payload_hash);
}

std::string string_to_sign(std::string_view amz_date, const Scope& scope, std::string_view canonical_request) {
  return fmt::format("AWS4-HMAC-SHA256\n{}\n{}\n{}", amz_date, credential_scope(amz_date, scope),
                     storage::sha256_hex(canonical_request));
}

std::string signature(const Credentials& credentials, std::string_view amz_date, const Scope& scope,
                      std::string_view string_to_sign) {
  const std::string date_key = hmac_sha256("AWS4" + credentials.secret_access_key, date_of(amz_date));
  const std::string region_key = hmac_sha256(date_key, scope.region);
  const std::string service_key = hmac_sha256(region_key, scope.service);
  const std::string signing_key = hmac_sha256(service_key, "aws4_request");
  return to_hex(hmac_sha256(signing_key, string_to_sign));
}

std::string authorization(const Request& request, const Credentials& credentials, const Scope& scope,
                          std::string_view amz_date) {
  std::string signed_headers;
  const std::string canonical = canonical_request(request, &signed_headers);
  return fmt::format("AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}", credentials.access_key_id,
                     credential_scope(amz_date, scope), signed_headers,
                     signature(credentials, amz_date, scope, string_to_sign(amz_date, scope, canonical)));
}

void presign(Request& request, const Credentials& credentials, const Scope& scope, std::string_view amz_date,
             std::chrono::seconds expires) {
  if (expires.count() < 1 || expires.count() > 604800) {
    throw std::invalid_argument(
        fmt::format("a presigned URL lasts 1 to 604800 seconds (7 days); {} was asked", expires.count()));
  }
  request.payload_hash = std::string(kUnsignedPayload);
  request.query.emplace_back("X-Amz-Algorithm", "AWS4-HMAC-SHA256");
  request.query.emplace_back("X-Amz-Credential", credentials.access_key_id + "/" + credential_scope(amz_date, scope));
  request.query.emplace_back("X-Amz-Date", std::string(amz_date));
  request.query.emplace_back("X-Amz-Expires", std::to_string(expires.count()));
  if (!credentials.session_token.empty()) request.query.emplace_back("X-Amz-Security-Token", credentials.session_token);
  std::string signed_headers;
  canonical_request(request, &signed_headers); // the names only; the query is not final yet
  request.query.emplace_back("X-Amz-SignedHeaders", signed_headers);
  const std::string canonical = canonical_request(request);
  request.query.emplace_back("X-Amz-Signature",
                             signature(credentials, amz_date, scope, string_to_sign(amz_date, scope, canonical)));
}

} // namespace mmserve::storage::sigv4
