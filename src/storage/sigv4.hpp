// AWS Signature Version 4 (the signing every S3-compatible store accepts):
// the canonical request, the string to sign, the derived signing key, and
// the two ways to carry the signature, an Authorization header or the query
// string of a presigned URL. Pure functions of their inputs (the time is a
// parameter), so AWS's published examples check them byte for byte.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mmserve::storage::sigv4 {

struct Credentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token; // temporary credentials (STS); empty otherwise
};

struct Scope {
  std::string region;
  std::string service = "s3";
};

using Pairs = std::vector<std::pair<std::string, std::string>>;

struct Request {
  std::string method;
  std::string canonical_uri; // the path as sent, already encoded (uri_encode(path, false))
  Pairs query;               // decoded names and values
  Pairs headers;             // every header to sign, host and x-amz-date included
  std::string payload_hash;  // hex SHA-256 of the body, or "UNSIGNED-PAYLOAD"
};

inline constexpr std::string_view kUnsignedPayload = "UNSIGNED-PAYLOAD";

// RFC 3986 percent-encoding as SigV4 defines it: A-Z a-z 0-9 - . _ ~ stay,
// every other byte is %XX (upper case); '/' stays unless encode_slash.
std::string uri_encode(std::string_view text, bool encode_slash);
// "20130524T000000Z".
std::string amz_date(std::chrono::system_clock::time_point time);

// name=value pairs encoded, sorted, joined by '&'.
std::string canonical_query(const Pairs& query);
// The canonical request; `signed_headers` receives "host;x-amz-date;...".
std::string canonical_request(const Request& request, std::string* signed_headers = nullptr);
std::string string_to_sign(std::string_view amz_date, const Scope& scope, std::string_view canonical_request);
// Hex HMAC of the string to sign under the key derived from the secret,
// the date, the region and the service.
std::string signature(const Credentials& credentials, std::string_view amz_date, const Scope& scope,
                      std::string_view string_to_sign);

// The Authorization header's value for a request whose headers already
// hold host and x-amz-date (= amz_date).
std::string authorization(const Request& request, const Credentials& credentials, const Scope& scope,
                          std::string_view amz_date);

// Turns `request` (method, canonical_uri, query, and a single host header)
// into a presigned one: appends X-Amz-Algorithm, -Credential, -Date,
// -Expires, -SignedHeaders (host), -Security-Token when there is one, and
// X-Amz-Signature last. `expires` is 1 s to 7 days (S3's limit);
// std::invalid_argument otherwise.
void presign(Request& request, const Credentials& credentials, const Scope& scope, std::string_view amz_date,
             std::chrono::seconds expires);

} // namespace mmserve::storage::sigv4
