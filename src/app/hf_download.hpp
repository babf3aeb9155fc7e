// Downloads one file from a Hugging Face-style server to disk, the way
// `mmserve pull` needs it: streamed to `<dest>.part` (never held in memory),
// resumed with a Range request when a .part is left from a cut transfer,
// redirects followed (bounded; the token only goes to the endpoint's own
// host, as huggingface_hub does, never to the CDN it redirects to), checked
// against the SHA-256 the server states (X-Linked-Etag / ETag of LFS files)
// and renamed into place only when whole and verified.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>

namespace mmserve {

class DownloadError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

struct DownloadOptions {
  std::string token;        // sent as "Authorization: Bearer" to token_origin only
  std::string token_origin; // "scheme://host:port" of the endpoint
  int max_redirects = 10;
  std::chrono::milliseconds idle_timeout{60'000}; // longest a connect, read or write may stall
  // Called as bytes arrive: bytes on disk so far and the total when known.
  std::function<void(uint64_t done, std::optional<uint64_t> total)> progress;
};

struct DownloadResult {
  uint64_t size = 0;
  std::string sha256;          // of the final file
  std::string expected_sha256; // what the server stated; empty when it stated none
  uint64_t resumed_from = 0;   // bytes kept from an earlier .part
};

// Downloads `url` to `dest` (folder must exist). Throws DownloadError with a
// message fit for the user; on a checksum mismatch the .part is removed,
// on a cut transfer it is kept for the next run.
DownloadResult download_file(const std::string& url, const std::string& dest, const DownloadOptions& options);

// A small text resource (repository metadata); nullopt on any HTTP error
// status, throws DownloadError on network failures.
std::optional<std::string> fetch_text(const std::string& url, const DownloadOptions& options,
                                      uint64_t max_bytes = 1 << 20);

// "scheme://host:port" of an http(s) URL; empty when it is not one.
std::string url_origin(const std::string& url);

} // namespace mmserve
