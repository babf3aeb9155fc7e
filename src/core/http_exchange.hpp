// One HTTP request and its response, as a handler sees it. The body is read
// on demand (whole, bounded, or chunk by chunk), and the response is written
// whole or streamed with chunked encoding, so neither side is ever buffered
// in full unless a handler asks for that.
#pragma once

#include "core/api_error.hpp"
#include "core/io_deadline.hpp"
#include "core/task.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mmserve::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;

using RequestParser = bhttp::request_parser<bhttp::buffer_body>;

// Thrown when the client went away mid-request; the server closes quietly.
class ClientGone : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

class HangupSweeper;

struct ExchangeLimits {
  uint64_t max_body_bytes = 0;
  Clock::time_point deadline;
  std::chrono::milliseconds io_timeout{60'000};
};

class HttpExchange {
public:
  // `deadline` bounds the client's socket operations (the connection's, set per operation here).
  HttpExchange(TcpSocket& stream, IoDeadline& deadline, beast::flat_buffer& buffer, RequestParser& parser,
               std::string request_id, std::string remote_address, ExchangeLimits limits,
               const std::atomic<bool>& draining, HangupSweeper& sweeper);

  // ---- request ----
  bhttp::verb method() const { return parser_.get().method(); }
  std::string_view method_string() const { return parser_.get().method_string(); }
  std::string_view target() const { return parser_.get().target(); }
  std::string_view path() const { return path_; }
  const bhttp::fields& headers() const { return parser_.get().base(); }
  std::string header(bhttp::field name) const;
  std::string header(std::string_view name) const;
  // Decoded query parameters (last value wins).
  const std::map<std::string, std::string>& query() const { return query_; }
  // Values captured by "{name}" segments of the matched route.
  const std::map<std::string, std::string>& path_params() const { return path_params_; }
  void set_path_params(std::map<std::string, std::string> params) { path_params_ = std::move(params); }
  const std::string& request_id() const { return request_id_; }
  // The route named in metrics and the access log (default: the router's pattern).
  std::string_view route_label() const { return route_label_; }
  // `label` outlives the exchange: a route's pattern or prefix, or a literal.
  void set_route_label(std::string_view label) { route_label_ = label; }
  void set_route_label(const char* literal) { route_label_ = literal; }
  void set_route_label(std::string&&) = delete; // a temporary would leave the view dangling
  // A proxied request is bounded by its upstream's read timeout instead of
  // the server's request deadline; each read and write stays bounded.
  void set_deadline(Clock::time_point deadline) { limits_.deadline = deadline; }
  const std::string& remote_address() const { return remote_address_; }
  Clock::time_point deadline() const { return limits_.deadline; }
  std::optional<uint64_t> content_length() const;
  uint64_t body_limit() const { return limits_.max_body_bytes; }

  // The whole body, at most `limit` bytes (default: the server's body limit):
  // 413 as soon as it is known to be larger.
  Task<std::string> read_body(std::optional<uint64_t> limit = std::nullopt);
  // The next piece of the body, or an empty view at its end. The view stays
  // valid until the next call. Bounded by the server's body limit (413).
  Task<std::string_view> read_body_chunk();
  bool body_complete() const { return parser_.is_done(); }
  uint64_t body_bytes_read() const { return body_bytes_read_; }

  // ---- response ----
  void set_header(std::string name, std::string value);
  Task<void> respond(unsigned status, std::string body, std::string_view content_type);
  Task<void> respond_json(unsigned status, const nlohmann::json& body);
  Task<void> respond_error(const ApiError& error);

  // Chunked streaming response (SSE and the like).
  Task<void> begin_stream(unsigned status, std::string_view content_type);
  Task<void> write_chunk(std::string_view data);
  Task<void> end_stream();

  // A response whose head a proxy copies from elsewhere: `headers` as given
  // (hop-by-hop fields already removed; any this exchange sets itself are
  // dropped), then exactly `content_length` body bytes, or a chunked body
  // when the length is unknown. No body at all for HEAD requests and
  // statuses without one (1xx, 204, 304). The body goes through write_chunk
  // and end_stream; `first_piece`, when given, goes out in the same write as
  // the head. The head is written directly, without a Beast message.
  using HeaderViews = std::span<const std::pair<std::string_view, std::string_view>>;
  Task<void> begin_relay(unsigned status, HeaderViews headers, std::optional<uint64_t> content_length,
                         std::string_view first_piece = {});

  // True once the client has closed its side: long jobs stop early.
  bool peer_closed();
  class HangupWatch; // below: nested, so it reaches the exchange's socket and sweeper
  // The deadline sweeper of this request's I/O thread (for the sockets a proxy opens on it).
  DeadlineSweeper& deadline_sweeper() const { return deadline_.sweeper(); }

  bool response_started() const { return response_started_; }
  bool response_finished() const { return response_finished_; }
  unsigned status() const { return status_; }
  uint64_t bytes_sent() const { return bytes_sent_; }
  // False when the connection must close after this exchange (body left
  // unread, a streaming error, the client asked for it, or shutdown).
  bool keep_alive() const;
  void force_close() { force_close_ = true; }

private:
  template <typename Message> void apply_common_headers(Message& message);
  Task<void> send_continue_if_expected();
  // The next client read or write must end within the I/O timeout and by the request's deadline.
  void set_io_deadline();

  TcpSocket& stream_;
  IoDeadline& deadline_;
  beast::flat_buffer& buffer_;
  RequestParser& parser_;
  std::string request_id_;
  std::string remote_address_;
  ExchangeLimits limits_;
  const std::atomic<bool>& draining_;
  HangupSweeper& sweeper_;
  std::string path_;
  std::string_view route_label_;
  std::map<std::string, std::string> query_;
  std::map<std::string, std::string> path_params_;
  std::vector<std::pair<std::string, std::string>> extra_headers_;
  std::unique_ptr<char[]> chunk_buffer_; // allocated on the first body read, not zeroed
  uint64_t body_bytes_read_ = 0;
  bool continue_sent_ = false;
  bool response_started_ = false;
  bool response_finished_ = false;
  bool force_close_ = false;
  unsigned status_ = 0;
  uint64_t bytes_sent_ = 0;
  bool stream_chunked_ = true;
  bool streaming_ = false; // begin_stream or begin_relay wrote the head
  std::optional<bhttp::response<bhttp::empty_body>> stream_header_;
  std::optional<bhttp::response_serializer<bhttp::empty_body>> stream_serializer_;
};

// Notices clients that hang up while their request waits on something else
// (a proxy on its upstream): every half second while any watch is active, one
// poll per watched connection. One per I/O context, used only from its
// thread; a request that finishes quickly costs no system call and no timer.
class HangupSweeper {
public:
  explicit HangupSweeper(net::io_context& context) : timer_(context) {}
  HangupSweeper(const HangupSweeper&) = delete;
  HangupSweeper& operator=(const HangupSweeper&) = delete;

private:
  friend class HttpExchange::HangupWatch;
  void add(HttpExchange::HangupWatch* watch);
  void arm();
  void sweep();

  net::steady_timer timer_;
  bool armed_ = false;
  // The active watches. Any still listed when the sweeper goes (their
  // coroutines destroyed later, at shutdown) are let go.
  IntrusiveList<HttpExchange::HangupWatch> watches_;
};

// Calls `on_hangup` once if the client closes its side while the watch is
// active (from construction until stop() or destruction). Construct it while
// the exchange reads nothing from the client. Not movable: the sweeper holds
// its address.
class HttpExchange::HangupWatch : public IntrusiveList<HttpExchange::HangupWatch>::Hook {
public:
  HangupWatch(HttpExchange& exchange, std::function<void()> on_hangup);
  HangupWatch(const HangupWatch&) = delete;
  HangupWatch& operator=(const HangupWatch&) = delete;
  ~HangupWatch() { stop(); }
  void stop();

private:
  friend class HangupSweeper;
  HttpExchange& exchange_;
  std::function<void()> on_hangup_;
};

// Percent-decoding for query strings ('+' as space); nullopt on bad escapes.
std::optional<std::string> url_decode(std::string_view text);

// True when an If-None-Match header names `etag` (a quoted entity tag; weak
// validators compare equal, as RFC 9110 wants for If-None-Match) or is "*".
bool etag_matches(std::string_view if_none_match, std::string_view etag);

} // namespace mmserve::http
