#include "engines/diffusion/tiny_autoencoder.hpp"

#include "engines/diffusion/safetensors.hpp"

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <stdexcept>
#include <thread>

namespace mmserve::diffusion {
namespace {

// One half's weights, copied into a CPU backend buffer as f32.
struct Weights {
  ggml_context* ctx = nullptr;
  ggml_backend_buffer_t buffer = nullptr;
  std::map<std::string, ggml_tensor*> tensors;

  ~Weights() {
    if (buffer) ggml_backend_buffer_free(buffer);
    if (ctx) ggml_free(ctx);
  }

  void load(const std::string& path, ggml_backend_t backend) {
    const SafetensorsFile file(path);
    ggml_init_params params{ggml_tensor_overhead() * (file.tensors().size() + 1), nullptr, true};
    ctx = ggml_init(params);
    for (const auto& [name, info] : file.tensors()) {
      if (info.shape.empty() || info.shape.size() > 4) {
        throw std::runtime_error(fmt::format("'{}': tensor '{}' has {} dimensions", path, name, info.shape.size()));
      }
      int64_t ne[4] = {1, 1, 1, 1}; // ggml's order is PyTorch's reversed
      for (size_t i = 0; i < info.shape.size(); ++i)
        ne[i] = info.shape[info.shape.size() - 1 - i];
      ggml_tensor* tensor = ggml_new_tensor(ctx, GGML_TYPE_F32, static_cast<int>(info.shape.size()), ne);
      ggml_set_name(tensor, name.c_str());
      tensors[name] = tensor;
    }
    buffer = ggml_backend_alloc_ctx_tensors(ctx, backend);
    if (!buffer) throw std::runtime_error(fmt::format("'{}': cannot allocate the weights", path));
    for (const auto& [name, tensor] : tensors) {
      const auto values = file.to_f32(name);
      ggml_backend_tensor_set(tensor, values.data(), 0, values.size() * sizeof(float));
    }
  }

  ggml_tensor* get(const std::string& name) const {
    const auto found = tensors.find(name);
    if (found == tensors.end()) throw std::runtime_error(fmt::format("TAESD weights lack '{}'", name));
    return found->second;
  }
  bool has(const std::string& name) const { return tensors.contains(name); }
};

// The graph-building steps of TAESD's nn.Sequential.
class Builder {
public:
  Builder(ggml_context* ctx, const Weights& weights) : ctx_(ctx), w_(weights) {}

  // 3x3 convolution, padding 1 (the 1x1 skip convolution when named so).
  ggml_tensor* conv(ggml_tensor* x, const std::string& prefix, int stride = 1) {
    ggml_tensor* kernel = w_.get(prefix + ".weight");
    const int pad = static_cast<int>(kernel->ne[0] / 2);
    x = ggml_conv_2d_direct(ctx_, kernel, x, stride, stride, pad, pad, 1, 1);
    if (w_.has(prefix + ".bias")) {
      ggml_tensor* bias = w_.get(prefix + ".bias");
      x = ggml_add(ctx_, x, ggml_reshape_4d(ctx_, bias, 1, 1, bias->ne[0], 1));
    }
    return x;
  }
  // relu(conv(relu(conv(relu(conv(x))))) + skip(x))
  ggml_tensor* block(ggml_tensor* x, const std::string& prefix) {
    ggml_tensor* h = ggml_relu(ctx_, conv(x, prefix + ".conv.0"));
    h = ggml_relu(ctx_, conv(h, prefix + ".conv.2"));
    h = conv(h, prefix + ".conv.4");
    ggml_tensor* skip = w_.has(prefix + ".skip.weight") ? conv(x, prefix + ".skip") : x;
    return ggml_relu(ctx_, ggml_add(ctx_, h, skip));
  }
  ggml_tensor* upsample(ggml_tensor* x) { return ggml_upscale(ctx_, x, 2, GGML_SCALE_MODE_NEAREST); }

private:
  ggml_context* ctx_;
  const Weights& w_;
};

} // namespace

struct TinyAutoencoder::Impl {
  struct BackendFree {
    void operator()(ggml_backend* backend) const { ggml_backend_free(backend); }
  };
  std::unique_ptr<ggml_backend, BackendFree> backend; // declared first: freed after the weights' buffers
  Weights encoder, decoder;
  bool has_encoder = false, has_decoder = false;
  int latent_channels = 4;
  int threads = 1;

  // Builds the graph with `build`, runs it on `input`, returns its output.
  Planar run(const Planar& input, const std::function<ggml_tensor*(ggml_context*, ggml_tensor*)>& build) const {
    ggml_init_params params{ggml_tensor_overhead() * 512 + ggml_graph_overhead(), nullptr, true};
    ggml_context* ctx = ggml_init(params);
    ggml_tensor* x = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, input.width, input.height, input.channels, 1);
    ggml_set_input(x);
    ggml_tensor* out = build(ctx, x);
    ggml_set_output(out);
    ggml_cgraph* graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(graph, out);
    ggml_gallocr_t allocator = ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend.get()));
    Planar result;
    try {
      if (!ggml_gallocr_alloc_graph(allocator, graph)) throw std::runtime_error("TAESD: cannot allocate the graph");
      ggml_backend_tensor_set(x, input.values.data(), 0, input.values.size() * sizeof(float));
      ggml_backend_cpu_set_n_threads(backend.get(), threads);
      if (ggml_backend_graph_compute(backend.get(), graph) != GGML_STATUS_SUCCESS) {
        throw std::runtime_error("TAESD: the graph failed to compute");
      }
      result.width = static_cast<int>(out->ne[0]);
      result.height = static_cast<int>(out->ne[1]);
      result.channels = static_cast<int>(out->ne[2]);
      result.values.resize(ggml_nelements(out));
      ggml_backend_tensor_get(out, result.values.data(), 0, result.values.size() * sizeof(float));
    } catch (...) {
      ggml_gallocr_free(allocator);
      ggml_free(ctx);
      throw;
    }
    ggml_gallocr_free(allocator);
    ggml_free(ctx);
    return result;
  }
};

TinyAutoencoder::TinyAutoencoder(const std::string& encoder_path, const std::string& decoder_path, int threads)
    : impl_(std::make_unique<Impl>()) {
  impl_->backend.reset(ggml_backend_cpu_init());
  if (!impl_->backend) throw std::runtime_error("TAESD: no CPU backend");
  impl_->threads = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (!decoder_path.empty()) {
    impl_->decoder.load(decoder_path, impl_->backend.get());
    impl_->has_decoder = true;
    impl_->latent_channels = static_cast<int>(impl_->decoder.get("1.weight")->ne[2]); // conv(latent, 64)
  }
  if (!encoder_path.empty()) {
    impl_->encoder.load(encoder_path, impl_->backend.get());
    impl_->has_encoder = true;
    impl_->latent_channels = static_cast<int>(impl_->encoder.get("14.weight")->ne[3]); // conv(64, latent)
  }
}

TinyAutoencoder::~TinyAutoencoder() = default;

int TinyAutoencoder::latent_channels() const {
  return impl_->latent_channels;
}

Planar TinyAutoencoder::decode(const Planar& latent) const {
  if (!impl_->has_decoder) throw std::logic_error("TAESD: no decoder loaded");
  if (latent.channels != impl_->latent_channels || latent.width < 1 || latent.height < 1 ||
      latent.values.size() != static_cast<size_t>(latent.channels) * latent.height * latent.width) {
    throw std::invalid_argument(fmt::format("TAESD decode: expected a {}-channel latent, got {}x{}x{}",
                                            impl_->latent_channels, latent.channels, latent.height, latent.width));
  }
  return impl_->run(latent, [this](ggml_context* ctx, ggml_tensor* x) {
    Builder b(ctx, impl_->decoder);
    x = ggml_scale(ctx, ggml_tanh(ctx, ggml_scale(ctx, x, 1.0f / 3)), 3); // Clamp
    x = ggml_relu(ctx, b.conv(x, "1"));
    int index = 3;
    for (int stage = 0; stage < 3; ++stage) {
      for (int i = 0; i < 3; ++i)
        x = b.block(x, std::to_string(index++));
      x = b.upsample(x);
      ++index; // nn.Upsample has no weights
      x = b.conv(x, std::to_string(index++));
    }
    x = b.block(x, "18");
    return b.conv(x, "19");
  });
}

Planar TinyAutoencoder::encode(const Planar& image) const {
  if (!impl_->has_encoder) throw std::logic_error("TAESD: no encoder loaded");
  if (image.channels != 3 || image.width < 8 || image.height < 8 || image.width % 8 || image.height % 8 ||
      image.values.size() != static_cast<size_t>(3) * image.height * image.width) {
    throw std::invalid_argument(fmt::format("TAESD encode: expected RGB with sides multiple of 8, got {}x{}x{}",
                                            image.channels, image.height, image.width));
  }
  return impl_->run(image, [this](ggml_context* ctx, ggml_tensor* x) {
    Builder b(ctx, impl_->encoder);
    x = b.conv(x, "0");
    x = b.block(x, "1");
    int index = 2;
    for (int stage = 0; stage < 3; ++stage) {
      x = b.conv(x, std::to_string(index++), 2); // stride 2, no bias
      for (int i = 0; i < 3; ++i)
        x = b.block(x, std::to_string(index++));
    }
    return b.conv(x, "14");
  });
}

} // namespace mmserve::diffusion
