#include "core/quantity.hpp"

#include <cmath>
#include <fmt/format.h>
#include <string_view>
#include <utility>

namespace mmserve {
namespace {

// Splits "12.5Gi" into 12.5 and "Gi"; nullopt when the number part is not a
// plain non-negative decimal (no exponents, no signs, no spaces inside).
std::optional<std::pair<double, std::string>> split_number_suffix(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front())))
    text.remove_prefix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
    text.remove_suffix(1);
  size_t i = 0;
  bool digits = false, dot = false;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (std::isdigit(static_cast<unsigned char>(c)))
      digits = true;
    else if (c == '.' && !dot)
      dot = true;
    else
      break;
  }
  if (!digits) return std::nullopt;
  const std::string number(text.substr(0, i));
  return std::make_pair(std::stod(number), std::string(text.substr(i)));
}

} // namespace

std::optional<uint64_t> parse_byte_size(const std::string& text) {
  const auto parts = split_number_suffix(text);
  if (!parts) return std::nullopt;
  const auto& [number, suffix] = *parts;
  double multiplier = 0;
  if (suffix.empty())
    multiplier = 1;
  else if (suffix == "Ki")
    multiplier = 0x1p10;
  else if (suffix == "Mi" || suffix == "m")
    multiplier = 0x1p20;
  else if (suffix == "Gi" || suffix == "g")
    multiplier = 0x1p30;
  else if (suffix == "Ti")
    multiplier = 0x1p40;
  else if (suffix == "Pi")
    multiplier = 0x1p50;
  else if (suffix == "Ei")
    multiplier = 0x1p60;
  else if (suffix == "k" || suffix == "K")
    multiplier = 1e3;
  else if (suffix == "M")
    multiplier = 1e6;
  else if (suffix == "G")
    multiplier = 1e9;
  else if (suffix == "T")
    multiplier = 1e12;
  else if (suffix == "P")
    multiplier = 1e15;
  else if (suffix == "E")
    multiplier = 1e18;
  else
    return std::nullopt;
  const double bytes = number * multiplier;
  if (bytes >= 0x1p64 || bytes != std::floor(bytes)) return std::nullopt;
  return static_cast<uint64_t>(bytes);
}

std::optional<double> parse_duration_seconds(const std::string& text) {
  const auto parts = split_number_suffix(text);
  if (!parts) return std::nullopt;
  const auto& [number, suffix] = *parts;
  if (suffix.empty() || suffix == "s") return number;
  if (suffix == "ms") return number / 1000.0;
  if (suffix == "m") return number * 60.0;
  if (suffix == "h") return number * 3600.0;
  return std::nullopt;
}

std::string format_bytes(uint64_t bytes) {
  static constexpr const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 6) {
    value /= 1024.0;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", value, units[unit]);
}

} // namespace mmserve
