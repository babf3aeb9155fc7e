// Process-wide logging on spdlog: human text or one JSON object per line.
#pragma once

#include "core/config.hpp"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

namespace mmserve {

void configure_logging(const LoggingConfig& config);
// Logs one structured event: in JSON mode its fields are merged into the
// line's object; in text mode they follow the message as key=value pairs.
void log_event(spdlog::level::level_enum level, const std::string& message, const nlohmann::json& fields);
bool json_logging();

} // namespace mmserve
