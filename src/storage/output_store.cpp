#include "storage/output_store.hpp"

#include "storage/atomic_file.hpp"
#include "storage/digest.hpp"
#include "storage/sigv4.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace mmserve::storage {
namespace {

namespace fs = std::filesystem;

std::string output_name(std::string_view bytes, std::string_view extension) {
  if (!valid_output_extension(extension))
    throw std::invalid_argument(fmt::format("invalid output extension '{}'", extension));
  return fmt::format("{}.{}", sha256_hex(bytes), extension);
}

void check_name(const std::string& name) {
  if (!valid_output_name(name)) throw std::invalid_argument(fmt::format("invalid output name '{}'", name));
}

std::string with_trailing_slash(std::string url) {
  if (!url.empty() && !url.ends_with('/')) url += '/';
  return url;
}

class LocalOutputStore final : public OutputStore {
public:
  LocalOutputStore(fs::path dir, std::string base_url) : dir_(std::move(dir)), base_url_(std::move(base_url)) {}

  StoredOutput save(std::string_view bytes, std::string_view extension, const std::string&) override {
    const std::string name = output_name(bytes, extension);
    const fs::path path = dir_ / name;
    // Same name, same bytes: an existing file is already the output.
    if (!fs::exists(path)) {
      fs::create_directories(dir_);
      write_file_atomically(path, bytes);
    }
    return {name, url_of(name), path.string()};
  }
  std::string url_of(const std::string& name) const override {
    check_name(name);
    return base_url_ + name;
  }
  std::optional<std::string> load(const std::string& name) override {
    check_name(name);
    return read_whole_file(dir_ / name);
  }

private:
  fs::path dir_;
  std::string base_url_;
};

class S3OutputStore final : public OutputStore {
public:
  S3OutputStore(S3Options options, std::string key_prefix, std::string base_url, std::chrono::seconds expiry)
      : client_(std::move(options)), key_prefix_(std::move(key_prefix)), base_url_(std::move(base_url)),
        expiry_(expiry) {}

  StoredOutput save(std::string_view bytes, std::string_view extension, const std::string& content_type) override {
    const std::string name = output_name(bytes, extension);
    const std::string key = key_prefix_ + name;
    client_.put_object(key, bytes, content_type);
    return {name, url_of(name), fmt::format("s3://{}/{}", client_.options().bucket, key)};
  }
  std::string url_of(const std::string& name) const override {
    check_name(name);
    const std::string key = key_prefix_ + name;
    if (!base_url_.empty()) return base_url_ + sigv4::uri_encode(key, false);
    return client_.presign_get(key, expiry_);
  }
  std::optional<std::string> load(const std::string& name) override {
    check_name(name);
    try {
      return client_.get_object(key_prefix_ + name);
    } catch (const S3Error& error) {
      if (error.status() == 404) return std::nullopt;
      throw;
    }
  }

private:
  S3Client client_;
  std::string key_prefix_;
  std::string base_url_;
  std::chrono::seconds expiry_;
};

} // namespace

bool valid_output_extension(std::string_view extension) {
  return !extension.empty() && extension.size() <= 8 &&
         std::all_of(extension.begin(), extension.end(), [](unsigned char c) { return std::isalnum(c); });
}

bool valid_output_name(std::string_view name) {
  if (name.find('.') != 64) return false;
  const auto hash = name.substr(0, 64);
  return std::all_of(hash.begin(), hash.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }) &&
         valid_output_extension(name.substr(65));
}

std::unique_ptr<OutputStore> make_local_output_store(fs::path dir, std::string base_url) {
  return std::make_unique<LocalOutputStore>(std::move(dir), with_trailing_slash(std::move(base_url)));
}

std::unique_ptr<OutputStore> make_s3_output_store(S3Options options, std::string key_prefix, std::string base_url,
                                                  std::chrono::seconds presign_expiry) {
  return std::make_unique<S3OutputStore>(std::move(options), std::move(key_prefix),
                                         with_trailing_slash(std::move(base_url)), presign_expiry);
}

std::unique_ptr<OutputStore> make_output_store(const Config& config, const std::map<std::string, std::string>& env) {
  const auto& outputs = config.storage.outputs;
  if (outputs.backend == "local") {
    return make_local_output_store(config.image.outputs_dir,
                                   outputs.base_url.empty() ? std::string("/outputs/") : outputs.base_url);
  }
  auto options = s3_options(config.storage.s3, env);
  if (options.bucket.empty()) {
    throw ConfigError("storage.outputs.backend is s3 but storage.s3.bucket is empty: name the bucket outputs go to");
  }
  if (options.credentials.access_key_id.empty() || options.credentials.secret_access_key.empty()) {
    throw ConfigError("storage.outputs.backend is s3 but no credentials are set: set storage.s3.access_key_id and "
                      "storage.s3.secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
  }
  return make_s3_output_store(std::move(options), outputs.key_prefix, outputs.base_url,
                              std::chrono::seconds(static_cast<int64_t>(outputs.presign_expiry_s)));
}

} // namespace mmserve::storage
