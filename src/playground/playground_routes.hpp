// The browser playground (`server.playground`): the page at `/` and its
// files under `/playground/`, all compiled into the binary.
#pragma once

#include "core/router.hpp"

namespace mmserve::playground {

void register_playground_routes(http::Router& router);

} // namespace mmserve::playground
