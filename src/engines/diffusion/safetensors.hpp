// Reads .safetensors files (an 8-byte header length, a JSON header naming
// each tensor's dtype, shape and byte range, then the data), as diffusers
// folders and single-file Stable Diffusion checkpoints ship them. The file
// is untrusted: every range and size is checked before use.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace mmserve::diffusion {

class SafetensorsError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

struct TensorInfo {
  std::string dtype;           // F32, F16, BF16, ...
  std::vector<int64_t> shape;  // PyTorch order (outermost first)
  uint64_t begin = 0, end = 0; // byte range within the data section
  int64_t elements() const;
};

class SafetensorsFile {
public:
  explicit SafetensorsFile(const std::string& path); // throws SafetensorsError
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  bool contains(const std::string& name) const { return tensors_.contains(name); }
  const TensorInfo& info(const std::string& name) const;
  // The tensor's values as f32 (from F32, F16 or BF16).
  std::vector<float> to_f32(const std::string& name) const;

private:
  std::string path_;
  const uint8_t* mapped_ = nullptr;
  uint64_t mapped_size_ = 0;
  uint64_t data_offset_ = 0;
  std::map<std::string, TensorInfo> tensors_;
};

} // namespace mmserve::diffusion
