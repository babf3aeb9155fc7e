#include "engines/asr/whisper_convert.hpp"

#include "ggml.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <unistd.h>
#include <vector>

// whisper.cpp's model file (src/whisper.cpp, whisper_model_load), all
// little-endian: magic "ggml"; 11 int32 hyper-parameters, the last the ftype;
// the mel filters (int32 n_mel, n_fft, then n_mel*n_fft floats); the
// vocabulary (int32 count, then per word a uint32 length and its bytes);
// then tensors until the end of the file: int32 n_dims, name length, ggml
// type, ne[0..n_dims), the name, the data.

namespace mmserve::asr {
namespace fs = std::filesystem;
namespace {

constexpr int kHparams = 11;
constexpr int kFtypeIndex = 10;
constexpr int kMaxDims = 4;
constexpr int32_t kMaxNameLength = 1024;
constexpr int32_t kMaxVocabWord = 1 << 16;

struct TypeInfo {
  ggml_ftype ftype;
  ggml_type wtype;    // of the weight matrices (whisper.cpp's wctx.wtype)
  const char* name;   // in logs
  const char* suffix; // in the cached file's name
};

TypeInfo info_of(WhisperWeights weights) {
  switch (weights) {
  case WhisperWeights::f32: return {GGML_FTYPE_ALL_F32, GGML_TYPE_F32, "F32", "f32"};
  case WhisperWeights::f16: return {GGML_FTYPE_MOSTLY_F16, GGML_TYPE_F16, "F16", "f16"};
  case WhisperWeights::q8_0: return {GGML_FTYPE_MOSTLY_Q8_0, GGML_TYPE_Q8_0, "Q8_0", "q8_0"};
  }
  throw std::logic_error("unknown whisper weight type");
}

std::string ftype_name(int ftype) {
  const ggml_type type = ggml_ftype_to_ggml_type(static_cast<ggml_ftype>(ftype));
  return type == GGML_TYPE_COUNT ? fmt::format("ftype {}", ftype) : std::string(ggml_type_name(type));
}

class Input {
public:
  explicit Input(const std::string& path) : path_(path), in_(path, std::ios::binary) {
    if (!in_) throw std::runtime_error(fmt::format("cannot open the whisper model '{}'", path));
  }
  void read(void* data, size_t size) {
    if (!in_.read(static_cast<char*>(data), static_cast<std::streamsize>(size)))
      throw std::runtime_error(fmt::format("the whisper model '{}' is truncated", path_));
  }
  template <class T> T value() {
    T v;
    read(&v, sizeof v);
    return v;
  }
  void skip(uint64_t size) {
    if (!in_.seekg(static_cast<std::streamoff>(size), std::ios::cur))
      throw std::runtime_error(fmt::format("the whisper model '{}' is truncated", path_));
  }
  bool at_end() { return in_.peek() == std::char_traits<char>::eof(); }
  const std::string& path() const { return path_; }

private:
  std::string path_;
  std::ifstream in_;
};

class Output {
public:
  explicit Output(const fs::path& path) : path_(path), out_(path, std::ios::binary | std::ios::trunc) {
    if (!out_) throw std::runtime_error(fmt::format("cannot write '{}'", path.string()));
  }
  void write(const void* data, size_t size) {
    if (!out_.write(static_cast<const char*>(data), static_cast<std::streamsize>(size)))
      throw std::runtime_error(fmt::format("cannot write '{}' (disk full?)", path_.string()));
  }
  template <class T> void value(const T& v) { write(&v, sizeof v); }
  void close() {
    out_.close();
    if (!out_) throw std::runtime_error(fmt::format("cannot write '{}' (disk full?)", path_.string()));
  }

private:
  fs::path path_;
  std::ofstream out_;
};

struct Header {
  uint32_t magic = 0;
  std::array<int32_t, kHparams> hparams{};
};

Header read_header(Input& in) {
  Header header;
  header.magic = in.value<uint32_t>();
  if (header.magic != GGML_FILE_MAGIC)
    throw std::runtime_error(
        fmt::format("'{}' is not a whisper.cpp ggml model (magic {:#010x})", in.path(), header.magic));
  in.read(header.hparams.data(), sizeof header.hparams);
  // The same magic starts whisper.cpp's other files (the Silero VAD model,
  // whose next field is a name's length): check the hyper-parameters.
  const auto& h = header.hparams;
  const bool plausible = std::all_of(h.begin(), h.begin() + kFtypeIndex, [](int32_t v) { return v > 0; }) &&
                         h[0] >= 1000 && h[2] == h[6] && h[kFtypeIndex] >= 0;
  if (!plausible) throw std::runtime_error(fmt::format("'{}' is not a whisper model (implausible header)", in.path()));
  return header;
}

// The mel filters and the vocabulary, as they are.
std::vector<char> read_filters_and_vocab(Input& in) {
  std::vector<char> bytes;
  auto take = [&](size_t size) {
    const size_t at = bytes.size();
    bytes.resize(at + size);
    in.read(bytes.data() + at, size);
    return bytes.data() + at;
  };
  int32_t n_mel = 0, n_fft = 0;
  std::memcpy(&n_mel, take(4), 4);
  std::memcpy(&n_fft, take(4), 4);
  if (n_mel <= 0 || n_fft <= 0 || n_mel > 1024 || n_fft > 1 << 16)
    throw std::runtime_error(fmt::format("'{}': implausible mel filters ({} x {})", in.path(), n_mel, n_fft));
  take(sizeof(float) * static_cast<size_t>(n_mel) * static_cast<size_t>(n_fft));
  int32_t n_words = 0;
  std::memcpy(&n_words, take(4), 4);
  if (n_words < 0 || n_words > 1 << 20)
    throw std::runtime_error(fmt::format("'{}': implausible vocabulary size {}", in.path(), n_words));
  for (int32_t i = 0; i < n_words; ++i) {
    uint32_t length = 0;
    std::memcpy(&length, take(4), 4);
    if (length > kMaxVocabWord)
      throw std::runtime_error(fmt::format("'{}': implausible vocabulary word of {} bytes", in.path(), length));
    take(length);
  }
  return bytes;
}

struct TensorHeader {
  int32_t n_dims = 0;
  ggml_type type = GGML_TYPE_F32;
  std::array<int32_t, kMaxDims> ne{1, 1, 1, 1};
  std::string name;

  int64_t elements() const { return int64_t{ne[0]} * ne[1] * ne[2] * ne[3]; }
  int64_t rows() const { return elements() / ne[0]; }
  size_t bytes() const { return ggml_row_size(type, ne[0]) * static_cast<size_t>(rows()); }
};

TensorHeader read_tensor_header(Input& in) {
  TensorHeader t;
  t.n_dims = in.value<int32_t>();
  const int32_t length = in.value<int32_t>();
  const int32_t type = in.value<int32_t>();
  if (t.n_dims < 1 || t.n_dims > kMaxDims || length <= 0 || length > kMaxNameLength)
    throw std::runtime_error(fmt::format("'{}': malformed tensor header", in.path()));
  for (int i = 0; i < t.n_dims; ++i) {
    t.ne[i] = in.value<int32_t>();
    if (t.ne[i] <= 0) throw std::runtime_error(fmt::format("'{}': malformed tensor shape", in.path()));
  }
  t.name.resize(static_cast<size_t>(length));
  in.read(t.name.data(), t.name.size());
  if (type < 0 || type >= GGML_TYPE_COUNT || ggml_blck_size(static_cast<ggml_type>(type)) <= 0 ||
      ggml_type_size(static_cast<ggml_type>(type)) == 0)
    throw std::runtime_error(fmt::format("'{}': tensor '{}' has unknown type {}", in.path(), t.name, type));
  t.type = static_cast<ggml_type>(type);
  if (t.ne[0] % ggml_blck_size(t.type) != 0)
    throw std::runtime_error(fmt::format("'{}': tensor '{}' has rows of {} values, not whole {} blocks", in.path(),
                                         t.name, t.ne[0], ggml_type_name(t.type)));
  return t;
}

// The type whisper.cpp's loader gives a tensor in a model of weight type
// `wtype` (whisper_model_load): the 2-D weight matrices (the token embedding
// included) are of wtype, the conv kernels (3-D) F32 in an f32 model and F16
// otherwise, everything else F32. The 2-D tensors that are not weight
// matrices are those whisper's quantizer skips (examples/quantize).
ggml_type loaded_type(const TensorHeader& t, ggml_type wtype) {
  static const std::array<std::string, 4> not_matrices = {
      "encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding"};
  if (t.n_dims == 3) return wtype == GGML_TYPE_F32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
  if (t.n_dims == 2 && std::find(not_matrices.begin(), not_matrices.end(), t.name) == not_matrices.end()) return wtype;
  return GGML_TYPE_F32;
}

int count_tensors(const std::string& path) {
  Input in(path);
  read_header(in);
  read_filters_and_vocab(in);
  int count = 0;
  while (!in.at_end()) {
    const TensorHeader t = read_tensor_header(in);
    in.skip(t.bytes());
    ++count;
  }
  return count;
}

struct Scratch {
  std::vector<uint8_t> in, out;
  std::vector<float> values;
};

// Reads one tensor's data and writes it as `to`.
void convert_tensor(Input& in, Output& out, const TensorHeader& t, ggml_type to, Scratch& s) {
  s.in.resize(t.bytes());
  in.read(s.in.data(), s.in.size());
  if (to == t.type) {
    out.write(s.in.data(), s.in.size());
    return;
  }
  const int64_t n = t.elements();
  s.values.resize(static_cast<size_t>(n));
  if (t.type == GGML_TYPE_F16)
    ggml_fp16_to_fp32_row(reinterpret_cast<const ggml_fp16_t*>(s.in.data()), s.values.data(), n);
  else if (t.type == GGML_TYPE_F32)
    std::memcpy(s.values.data(), s.in.data(), s.in.size());
  else
    throw std::runtime_error(fmt::format("'{}': tensor '{}' is {}, not F32 or F16: cannot convert it", in.path(),
                                         t.name, ggml_type_name(t.type)));
  switch (to) {
  case GGML_TYPE_F32: out.write(s.values.data(), s.values.size() * sizeof(float)); return;
  case GGML_TYPE_F16:
    s.out.resize(static_cast<size_t>(n) * sizeof(ggml_fp16_t));
    ggml_fp32_to_fp16_row(s.values.data(), reinterpret_cast<ggml_fp16_t*>(s.out.data()), n);
    out.write(s.out.data(), s.out.size());
    return;
  case GGML_TYPE_Q8_0: {
    // whisper.cpp can hold Q8_0 weights only in rows of whole 32-value blocks.
    if (t.ne[0] % ggml_blck_size(to) != 0)
      throw std::runtime_error(fmt::format("'{}': tensor '{}' has rows of {} values, not a multiple of Q8_0's "
                                           "block of {}: this model cannot be quantized",
                                           in.path(), t.name, t.ne[0], ggml_blck_size(to)));
    s.out.resize(ggml_row_size(to, t.ne[0]) * static_cast<size_t>(t.rows()));
    const size_t size = ggml_quantize_chunk(to, s.values.data(), s.out.data(), 0, t.rows(), t.ne[0], nullptr);
    out.write(s.out.data(), size);
    return;
  }
  default: throw std::logic_error("unsupported whisper weight type");
  }
}

void convert(const std::string& source, const fs::path& target, const TypeInfo& info) {
  const int total = count_tensors(source);
  Input in(source);
  Output out(target);
  Header header = read_header(in);
  // The quantizer's header: the ggml ftype plus the quantization version
  // (whisper.cpp's loader takes it off again); f32 and f16 as whisper.cpp's
  // converter writes them.
  header.hparams[kFtypeIndex] =
      ggml_is_quantized(info.wtype) ? GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + info.ftype : info.ftype;
  out.value(header.magic);
  out.write(header.hparams.data(), sizeof header.hparams);
  const std::vector<char> filters_and_vocab = read_filters_and_vocab(in);
  out.write(filters_and_vocab.data(), filters_and_vocab.size());

  Scratch scratch;
  int done = 0, reported = 0;
  while (!in.at_end()) {
    const TensorHeader t = read_tensor_header(in);
    const ggml_type to = loaded_type(t, info.wtype);
    out.value(t.n_dims);
    out.value(static_cast<int32_t>(t.name.size()));
    out.value(static_cast<int32_t>(to));
    out.write(t.ne.data(), sizeof(int32_t) * static_cast<size_t>(t.n_dims));
    out.write(t.name.data(), t.name.size());
    convert_tensor(in, out, t, to, scratch);
    ++done;
    if (done * 10 / total > reported) {
      reported = done * 10 / total;
      spdlog::info("converting whisper model to {}: {}/{} tensors ({}%)", info.name, done, total, done * 100 / total);
    }
  }
  if (done == 0) throw std::runtime_error(fmt::format("'{}' has no tensors (a vocabulary-only test file?)", source));
  out.close();
}

} // namespace

WhisperWeights whisper_weights_of_compute_type(const std::string& compute_type) {
  if (compute_type == "float32") return WhisperWeights::f32;
  if (compute_type == "float16") return WhisperWeights::f16;
  if (compute_type == "int8" || compute_type == "int8_float16") return WhisperWeights::q8_0;
  throw std::invalid_argument("unknown COMPUTE_TYPE '" + compute_type + "' (float16, float32, int8, int8_float16)");
}

int whisper_file_ftype(const std::string& path) {
  Input in(path);
  const Header header = read_header(in);
  return header.hparams[kFtypeIndex] % GGML_QNT_VERSION_FACTOR;
}

std::string ensure_whisper_weights(const std::string& model_path, const std::string& cache_dir, WhisperWeights wanted) {
  const TypeInfo info = info_of(wanted);
  const int ftype = whisper_file_ftype(model_path);
  if (ftype == info.ftype) return model_path;
  if (ftype != GGML_FTYPE_ALL_F32 && ftype != GGML_FTYPE_MOSTLY_F16) {
    throw std::runtime_error(fmt::format("COMPUTE_TYPE asks for {} whisper weights, but '{}' is quantized ({}): "
                                         "converting it would lose quality or only pretend to add precision; "
                                         "use an f32 or f16 model, or one already of {}",
                                         info.name, model_path, ftype_name(ftype), info.name));
  }
  const fs::path source(model_path);
  const fs::path target = fs::path(cache_dir) / fmt::format("{}.{}.bin", source.stem().string(), info.suffix);
  std::error_code ec;
  if (fs::exists(target, ec) && fs::last_write_time(target, ec) >= fs::last_write_time(source, ec)) {
    spdlog::info("COMPUTE_TYPE: using the {} whisper model in the model cache: {}", info.name, target.string());
    return target.string();
  }
  fs::create_directories(target.parent_path(), ec);
  if (ec) throw std::runtime_error(fmt::format("cannot create the model cache '{}': {}", cache_dir, ec.message()));
  // Written under a temporary name, renamed when complete: no half file is ever taken for a model.
  const fs::path partial = target.string() + fmt::format(".part-{}", getpid());
  spdlog::info("COMPUTE_TYPE: converting '{}' ({}) to {} once, into '{}'", model_path, ftype_name(ftype), info.name,
               target.string());
  const auto started = std::chrono::steady_clock::now();
  try {
    convert(model_path, partial, info);
  } catch (...) {
    fs::remove(partial, ec);
    throw;
  }
  fs::rename(partial, target, ec);
  if (ec) {
    const std::string reason = ec.message();
    fs::remove(partial, ec);
    throw std::runtime_error(
        fmt::format("cannot move the {} whisper model into '{}': {}", info.name, cache_dir, reason));
  }
  spdlog::info("COMPUTE_TYPE: {} whisper model written in {:.1f} s ({} -> {} bytes)", info.name,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(),
               fs::file_size(source, ec), fs::file_size(target, ec));
  return target.string();
}

} // namespace mmserve::asr
