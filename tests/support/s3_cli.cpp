// mmserve's S3 client and output store on the command line, for the tests
// that drive them against a real S3-compatible server (s3rver) and read
// the results back with the official AWS SDK. Credentials come from
// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, as in
// production. Prints one JSON object; on failure {"error","status","code"}
// and exit status 2.
//
//   mmserve_s3_cli --endpoint URL --bucket B [--region R] [--part-size N] [--addressing path|virtual|auto]
//                  put KEY FILE [CONTENT_TYPE] | get KEY OUT_FILE | head KEY | delete KEY
//                  | presign KEY SECONDS [UNIX_TIME] | check-bucket | save-output FILE EXTENSION CONTENT_TYPE
#include "core/config.hpp"
#include "storage/output_store.hpp"
#include "storage/s3_client.hpp"

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

using namespace mmserve;
using nlohmann::json;

namespace {

std::map<std::string, std::string> aws_environment() {
  std::map<std::string, std::string> env;
  for (const char* name : {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                           "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"}) {
    if (const char* value = std::getenv(name)) env[name] = value;
  }
  return env;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

int usage() {
  std::cerr << "usage: mmserve_s3_cli --endpoint URL --bucket B [--region R] [--part-size BYTES] "
               "[--addressing auto|path|virtual] COMMAND ARGS...\n";
  return 64;
}

} // namespace

int main(int argc, char** argv) {
  S3Config config;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--endpoint")
      config.endpoint = value();
    else if (arg == "--bucket")
      config.bucket = value();
    else if (arg == "--region")
      config.region = value();
    else if (arg == "--part-size")
      config.part_size = std::stoull(value());
    else if (arg == "--addressing")
      config.addressing = value();
    else
      args.push_back(arg);
  }
  if (args.empty()) return usage();
  const std::string& command = args[0];
  auto arg = [&](size_t index) -> const std::string& {
    if (index >= args.size()) throw std::invalid_argument(command + ": missing argument " + std::to_string(index));
    return args[index];
  };
  json result = json::object();
  try {
    auto options = storage::s3_options(config, aws_environment());
    storage::S3Client client(options);
    if (command == "put") {
      client.put_file(arg(1), arg(2), args.size() > 3 ? args[3] : std::string());
    } else if (command == "get") {
      const auto bytes = client.get_object(arg(1));
      std::ofstream(arg(2), std::ios::binary) << bytes;
      result["size"] = bytes.size();
    } else if (command == "head") {
      const auto info = client.head_object(arg(1));
      result["exists"] = info.has_value();
      if (info) result["size"] = info->size, result["etag"] = info->etag, result["content_type"] = info->content_type;
    } else if (command == "delete") {
      client.delete_object(arg(1));
    } else if (command == "presign") {
      const auto now = args.size() > 3 ? std::chrono::system_clock::from_time_t(std::stoll(args[3]))
                                       : std::chrono::system_clock::now();
      result["url"] = client.presign_get(arg(1), std::chrono::seconds(std::stoll(arg(2))), now);
    } else if (command == "check-bucket") {
      client.check_bucket();
    } else if (command == "save-output") {
      auto store = storage::make_s3_output_store(options, "outputs/", "", std::chrono::seconds(600));
      const auto saved = store->save(read_file(arg(1)), arg(2), arg(3));
      result = {{"name", saved.name}, {"url", saved.url}, {"location", saved.location}};
    } else {
      return usage();
    }
  } catch (const storage::S3Error& error) {
    std::cout << json{{"error", error.what()}, {"status", error.status()}, {"code", error.code()}}.dump() << "\n";
    return 2;
  } catch (const std::exception& error) {
    std::cout << json{{"error", error.what()}, {"status", 0}, {"code", ""}}.dump() << "\n";
    return 2;
  }
  std::cout << result.dump() << "\n";
  return 0;
}
