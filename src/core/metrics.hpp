// A small Prometheus metrics registry (Debian ships no prometheus-cpp):
// counters, gauges and histograms with labels, rendered in the text
// exposition format 0.0.4. Series are created on first use and kept (only a
// series looked up on each use may be removed), so callers must keep label
// values to a bounded set (routes, not raw paths).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mmserve::metrics {

using LabelValues = std::vector<std::string>;

// Series values are split over a few cells, each on its own cache line, and a
// thread adds to its own cell: the I/O threads count every request into the
// same series, and one shared value would pass its cache line between cores
// on every request. Reading a value adds the cells up.
inline constexpr size_t kCells = 8;
// The cell this thread writes to (threads are dealt cells in turn; past
// kCells threads share cells, which costs speed, never counts).
size_t this_thread_cell();

// One value split over the cells: adds go to the calling thread's cell,
// reads add the cells up.
class CellSum {
public:
  void add(double amount) { cells_[this_thread_cell()].value.fetch_add(amount, std::memory_order_relaxed); }
  double sum() const;
  // For values that are set rather than added to: the first cell is made to
  // hold the total less what the others hold.
  void raise_total_to(double total);
  void set_total(double total);

private:
  struct alignas(64) Cell {
    std::atomic<double> value{0.0};
  };
  std::array<Cell, kCells> cells_;
};

class Counter {
public:
  void inc(double amount = 1.0);
  double value() const { return total_.sum(); }
  // For collectors mirroring a monotonic counter kept elsewhere (the kernel's
  // CPU time): sets the total, never lowering it.
  void mirror(double total) { total_.raise_total_to(total); }

private:
  CellSum total_;
};

class Gauge {
public:
  void set(double value) { value_.set_total(value); }
  void add(double amount) { value_.add(amount); }
  void inc() { add(1.0); }
  void dec() { add(-1.0); }
  double value() const { return value_.sum(); }

private:
  CellSum value_;
};

class Histogram {
public:
  explicit Histogram(const std::vector<double>& upper_bounds);
  void observe(double value);

  struct Snapshot {
    std::vector<uint64_t> cumulative_counts; // one per bound, then +Inf
    uint64_t count = 0;
    double sum = 0.0;
  };
  Snapshot snapshot() const;

private:
  struct alignas(64) Line {
    std::array<std::atomic<uint64_t>, 8> words;
  };
  // Word `index` of a cell: 0 holds the sum (a double's bits), then the
  // non-cumulative bucket counts, the last one +Inf.
  std::atomic<uint64_t>& word(size_t cell, size_t index) const {
    return lines_[cell * lines_per_cell_ + index / 8].words[index % 8];
  }

  const std::vector<double>& bounds_;
  size_t lines_per_cell_;
  std::unique_ptr<Line[]> lines_;
};

enum class MetricType { counter, gauge, histogram };

// One metric name with fixed label names; one series per distinct label values.
template <typename Series> class Family {
public:
  Family(std::string name, std::string help, std::vector<std::string> label_names, std::vector<double> buckets = {});

  // The series for these label values (created on first use). Throws
  // std::invalid_argument when the number of values does not match.
  Series& labels(const LabelValues& values) {
    const std::vector<std::string_view> views(values.begin(), values.end());
    return labels(std::span<const std::string_view>(views));
  }
  // Found without copying the values (the per-request path): only a new
  // series copies them.
  Series& labels(std::span<const std::string_view> values);
  Series& labels(std::initializer_list<std::string_view> values) {
    return labels(std::span<const std::string_view>(values.begin(), values.size()));
  }

  // Drops a series that is gone for good (a model removed), so scrapes stop
  // showing its last value. Only for series nobody holds a reference to:
  // those looked up with labels() on each use.
  void remove(const LabelValues& values);

  const std::string& name() const { return name_; }
  void render(std::string& out) const;

private:
  std::string name_;
  std::string help_;
  std::vector<std::string> label_names_;
  std::vector<double> buckets_;
  // Orders stored label values and looked-up views alike (heterogeneous lookup).
  struct LabelsLess {
    using is_transparent = void;
    template <typename A, typename B> bool operator()(const A& a, const B& b) const {
      return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(),
                                          [](std::string_view x, std::string_view y) { return x < y; });
    }
  };
  mutable std::mutex mutex_;
  std::map<LabelValues, std::unique_ptr<Series>, LabelsLess> series_;
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;

// Default buckets for durations in seconds, from a millisecond to ten minutes.
std::vector<double> duration_buckets();
// Exponential buckets: start, start*factor, ... (count values).
std::vector<double> exponential_buckets(double start, double factor, int count);

class Registry {
public:
  CounterFamily& counter(const std::string& name, const std::string& help, std::vector<std::string> label_names = {});
  GaugeFamily& gauge(const std::string& name, const std::string& help, std::vector<std::string> label_names = {});
  HistogramFamily& histogram(const std::string& name, const std::string& help, std::vector<std::string> label_names,
                             std::vector<double> buckets);

  // Runs before each render; used for values read at scrape time (process stats).
  void add_collector(std::function<void()> collector);

  // The whole registry in Prometheus text exposition format 0.0.4.
  std::string render() const;

private:
  void check_new_name(const std::string& name) const;

  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<CounterFamily>> counters_;
  std::vector<std::unique_ptr<GaugeFamily>> gauges_;
  std::vector<std::unique_ptr<HistogramFamily>> histograms_;
  std::vector<std::pair<std::string, MetricType>> order_;
  std::vector<std::function<void()>> collectors_;
};

// Label value escaping per the exposition format (backslash, quote, newline).
std::string escape_label_value(const std::string& value);
// Formats a sample value the way Prometheus parses it (+Inf, -Inf, NaN).
std::string format_value(double value);

} // namespace mmserve::metrics
