#include "gateway/proxy.hpp"

#include "core/logging.hpp"
#include "core/task.hpp"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/write.hpp>
#include <boost/container/small_vector.hpp>
#include <fmt/format.h>

#include <cstring>

namespace mmserve::gateway {
namespace bhttp = boost::beast::http;

namespace {

constexpr size_t kRelayBufferSize = 64 * 1024;

std::chrono::milliseconds millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

// Fields that describe one hop, not the message (RFC 9110 section 7.6.1),
// plus the ones the proxy sets itself. Beast knows each of these names, so
// the parsed field's enum decides without comparing strings.
bool is_hop_by_hop(bhttp::field known, std::string_view name,
                   const std::vector<std::string_view>& listed_in_connection) {
  switch (known) {
  case bhttp::field::connection:
  case bhttp::field::keep_alive:
  case bhttp::field::proxy_connection:
  case bhttp::field::te:
  case bhttp::field::trailer:
  case bhttp::field::upgrade:
  case bhttp::field::transfer_encoding:
  case bhttp::field::content_length:
  case bhttp::field::expect:
  case bhttp::field::proxy_authorization: return true;
  default: break;
  }
  for (const auto listed : listed_in_connection) {
    if (beast::iequals(name, listed)) return true;
  }
  return false;
}

// The tokens of a Connection field's value, as views into it.
std::vector<std::string_view> connection_tokens(beast::string_view value) {
  std::vector<std::string_view> tokens;
  for (const auto& token : bhttp::token_list(value)) {
    // The usual values name no field (Keep-Alive is hop-by-hop already): no list to allocate.
    if (beast::iequals(token, "keep-alive") || beast::iequals(token, "close")) continue;
    tokens.emplace_back(token.data(), token.size());
  }
  return tokens;
}

std::string_view view(beast::string_view text) {
  return {text.data(), text.size()};
}

// The request head as the upstream sees it, written directly (no Beast
// message: the fields would be copied once more). Names and values come from
// Beast's parser (tokens, no CR or LF) or from this process.
std::string upstream_request_head(const http::HttpExchange& exchange, bool chunked_body) {
  const auto& incoming = exchange.headers();
  std::vector<std::string_view> listed;
  if (const auto connection = incoming.find(bhttp::field::connection); connection != incoming.end())
    listed = connection_tokens(connection->value());
  std::string head;
  head.reserve(512);
  head.append(exchange.method_string()).append(" ").append(exchange.target()).append(" HTTP/1.1\r\n");
  auto add = [&head](std::string_view name, std::string_view value) {
    head.append(name).append(": ").append(value).append("\r\n");
  };
  std::string_view forwarded_for, host;
  for (const auto& field : incoming) {
    const std::string_view name = view(field.name_string());
    if (is_hop_by_hop(field.name(), name, listed)) continue;
    if (beast::iequals(name, "x-forwarded-for")) {
      forwarded_for = view(field.value());
      continue;
    }
    if (beast::iequals(name, "x-request-id") || beast::iequals(name, "x-real-ip") ||
        beast::iequals(name, "x-forwarded-proto") || beast::iequals(name, "x-forwarded-host"))
      continue;
    if (field.name() == bhttp::field::host) host = view(field.value());
    add(name, view(field.value()));
  }
  const std::string& remote = exchange.remote_address();
  if (forwarded_for.empty()) {
    add("X-Forwarded-For", remote);
  } else {
    head.append("X-Forwarded-For: ").append(forwarded_for).append(", ").append(remote).append("\r\n");
  }
  add("X-Real-IP", remote);
  add("X-Forwarded-Proto", "http");
  if (!host.empty()) add("X-Forwarded-Host", host);
  add("X-Request-Id", exchange.request_id());
  if (const auto length = exchange.content_length()) add("Content-Length", std::to_string(*length));
  if (chunked_body) add("Transfer-Encoding", "chunked");
  head += "\r\n";
  return head;
}

// Bump allocation for the copies of one upstream response's header fields,
// which live exactly as long as one request's parser: no heap allocation per
// field. Past the inline buffer, the heap (freed with the arena).
class FieldArena {
public:
  FieldArena() = default;
  FieldArena(const FieldArena&) = delete;
  FieldArena& operator=(const FieldArena&) = delete;
  std::string_view copy(std::string_view text) {
    char* place = nullptr;
    if (used_ + text.size() <= sizeof(buffer_)) {
      place = buffer_ + used_;
      used_ += text.size();
    } else {
      place = overflow_.emplace_back(std::make_unique_for_overwrite<char[]>(text.size())).get();
    }
    std::memcpy(place, text.data(), text.size());
    return {place, text.size()};
  }

private:
  char buffer_[4096];
  size_t used_ = 0;
  std::vector<std::unique_ptr<char[]>> overflow_;
};

// The upstream's response as the relay needs it: the status, the fields in
// arrival order, and body bytes written straight into the caller's relay
// buffer. Beast's own parser would also file every field into a
// case-insensitive tree that a proxy, passing fields on in order, never
// searches.
class RelayResponseParser : public bhttp::basic_parser<false> {
public:
  struct Field {
    bhttp::field known;
    std::string_view name;
    std::string_view value;
  };

  unsigned status() const { return status_; }
  const boost::container::small_vector<Field, 24>& fields() const { return fields_; }
  // The first field with this (known) name, or nullptr.
  const Field* find(bhttp::field known) const {
    for (const auto& field : fields_)
      if (field.known == known) return &field;
    return nullptr;
  }
  // Body bytes go to [data, data + size) from now on.
  void set_body_buffer(char* data, size_t size) {
    body_data_ = data;
    body_space_ = size;
    body_written_ = 0;
  }
  size_t body_written() const { return body_written_; }

private:
  void on_request_impl(bhttp::verb, beast::string_view, beast::string_view, int, beast::error_code& ec) override {
    ec = bhttp::error::bad_method; // a response parser sees no request line
  }
  void on_response_impl(int code, beast::string_view, int, beast::error_code&) override {
    status_ = static_cast<unsigned>(code);
  }
  void on_field_impl(bhttp::field known, beast::string_view name, beast::string_view value,
                     beast::error_code&) override {
    // The views point into the read buffer, which the body reads reuse: copied.
    fields_.push_back({known, arena_.copy(view(name)), arena_.copy(view(value))});
  }
  void on_header_impl(beast::error_code&) override {}
  void on_body_init_impl(const boost::optional<uint64_t>&, beast::error_code&) override {}
  size_t on_body_impl(beast::string_view body, beast::error_code& ec) override { return take_body(body, ec); }
  void on_chunk_header_impl(uint64_t, beast::string_view, beast::error_code&) override {}
  size_t on_chunk_body_impl(uint64_t, beast::string_view body, beast::error_code& ec) override {
    return take_body(body, ec);
  }
  void on_finish_impl(beast::error_code&) override {}

  // As Beast's buffer_body: what fits, then need_buffer until the caller sets the next buffer.
  size_t take_body(beast::string_view body, beast::error_code& ec) {
    const size_t room = body_space_ - body_written_;
    const size_t taken = std::min(room, body.size());
    if (taken > 0) std::memcpy(body_data_ + body_written_, body.data(), taken);
    body_written_ += taken;
    if (taken < body.size()) ec = bhttp::error::need_buffer;
    return taken;
  }

  unsigned status_ = 0;
  FieldArena arena_;
  boost::container::small_vector<Field, 24> fields_;
  char* body_data_ = nullptr;
  size_t body_space_ = 0;
  size_t body_written_ = 0;
};

class UpstreamFailure : public std::runtime_error {
public:
  UpstreamFailure(std::string kind, const std::string& what) : std::runtime_error(what), kind(std::move(kind)) {}
  std::string kind;
};

ApiError bad_gateway(const std::string& message) {
  return ApiError(502, message, "api_error", "bad_gateway");
}

ApiError gateway_timeout(const std::string& message) {
  return ApiError(504, message, "api_error", "upstream_timeout");
}

Task<std::unique_ptr<UpstreamConnection>> connect(UpstreamPool& pool, Endpoint& endpoint,
                                                  http::DeadlineSweeper& deadlines) {
  // On the request's own I/O context: its completions then resume the request without a thread hop.
  auto connection = std::make_unique<UpstreamConnection>(co_await net::this_coro::executor, deadlines);
  boost::system::error_code ec;
  connection->deadline.expires_after(millis(pool.config().connect_timeout_s));
  co_await connection->stream.async_connect(endpoint.address, net::redirect_error(use_task, ec));
  ec = connection->deadline.settle(ec);
  if (ec == beast::error::timeout) {
    throw UpstreamFailure("connect", fmt::format("connecting to {} timed out after {} s", endpoint.label,
                                                 pool.config().connect_timeout_s));
  }
  if (ec) throw UpstreamFailure("connect", fmt::format("cannot connect to {}: {}", endpoint.label, ec.message()));
  connection->stream.set_option(tcp::no_delay(true), ec);
  co_return connection;
}

} // namespace

Task<void> proxy_request(http::HttpExchange& exchange, UpstreamPool& pool) {
  const GatewayConfig& config = pool.config();
  // Long streams are bounded by the read timeout between pieces, not by one deadline.
  exchange.set_deadline(http::Clock::time_point::max());

  const auto body_length = exchange.content_length();
  const bool chunked_body = !body_length && !exchange.body_complete();
  const std::string head = upstream_request_head(exchange, chunked_body);

  // Connect (or reuse) and send the head; until a body byte leaves, another endpoint may be tried.
  std::set<const Endpoint*> tried;
  std::optional<Lease> lease;
  std::unique_ptr<UpstreamConnection> connection;
  std::string last_failure;
  for (int attempt = 0; attempt < 16; ++attempt) {
    lease = pool.pick(tried);
    if (!lease) break;
    Endpoint& endpoint = lease->endpoint();
    try {
      connection = pool.take_idle(endpoint, co_await net::this_coro::executor);
      if (!connection) connection = co_await connect(pool, endpoint, exchange.deadline_sweeper());
      boost::system::error_code ec;
      connection->deadline.expires_after(millis(config.read_timeout_s));
      co_await net::async_write(connection->stream, net::buffer(head), net::redirect_error(use_task, ec));
      ec = connection->deadline.settle(ec);
      if (ec) throw UpstreamFailure("send", fmt::format("sending to {} failed: {}", endpoint.label, ec.message()));
      break;
    } catch (const UpstreamFailure& failure) {
      last_failure = failure.what();
      const bool stale = connection && connection->reused;
      connection.reset();
      // A kept-alive connection the upstream closed meanwhile is no fault of the endpoint.
      if (!stale) {
        pool.report_failure(endpoint, failure.kind);
        tried.insert(&endpoint);
      }
      spdlog::debug("request {}: {}; trying another endpoint", exchange.request_id(), failure.what());
      lease.reset();
    }
  }
  if (!lease || !connection) {
    if (tried.empty()) {
      throw ApiError::unavailable(fmt::format("No upstream can take the request: {}.", pool.unavailable_reason()),
                                  pool.retry_after_seconds(), "no_healthy_upstream");
    }
    throw bad_gateway(fmt::format("Upstream unreachable: {}.", last_failure));
  }
  Endpoint& endpoint = lease->endpoint();
  auto& upstream = connection->stream;
  auto& upstream_deadline = connection->deadline;

  // The body, piece by piece as the client sends it.
  if (!exchange.body_complete()) {
    for (;;) {
      const std::string_view piece = co_await exchange.read_body_chunk(); // 413 or ClientGone propagate
      boost::system::error_code ec;
      upstream_deadline.expires_after(millis(config.read_timeout_s));
      if (piece.empty()) {
        if (chunked_body)
          co_await net::async_write(upstream, bhttp::make_chunk_last(), net::redirect_error(use_task, ec));
      } else if (chunked_body) {
        co_await net::async_write(upstream, bhttp::make_chunk(net::const_buffer(piece.data(), piece.size())),
                                  net::redirect_error(use_task, ec));
      } else {
        co_await net::async_write(upstream, net::const_buffer(piece.data(), piece.size()),
                                  net::redirect_error(use_task, ec));
      }
      ec = upstream_deadline.settle(ec);
      if (ec) {
        pool.report_failure(endpoint, "send");
        throw bad_gateway(
            fmt::format("Upstream {} broke off while receiving the request body: {}.", endpoint.label, ec.message()));
      }
      if (piece.empty()) break;
    }
  }

  // The response head, within the read timeout; a client that leaves meanwhile cancels it.
  // Declared before the parser, so it outlives it (the connection may be gone first).
  RelayResponseParser parser;
  parser.body_limit(std::numeric_limits<uint64_t>::max());
  parser.header_limit(64 * 1024);
  if (exchange.method() == bhttp::verb::head) parser.skip(true);
  {
    // While the upstream works on an answer, a client that hangs up cancels it:
    // closing the upstream connection is how a service learns to stop.
    bool client_gone = false;
    http::HttpExchange::HangupWatch watch(exchange, [&client_gone, &upstream] {
      client_gone = true;
      upstream.cancel();
    });
    boost::system::error_code ec;
    upstream_deadline.expires_after(millis(config.read_timeout_s));
    co_await bhttp::async_read_header(upstream, connection->buffer, parser, net::redirect_error(use_task, ec));
    ec = upstream_deadline.settle(ec);
    watch.stop();
    if (client_gone) throw http::ClientGone("client went away while the upstream was answering");
    if (ec == beast::error::timeout) {
      pool.report_failure(endpoint, "timeout");
      throw gateway_timeout(fmt::format("Upstream {} did not answer within {} s (gateway.read_timeout).",
                                        endpoint.label, config.read_timeout_s));
    }
    if (ec) {
      pool.report_failure(endpoint, "read");
      throw bad_gateway(
          fmt::format("Upstream {} closed the connection without an answer: {}.", endpoint.label, ec.message()));
    }
  }
  pool.report_success(endpoint);

  // The response head as the client sees it.
  std::vector<std::string_view> answer_listed;
  if (const auto* field = parser.find(bhttp::field::connection)) answer_listed = connection_tokens(field->value);
  std::vector<std::pair<std::string_view, std::string_view>> fields;
  fields.reserve(parser.fields().size() + 1);
  for (const auto& field : parser.fields()) {
    if (is_hop_by_hop(field.known, field.name, answer_listed)) continue;
    fields.emplace_back(field.name, field.value);
  }
  std::optional<uint64_t> length;
  if (const auto declared = parser.content_length()) length = *declared;
  if (exchange.method() == bhttp::verb::head) {
    // A HEAD answer keeps the length the upstream declared for the GET.
    if (const auto* declared = parser.find(bhttp::field::content_length))
      fields.emplace_back("Content-Length", declared->value);
  }
  // The body, each piece passed on as it arrives.
  if (!connection->relay_buffer) connection->relay_buffer = std::make_unique_for_overwrite<char[]>(kRelayBufferSize);
  char* const buffer = connection->relay_buffer.get();
  auto read_piece = [&]() -> Task<std::string_view> {
    parser.set_body_buffer(buffer, kRelayBufferSize);
    boost::system::error_code ec;
    upstream_deadline.expires_after(millis(config.read_timeout_s));
    co_await bhttp::async_read_some(upstream, connection->buffer, parser, net::redirect_error(use_task, ec));
    ec = upstream_deadline.settle(ec);
    if (ec == bhttp::error::need_buffer || (ec == bhttp::error::end_of_stream && parser.is_done())) ec = {};
    if (ec) {
      pool.report_failure(endpoint, ec == beast::error::timeout ? "timeout" : "read");
      throw std::runtime_error(
          fmt::format("upstream {} broke off its response: {}", endpoint.label, ec.message())); // client cut off
    }
    co_return std::string_view(buffer, parser.body_written());
  };
  // Body bytes that came with the head go out with it, in one write.
  std::string_view first;
  if (!parser.is_done() && connection->buffer.size() > 0) first = co_await read_piece();
  co_await exchange.begin_relay(parser.status(), fields, length, first);
  while (!parser.is_done()) {
    const std::string_view piece = co_await read_piece();
    if (!piece.empty()) co_await exchange.write_chunk(piece);
  }
  co_await exchange.end_stream();
  if (parser.keep_alive()) pool.give_back(endpoint, std::move(connection));
}

Task<std::pair<unsigned, std::string>> fetch_from_pool(UpstreamPool& pool, std::string target,
                                                       const http::HttpExchange& exchange) {
  const GatewayConfig& config = pool.config();
  const std::string& request_id = exchange.request_id();
  std::set<const Endpoint*> tried;
  for (int attempt = 0; attempt < 8; ++attempt) {
    auto lease = pool.pick(tried);
    if (!lease) break;
    Endpoint& endpoint = lease->endpoint();
    tried.insert(&endpoint);
    try {
      auto connection = pool.take_idle(endpoint, co_await net::this_coro::executor);
      if (!connection) connection = co_await connect(pool, endpoint, exchange.deadline_sweeper());
      bhttp::request<bhttp::empty_body> request{bhttp::verb::get, target, 11};
      request.set(bhttp::field::host, endpoint.address.address().to_string());
      request.set("X-Request-Id", request_id);
      request.keep_alive(true);
      boost::system::error_code ec;
      const auto until = http::coarse_now() + millis(std::min(config.read_timeout_s, 10.0));
      connection->deadline.expires_at(until);
      co_await bhttp::async_write(connection->stream, request, net::redirect_error(use_task, ec));
      ec = connection->deadline.settle(ec);
      if (ec) throw UpstreamFailure("send", ec.message());
      bhttp::response_parser<bhttp::string_body> parser;
      parser.body_limit(4u << 20);
      connection->deadline.expires_at(until);
      co_await bhttp::async_read(connection->stream, connection->buffer, parser, net::redirect_error(use_task, ec));
      ec = connection->deadline.settle(ec);
      if (ec) throw UpstreamFailure(ec == beast::error::timeout ? "timeout" : "read", ec.message());
      pool.report_success(endpoint);
      const unsigned status = parser.get().result_int();
      std::string body = std::move(parser.get().body());
      if (parser.keep_alive()) pool.give_back(endpoint, std::move(connection));
      co_return std::pair{status, std::move(body)};
    } catch (const UpstreamFailure& failure) {
      pool.report_failure(endpoint, failure.kind);
      spdlog::debug("request {}: GET {} from {}: {}", request_id, target, endpoint.label, failure.what());
    }
  }
  co_return std::pair{503u, std::string()};
}

} // namespace mmserve::gateway
