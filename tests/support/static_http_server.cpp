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

std::map<std::string, std::string> StaticHttpServer::last_request_headers(const std::string& path) {
  std::lock_guard lock(mutex_);
  return last_headers_[path];
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
    auto& headers = last_headers_[path];
    headers.clear();
    for (const auto& field : request) {
      std::string name(field.name_string());
      for (auto& c : name)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      headers[name] = std::string(field.value());
    }
    if (const auto it = routes_.find(path); it != routes_.end()) scripted = it->second;
  }
  std::this_thread::sleep_for(scripted.delay);
  // Only the open-ended form clients use to resume ("bytes=N-").
  if (const auto range = std::string(request[bhttp::field::range]);
      scripted.ranges && range.starts_with("bytes=") && range.ends_with("-")) {
    const uint64_t first = std::stoull(range.substr(6, range.size() - 7));
    const uint64_t size = scripted.body.size();
    if (first >= size) {
      scripted = {416, {{"Content-Range", "bytes */" + std::to_string(size)}}, ""};
    } else {
      scripted.status = 206;
      scripted.headers["Content-Range"] =
          "bytes " + std::to_string(first) + "-" + std::to_string(size - 1) + "/" + std::to_string(size);
      scripted.body = scripted.body.substr(first);
    }
  }
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
