// Runs a role: builds the router from the enabled services, serves until a
// signal asks for a graceful drain.
#pragma once

#include "core/config.hpp"

namespace mmserve {

// Returns the process exit code.
int run_role(Role role, const Config& config);

} // namespace mmserve
