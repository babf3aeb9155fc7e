// A live scrape of /metrics, checked by Prometheus' own promtool.
#include "test_server.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

using namespace mmserve::test;

namespace {

// Runs promtool with the text on stdin; returns its exit code and output.
std::pair<int, std::string> promtool_check(const std::string& text) {
  const std::string dir = make_temp_dir("mmserve-promtool");
  write_file(dir + "/metrics.txt", text);
  const std::string command =
      std::string(PROMTOOL) + " check metrics < " + dir + "/metrics.txt > " + dir + "/out.txt 2>&1";
  const int status = std::system(command.c_str());
  const std::string output = read_file(dir + "/out.txt");
  std::filesystem::remove_all(dir);
  return {WEXITSTATUS(status), output};
}

} // namespace

TEST(MetricsScrape, PromtoolAcceptsALiveScrape) {
  ServerProcess server("");
  // Traffic of several kinds first, so counters and histograms have series.
  request(server.port(), "GET", "/healthz");
  request(server.port(), "GET", "/readyz");
  request(server.port(), "GET", "/nope");
  request(server.port(), "POST", "/v1/chat/completions", "{bad");
  const auto scrape = request(server.port(), "GET", "/metrics");
  ASSERT_EQ(scrape.status, 200);
  EXPECT_NE(scrape.header("content-type").find("text/plain; version=0.0.4"), std::string::npos);

  const auto [code, output] = promtool_check(scrape.body);
  EXPECT_EQ(code, 0) << "promtool says:\n" << output << "\nscrape:\n" << scrape.body;

  // The seed's five metrics with exactly its names and types.
  for (const char* line : {"# TYPE image_processing_seconds histogram", "# TYPE image_size_bytes histogram",
                           "# TYPE model_inference_seconds histogram", "# TYPE tokens_generated_total counter",
                           "# TYPE images_generated_total counter"}) {
    EXPECT_NE(scrape.body.find(line), std::string::npos) << line;
  }
  // What the traffic above must have left behind.
  EXPECT_NE(scrape.body.find(R"(http_requests_total{method="GET",route="/healthz",code="200"} )"), std::string::npos)
      << scrape.body;
  EXPECT_NE(scrape.body.find(R"(http_requests_total{method="GET",route="unmatched",code="404"} 1)"), std::string::npos);
  EXPECT_NE(scrape.body.find(R"(http_requests_total{method="POST",route="/v1/chat/completions",code="400"} 1)"),
            std::string::npos);
  EXPECT_NE(scrape.body.find(R"(http_request_duration_seconds_count{method="GET",route="/readyz"} 1)"),
            std::string::npos);
  EXPECT_NE(scrape.body.find("http_requests_in_flight 1"), std::string::npos); // the scrape itself
  EXPECT_NE(scrape.body.find(R"(mmserve_model_ready{service="vision",model="vision"} 0)"), std::string::npos);
  EXPECT_NE(scrape.body.find(R"(mmserve_queue_depth{service="speech"} 0)"), std::string::npos);
  EXPECT_NE(scrape.body.find("process_resident_memory_bytes "), std::string::npos);
  EXPECT_NE(scrape.body.find("process_open_fds "), std::string::npos);
}

TEST(MetricsScrape, PromtoolRejectsBrokenExposition) {
  // Guards the check above: promtool must fail on a malformed scrape.
  const auto [code, output] = promtool_check("# TYPE x counter\nx{a=\"1\" 3\n");
  EXPECT_NE(code, 0) << output;
}
