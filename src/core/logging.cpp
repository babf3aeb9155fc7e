#include "core/logging.hpp"

#include <atomic>
#include <chrono>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>

namespace mmserve {
namespace {

std::atomic<bool> g_json{false};
// Prefix of payloads that log_event already rendered as a JSON object.
constexpr char kStructuredMark = '\x1e';

// %* : the message payload as a JSON string body (escaped, no quotes), so a
// JSON log line stays valid whatever the message holds.
class JsonMessageFlag : public spdlog::custom_flag_formatter {
public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    const std::string payload(msg.payload.data(), msg.payload.size());
    if (payload.size() >= 3 && payload.front() == kStructuredMark) {
      // Structured event: a marked JSON object; splice its fields in.
      const std::string inner = payload.substr(2, payload.size() - 3);
      dest.append(inner.data(), inner.data() + inner.size());
      return;
    }
    const std::string quoted =
        "\"message\":" + nlohmann::json(payload).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    dest.append(quoted.data(), quoted.data() + quoted.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<JsonMessageFlag>(); }
};

} // namespace

bool json_logging() {
  return g_json.load();
}

void configure_logging(const LoggingConfig& config) {
  auto logger = spdlog::default_logger();
  if (!logger || logger->sinks().empty()) {
    logger = spdlog::stderr_color_mt("mmserve");
    spdlog::set_default_logger(logger);
  }
  g_json = config.format == "json";
  if (g_json) {
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<JsonMessageFlag>('*').set_pattern(R"({"time":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l",%*})");
    spdlog::set_formatter(std::move(formatter));
  } else {
    spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  }
  spdlog::set_level(spdlog::level::from_str(config.level));
  spdlog::flush_on(spdlog::level::info);
}

void log_event(spdlog::level::level_enum level, const std::string& message, const nlohmann::json& fields) {
  if (!spdlog::should_log(level)) return;
  if (g_json) {
    nlohmann::json line = fields;
    line["message"] = message;
    spdlog::log(level, "{}{}", kStructuredMark, line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return;
  }
  std::string text = message;
  for (const auto& [key, value] : fields.items()) {
    text += ' ' + key + '=' + (value.is_string() ? value.get<std::string>() : value.dump());
  }
  spdlog::log(level, "{}", text);
}

} // namespace mmserve
