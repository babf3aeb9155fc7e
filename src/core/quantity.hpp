// Parsing of sizes and durations as people write them in Kubernetes manifests
// and nginx configs ("10Gi", "512Mi", "1G", "100m", "300", "90s", "5m").
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace mmserve {

// Bytes from: a plain integer; Kubernetes binary suffixes Ki Mi Gi Ti Pi Ei
// (powers of 1024); Kubernetes decimal suffixes k K M G T P E (powers of
// 1000); nginx lowercase suffixes m g (1024^2, 1024^3, as in
// "proxy-body-size: 100m"). Fractions allowed ("1.5Gi"). nullopt on
// anything else, on negative numbers and on overflow.
std::optional<uint64_t> parse_byte_size(const std::string& text);

// Seconds from: a plain number (seconds, as in "proxy-read-timeout: 300") or a
// number with one of ms, s, m, h. nullopt on anything else or negative values.
std::optional<double> parse_duration_seconds(const std::string& text);

// "10.0 GiB"-style rendering for logs and messages.
std::string format_bytes(uint64_t bytes);

} // namespace mmserve
