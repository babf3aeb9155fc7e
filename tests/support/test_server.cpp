#include "test_server.hpp"

#include <yaml-cpp/yaml.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/write.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace mmserve::test {
namespace {

std::vector<char*> to_argv(std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (auto& arg : args)
    argv.push_back(arg.data());
  argv.push_back(nullptr);
  return argv;
}

std::vector<std::string> merged_environment(const std::map<std::string, std::string>& extra) {
  std::map<std::string, std::string> env;
  for (char** entry = environ; *entry; ++entry) {
    std::string text(*entry);
    const auto eq = text.find('=');
    if (eq != std::string::npos) env[text.substr(0, eq)] = text.substr(eq + 1);
  }
  // The seed's variables must come only from the test, never from the shell running it.
  for (const char* name : {"MODEL_PATH", "LOAD_8BIT", "MODEL_SIZE", "DEVICE", "COMPUTE_TYPE",
                           "ENABLE_ATTENTION_SLICING", "ENABLE_VAE_TILING", "MMSERVE_MODELS"}) {
    env.erase(name);
  }
  for (const auto& [key, value] : extra)
    env[key] = value;
  std::vector<std::string> out;
  for (const auto& [key, value] : env)
    out.push_back(key + "=" + value);
  return out;
}

pid_t spawn(std::vector<std::string> args, const std::map<std::string, std::string>& env,
            const std::string& output_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, output_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  auto environment = merged_environment(env);
  auto argv = to_argv(args);
  auto envp = to_argv(environment);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::runtime_error("posix_spawn failed for " + args[0]);
  return pid;
}

std::optional<int> wait_for(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return -1;
    }
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

Response to_response(bhttp::response<bhttp::string_body>& message) {
  Response response;
  response.status = message.result_int();
  for (const auto& field : message) {
    std::string name(field.name_string());
    for (auto& c : name)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    response.headers[name] = std::string(field.value());
  }
  response.body = message.body();
  return response;
}

} // namespace

std::string mmserve_binary() {
  const char* path = std::getenv("MMSERVE_BIN");
  if (!path || !*path) throw std::runtime_error("MMSERVE_BIN is not set (run the tests through ctest)");
  return path;
}

std::string make_temp_dir(const std::string& prefix) {
  std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
  return pattern;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

uint16_t free_port() {
  net::io_context ioc;
  tcp::acceptor acceptor(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  return acceptor.local_endpoint().port();
}

ProcessResult run_mmserve(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
                          std::chrono::seconds timeout) {
  const std::string dir = make_temp_dir("mmserve-run");
  const std::string output = dir + "/output.txt";
  std::vector<std::string> full{mmserve_binary()};
  full.insert(full.end(), args.begin(), args.end());
  const pid_t pid = spawn(full, env, output);
  ProcessResult result;
  const auto code = wait_for(pid, timeout);
  if (!code) {
    kill(pid, SIGKILL);
    wait_for(pid, std::chrono::seconds(5));
  }
  result.exit_code = code.value_or(-1);
  result.output = read_file(output);
  std::filesystem::remove_all(dir);
  return result;
}

// Each test server gets its own media temp cache (unless the test names
// one): the shared default /tmp/images would carry images decoded by earlier
// runs into this one.
namespace {
std::string with_private_temp_dir(const std::string& yaml, const std::string& temp_dir) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception&) {
    return yaml; // the test means to send broken YAML
  }
  if (!root.IsNull() && !root.IsMap()) return yaml;
  if (root["media"] && root["media"].IsMap() && root["media"]["storage"] && root["media"]["storage"].IsMap() &&
      root["media"]["storage"]["temp_dir"]) {
    return yaml;
  }
  root["media"]["storage"]["temp_dir"] = temp_dir;
  YAML::Emitter out;
  out << root;
  return std::string(out.c_str()) + "\n";
}
} // namespace

ServerProcess::ServerProcess(const std::string& yaml, const std::string& role,
                             const std::map<std::string, std::string>& env,
                             const std::vector<std::string>& extra_args) {
  dir_ = make_temp_dir("mmserve-test");
  log_path_ = dir_ + "/server.log";
  const std::string config_path = dir_ + "/mmserve.yaml";
  write_file(config_path, with_private_temp_dir(yaml, dir_ + "/images"));
  std::map<std::string, std::string> environment = env;
  if (!environment.contains("HOME")) environment["HOME"] = dir_; // default models_dir lands in the temp dir
  // A port taken between free_port() and bind() is retried with another.
  for (int attempt = 0; attempt < 5; ++attempt) {
    port_ = free_port();
    std::vector<std::string> args{mmserve_binary(), role, "--config", config_path, "--port", std::to_string(port_)};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    pid_ = spawn(args, environment, log_path_);
    reaped_ = false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto code = wait_for(pid_, std::chrono::milliseconds(0))) {
        reaped_ = true;
        break;
      }
      try {
        if (request(port_, "GET", "/healthz").status == 200) return;
      } catch (const std::exception&) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!reaped_) break;
  }
  const std::string output = log();
  if (!reaped_) kill(pid_, SIGKILL);
  throw std::runtime_error("mmserve did not become healthy; its output:\n" + output);
}

ServerProcess::~ServerProcess() {
  if (!reaped_ && pid_ > 0) {
    kill(pid_, SIGKILL);
    wait_for(pid_, std::chrono::seconds(5));
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

void ServerProcess::signal(int signal_number) const {
  kill(pid_, signal_number);
}

std::optional<int> ServerProcess::wait_exit(std::chrono::milliseconds timeout) {
  if (reaped_) return std::nullopt;
  auto code = wait_for(pid_, timeout);
  if (code) reaped_ = true;
  return code;
}

bool ServerProcess::running() {
  return !reaped_ && !wait_exit(std::chrono::milliseconds(0)).has_value();
}

std::string ServerProcess::log() const {
  return read_file(log_path_);
}

std::string Response::header(const std::string& name) const {
  const auto it = headers.find(name);
  return it == headers.end() ? std::string() : it->second;
}

Connection::Connection(uint16_t port) : socket_(ioc_) {
  socket_.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
}

Response Connection::request(const std::string& method, const std::string& target, const std::string& body,
                             const std::map<std::string, std::string>& headers) {
  bhttp::request<bhttp::string_body> message{bhttp::string_to_verb(method), target, 11};
  message.set(bhttp::field::host, "127.0.0.1");
  for (const auto& [name, value] : headers)
    message.set(name, value);
  message.body() = body;
  if (!body.empty() || method == "POST") message.prepare_payload();
  bhttp::write(socket_, message);
  return read_response();
}

void Connection::send_raw(const std::string& bytes) {
  net::write(socket_, net::buffer(bytes));
}

Response Connection::read_response() {
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(256u << 20);
  bhttp::read(socket_, buffer_, parser);
  auto message = parser.release();
  return to_response(message);
}

bool Connection::closed_by_peer(std::chrono::milliseconds wait) {
  struct timeval tv {};
  tv.tv_sec = static_cast<long>(wait.count() / 1000);
  tv.tv_usec = static_cast<long>((wait.count() % 1000) * 1000);
  setsockopt(socket_.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char byte = 0;
  const ssize_t n = ::recv(socket_.native_handle(), &byte, 1, 0);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

Response request(uint16_t port, const std::string& method, const std::string& target, const std::string& body,
                 const std::map<std::string, std::string>& headers) {
  Connection connection(port);
  return connection.request(method, target, body, headers);
}

bool can_connect(uint16_t port) {
  try {
    Connection connection(port);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

} // namespace mmserve::test
