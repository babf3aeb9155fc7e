#include "static_http_server.hpp"

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <vector>

namespace mmserve::test {

namespace net = boost::asio;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

StaticHttpServer::StaticHttpServer(const std::string& address)
    : acceptor_(ioc_, tcp::endpoint(net::ip::make_address(address), 0)), address_(address) {
  port_ = acceptor_.local_endpoint().port();
  thread_ = std::thread([this] {
    std::vector<std::thread> connections;
    for (;;) {
      boost::system::error_code error;
      tcp::socket socket(ioc_);
      acceptor_.accept(socket, error);
      if (stopping_ || error) break;
      connections.emplace_back([this, s = std::move(socket)]() mutable { serve(std::move(s)); });
    }
    for (auto& connection : connections)
      connection.join();
  });
}

StaticHttpServer::~StaticHttpServer() {
  stopping_ = true;
  // Wake the blocking accept with a connection of our own.
  boost::system::error_code error;
  tcp::socket poke(ioc_);
  poke.connect(acceptor_.local_endpoint(), error);
  thread_.join();
}

void StaticHttpServer::route(const std::string& path, ScriptedResponse response) {
  std::lock_guard lock(mutex_);
  routes_[path] = std::move(response);
}

std::string StaticHttpServer::url(const std::string& path) const {
  return "http://" + address_ + ":" + std::to_string(port_) + path;
}

int StaticHttpServer::hits(const std::string& path) {
  std::lock_guard lock(mutex_);
  return hits_[path];
}

void StaticHttpServer::serve(tcp::socket socket) {
  boost::system::error_code error;
  boost::beast::flat_buffer buffer;
  bhttp::request<bhttp::string_body> request;
  bhttp::read(socket, buffer, request, error);
  if (error || stopping_) return;
  ScriptedResponse scripted{404, {}, "not found"};
  {
    std::lock_guard lock(mutex_);
    const std::string path(request.target());
    ++hits_[path];
    if (const auto it = routes_.find(path); it != routes_.end()) scripted = it->second;
  }
  std::this_thread::sleep_for(scripted.delay);
  bhttp::response<bhttp::string_body> response{static_cast<bhttp::status>(scripted.status), 11};
  for (const auto& [name, value] : scripted.headers)
    response.set(name, value);
  response.body() = scripted.body;
  response.prepare_payload();
  if (scripted.declared_length) response.content_length(*scripted.declared_length);
  response.keep_alive(false);
  bhttp::write(socket, response, error);
  socket.shutdown(tcp::socket::shutdown_both, error);
}

} // namespace mmserve::test
