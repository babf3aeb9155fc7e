// What every diffusion component shares: its weights in a ggml backend
// buffer (read from .safetensors, renamed to one internal naming), a graph
// run from host inputs to host outputs, and the PyTorch layers the
// components are made of (Linear, Conv2d, GroupNorm, LayerNorm, attention).
// Layouts: images are ggml [W, H, C, N] (PyTorch NCHW reversed), token
// sequences [C, T, N].
#pragma once

#include "ggml-backend.h"
#include "ggml.h"

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace mmserve::diffusion {

struct TensorInfo; // safetensors.hpp

struct HostTensor {
  std::vector<int64_t> ne; // ggml order (innermost first)
  std::vector<float> values;
  int64_t elements() const;
};

struct BackendDeleter {
  void operator()(ggml_backend* backend) const { ggml_backend_free(backend); }
};
using BackendPtr = std::unique_ptr<ggml_backend, BackendDeleter>;
BackendPtr make_cpu_backend();
// The first GPU ggml has a backend for when `gpu`, else (or without one) the CPU.
BackendPtr make_backend(bool gpu);

// One component's weights. Matrices and kernels keep half precision when the
// file has it (F16, BF16 -> F16); the rest (norms, biases, embeddings) is F32.
class ModelWeights {
public:
  ModelWeights() = default;
  ~ModelWeights();
  ModelWeights(const ModelWeights&) = delete;
  ModelWeights& operator=(const ModelWeights&) = delete;

  // Maps a file's tensor name to the internal one; empty: not ours.
  using Rename = std::function<std::string(const std::string&)>;
  // Reads every tensor `rename` keeps from `files`. `on_bytes` (may be
  // empty) hears the bytes read so far. Throws std::runtime_error naming the
  // file and tensor.
  void load(const std::vector<std::string>& files, ggml_backend_t backend, const Rename& rename = {},
            const std::function<void(uint64_t)>& on_bytes = {});

  // One internal tensor made from a file's tensor, for layouts that pack or
  // store weights differently (single-file checkpoints): rows of dim 0 (q, k
  // and v stacked in one matrix), then a 2-D transpose, then a new shape of
  // the same size (a 1x1 convolution's [C, C, 1, 1] as a Linear's [C, C]).
  struct View {
    std::string name;
    int64_t first_row = 0;
    int64_t rows = -1; // -1: all
    bool transpose = false;
    std::vector<int64_t> shape; // PyTorch order; empty: as it comes
  };
  // The views a file's tensor gives; none: not ours (never read).
  using Mapping = std::function<std::vector<View>(const std::string& name, const TensorInfo& info)>;
  // As load(), each file tensor becoming the views `mapping` gives; the
  // bytes heard count each view's share of its file tensor.
  void load_mapped(const std::vector<std::string>& files, ggml_backend_t backend, const Mapping& mapping,
                   const std::function<void(uint64_t)>& on_bytes = {});

  // Before loading: store Linear weights (2-D, rows a multiple of 32) as
  // Q8_0, half the memory of F16 (ggml multiplies Q8_0 by F32 directly).
  // Convolution kernels and embeddings keep their type.
  void quantize_matrices_to_q8_0(bool enabled) { q8_0_ = enabled; }

  ggml_tensor* get(const std::string& name) const; // throws std::runtime_error naming the missing tensor
  bool has(const std::string& name) const { return tensors_.contains(name); }
  // How many of prefix0suffix, prefix1suffix, ... exist, counting up from 0
  // (blocks, resnets, layers: the structure the weights describe).
  int count(const std::string& prefix, const std::string& suffix) const;
  size_t size() const { return tensors_.size(); }
  uint64_t bytes() const;
  // The tensor's values as f32 (small host-side uses).
  std::vector<float> values(const std::string& name) const;

private:
  ggml_context* ctx_ = nullptr;
  ggml_backend_buffer_t buffer_ = nullptr;
  bool q8_0_ = false;
  std::map<std::string, ggml_tensor*> tensors_;
};

// One graph built, allocated and computed: inputs are copied in, the marked
// outputs copied out.
class Graph {
public:
  explicit Graph(size_t max_nodes = 16384);
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  ggml_context* ctx() const { return ctx_; }
  // Inputs are copied: the host values may go away before compute().
  ggml_tensor* input(HostTensor host);
  ggml_tensor* input_ids(std::vector<int32_t> ids);
  void output(ggml_tensor* tensor);
  // Computes everything and returns the outputs in the order they were marked.
  std::vector<HostTensor> compute(ggml_backend_t backend, int threads);

private:
  size_t max_nodes_;
  ggml_context* ctx_ = nullptr;
  std::vector<std::pair<ggml_tensor*, const void*>> inputs_;
  std::deque<std::vector<int32_t>> ids_; // deques: the copies never move
  std::deque<HostTensor> input_copies_;
  std::vector<ggml_tensor*> outputs_;
};

// The PyTorch layers, by weight prefix (prefix.weight, prefix.bias).
class Layers {
public:
  Layers(ggml_context* ctx, const ModelWeights& weights) : ctx_(ctx), w_(weights) {}
  ggml_context* ctx() const { return ctx_; }
  const ModelWeights& weights() const { return w_; }

  ggml_tensor* linear(ggml_tensor* x, const std::string& prefix) const;
  // Conv2d with the kernel's own size; padding `pad` (default: kernel/2).
  ggml_tensor* conv2d(ggml_tensor* x, const std::string& prefix, int stride = 1, int pad = -1) const;
  ggml_tensor* group_norm(ggml_tensor* x, const std::string& prefix, int groups, float eps) const;
  ggml_tensor* layer_norm(ggml_tensor* x, const std::string& prefix, float eps) const;
  // Scaled dot-product attention of q [C, T, N] over k, v [C, S, N] with
  // `heads` heads; causal masks future keys (CLIP). query_slice > 0 computes
  // that many queries at a time (bounded memory for long sequences).
  ggml_tensor* attention(ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads, bool causal = false,
                         int64_t query_slice = 0) const;

  // [W, H, C, N] <-> [C, W*H, N]
  ggml_tensor* image_to_tokens(ggml_tensor* x) const;
  ggml_tensor* tokens_to_image(ggml_tensor* x, int64_t width, int64_t height) const;

private:
  ggml_context* ctx_;
  const ModelWeights& w_;
};

} // namespace mmserve::diffusion
