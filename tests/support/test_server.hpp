// Test support: starts the real mmserve binary on a free loopback port and
// talks to it over real sockets.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace mmserve::test {

namespace net = boost::asio;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

// Path of the mmserve binary under test (CTest passes MMSERVE_BIN).
std::string mmserve_binary();
// A fresh temporary directory, removed by the caller if it likes.
std::string make_temp_dir(const std::string& prefix);
void write_file(const std::string& path, const std::string& text);
std::string read_file(const std::string& path);
uint16_t free_port();

struct ProcessResult {
  int exit_code = -1;
  std::string output; // stdout and stderr together
};

// Runs mmserve to completion (for --help, --print-config, bad flags).
ProcessResult run_mmserve(const std::vector<std::string>& args, const std::map<std::string, std::string>& env = {},
                          std::chrono::seconds timeout = std::chrono::seconds(20));

class ServerProcess {
public:
  // Starts `mmserve <role> --config <file with yaml> --port <free>` and waits for /healthz.
  ServerProcess(const std::string& yaml, const std::string& role = "serve",
                const std::map<std::string, std::string>& env = {}, const std::vector<std::string>& extra_args = {});
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  uint16_t port() const { return port_; }
  pid_t pid() const { return pid_; }
  void signal(int signal_number) const;
  // Waits for the process to exit; nullopt on timeout.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  bool running();
  std::string log() const;

private:
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  std::string dir_;
  std::string log_path_;
  bool reaped_ = false;
};

struct Response {
  unsigned status = 0;
  std::map<std::string, std::string> headers; // lower-case names
  std::string body;
  std::string header(const std::string& name) const;
};

// One request on a fresh connection.
Response request(uint16_t port, const std::string& method, const std::string& target, const std::string& body = {},
                 const std::map<std::string, std::string>& headers = {});

// A connection kept open across requests and for raw bytes.
class Connection {
public:
  explicit Connection(uint16_t port);
  Response request(const std::string& method, const std::string& target, const std::string& body = {},
                   const std::map<std::string, std::string>& headers = {});
  void send_raw(const std::string& bytes);
  Response read_response();
  // True when the server closed the connection (read returns EOF).
  bool closed_by_peer(std::chrono::milliseconds wait);
  tcp::socket& socket() { return socket_; }

private:
  net::io_context ioc_;
  tcp::socket socket_;
  boost::beast::flat_buffer buffer_;
};

// True when a TCP connection to the port is accepted.
bool can_connect(uint16_t port);

} // namespace mmserve::test
