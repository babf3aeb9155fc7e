#include "engines/diffusion/safetensors.hpp"

#include "ggml.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <system_error>
#include <unistd.h>

namespace mmserve::diffusion {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20; // the format's own limit

size_t dtype_size(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
  return 0;
}

} // namespace

int64_t TensorInfo::elements() const {
  int64_t count = 1;
  for (const int64_t dim : shape)
    count *= dim;
  return count;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw SafetensorsError(fmt::format("cannot open '{}': {}", path, std::generic_category().message(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size < 8) {
    ::close(fd);
    throw SafetensorsError(fmt::format("'{}' is too short to be a safetensors file", path));
  }
  mapped_size_ = static_cast<uint64_t>(st.st_size);
  void* mapped = ::mmap(nullptr, mapped_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapped == MAP_FAILED)
    throw SafetensorsError(fmt::format("cannot map '{}': {}", path, std::generic_category().message(errno)));
  mapped_ = static_cast<const uint8_t*>(mapped);

  try {
    uint64_t header_size = 0;
    std::memcpy(&header_size, mapped_, 8); // little-endian, as the format says
    if (header_size == 0 || header_size > kMaxHeaderBytes || 8 + header_size > mapped_size_) {
      throw SafetensorsError(fmt::format("'{}' is not a safetensors file (header length {})", path, header_size));
    }
    data_offset_ = 8 + header_size;
    const auto header = nlohmann::json::parse(reinterpret_cast<const char*>(mapped_ + 8),
                                              reinterpret_cast<const char*>(mapped_ + data_offset_), nullptr, false);
    if (!header.is_object()) throw SafetensorsError(fmt::format("'{}': the header is not a JSON object", path));
    const uint64_t data_size = mapped_size_ - data_offset_;
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") continue;
      TensorInfo info;
      if (!entry.is_object() || !entry.contains("dtype") || !entry["dtype"].is_string() || !entry.contains("shape") ||
          !entry["shape"].is_array() || !entry.contains("data_offsets") || !entry["data_offsets"].is_array() ||
          entry["data_offsets"].size() != 2) {
        throw SafetensorsError(fmt::format("'{}': tensor '{}' has a malformed entry", path, name));
      }
      info.dtype = entry["dtype"].get<std::string>();
      for (const auto& dim : entry["shape"]) {
        if (!dim.is_number_unsigned())
          throw SafetensorsError(fmt::format("'{}': tensor '{}' has a bad shape", path, name));
        info.shape.push_back(dim.get<int64_t>());
      }
      const auto& offsets = entry["data_offsets"];
      if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
        throw SafetensorsError(fmt::format("'{}': tensor '{}' has bad data offsets", path, name));
      }
      info.begin = offsets[0].get<uint64_t>();
      info.end = offsets[1].get<uint64_t>();
      const size_t element_size = dtype_size(info.dtype);
      if (info.begin > info.end || info.end > data_size ||
          (element_size && static_cast<uint64_t>(info.elements()) * element_size != info.end - info.begin)) {
        throw SafetensorsError(fmt::format("'{}': tensor '{}' ({} {} elements) does not fit its byte range {}..{}",
                                           path, name, info.dtype, info.elements(), info.begin, info.end));
      }
      tensors_.emplace(name, std::move(info));
    }
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(mapped_), mapped_size_);
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (mapped_) ::munmap(const_cast<uint8_t*>(mapped_), mapped_size_);
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  const auto found = tensors_.find(name);
  if (found == tensors_.end()) throw SafetensorsError(fmt::format("'{}' has no tensor '{}'", path_, name));
  return found->second;
}

std::vector<float> SafetensorsFile::to_f32(const std::string& name) const {
  const TensorInfo& tensor = info(name);
  const uint8_t* data = mapped_ + data_offset_ + tensor.begin;
  std::vector<float> values(static_cast<size_t>(tensor.elements()));
  if (tensor.dtype == "F32") {
    std::memcpy(values.data(), data, values.size() * 4);
  } else if (tensor.dtype == "F16" || tensor.dtype == "BF16") {
    // Copied out first: the mapped bytes need not be aligned for uint16 reads.
    std::vector<uint16_t> halves(values.size());
    std::memcpy(halves.data(), data, halves.size() * 2);
    if (tensor.dtype == "F16") {
      ggml_fp16_to_fp32_row(reinterpret_cast<const ggml_fp16_t*>(halves.data()), values.data(),
                            static_cast<int64_t>(values.size()));
    } else {
      ggml_bf16_to_fp32_row(reinterpret_cast<const ggml_bf16_t*>(halves.data()), values.data(),
                            static_cast<int64_t>(values.size()));
    }
  } else {
    throw SafetensorsError(
        fmt::format("'{}': tensor '{}' is {}; F32, F16 or BF16 expected", path_, name, tensor.dtype));
  }
  return values;
}

} // namespace mmserve::diffusion
