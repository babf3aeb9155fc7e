#include "app/hf_download.hpp"

#include "core/client_connect.hpp"
#include "core/http_url.hpp"
#include "core/task.hpp"
#include "core/text.hpp"
#include "core/version.hpp"
#include "storage/digest.hpp"

#include <utility> // boost 1.74 awaitable.hpp uses std::exchange without it

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>

namespace mmserve {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace fs = std::filesystem;
using tcp = net::ip::tcp;

// Hugging Face states an LFS file's SHA-256 as its (quoted) ETag; git blobs
// carry a 40-digit SHA-1 and CDNs an MD5, which are not used.
std::string sha256_from_etag(std::string_view value) {
  if (value.starts_with("W/")) value.remove_prefix(2);
  while (!value.empty() && value.front() == '"')
    value.remove_prefix(1);
  while (!value.empty() && value.back() == '"')
    value.remove_suffix(1);
  if (value.size() != 64 || value.find_first_not_of("0123456789abcdefABCDEF") != std::string_view::npos) return {};
  return text::lowered(value);
}

struct Head {
  unsigned status = 0;
  std::optional<uint64_t> length;
  std::string content_range;
  std::string location;
  std::string sha256;
  std::string url; // the URL that gave the final answer
};
using OnHead = std::function<bool(const Head&)>; // false: leave the body unread
using OnData = std::function<void(const char*, size_t)>;

// Body bytes have started to arrive: an error from here on cuts a transfer
// rather than failing to start one.
struct BodyCut : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename Stream>
Task<Head> exchange(Stream& stream, const HttpUrl& target, const std::string& range, const DownloadOptions& options,
                    const OnHead& on_head, const OnData& on_data) {
  auto& lowest = beast::get_lowest_layer(stream);
  bhttp::request<bhttp::empty_body> request{bhttp::verb::get, target.target, 11};
  request.set(bhttp::field::host, target.host_field());
  request.set(bhttp::field::user_agent, std::string("mmserve/") + kVersion);
  request.set(bhttp::field::accept_encoding, "identity"); // bytes as stored, so ranges and hashes line up
  request.set(bhttp::field::connection, "close");
  if (!range.empty()) request.set(bhttp::field::range, range);
  if (!options.token.empty() && target.origin() == options.token_origin) {
    request.set(bhttp::field::authorization, "Bearer " + options.token);
  }
  lowest.expires_after(options.idle_timeout);
  co_await bhttp::async_write(stream, request, use_task);

  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::buffer_body> parser;
  parser.header_limit(64 * 1024);
  parser.body_limit(std::numeric_limits<std::uint64_t>::max()); // boost 1.74 mis-compares boost::none
  lowest.expires_after(options.idle_timeout);
  co_await bhttp::async_read_header(stream, buffer, parser, use_task);
  const auto& message = parser.get();
  Head head;
  head.status = message.result_int();
  if (const auto length = parser.content_length()) head.length = *length;
  head.content_range = std::string(message[bhttp::field::content_range]);
  head.location = std::string(message[bhttp::field::location]);
  head.sha256 = sha256_from_etag(message["X-Linked-Etag"]);
  if (head.sha256.empty()) head.sha256 = sha256_from_etag(message[bhttp::field::etag]);
  if (head.status < 200 || head.status >= 300 || !on_head(head)) co_return head;

  std::vector<char> chunk(256 * 1024);
  while (!parser.is_done()) {
    parser.get().body().data = chunk.data();
    parser.get().body().size = chunk.size();
    lowest.expires_after(options.idle_timeout);
    boost::system::error_code error;
    co_await bhttp::async_read(stream, buffer, parser, net::redirect_error(use_task, error));
    if (error == bhttp::error::need_buffer) error = {};
    const size_t got = chunk.size() - parser.get().body().size;
    if (got > 0) on_data(chunk.data(), got);
    if (error) throw BodyCut(error.message());
  }
  co_return head;
}

// GET with redirects followed; the first SHA-256 stated on the way wins
// (Hugging Face puts it on the resolve answer, not on the CDN's).
Task<Head> get(std::string url, std::string range, const DownloadOptions& options, OnHead on_head, OnData on_data) {
  auto executor = co_await net::this_coro::executor;
  std::string stated_sha256;
  for (int redirects = 0;; ++redirects) {
    const auto target = parse_http_url(url);
    if (!target) throw DownloadError(fmt::format("'{}' is not an http(s) URL", url));
    const auto addresses = co_await client::resolve_by(target->host, target->port,
                                                       std::chrono::steady_clock::now() + options.idle_timeout);
    beast::tcp_stream socket(executor);
    socket.expires_after(options.idle_timeout);
    co_await socket.async_connect(addresses, use_task);
    Head head;
    if (target->scheme == "https") {
      // The system's CA store (SSL_CERT_FILE / SSL_CERT_DIR honoured).
      beast::ssl_stream<beast::tcp_stream> stream(std::move(socket), *client::tls_context(""));
      beast::get_lowest_layer(stream).expires_after(options.idle_timeout);
      co_await client::tls_handshake(stream, target->host);
      head = co_await exchange(stream, *target, range, options, on_head, on_data);
    } else {
      head = co_await exchange(socket, *target, range, options, on_head, on_data);
    }
    if (stated_sha256.empty()) stated_sha256 = head.sha256;
    if (head.status >= 300 && head.status < 400 && !head.location.empty()) {
      if (redirects >= options.max_redirects) {
        throw DownloadError(fmt::format("more than {} redirects from {}", options.max_redirects, url));
      }
      url = resolve_location(*target, head.location);
      continue;
    }
    head.sha256 = stated_sha256;
    head.url = url;
    co_return head;
  }
}

// Runs one download coroutine to completion on this thread.
Head run_get(const std::string& url, const std::string& range, const DownloadOptions& options, OnHead on_head,
             OnData on_data) {
  net::io_context ioc;
  std::exception_ptr failure;
  Head result;
  net::co_spawn(ioc, get(url, range, options, std::move(on_head), std::move(on_data)),
                [&](std::exception_ptr error, Head head) {
                  failure = error;
                  result = std::move(head);
                });
  ioc.run();
  if (failure) std::rethrow_exception(failure);
  return result;
}

[[noreturn]] void throw_status(const Head& head, const std::string& url) {
  if (head.status == 404) {
    throw DownloadError(fmt::format("not found (HTTP 404): {} (check the repository, file name and revision)", url));
  }
  if (head.status == 401 || head.status == 403) {
    throw DownloadError(
        fmt::format("access denied (HTTP {}): {} (a gated or private repository needs HF_TOKEN)", head.status, url));
  }
  if (head.status >= 300 && head.status < 400) {
    throw DownloadError(fmt::format("HTTP {} without a Location from {}", head.status, head.url));
  }
  throw DownloadError(fmt::format("HTTP {} from {}", head.status, head.url.empty() ? url : head.url));
}

// "bytes 100-199/200" -> {100, 200}
std::pair<std::optional<uint64_t>, std::optional<uint64_t>> parse_content_range(const std::string& text) {
  std::pair<std::optional<uint64_t>, std::optional<uint64_t>> out;
  unsigned long long first = 0, last = 0, total = 0;
  if (std::sscanf(text.c_str(), "bytes %llu-%llu/%llu", &first, &last, &total) == 3) {
    out = {first, total};
  } else if (std::sscanf(text.c_str(), "bytes %llu-%llu/*", &first, &last) == 2) {
    out.first = first;
  }
  return out;
}

} // namespace

std::string url_origin(const std::string& url) {
  const auto target = parse_http_url(url);
  return target ? target->origin() : std::string();
}

DownloadResult download_file(const std::string& url, const std::string& dest, const DownloadOptions& options) {
  const std::string part = dest + ".part";
  DownloadResult result;
  for (int attempt = 0;; ++attempt) {
    std::error_code ec;
    const uint64_t offset = fs::is_regular_file(part, ec) ? fs::file_size(part, ec) : 0;
    std::ofstream out;
    uint64_t on_disk = offset;
    std::optional<uint64_t> total;
    bool body_started = false;
    auto on_head = [&](const Head& head) {
      const auto [first, size] = parse_content_range(head.content_range);
      if (head.status == 206 && offset > 0 && first == offset) {
        out.open(part, std::ios::binary | std::ios::app);
        result.resumed_from = offset;
        total = size ? size : head.length ? std::optional<uint64_t>(offset + *head.length) : std::nullopt;
      } else if (head.status == 206) {
        throw DownloadError(
            fmt::format("the server answered range '{}' to a request for bytes {}-", head.content_range, offset));
      } else { // a whole answer (no Range support, or the file changed): start over
        out.open(part, std::ios::binary | std::ios::trunc);
        on_disk = 0;
        total = head.length;
      }
      if (!out) throw DownloadError("cannot write " + part);
      body_started = true;
      if (options.progress) options.progress(on_disk, total);
      return true;
    };
    auto on_data = [&](const char* data, size_t size) {
      out.write(data, static_cast<std::streamsize>(size));
      if (!out) throw DownloadError("cannot write " + part + " (disk full?)");
      on_disk += size;
      if (options.progress) options.progress(on_disk, total);
    };
    Head head;
    try {
      head = run_get(url, offset > 0 ? fmt::format("bytes={}-", offset) : std::string(), options, on_head, on_data);
    } catch (const DownloadError&) {
      throw;
    } catch (const std::exception& error) {
      out.close(); // what arrived stays in the .part for the next run
      if (body_started) {
        throw DownloadError(fmt::format("download of {} interrupted after {}{} bytes ({}); run the same command again "
                                        "to resume",
                                        url, on_disk, total ? fmt::format(" of {}", *total) : std::string(),
                                        error.what()));
      }
      throw DownloadError(fmt::format("cannot download {}: {}", url, error.what()));
    }
    // 416: the .part is not a prefix the server can continue (already
    // whole, or the file shrank): drop it and fetch the whole file once.
    if (head.status == 416 && offset > 0 && attempt == 0) {
      fs::remove(part, ec);
      continue;
    }
    if (head.status < 200 || head.status >= 300) throw_status(head, url);
    out.close();
    if (!out) throw DownloadError("cannot write " + part);
    result.size = on_disk;
    result.expected_sha256 = head.sha256;
    result.sha256 = storage::sha256_file_hex(part);
    if (!result.expected_sha256.empty() && result.sha256 != result.expected_sha256) {
      fs::remove(part, ec);
      throw DownloadError(fmt::format("checksum mismatch for {}: the server states sha256 {}, the download has {}; "
                                      "the download was removed",
                                      url, result.expected_sha256, result.sha256));
    }
    fs::rename(part, dest, ec); // same folder: atomic
    if (ec) throw DownloadError(fmt::format("cannot rename {} to {}: {}", part, dest, ec.message()));
    return result;
  }
}

std::optional<std::string> fetch_text(const std::string& url, const DownloadOptions& options, uint64_t max_bytes) {
  std::string text;
  try {
    const Head head = run_get(
        url, {}, options, [](const Head&) { return true; },
        [&](const char* data, size_t size) {
          if (text.size() + size > max_bytes) throw DownloadError(fmt::format("{} is larger than expected", url));
          text.append(data, size);
        });
    if (head.status < 200 || head.status >= 300) return std::nullopt;
  } catch (const DownloadError&) {
    throw;
  } catch (const std::exception& error) {
    throw DownloadError(fmt::format("cannot fetch {}: {}", url, error.what()));
  }
  return text;
}

} // namespace mmserve
