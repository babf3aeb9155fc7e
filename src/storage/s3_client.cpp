#include "storage/s3_client.hpp"

#include "core/client_connect.hpp"
#include "core/config.hpp"
#include "core/http_url.hpp"
#include "core/task.hpp"
#include "core/text.hpp"
#include "core/version.hpp"
#include "storage/digest.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <fmt/format.h>

#include <fstream>
#include <thread>

namespace mmserve::storage {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMinPartSize = 5ull << 20; // S3's smallest part but the last
constexpr int kMaxParts = 10000;              // S3's most parts per upload
constexpr uint64_t kErrorBodyLimit = 1ull << 20;

// An S3 endpoint is an origin, http(s)://host[:port], a trailing slash at most.
std::optional<HttpUrl> parse_endpoint(const std::string& text) {
  auto url = parse_http_url(text);
  if (!url || url->target.find_first_not_of('/') != std::string::npos ||
      text.find_first_of("@#") != std::string::npos) {
    return std::nullopt;
  }
  return url;
}

// Bucket names usable as a DNS label prefix (no dots with TLS: the
// wildcard certificate covers one label).
bool dns_compatible(const std::string& bucket, bool tls) {
  if (bucket.size() < 3 || bucket.size() > 63) return false;
  for (char c : bucket) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || (c == '.' && !tls);
    if (!ok) return false;
  }
  return bucket.front() != '-' && bucket.back() != '-';
}

std::string xml_unescape(std::string text) {
  static const std::pair<const char*, const char*> kEntities[] = {
      {"&quot;", "\""}, {"&apos;", "'"}, {"&lt;", "<"}, {"&gt;", ">"}, {"&amp;", "&"}};
  for (const auto& [entity, plain] : kEntities) {
    for (size_t at = text.find(entity); at != std::string::npos; at = text.find(entity, at + 1))
      text.replace(at, std::string_view(entity).size(), plain);
  }
  return text;
}

std::string xml_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
    case '&': out += "&amp;"; break;
    case '<': out += "&lt;"; break;
    case '>': out += "&gt;"; break;
    default: out += c;
    }
  }
  return out;
}

// The text of the first <tag>...</tag>; S3's answers are flat enough.
std::optional<std::string> xml_value(const std::string& xml, const std::string& tag) {
  const auto open = xml.find("<" + tag + ">");
  if (open == std::string::npos) return std::nullopt;
  const auto start = open + tag.size() + 2;
  const auto close = xml.find("</" + tag + ">", start);
  if (close == std::string::npos) return std::nullopt;
  return xml_unescape(xml.substr(start, close - start));
}

struct Exchange {
  std::string scheme, host, port; // where to connect (host without brackets)
  std::string ca_file;
  bhttp::request<bhttp::span_body<const char>> request;
  uint64_t max_response_bytes;
  Clock::time_point deadline;
};

template <typename Stream> Task<S3Client::Response> write_and_read(Stream& stream, Exchange& exchange) {
  co_await bhttp::async_write(stream, exchange.request, use_task);
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.header_limit(64 * 1024);
  parser.body_limit(exchange.max_response_bytes);
  if (exchange.request.method() == bhttp::verb::head) parser.skip(true);
  co_await bhttp::async_read(stream, buffer, parser, use_task);
  S3Client::Response response;
  response.status = parser.get().result_int();
  for (const auto& field : parser.get()) {
    response.headers[text::lowered(field.name_string())] = std::string(field.value());
  }
  response.body = std::move(parser.get().body());
  co_return response;
}

Task<S3Client::Response> run_exchange(Exchange& exchange) {
  auto executor = co_await net::this_coro::executor;
  std::string host = exchange.host;
  if (host.starts_with("[")) host = host.substr(1, host.size() - 2);
  auto resolved = co_await client::resolve_by(host, exchange.port, exchange.deadline);
  beast::tcp_stream tcp_stream(executor);
  tcp_stream.expires_at(exchange.deadline);
  co_await tcp_stream.async_connect(resolved, use_task);
  if (exchange.scheme == "http") {
    auto response = co_await write_and_read(tcp_stream, exchange);
    co_return response;
  }
  beast::ssl_stream<beast::tcp_stream> stream(std::move(tcp_stream), *client::tls_context(exchange.ca_file));
  co_await client::tls_handshake(stream, host);
  auto response = co_await write_and_read(stream, exchange);
  co_return response;
}

std::string hint_for(const std::string& code) {
  if (code == "SignatureDoesNotMatch") {
    return " (check storage.s3.secret_access_key / AWS_SECRET_ACCESS_KEY, the region, and the clock)";
  }
  if (code == "InvalidAccessKeyId") return " (check storage.s3.access_key_id / AWS_ACCESS_KEY_ID)";
  if (code == "NoSuchBucket") return " (create the bucket, or fix storage.s3.bucket)";
  if (code == "RequestTimeTooSkewed") return " (this machine's clock is off)";
  if (code == "AuthorizationHeaderMalformed" || code == "PermanentRedirect") {
    return " (check storage.s3.region / AWS_REGION)";
  }
  return {};
}

// HEAD answers carry no body; the status says what went wrong.
std::string code_for_status(unsigned status) {
  switch (status) {
  case 301: return "PermanentRedirect";
  case 400: return "BadRequest";
  case 403: return "AccessDenied";
  case 404: return "NotFound";
  default: return fmt::format("HTTP{}", status);
  }
}

} // namespace

S3Options s3_options(const S3Config& config, const std::map<std::string, std::string>& env) {
  auto from_env = [&](std::initializer_list<const char*> names) -> std::string {
    for (const char* name : names) {
      const auto it = env.find(name);
      if (it != env.end() && !it->second.empty()) return it->second;
    }
    return {};
  };
  S3Options options;
  options.endpoint = !config.endpoint.empty() ? config.endpoint : from_env({"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"});
  options.region = !config.region.empty() ? config.region : from_env({"AWS_REGION", "AWS_DEFAULT_REGION"});
  if (options.region.empty()) options.region = "us-east-1";
  options.bucket = config.bucket;
  if (!config.access_key_id.empty()) {
    options.credentials = {config.access_key_id, config.secret_access_key, config.session_token};
  } else {
    options.credentials = {from_env({"AWS_ACCESS_KEY_ID"}), from_env({"AWS_SECRET_ACCESS_KEY"}),
                           from_env({"AWS_SESSION_TOKEN"})};
  }
  options.addressing = config.addressing == "path"      ? Addressing::path
                       : config.addressing == "virtual" ? Addressing::virtual_host
                                                        : Addressing::automatic;
  options.part_size = config.part_size;
  options.timeout = std::chrono::milliseconds(static_cast<int64_t>(config.timeout_s * 1000));
  options.ca_file = config.ca_file;
  if (!options.endpoint.empty() && !parse_endpoint(options.endpoint)) {
    throw ConfigError(
        fmt::format("storage.s3.endpoint: invalid value '{}' (allowed: http(s)://host[:port])", options.endpoint));
  }
  if (options.part_size < kMinPartSize) {
    throw ConfigError(fmt::format("storage.s3.part_size: {} is below S3's 5 MiB minimum part", options.part_size));
  }
  return options;
}

S3Client::S3Client(S3Options options) : options_(std::move(options)) {
  if (options_.bucket.empty()) throw std::invalid_argument("S3: no bucket configured (storage.s3.bucket)");
  if (options_.endpoint.empty()) options_.endpoint = fmt::format("https://s3.{}.amazonaws.com", options_.region);
  const auto endpoint = parse_endpoint(options_.endpoint);
  if (!endpoint) throw std::invalid_argument("S3: invalid endpoint '" + options_.endpoint + "'");
  scheme_ = endpoint->scheme;
  host_ = endpoint->host_in_url(); // in brackets: it is used in Host and URLs
  port_ = endpoint->port;
  const bool aws = host_.ends_with(".amazonaws.com");
  switch (options_.addressing) {
  case Addressing::path: virtual_host_ = false; break;
  case Addressing::virtual_host: virtual_host_ = true; break;
  case Addressing::automatic: virtual_host_ = aws && dns_compatible(options_.bucket, scheme_ == "https"); break;
  }
  options_.part_size = std::max(options_.part_size, kMinPartSize);
}

std::string S3Client::subject(const std::string& key) const {
  return key.empty() ? fmt::format("of bucket '{}'", options_.bucket)
                     : fmt::format("of '{}' in bucket '{}'", key, options_.bucket);
}

S3Client::Target S3Client::target_for(const std::string& key) const {
  const bool default_port = port_ == (scheme_ == "https" ? "443" : "80");
  const std::string host = virtual_host_ ? options_.bucket + "." + host_ : host_;
  Target target;
  target.host_header = default_port ? host : host + ":" + port_;
  const std::string encoded_key = sigv4::uri_encode(key, false);
  target.path = virtual_host_ ? "/" + encoded_key : "/" + options_.bucket + (key.empty() ? "" : "/" + encoded_key);
  return target;
}

std::string S3Client::object_url(const std::string& key) const {
  const auto target = target_for(key);
  return fmt::format("{}://{}{}", scheme_, target.host_header, target.path);
}

std::string S3Client::presign_get(const std::string& key, std::chrono::seconds expires,
                                  std::chrono::system_clock::time_point now) const {
  const auto target = target_for(key);
  sigv4::Request request;
  request.method = "GET";
  request.canonical_uri = target.path;
  request.headers = {{"host", target.host_header}};
  sigv4::presign(request, options_.credentials, {options_.region, "s3"}, sigv4::amz_date(now), expires);
  // The signature last, as AWS writes presigned URLs.
  auto signature = request.query.back();
  request.query.pop_back();
  return fmt::format("{}://{}{}?{}&X-Amz-Signature={}", scheme_, target.host_header, target.path,
                     sigv4::canonical_query(request.query), signature.second);
}

S3Client::Response S3Client::send(const std::string& operation, const std::string& method, const std::string& key,
                                  const sigv4::Pairs& query, std::string_view body, const std::string& content_type,
                                  uint64_t max_response_bytes) {
  const auto target = target_for(key);
  const std::string date = sigv4::amz_date(std::chrono::system_clock::now());
  sigv4::Request signing;
  signing.method = method;
  signing.canonical_uri = target.path;
  signing.query = query;
  signing.payload_hash = sha256_hex(body);
  signing.headers = {
      {"host", target.host_header}, {"x-amz-date", date}, {"x-amz-content-sha256", signing.payload_hash}};
  if (!content_type.empty()) signing.headers.emplace_back("content-type", content_type);
  if (!options_.credentials.session_token.empty()) {
    signing.headers.emplace_back("x-amz-security-token", options_.credentials.session_token);
  }

  Exchange exchange;
  exchange.scheme = scheme_;
  exchange.host = virtual_host_ ? options_.bucket + "." + host_ : host_;
  exchange.port = port_;
  exchange.ca_file = options_.ca_file;
  exchange.max_response_bytes = max_response_bytes;
  const std::string query_text = sigv4::canonical_query(query);
  exchange.request = {bhttp::string_to_verb(method), target.path + (query_text.empty() ? "" : "?" + query_text), 11};
  for (const auto& [name, value] : signing.headers)
    exchange.request.set(name, value);
  if (!options_.credentials.access_key_id.empty()) {
    exchange.request.set(bhttp::field::authorization,
                         sigv4::authorization(signing, options_.credentials, {options_.region, "s3"}, date));
  }
  exchange.request.set(bhttp::field::user_agent, std::string("mmserve/") + kVersion);
  exchange.request.body() = {body.data(), body.size()};
  exchange.request.prepare_payload();

  const std::string where = fmt::format("{}://{}:{}", scheme_, exchange.host, port_);
  // Busy stores answer 500/503 (SlowDown); a second and third try usually pass.
  for (int attempt = 1;; ++attempt) {
    exchange.deadline = Clock::now() + options_.timeout;
    net::io_context io;
    auto future = net::co_spawn(io, run_exchange(exchange), net::use_future);
    io.run();
    Response response;
    try {
      response = future.get();
    } catch (const boost::system::system_error& error) {
      const auto code = error.code();
      std::string why = code.message();
      if (code == beast::error::timeout || code == net::error::operation_aborted) {
        why = fmt::format("no answer within {} ms", options_.timeout.count());
      } else if (code == bhttp::error::body_limit) {
        why = fmt::format("the answer is larger than {} bytes", max_response_bytes);
      }
      throw S3Error(fmt::format("S3 {} {}: endpoint {} unreachable: {}", operation, subject(key), where, why), 0, "");
    } catch (const std::exception& error) {
      throw S3Error(fmt::format("S3 {} {}: endpoint {} failed: {}", operation, subject(key), where, error.what()), 0,
                    "");
    }
    if ((response.status == 500 || response.status == 503) && attempt < 3) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200 * attempt));
      continue;
    }
    return response;
  }
}

void S3Client::fail(const std::string& operation, const std::string& key, const Response& response) const {
  std::string code = xml_value(response.body, "Code").value_or(code_for_status(response.status));
  std::string message = xml_value(response.body, "Message").value_or("");
  if (message.empty() && response.status == 404) {
    message = key.empty() ? "the bucket does not exist" : "no such key";
  }
  if (const auto region = response.headers.find("x-amz-bucket-region"); region != response.headers.end()) {
    message += fmt::format(" (the bucket is in region {})", region->second);
  }
  throw S3Error(fmt::format("S3 {} {} at {} failed: HTTP {} {}{}{}{}", operation, subject(key), options_.endpoint,
                            response.status, code, message.empty() ? "" : ": ", message, hint_for(code)),
                response.status, code);
}

void S3Client::put_object(const std::string& key, std::string_view bytes, const std::string& content_type) {
  if (bytes.size() <= options_.part_size) {
    const auto response = send("PUT", "PUT", key, {}, bytes, content_type, kErrorBodyLimit);
    if (response.status != 200) fail("PUT", key, response);
    return;
  }
  upload_in_parts(key, content_type, bytes.size(),
                  [&](uint64_t offset, uint64_t size) { return bytes.substr(offset, size); });
}

void S3Client::put_file(const std::string& key, const std::filesystem::path& file, const std::string& content_type) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw S3Error(fmt::format("S3 PUT '{}': cannot read '{}'", key, file.string()), 0, "");
  const uint64_t total = std::filesystem::file_size(file);
  std::string buffer;
  auto read_part = [&](uint64_t offset, uint64_t size) -> std::string_view {
    buffer.resize(size);
    in.seekg(static_cast<std::streamoff>(offset));
    if (!in.read(buffer.data(), static_cast<std::streamsize>(size))) {
      throw S3Error(fmt::format("S3 PUT '{}': cannot read '{}' at byte {}", key, file.string(), offset), 0, "");
    }
    return buffer;
  };
  if (total <= options_.part_size) {
    put_object(key, read_part(0, total), content_type);
    return;
  }
  upload_in_parts(key, content_type, total, read_part);
}

void S3Client::upload_in_parts(const std::string& key, const std::string& content_type, uint64_t total,
                               const std::function<std::string_view(uint64_t, uint64_t)>& read_part) {
  // Parts grow past part_size only when 10,000 of them would not hold the object.
  const uint64_t part_size = std::max(options_.part_size, (total + kMaxParts - 1) / kMaxParts);
  const std::string upload_id = create_multipart_upload(key, content_type);
  try {
    std::vector<std::string> etags;
    for (uint64_t offset = 0; offset < total; offset += part_size) {
      const uint64_t size = std::min(part_size, total - offset);
      etags.push_back(upload_part(key, upload_id, static_cast<int>(etags.size() + 1), read_part(offset, size)));
    }
    complete_multipart_upload(key, upload_id, etags);
  } catch (...) {
    try {
      abort_multipart_upload(key, upload_id); // stored parts cost money until aborted
    } catch (const std::exception&) {
    }
    throw;
  }
}

std::string S3Client::create_multipart_upload(const std::string& key, const std::string& content_type) {
  const auto response =
      send("CreateMultipartUpload", "POST", key, {{"uploads", ""}}, {}, content_type, kErrorBodyLimit);
  if (response.status != 200) fail("CreateMultipartUpload", key, response);
  auto upload_id = xml_value(response.body, "UploadId");
  if (!upload_id || upload_id->empty()) {
    throw S3Error(fmt::format("S3 CreateMultipartUpload '{}': the answer holds no UploadId", key), response.status, "");
  }
  return *upload_id;
}

std::string S3Client::upload_part(const std::string& key, const std::string& upload_id, int part_number,
                                  std::string_view bytes) {
  const auto response =
      send("UploadPart", "PUT", key, {{"partNumber", std::to_string(part_number)}, {"uploadId", upload_id}}, bytes, {},
           kErrorBodyLimit);
  if (response.status != 200) fail(fmt::format("UploadPart {}", part_number), key, response);
  const auto etag = response.headers.find("etag");
  if (etag == response.headers.end()) {
    throw S3Error(fmt::format("S3 UploadPart {} of '{}': the answer has no ETag", part_number, key), 200, "");
  }
  return etag->second;
}

void S3Client::complete_multipart_upload(const std::string& key, const std::string& upload_id,
                                         const std::vector<std::string>& etags) {
  std::string xml = "<CompleteMultipartUpload>";
  for (size_t i = 0; i < etags.size(); ++i)
    xml += fmt::format("<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>", i + 1, xml_escape(etags[i]));
  xml += "</CompleteMultipartUpload>";
  const auto response =
      send("CompleteMultipartUpload", "POST", key, {{"uploadId", upload_id}}, xml, "application/xml", kErrorBodyLimit);
  // S3 may answer 200 and still report an error in the body.
  if (response.status != 200 || response.body.find("<Error>") != std::string::npos) {
    fail("CompleteMultipartUpload", key, response);
  }
}

void S3Client::abort_multipart_upload(const std::string& key, const std::string& upload_id) {
  const auto response = send("AbortMultipartUpload", "DELETE", key, {{"uploadId", upload_id}}, {}, {}, kErrorBodyLimit);
  if (response.status != 204 && response.status != 200) fail("AbortMultipartUpload", key, response);
}

std::string S3Client::get_object(const std::string& key) {
  auto response = send("GET", "GET", key, {}, {}, {}, options_.max_get_bytes);
  if (response.status != 200) fail("GET", key, response);
  return std::move(response.body);
}

std::optional<ObjectInfo> S3Client::head_object(const std::string& key) {
  const auto response = send("HEAD", "HEAD", key, {}, {}, {}, 0);
  if (response.status == 404) return std::nullopt;
  if (response.status != 200) fail("HEAD", key, response);
  auto header = [&](const char* name) {
    const auto it = response.headers.find(name);
    return it == response.headers.end() ? std::string() : it->second;
  };
  ObjectInfo info;
  info.size = std::strtoull(header("content-length").c_str(), nullptr, 10);
  info.etag = header("etag");
  info.content_type = header("content-type");
  info.last_modified = header("last-modified");
  return info;
}

void S3Client::delete_object(const std::string& key) {
  const auto response = send("DELETE", "DELETE", key, {}, {}, {}, kErrorBodyLimit);
  if (response.status != 204 && response.status != 200) fail("DELETE", key, response);
}

void S3Client::check_bucket() {
  const auto response = send("HEAD", "HEAD", "", {}, {}, {}, 0);
  if (response.status != 200) fail("HEAD", "", response);
}

} // namespace mmserve::storage
