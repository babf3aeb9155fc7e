#pragma once

namespace mmserve {
inline constexpr const char* kVersion = MMSERVE_VERSION;
} // namespace mmserve
