#include "core/metrics.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <fmt/format.h>
#include <stdexcept>

namespace mmserve::metrics {

size_t this_thread_cell() {
  static std::atomic<size_t> next_cell{0};
  thread_local const size_t cell = next_cell.fetch_add(1, std::memory_order_relaxed) % kCells;
  return cell;
}

double CellSum::sum() const {
  double total = 0.0;
  for (const auto& cell : cells_)
    total += cell.value.load(std::memory_order_relaxed);
  return total;
}

void CellSum::raise_total_to(double total) {
  // Only the first cell moves, so that concurrent callers raising to the
  // same total settle on it instead of each adding the difference.
  double others = 0.0;
  for (size_t i = 1; i < kCells; ++i)
    others += cells_[i].value.load(std::memory_order_relaxed);
  const double wanted = total - others;
  double current = cells_[0].value.load(std::memory_order_relaxed);
  while (wanted > current && !cells_[0].value.compare_exchange_weak(current, wanted, std::memory_order_relaxed)) {
  }
}

void CellSum::set_total(double total) {
  // A gauge is either set or added to (in-flight counts), never both, so the
  // other cells hold nothing to keep here.
  for (size_t i = 1; i < kCells; ++i)
    cells_[i].value.store(0.0, std::memory_order_relaxed);
  cells_[0].value.store(total, std::memory_order_relaxed);
}

void Counter::inc(double amount) {
  if (amount < 0) {
    throw std::invalid_argument("counter increments must not be negative");
  }
  total_.add(amount);
}

Histogram::Histogram(const std::vector<double>& upper_bounds)
    : bounds_(upper_bounds), lines_per_cell_((upper_bounds.size() + 2 + 7) / 8),
      lines_(new Line[kCells * lines_per_cell_]) {
  for (size_t i = 0; i < kCells * lines_per_cell_; ++i) {
    for (auto& word : lines_[i].words)
      word.store(0, std::memory_order_relaxed);
  }
}

void Histogram::observe(double value) {
  const auto bucket = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  const size_t cell = this_thread_cell();
  word(cell, 1 + bucket).fetch_add(1, std::memory_order_relaxed);
  auto& sum = word(cell, 0);
  uint64_t current = sum.load(std::memory_order_relaxed);
  while (!sum.compare_exchange_weak(current, std::bit_cast<uint64_t>(std::bit_cast<double>(current) + value),
                                    std::memory_order_relaxed)) {
  }
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot snapshot;
  snapshot.cumulative_counts.reserve(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    for (size_t cell = 0; cell < kCells; ++cell)
      running += word(cell, 1 + i).load(std::memory_order_relaxed);
    snapshot.cumulative_counts.push_back(running);
  }
  // Reported count equals the +Inf bucket so a scrape is self-consistent even
  // while observations race with it.
  snapshot.count = running;
  for (size_t cell = 0; cell < kCells; ++cell)
    snapshot.sum += std::bit_cast<double>(word(cell, 0).load(std::memory_order_relaxed));
  return snapshot;
}

std::string escape_label_value(const std::string& value) {
  std::string escaped;
  escaped.reserve(value.size());
  for (char c : value) {
    switch (c) {
    case '\\': escaped += "\\\\"; break;
    case '"': escaped += "\\\""; break;
    case '\n': escaped += "\\n"; break;
    default: escaped += c;
    }
  }
  return escaped;
}

std::string format_value(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    return fmt::format("{:.0f}", value);
  }
  return fmt::format("{}", value);
}

namespace {

std::string escape_help(const std::string& help) {
  std::string escaped;
  for (char c : help) {
    if (c == '\\')
      escaped += "\\\\";
    else if (c == '\n')
      escaped += "\\n";
    else
      escaped += c;
  }
  return escaped;
}

// {a="x",b="y"} with an optional extra label (le for histogram buckets).
std::string label_set(const std::vector<std::string>& names, const LabelValues& values,
                      const std::string& extra_name = {}, const std::string& extra_value = {}) {
  if (names.empty() && extra_name.empty()) return {};
  std::string out = "{";
  for (size_t i = 0; i < names.size(); ++i) {
    if (i) out += ',';
    out += names[i] + "=\"" + escape_label_value(values[i]) + '"';
  }
  if (!extra_name.empty()) {
    if (!names.empty()) out += ',';
    out += extra_name + "=\"" + extra_value + '"';
  }
  return out + "}";
}

bool valid_metric_name(const std::string& name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':'; });
}

template <typename Series> constexpr const char* type_name();
template <> constexpr const char* type_name<Counter>() {
  return "counter";
}
template <> constexpr const char* type_name<Gauge>() {
  return "gauge";
}
template <> constexpr const char* type_name<Histogram>() {
  return "histogram";
}

} // namespace

template <typename Series>
Family<Series>::Family(std::string name, std::string help, std::vector<std::string> label_names,
                       std::vector<double> buckets)
    : name_(std::move(name)), help_(std::move(help)), label_names_(std::move(label_names)),
      buckets_(std::move(buckets)) {
  if (!valid_metric_name(name_)) throw std::invalid_argument("invalid metric name: " + name_);
  for (const auto& label : label_names_) {
    if (!valid_metric_name(label) || label == "le" || label.starts_with("__")) {
      throw std::invalid_argument("invalid label name '" + label + "' for metric " + name_);
    }
  }
  if (!std::is_sorted(buckets_.begin(), buckets_.end()) ||
      std::adjacent_find(buckets_.begin(), buckets_.end()) != buckets_.end()) {
    throw std::invalid_argument("histogram buckets must be strictly increasing: " + name_);
  }
}

template <typename Series> Series& Family<Series>::labels(std::span<const std::string_view> values) {
  if (values.size() != label_names_.size()) {
    throw std::invalid_argument(
        fmt::format("metric {} takes {} label values, got {}", name_, label_names_.size(), values.size()));
  }
  std::lock_guard lock(mutex_);
  if (const auto found = series_.find(values); found != series_.end()) return *found->second;
  auto& slot = series_[LabelValues(values.begin(), values.end())];
  if (!slot) {
    if constexpr (std::is_same_v<Series, Histogram>) {
      slot = std::make_unique<Histogram>(buckets_);
    } else {
      slot = std::make_unique<Series>();
    }
  }
  return *slot;
}

template <typename Series> void Family<Series>::remove(const LabelValues& values) {
  std::lock_guard lock(mutex_);
  series_.erase(values);
}

template <typename Series> void Family<Series>::render(std::string& out) const {
  out += "# HELP " + name_ + ' ' + escape_help(help_) + '\n';
  out += "# TYPE " + name_ + ' ' + type_name<Series>() + '\n';
  std::lock_guard lock(mutex_);
  for (const auto& [values, series] : series_) {
    if constexpr (std::is_same_v<Series, Histogram>) {
      const auto snap = series->snapshot();
      for (size_t i = 0; i < buckets_.size(); ++i) {
        out += name_ + "_bucket" + label_set(label_names_, values, "le", format_value(buckets_[i])) + ' ' +
               std::to_string(snap.cumulative_counts[i]) + '\n';
      }
      out += name_ + "_bucket" + label_set(label_names_, values, "le", "+Inf") + ' ' +
             std::to_string(snap.cumulative_counts.back()) + '\n';
      out += name_ + "_sum" + label_set(label_names_, values) + ' ' + format_value(snap.sum) + '\n';
      out += name_ + "_count" + label_set(label_names_, values) + ' ' + std::to_string(snap.count) + '\n';
    } else {
      out += name_ + label_set(label_names_, values) + ' ' + format_value(series->value()) + '\n';
    }
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

std::vector<double> duration_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
}

std::vector<double> exponential_buckets(double start, double factor, int count) {
  std::vector<double> buckets;
  double value = start;
  for (int i = 0; i < count; ++i, value *= factor)
    buckets.push_back(value);
  return buckets;
}

void Registry::check_new_name(const std::string& name) const {
  for (const auto& [existing, type] : order_) {
    if (existing == name) throw std::invalid_argument("metric registered twice: " + name);
  }
}

CounterFamily& Registry::counter(const std::string& name, const std::string& help,
                                 std::vector<std::string> label_names) {
  std::lock_guard lock(mutex_);
  check_new_name(name);
  counters_.push_back(std::make_unique<CounterFamily>(name, help, std::move(label_names)));
  order_.emplace_back(name, MetricType::counter);
  return *counters_.back();
}

GaugeFamily& Registry::gauge(const std::string& name, const std::string& help, std::vector<std::string> label_names) {
  std::lock_guard lock(mutex_);
  check_new_name(name);
  gauges_.push_back(std::make_unique<GaugeFamily>(name, help, std::move(label_names)));
  order_.emplace_back(name, MetricType::gauge);
  return *gauges_.back();
}

HistogramFamily& Registry::histogram(const std::string& name, const std::string& help,
                                     std::vector<std::string> label_names, std::vector<double> buckets) {
  std::lock_guard lock(mutex_);
  check_new_name(name);
  histograms_.push_back(std::make_unique<HistogramFamily>(name, help, std::move(label_names), std::move(buckets)));
  order_.emplace_back(name, MetricType::histogram);
  return *histograms_.back();
}

void Registry::add_collector(std::function<void()> collector) {
  std::lock_guard lock(mutex_);
  collectors_.push_back(std::move(collector));
}

std::string Registry::render() const {
  std::vector<std::function<void()>> collectors;
  {
    std::lock_guard lock(mutex_);
    collectors = collectors_;
  }
  for (const auto& collect : collectors)
    collect();

  std::string out;
  std::lock_guard lock(mutex_);
  auto find_by_name = [](const auto& families, const std::string& name) {
    return std::find_if(families.begin(), families.end(), [&](const auto& family) { return family->name() == name; });
  };
  for (const auto& [name, type] : order_) {
    switch (type) {
    case MetricType::counter: (*find_by_name(counters_, name))->render(out); break;
    case MetricType::gauge: (*find_by_name(gauges_, name))->render(out); break;
    case MetricType::histogram: (*find_by_name(histograms_, name))->render(out); break;
    }
  }
  return out;
}

} // namespace mmserve::metrics
