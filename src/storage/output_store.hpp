// Where generated outputs (images) go, and the URL a client gets for them
// with response_format=url: a local folder (image.outputs_dir, the seed's
// /outputs) or an S3 bucket. Names are the SHA-256 of the bytes plus an
// extension, so an output never changes under its URL (CDN-friendly) and
// the same image stored twice is one object.
#pragma once

#include "core/config.hpp"
#include "storage/s3_client.hpp"

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace mmserve::storage {

struct StoredOutput {
  std::string name;     // "<sha256>.<extension>"
  std::string url;      // for response_format=url
  std::string location; // the file path, or s3://bucket/key
};

class OutputStore {
public:
  virtual ~OutputStore() = default;
  // Stores bytes (blocking: call from a worker thread). Throws
  // std::system_error (local) or S3Error (s3); std::invalid_argument for an
  // extension that is not 1-8 letters or digits.
  virtual StoredOutput save(std::string_view bytes, std::string_view extension, const std::string& content_type) = 0;
  // A fresh URL for a stored name (a new presigned URL for S3 without
  // base_url). Throws std::invalid_argument for a name save() cannot make.
  virtual std::string url_of(const std::string& name) const = 0;
  // The bytes of a stored output; nullopt when absent.
  virtual std::optional<std::string> load(const std::string& name) = 0;
};

// "<64 hex>.<1-8 alphanumerics>": the only names the stores accept back.
bool valid_output_name(std::string_view name);
// 1-8 ASCII letters or digits: an extension save() accepts.
bool valid_output_extension(std::string_view extension);

// The local folder; URLs are base_url + name.
std::unique_ptr<OutputStore> make_local_output_store(std::filesystem::path dir, std::string base_url);
// The bucket; keys are key_prefix + name. URLs are base_url + key when a
// base URL (a CDN, a public bucket) is set, else presigned GETs valid for
// presign_expiry.
std::unique_ptr<OutputStore> make_s3_output_store(S3Options options, std::string key_prefix, std::string base_url,
                                                  std::chrono::seconds presign_expiry);

// The store the configuration names (storage.outputs.*, storage.s3.*,
// image.outputs_dir). Throws ConfigError: s3 without a bucket or credentials.
std::unique_ptr<OutputStore> make_output_store(const Config& config, const std::map<std::string, std::string>& env);

} // namespace mmserve::storage
