// What the outbound HTTP(S) clients (image URL fetches, S3) share before
// their first request byte: resolving with a deadline, the TLS context and
// the client side of the TLS handshake. Header-only: mmserve_storage takes
// only headers from core.
#pragma once

#include "core/task.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/ssl.hpp>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace mmserve::client {

// One TLS client context per CA configuration, built on first use: loading
// the system's CA store is file I/O that every https exchange would repeat.
inline std::shared_ptr<boost::asio::ssl::context> tls_context(const std::string& ca_file) {
  namespace ssl = boost::asio::ssl;
  static std::mutex mutex;
  static std::map<std::string, std::shared_ptr<ssl::context>> contexts;
  std::lock_guard lock(mutex);
  auto& context = contexts[ca_file];
  if (!context) {
    auto fresh = std::make_shared<ssl::context>(ssl::context::tls_client);
    fresh->set_default_verify_paths();
    if (!ca_file.empty()) fresh->load_verify_file(ca_file);
    fresh->set_verify_mode(ssl::verify_peer);
    context = std::move(fresh);
  }
  return context;
}

// DNS with a deadline: past it the resolver is cancelled, and the await
// throws operation_aborted. `host` without IPv6 brackets.
inline Task<boost::asio::ip::tcp::resolver::results_type> resolve_by(std::string host, std::string port,
                                                                     std::chrono::steady_clock::time_point deadline) {
  auto executor = co_await boost::asio::this_coro::executor;
  boost::asio::ip::tcp::resolver resolver(executor);
  boost::asio::steady_timer timer(executor, deadline);
  timer.async_wait([&resolver](boost::system::error_code error) {
    if (!error) resolver.cancel();
  });
  auto results = co_await resolver.async_resolve(host, port, use_task);
  timer.cancel();
  co_return results;
}

// The client side of a TLS handshake with `host` (without brackets): names
// the server (SNI) and checks its certificate against that name.
inline Task<void> tls_handshake(boost::beast::ssl_stream<boost::beast::tcp_stream>& stream, const std::string& host) {
  if (!SSL_set_tlsext_host_name(stream.native_handle(), host.c_str())) {
    throw boost::system::system_error(static_cast<int>(::ERR_get_error()), boost::asio::error::get_ssl_category(),
                                      "TLS server name could not be set");
  }
  stream.set_verify_callback(boost::asio::ssl::host_name_verification(host));
  co_await stream.async_handshake(boost::asio::ssl::stream_base::client, use_task);
}

} // namespace mmserve::client
