// A client for S3 and S3-compatible object stores (MinIO, Ceph, R2, OSS,
// s3rver): PUT, GET, HEAD and DELETE of objects, multipart upload for
// objects above part_size, and presigned GET URLs, all signed with AWS
// Signature V4 (storage/sigv4). Path-style (`endpoint/bucket/key`) or
// virtual-host-style (`bucket.endpoint/key`) addressing.
//
// Calls block the calling thread until the store answers or `timeout`
// passes (each call runs its own I/O loop), so call them from worker
// threads, not from the HTTP server's I/O threads.
#pragma once

#include "storage/sigv4.hpp"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace mmserve {
struct S3Config;
}

namespace mmserve::storage {

enum class Addressing { automatic, path, virtual_host };

struct S3Options {
  std::string endpoint; // scheme://host[:port]; empty: https://s3.<region>.amazonaws.com
  std::string region = "us-east-1";
  std::string bucket;
  sigv4::Credentials credentials;
  Addressing addressing = Addressing::automatic; // virtual-host for AWS endpoints, path for the rest
  uint64_t part_size = 8ull << 20;               // objects above this go up in parts of this size (>= 5 MiB)
  std::chrono::milliseconds timeout{60'000};     // one request, connect to last byte
  std::string ca_file;                           // extra PEM bundle for https endpoints
  uint64_t max_get_bytes = 1ull << 30;           // largest object get_object reads into memory
};

// The options a configuration asks for, with blanks filled from the
// standard AWS environment variables: AWS_ENDPOINT_URL_S3, then
// AWS_ENDPOINT_URL; AWS_REGION, then AWS_DEFAULT_REGION (else us-east-1);
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (as a set,
// when the file names no access key). Throws ConfigError for values the
// client cannot use (malformed endpoint, part size under 5 MiB).
S3Options s3_options(const S3Config& config, const std::map<std::string, std::string>& env);

// A failed call, with S3's own error code when the store sent one.
class S3Error : public std::runtime_error {
public:
  S3Error(const std::string& message, unsigned status, std::string code)
      : std::runtime_error(message), status_(status), code_(std::move(code)) {}
  unsigned status() const { return status_; }       // 0: no HTTP answer (DNS, connection, TLS, timeout)
  const std::string& code() const { return code_; } // "NoSuchBucket", "SignatureDoesNotMatch", ...

private:
  unsigned status_;
  std::string code_;
};

struct ObjectInfo {
  uint64_t size = 0;
  std::string etag;
  std::string content_type;
  std::string last_modified;
};

class S3Client {
public:
  // Throws std::invalid_argument for an endpoint it cannot parse or an empty bucket.
  explicit S3Client(S3Options options);

  // One PUT up to part_size; a multipart upload above it (aborted on failure).
  void put_object(const std::string& key, std::string_view bytes, const std::string& content_type = {});
  // The same from a file, read one part at a time.
  void put_file(const std::string& key, const std::filesystem::path& file, const std::string& content_type = {});
  std::string get_object(const std::string& key);
  std::optional<ObjectInfo> head_object(const std::string& key); // nullopt: no such key
  void delete_object(const std::string& key);                    // no error when absent (as S3)
  // Throws S3Error naming the problem when the bucket is missing or not ours.
  void check_bucket();

  // Multipart upload, step by step (put_object does all of it).
  std::string create_multipart_upload(const std::string& key, const std::string& content_type = {});
  std::string upload_part(const std::string& key, const std::string& upload_id, int part_number,
                          std::string_view bytes); // returns the part's ETag
  void complete_multipart_upload(const std::string& key, const std::string& upload_id,
                                 const std::vector<std::string>& etags);
  void abort_multipart_upload(const std::string& key, const std::string& upload_id);

  // A GET URL anyone can use until `expires` (1 s to 7 days) after `now`.
  std::string presign_get(const std::string& key, std::chrono::seconds expires,
                          std::chrono::system_clock::time_point now = std::chrono::system_clock::now()) const;
  // The unsigned URL of an object (for public buckets and CDNs in front).
  std::string object_url(const std::string& key) const;

  const S3Options& options() const { return options_; }

  struct Response {
    unsigned status = 0;
    std::map<std::string, std::string> headers; // lower-case names
    std::string body;
  };

private:
  struct Target {
    std::string host_header; // host[:port] as signed and sent
    std::string path;        // encoded
  };
  Target target_for(const std::string& key) const;
  std::string subject(const std::string& key) const; // "of 'key' in bucket 'b'" for messages
  Response send(const std::string& operation, const std::string& method, const std::string& key,
                const sigv4::Pairs& query, std::string_view body, const std::string& content_type,
                uint64_t max_response_bytes);
  [[noreturn]] void fail(const std::string& operation, const std::string& key, const Response& response) const;
  void upload_in_parts(const std::string& key, const std::string& content_type, uint64_t total,
                       const std::function<std::string_view(uint64_t offset, uint64_t size)>& read_part);

  S3Options options_;
  std::string scheme_;
  std::string host_;
  std::string port_;
  bool virtual_host_ = false;
};

} // namespace mmserve::storage
