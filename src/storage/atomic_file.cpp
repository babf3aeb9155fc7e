#include "storage/atomic_file.hpp"

#include <fmt/format.h>

#include <atomic>
#include <cerrno>
#include <fcntl.h>
#include <random>
#include <sys/stat.h>
#include <system_error>
#include <unistd.h>

namespace mmserve::storage {
namespace {

[[noreturn]] void fail(const std::string& what, const std::filesystem::path& path, int error) {
  throw std::system_error(error, std::generic_category(), fmt::format("{} '{}'", what, path.string()));
}

// Unique across threads (counter) and processes (pid, random start).
std::string temp_name_for(const std::filesystem::path& path) {
  static std::atomic<uint64_t> counter{std::random_device{}()};
  return fmt::format("{}{}.{}.{:x}", kTempFilePrefix, path.filename().string(), ::getpid(), counter.fetch_add(1));
}

class FileDescriptor {
public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }
  int release_and_close() {
    const int result = ::close(fd_);
    fd_ = -1;
    return result;
  }

private:
  int fd_;
};

} // namespace

void write_file_atomically(const std::filesystem::path& path, std::string_view bytes) {
  const auto temp = path.parent_path() / temp_name_for(path);
  FileDescriptor fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (fd.get() < 0) fail("cannot create", temp, errno);
  auto give_up = [&](const char* what) {
    const int error = errno;
    ::unlink(temp.c_str());
    fail(what, temp, error);
  };
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd.get(), bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) give_up("cannot write");
    written += static_cast<size_t>(n);
  }
  // The data must be on disk before the name is: after a crash the final
  // name then holds either nothing or the complete file.
  if (::fsync(fd.get()) != 0) give_up("cannot flush");
  if (fd.release_and_close() != 0) give_up("cannot close");
  if (::rename(temp.c_str(), path.c_str()) != 0) give_up("cannot rename into place");
}

std::optional<std::string> read_whole_file(const std::filesystem::path& path) {
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return std::nullopt;
    fail("cannot open", path, errno);
  }
  struct stat info {};
  if (::fstat(fd.get(), &info) != 0) fail("cannot stat", path, errno);
  std::string bytes(static_cast<size_t>(info.st_size), '\0');
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::read(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("cannot read", path, errno);
    if (n == 0) break; // files are replaced by rename, never truncated; defensive only
    done += static_cast<size_t>(n);
  }
  bytes.resize(done);
  return bytes;
}

} // namespace mmserve::storage
