#include "core/http_exchange.hpp"

#include "core/task.hpp"
#include "core/version.hpp"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/write.hpp>
#include <fmt/format.h>
#include <poll.h>

#include <array>
#include <charconv>
#include <span>
#include <sstream>

namespace mmserve::http {
namespace {

constexpr size_t kChunkBufferSize = 64 * 1024;
const std::string kServerHeader = std::string("mmserve/") + kVersion;

bool is_disconnect(const boost::system::error_code& ec) {
  return ec == net::error::eof || ec == net::error::connection_reset || ec == net::error::broken_pipe ||
         ec == net::error::operation_aborted || ec == beast::error::timeout || ec == bhttp::error::end_of_stream ||
         ec == net::error::not_connected || ec == net::error::bad_descriptor;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

} // namespace

std::optional<std::string> url_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '+') {
      out += ' ';
    } else if (c == '%') {
      if (i + 2 >= text.size()) return std::nullopt;
      const int hi = hex_value(text[i + 1]), lo = hex_value(text[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

bool etag_matches(std::string_view if_none_match, std::string_view etag) {
  if (if_none_match.empty()) return false;
  if (if_none_match == "*") return true;
  size_t start = 0;
  while (start < if_none_match.size()) {
    size_t end = if_none_match.find(',', start);
    if (end == std::string_view::npos) end = if_none_match.size();
    std::string_view candidate = if_none_match.substr(start, end - start);
    while (!candidate.empty() && candidate.front() == ' ')
      candidate.remove_prefix(1);
    while (!candidate.empty() && candidate.back() == ' ')
      candidate.remove_suffix(1);
    if (candidate.starts_with("W/")) candidate.remove_prefix(2);
    if (candidate == etag) return true;
    start = end + 1;
  }
  return false;
}

HttpExchange::HttpExchange(TcpSocket& stream, IoDeadline& deadline, beast::flat_buffer& buffer, RequestParser& parser,
                           std::string request_id, std::string remote_address, ExchangeLimits limits,
                           const std::atomic<bool>& draining, HangupSweeper& sweeper)
    : stream_(stream), deadline_(deadline), buffer_(buffer), parser_(parser), request_id_(std::move(request_id)),
      remote_address_(std::move(remote_address)), limits_(limits), draining_(draining), sweeper_(sweeper) {
  const std::string_view target = parser_.get().target();
  const auto question = target.find('?');
  path_ = std::string(target.substr(0, question));
  if (question != std::string_view::npos) {
    std::string_view rest = target.substr(question + 1);
    while (!rest.empty()) {
      const auto amp = rest.find('&');
      const std::string_view pair = rest.substr(0, amp);
      const auto eq = pair.find('=');
      auto key = url_decode(pair.substr(0, eq));
      auto value = eq == std::string_view::npos ? std::optional<std::string>("") : url_decode(pair.substr(eq + 1));
      if (key && value && !key->empty()) query_[*key] = *value;
      if (amp == std::string_view::npos) break;
      rest.remove_prefix(amp + 1);
    }
  }
}

std::string HttpExchange::header(bhttp::field name) const {
  const auto it = parser_.get().find(name);
  return it == parser_.get().end() ? std::string() : std::string(it->value());
}

std::string HttpExchange::header(std::string_view name) const {
  const auto it = parser_.get().find(beast::string_view(name.data(), name.size()));
  return it == parser_.get().end() ? std::string() : std::string(it->value());
}

std::optional<uint64_t> HttpExchange::content_length() const {
  const auto length = parser_.content_length();
  if (!length) return std::nullopt;
  return static_cast<uint64_t>(*length);
}

void HttpExchange::set_io_deadline() {
  const auto io_deadline = coarse_now() + limits_.io_timeout;
  deadline_.expires_at(std::min(io_deadline, limits_.deadline));
}

Task<void> HttpExchange::send_continue_if_expected() {
  if (continue_sent_) co_return;
  continue_sent_ = true;
  if (!beast::iequals(header(bhttp::field::expect), "100-continue")) co_return;
  static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
  boost::system::error_code ec;
  set_io_deadline();
  co_await net::async_write(stream_, net::buffer(kContinue.data(), kContinue.size()),
                            net::redirect_error(use_task, ec));
  ec = deadline_.settle(ec);
  if (ec) throw ClientGone("client went away before sending its body: " + ec.message());
}

Task<std::string_view> HttpExchange::read_body_chunk() {
  if (parser_.is_done()) co_return std::string_view();
  // An oversize Content-Length never gets here: the server answers 413 before calling a handler.
  co_await send_continue_if_expected();
  if (!chunk_buffer_) chunk_buffer_ = std::make_unique_for_overwrite<char[]>(kChunkBufferSize);
  for (;;) {
    auto& body = parser_.get().body();
    body.data = chunk_buffer_.get();
    body.size = kChunkBufferSize;
    boost::system::error_code ec;
    set_io_deadline();
    co_await bhttp::async_read_some(stream_, buffer_, parser_, net::redirect_error(use_task, ec));
    ec = deadline_.settle(ec);
    if (ec == bhttp::error::need_buffer) ec = {};
    if (ec) {
      force_close_ = true;
      if (ec == beast::error::timeout) {
        throw ApiError::timeout("Timed out waiting for the request body.");
      }
      if (is_disconnect(ec) || ec == bhttp::error::partial_message) {
        throw ClientGone("client went away while sending its body: " + ec.message());
      }
      throw ApiError::bad_request("Malformed request body: " + ec.message(), std::nullopt, "malformed_body");
    }
    const size_t produced = kChunkBufferSize - parser_.get().body().size;
    body_bytes_read_ += produced;
    if (body_bytes_read_ > limits_.max_body_bytes) {
      force_close_ = true;
      throw ApiError::payload_too_large(
          fmt::format("Request body is larger than the limit of {} bytes.", limits_.max_body_bytes));
    }
    if (produced > 0) co_return std::string_view(chunk_buffer_.get(), produced);
    if (parser_.is_done()) co_return std::string_view();
  }
}

Task<std::string> HttpExchange::read_body(std::optional<uint64_t> limit) {
  const uint64_t max_bytes = std::min(limit.value_or(limits_.max_body_bytes), limits_.max_body_bytes);
  if (const auto length = content_length(); length && *length > max_bytes) {
    force_close_ = true;
    throw ApiError::payload_too_large(
        fmt::format("Request body of {} bytes is larger than the limit of {} bytes.", *length, max_bytes));
  }
  std::string body;
  if (const auto length = content_length()) body.reserve(*length);
  for (;;) {
    const auto chunk = co_await read_body_chunk();
    if (chunk.empty()) break;
    if (body.size() + chunk.size() > max_bytes) {
      force_close_ = true;
      throw ApiError::payload_too_large(fmt::format("Request body is larger than the limit of {} bytes.", max_bytes));
    }
    body.append(chunk);
  }
  co_return body;
}

void HttpExchange::set_header(std::string name, std::string value) {
  extra_headers_.emplace_back(std::move(name), std::move(value));
}

bool HttpExchange::peer_closed() {
  // POLLRDHUP reports the peer's FIN without consuming pipelined bytes.
  pollfd watch{};
  watch.fd = stream_.native_handle();
  watch.events = POLLRDHUP;
  return ::poll(&watch, 1, 0) > 0 && (watch.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

HttpExchange::HangupWatch::HangupWatch(HttpExchange& exchange, std::function<void()> on_hangup)
    : exchange_(exchange), on_hangup_(std::move(on_hangup)) {
  exchange_.sweeper_.add(this);
}

void HttpExchange::HangupWatch::stop() {
  if (listed()) exchange_.sweeper_.watches_.erase(this);
}

void HangupSweeper::add(HttpExchange::HangupWatch* watch) {
  watches_.push_front(watch);
  arm();
}

void HangupSweeper::arm() {
  if (armed_ || watches_.empty()) return;
  armed_ = true;
  timer_.expires_after(std::chrono::milliseconds(500));
  timer_.async_wait([this](const boost::system::error_code& ec) {
    armed_ = false;
    if (ec) return; // the server is going away
    sweep();
    arm();
  });
}

void HangupSweeper::sweep() {
  for (auto* watch = watches_.front(); watch;) {
    auto* const next = IntrusiveList<HttpExchange::HangupWatch>::next(watch);
    if (watch->exchange_.peer_closed()) {
      // Off the list before the call: the callback may end the watch's request.
      watches_.erase(watch);
      if (watch->on_hangup_) watch->on_hangup_();
    }
    watch = next;
  }
}

bool HttpExchange::keep_alive() const {
  // The parser's flags, set while it read the head (the message's own
  // keep_alive() would parse the Connection field again).
  return !force_close_ && !draining_.load() && parser_.keep_alive() && parser_.is_done();
}

template <typename Message> void HttpExchange::apply_common_headers(Message& message) {
  message.set(bhttp::field::server, kServerHeader);
  message.set("X-Request-Id", request_id_);
  for (const auto& [name, value] : extra_headers_)
    message.set(name, value);
}

Task<void> HttpExchange::respond(unsigned status, std::string body, std::string_view content_type) {
  if (response_started_) throw std::logic_error("response already started");
  response_started_ = true;
  status_ = status;
  bhttp::response<bhttp::string_body> response{static_cast<bhttp::status>(status), 11};
  apply_common_headers(response);
  response.set(bhttp::field::content_type, beast::string_view(content_type.data(), content_type.size()));
  response.body() = std::move(body);
  response.prepare_payload();
  response.keep_alive(keep_alive());
  if (method() == bhttp::verb::head) response.body().clear(); // length header kept as computed
  boost::system::error_code ec;
  set_io_deadline();
  bhttp::response_serializer<bhttp::string_body> serializer{response};
  const size_t written = co_await bhttp::async_write(stream_, serializer, net::redirect_error(use_task, ec));
  ec = deadline_.settle(ec);
  bytes_sent_ += written;
  if (ec) {
    force_close_ = true;
    throw ClientGone("client went away before the response was sent: " + ec.message());
  }
  response_finished_ = true;
}

Task<void> HttpExchange::respond_json(unsigned status, const nlohmann::json& body) {
  co_await respond(status, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n",
                   "application/json");
}

Task<void> HttpExchange::respond_error(const ApiError& error) {
  if (error.retry_after_seconds() > 0) set_header("Retry-After", std::to_string(error.retry_after_seconds()));
  if (error.status() == 413 || error.status() == 431 || error.status() == 408) force_close_ = true;
  co_await respond_json(static_cast<unsigned>(error.status()), error.to_json());
}

Task<void> HttpExchange::begin_stream(unsigned status, std::string_view content_type) {
  if (response_started_) throw std::logic_error("response already started");
  response_started_ = true;
  status_ = status;
  streaming_ = true;
  stream_header_.emplace(static_cast<bhttp::status>(status), 11);
  auto& header = *stream_header_;
  apply_common_headers(header);
  header.set(bhttp::field::content_type, beast::string_view(content_type.data(), content_type.size()));
  header.set(bhttp::field::cache_control, "no-cache");
  header.set("X-Accel-Buffering", "no"); // tell nginx-style proxies not to buffer the stream
  header.chunked(true);
  header.keep_alive(keep_alive());
  stream_serializer_.emplace(header);
  boost::system::error_code ec;
  set_io_deadline();
  bytes_sent_ += co_await bhttp::async_write_header(stream_, *stream_serializer_, net::redirect_error(use_task, ec));
  ec = deadline_.settle(ec);
  if (ec) {
    force_close_ = true;
    throw ClientGone("client went away: " + ec.message());
  }
}

Task<void> HttpExchange::begin_relay(unsigned status, HeaderViews headers, std::optional<uint64_t> content_length,
                                     std::string_view first_piece) {
  if (response_started_) throw std::logic_error("response already started");
  response_started_ = true;
  streaming_ = true;
  status_ = status;
  const bool bodiless = method() == bhttp::verb::head || status < 200 || status == 204 || status == 304;
  stream_chunked_ = !bodiless && !content_length;

  // Field names and values come from Beast's parser (tokens, no CR or LF) or from this process.
  std::string head;
  head.reserve(512);
  const auto reason = bhttp::obsolete_reason(static_cast<bhttp::status>(status));
  // Appended piece by piece: this runs per proxied request, and fmt's format-string parsing showed in profiles.
  std::array<char, 16> status_digits{};
  const auto status_end = std::to_chars(status_digits.data(), status_digits.data() + status_digits.size(), status).ptr;
  head.append("HTTP/1.1 ")
      .append(status_digits.data(), status_end)
      .append(" ")
      .append(reason.data(), reason.size())
      .append("\r\n");
  auto add = [&head](std::string_view name, std::string_view value) {
    head.append(name).append(": ").append(value).append("\r\n");
  };
  const auto set_here = [this](std::string_view name) {
    if (beast::iequals(name, "server") || beast::iequals(name, "x-request-id")) return true;
    return std::any_of(extra_headers_.begin(), extra_headers_.end(),
                       [name](const auto& extra) { return beast::iequals(extra.first, name); });
  };
  for (const auto& [name, value] : headers) {
    if (!set_here(name)) add(name, value);
  }
  add("Server", kServerHeader);
  add("X-Request-Id", request_id_);
  for (const auto& [name, value] : extra_headers_)
    add(name, value);
  if (!bodiless && content_length) add("Content-Length", std::to_string(*content_length));
  if (stream_chunked_) add("Transfer-Encoding", "chunked");
  if (!keep_alive()) add("Connection", "close");
  head += "\r\n";

  boost::system::error_code ec;
  set_io_deadline();
  // Head and first piece in one write: for small answers, one send instead of two.
  std::array<net::const_buffer, 4> pieces;
  size_t count = 0;
  pieces[count++] = net::buffer(head);
  std::string size_line;
  if (!bodiless && !first_piece.empty()) {
    if (stream_chunked_) {
      std::array<char, 24> digits{};
      const auto end = std::to_chars(digits.data(), digits.data() + digits.size(), first_piece.size(), 16).ptr;
      size_line.assign(digits.data(), end).append("\r\n");
      pieces[count++] = net::buffer(size_line);
    }
    pieces[count++] = net::buffer(first_piece.data(), first_piece.size());
    if (stream_chunked_) pieces[count++] = net::buffer("\r\n", 2);
  }
  bytes_sent_ += co_await net::async_write(stream_, std::span(pieces.data(), count), net::redirect_error(use_task, ec));
  ec = deadline_.settle(ec);
  if (ec) {
    force_close_ = true;
    throw ClientGone("client went away: " + ec.message());
  }
  if (bodiless) response_finished_ = true;
}

Task<void> HttpExchange::write_chunk(std::string_view data) {
  if (!streaming_) throw std::logic_error("write_chunk before begin_stream");
  if (data.empty()) co_return; // an empty chunk would end the stream
  boost::system::error_code ec;
  set_io_deadline();
  if (stream_chunked_) {
    bytes_sent_ += co_await net::async_write(stream_, bhttp::make_chunk(net::const_buffer(data.data(), data.size())),
                                             net::redirect_error(use_task, ec));
  } else {
    bytes_sent_ += co_await net::async_write(stream_, net::const_buffer(data.data(), data.size()),
                                             net::redirect_error(use_task, ec));
  }
  ec = deadline_.settle(ec);
  if (ec) {
    force_close_ = true;
    throw ClientGone("client went away during the stream: " + ec.message());
  }
}

Task<void> HttpExchange::end_stream() {
  if (!streaming_) throw std::logic_error("end_stream before begin_stream");
  if (!stream_chunked_) { // a relayed body of known length (or none) ends with its last byte
    response_finished_ = true;
    co_return;
  }
  boost::system::error_code ec;
  set_io_deadline();
  bytes_sent_ += co_await net::async_write(stream_, bhttp::make_chunk_last(), net::redirect_error(use_task, ec));
  ec = deadline_.settle(ec);
  if (ec) {
    force_close_ = true;
    throw ClientGone("client went away at the end of the stream: " + ec.message());
  }
  response_finished_ = true;
}

} // namespace mmserve::http
