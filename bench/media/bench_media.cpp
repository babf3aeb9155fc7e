// In-process driver for bench/media: mmserve's image preprocessing path
// (media::preprocess_image, exactly what the vision API runs on an uploaded
// image) over files, timed per image.
//   mmserve_media_bench [--max N] [--mode fit|crop|pad] [--rounds N] FILE...
// Prints one JSON object per file.
#include "media/image_preprocess.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

using namespace mmserve::media;

int main(int argc, char** argv) {
  PreprocessPolicy policy;
  int rounds = 10;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--max" && i + 1 < argc) {
      policy.max_image_size = std::atoi(argv[++i]);
    } else if (arg == "--rounds" && i + 1 < argc) {
      rounds = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--mode" && i + 1 < argc) {
      policy.resize_mode = parse_resize_mode(argv[++i]).value_or(ResizeMode::fit);
    } else {
      files.push_back(arg);
    }
  }
  init_image_library();
  for (const auto& file : files) {
    std::ifstream in(file, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    RgbImage out = preprocess_image(bytes, policy, "file"); // warm-up: libraries, page cache
    std::vector<double> seconds;
    double decode = 0, resize = 0;
    for (int r = 0; r < rounds; ++r) {
      PreprocessTimings timings;
      const auto start = std::chrono::steady_clock::now();
      out = preprocess_image(bytes, policy, "file", &timings);
      seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      decode += timings.decode;
      resize += timings.resize;
    }
    std::sort(seconds.begin(), seconds.end());
    const double median = seconds[seconds.size() / 2];
    std::printf("{\"file\":\"%s\",\"width\":%u,\"height\":%u,\"rounds\":%d,\"median_s\":%.6f,"
                "\"images_per_s\":%.3f,\"decode_s\":%.6f,\"resize_s\":%.6f}\n",
                file.c_str(), out.width, out.height, rounds, median, 1.0 / median, decode / rounds, resize / rounds);
  }
  return 0;
}
