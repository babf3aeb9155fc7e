#include "core/metrics.hpp"
#include "core/server_metrics.hpp"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

using namespace mmserve::metrics;

TEST(Metrics, CounterExposition) {
  Registry registry;
  auto& requests = registry.counter("requests_total", "Requests.", {"code"});
  requests.labels({"200"}).inc();
  requests.labels({"200"}).inc(2);
  requests.labels({"404"}).inc();
  const auto text = registry.render();
  EXPECT_NE(text.find("# HELP requests_total Requests.\n# TYPE requests_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("requests_total{code=\"200\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("requests_total{code=\"404\"} 1\n"), std::string::npos);
}

TEST(Metrics, CounterRejectsNegative) {
  Registry registry;
  auto& counter = registry.counter("c_total", "C.");
  EXPECT_THROW(counter.labels({}).inc(-1), std::invalid_argument);
}

TEST(Metrics, HistogramBucketsAreCumulative) {
  Registry registry;
  auto& latency = registry.histogram("latency_seconds", "Latency.", {}, {0.1, 1, 10});
  latency.labels({}).observe(0.05);
  latency.labels({}).observe(0.5);
  latency.labels({}).observe(0.5);
  latency.labels({}).observe(100);
  const auto text = registry.render();
  EXPECT_NE(text.find("latency_seconds_bucket{le=\"0.1\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_seconds_bucket{le=\"1\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_seconds_bucket{le=\"10\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_seconds_bucket{le=\"+Inf\"} 4\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_seconds_count 4\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_seconds_sum 101.05\n"), std::string::npos) << text;
}

// Values are kept in per-thread cells: what many threads add (more threads
// than cells, so some share one) must come out exact.
TEST(Metrics, UpdatesFromManyThreadsAddUpExactly) {
  Registry registry;
  auto& counter = registry.counter("c_total", "C.").labels({});
  auto& gauge = registry.gauge("g", "G.").labels({});
  auto& histogram = registry.histogram("h_seconds", "H.", {}, {1, 2}).labels({});
  constexpr int kThreads = static_cast<int>(kCells) + 4;
  constexpr int kEach = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        counter.inc();
        gauge.inc();
        histogram.observe(t % 3 == 0 ? 0.5 : 1.5); // sums of halves stay exact in a double
        gauge.dec();
      }
      gauge.inc();
    });
  }
  for (auto& thread : threads)
    thread.join();
  EXPECT_EQ(counter.value(), double{kThreads} * kEach);
  EXPECT_EQ(gauge.value(), double{kThreads});
  const auto snapshot = histogram.snapshot();
  const int low_threads = (kThreads + 2) / 3; // t = 0, 3, 6, ...
  EXPECT_EQ(snapshot.cumulative_counts[0], uint64_t{1} * low_threads * kEach);
  EXPECT_EQ(snapshot.cumulative_counts[1], uint64_t{1} * kThreads * kEach);
  EXPECT_EQ(snapshot.count, uint64_t{1} * kThreads * kEach);
  EXPECT_EQ(snapshot.sum, 0.5 * low_threads * kEach + 1.5 * (kThreads - low_threads) * kEach);

  // set() replaces what the threads added.
  gauge.set(3);
  EXPECT_EQ(gauge.value(), 3.0);
}

TEST(Metrics, MirroredCounterNeverLowersAndConcurrentMirrorsSettleOnTheTotal) {
  Registry registry;
  auto& cpu = registry.counter("cpu_seconds_total", "CPU.").labels({});
  std::vector<std::thread> scrapes;
  for (int t = 0; t < 6; ++t)
    scrapes.emplace_back([&] {
      for (int i = 0; i < 1000; ++i)
        cpu.mirror(12.5);
    });
  for (auto& scrape : scrapes)
    scrape.join();
  EXPECT_EQ(cpu.value(), 12.5);
  cpu.mirror(10); // a lower reading is ignored
  EXPECT_EQ(cpu.value(), 12.5);
  cpu.mirror(20);
  EXPECT_EQ(cpu.value(), 20.0);
}

TEST(Metrics, BoundaryValueFallsInItsBucket) {
  Registry registry;
  auto& h = registry.histogram("h_seconds", "H.", {}, {1, 2});
  h.labels({}).observe(1.0); // le="1" includes 1
  EXPECT_NE(registry.render().find("h_seconds_bucket{le=\"1\"} 1\n"), std::string::npos);
}

TEST(Metrics, LabelValuesAreEscaped) {
  Registry registry;
  auto& g = registry.gauge("g", "G.", {"path"});
  g.labels({"a\"b\\c\nd"}).set(1);
  EXPECT_NE(registry.render().find(R"(g{path="a\"b\\c\nd"} 1)"), std::string::npos);
}

TEST(Metrics, RejectsBadNamesAndDuplicates) {
  Registry registry;
  EXPECT_THROW(registry.counter("9bad", "x"), std::invalid_argument);
  EXPECT_THROW(registry.counter("bad-name", "x"), std::invalid_argument);
  EXPECT_THROW(registry.gauge("ok", "x", {"le"}), std::invalid_argument);
  registry.counter("dup_total", "x");
  EXPECT_THROW(registry.gauge("dup_total", "x"), std::invalid_argument);
  EXPECT_THROW(registry.histogram("h", "x", {}, {2, 1}), std::invalid_argument);
}

TEST(Metrics, WrongLabelCountThrows) {
  Registry registry;
  auto& c = registry.counter("x_total", "X.", {"a", "b"});
  EXPECT_THROW(c.labels({"only-one"}), std::invalid_argument);
}

TEST(Metrics, SeedMetricsHaveExactNamesAndTypes) {
  mmserve::ServerMetrics server;
  const auto text = server.registry.render();
  for (const char* line : {"# TYPE image_processing_seconds histogram", "# TYPE image_size_bytes histogram",
                           "# TYPE model_inference_seconds histogram", "# TYPE tokens_generated_total counter",
                           "# TYPE images_generated_total counter", "# TYPE http_requests_total counter",
                           "# TYPE http_request_duration_seconds histogram", "# TYPE process_cpu_seconds_total counter",
                           "# TYPE process_resident_memory_bytes gauge"}) {
    EXPECT_NE(text.find(line), std::string::npos) << line;
  }
}

TEST(Metrics, ProcessCollectorReadsRealValues) {
  mmserve::ServerMetrics server;
  const auto text = server.registry.render();
  const auto pos = text.find("\nprocess_resident_memory_bytes ");
  ASSERT_NE(pos, std::string::npos);
  const double rss = std::stod(text.substr(pos + 31));
  EXPECT_GT(rss, 1024 * 1024); // a running test binary holds more than a MiB
}

TEST(Metrics, FormatValue) {
  EXPECT_EQ(format_value(3), "3");
  EXPECT_EQ(format_value(0.25), "0.25");
  EXPECT_EQ(format_value(1.0 / 0.0), "+Inf");
}
