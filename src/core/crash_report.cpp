#include "core/crash_report.hpp"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <execinfo.h>
#include <initializer_list>
#include <typeinfo>
#include <unistd.h>

namespace mmserve {
namespace {

// Only async-signal-safe calls from here on: write(2) and backtrace_symbols_fd.
void write_text(const char* text) {
  const ssize_t ignored = write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

void write_backtrace() {
  void* frames[64];
  const int count = backtrace(frames, 64);
  backtrace_symbols_fd(frames, count, STDERR_FILENO);
}

// strsignal is neither thread- nor signal-safe: the names of the signals handled.
const char* signal_name(int signal_number) {
  switch (signal_number) {
  case SIGSEGV: return "SIGSEGV (segmentation fault)";
  case SIGBUS: return "SIGBUS (bus error)";
  case SIGFPE: return "SIGFPE (arithmetic exception)";
  case SIGILL: return "SIGILL (illegal instruction)";
  case SIGABRT: return "SIGABRT (aborted)";
  default: return "(unknown)";
  }
}

void on_fatal_signal(int signal_number) {
  write_text("mmserve: fatal signal ");
  write_text(signal_name(signal_number));
  write_text("; stack:\n");
  write_backtrace();
  std::signal(signal_number, SIG_DFL); // die of the same signal (core dump, exit status)
  raise(signal_number);
}

void on_terminate() {
  // What escaped, when it was an exception.
  if (const auto current = std::current_exception()) {
    try {
      std::rethrow_exception(current);
    } catch (const std::exception& error) {
      std::fprintf(stderr, "mmserve: uncaught exception (%s): %s\n", typeid(error).name(), error.what());
    } catch (...) {
      std::fprintf(stderr, "mmserve: uncaught exception of a non-standard type\n");
    }
  } else {
    std::fprintf(stderr, "mmserve: std::terminate called without an exception\n");
  }
  std::fprintf(stderr, "mmserve: stack:\n");
  std::fflush(stderr);
  write_backtrace();
  std::signal(SIGABRT, SIG_DFL);
  std::abort();
}

} // namespace

void install_crash_reporting() {
  void* frame[1];
  backtrace(frame, 1); // loads libgcc now, not inside a signal handler
  std::set_terminate(on_terminate);
  for (const int signal_number : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT})
    std::signal(signal_number, on_fatal_signal);
}

} // namespace mmserve
