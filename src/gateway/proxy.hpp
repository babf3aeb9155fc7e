// Forwards one request to a pool and relays the answer, streaming both ways:
// the request body goes upstream piece by piece as the client sends it, and
// each piece of the response (an SSE event, say) reaches the client as soon
// as it arrives. Neither body is ever held whole.
#pragma once

#include "core/http_exchange.hpp"
#include "core/task.hpp"
#include "gateway/upstream_pool.hpp"

namespace mmserve::gateway {

// Connect failures and stale kept-alive connections move the request to
// another endpoint, as long as no byte of its body was sent anywhere. Errors
// before the response starts are OpenAI-style JSON: 502 (upstream
// unreachable or broke off), 503 (no usable endpoint, with Retry-After),
// 504 (no answer within gateway.read_timeout).
Task<void> proxy_request(http::HttpExchange& exchange, UpstreamPool& pool);

// One GET to some usable endpoint of the pool, for the gateway's own needs
// (the merged /v1/models) while serving `exchange`. Returns the status and
// the body (bounded).
Task<std::pair<unsigned, std::string>> fetch_from_pool(UpstreamPool& pool, std::string target,
                                                       const http::HttpExchange& exchange);

} // namespace mmserve::gateway
