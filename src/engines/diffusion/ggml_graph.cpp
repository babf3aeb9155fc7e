#include "engines/diffusion/ggml_graph.hpp"

#include "engines/diffusion/safetensors.hpp"

#include "ggml-alloc.h"
#include "ggml-cpu.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace mmserve::diffusion {

int64_t HostTensor::elements() const {
  int64_t count = 1;
  for (const int64_t n : ne)
    count *= n;
  return ne.empty() ? 0 : count;
}

BackendPtr make_cpu_backend() {
  BackendPtr backend(ggml_backend_cpu_init());
  if (!backend) throw std::runtime_error("ggml: no CPU backend");
  return backend;
}

BackendPtr make_backend(bool gpu) {
  if (gpu) {
    if (ggml_backend_dev_t device = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU)) {
      BackendPtr backend(ggml_backend_dev_init(device, nullptr));
      if (backend) return backend;
    }
  }
  return make_cpu_backend();
}

ModelWeights::~ModelWeights() {
  if (buffer_) ggml_backend_buffer_free(buffer_);
  if (ctx_) ggml_free(ctx_);
}

namespace {

// Matrices and convolution kernels: worth keeping in half precision. Not
// embeddings: position embeddings are added, and ggml adds only F32.
bool is_half_candidate(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape) {
  int64_t elements = 1;
  for (const int64_t n : shape)
    elements *= n;
  return (dtype == "F16" || dtype == "BF16") && shape.size() >= 2 && shape.back() % 2 == 0 && elements >= 1024 &&
         name.find("embedding") == std::string::npos;
}

// The view's shape (PyTorch order) from the file tensor's; throws when the view does not fit.
std::vector<int64_t> view_shape(const std::string& file, const std::string& source, const TensorInfo& info,
                                const ModelWeights::View& view) {
  std::vector<int64_t> shape = info.shape;
  const auto refuse = [&](const char* why) {
    return std::runtime_error(fmt::format("'{}': tensor '{}' {}", file, source, why));
  };
  if (view.first_row != 0 || view.rows >= 0) {
    if (shape.empty() || view.first_row < 0 || view.rows < 0 || view.first_row + view.rows > shape[0]) {
      throw refuse("has fewer rows than its layout needs");
    }
    shape[0] = view.rows;
  }
  if (view.transpose) {
    if (shape.size() != 2) throw refuse("is not a matrix to transpose");
    std::swap(shape[0], shape[1]);
  }
  if (!view.shape.empty()) {
    int64_t have = 1, want = 1;
    for (const int64_t n : shape)
      have *= n;
    for (const int64_t n : view.shape)
      want *= n;
    if (have != want) throw refuse("does not have the size its layout needs");
    shape = view.shape;
  }
  if (shape.size() > 4) throw refuse("has more than 4 dimensions");
  return shape;
}

} // namespace

void ModelWeights::load(const std::vector<std::string>& files, ggml_backend_t backend, const Rename& rename,
                        const std::function<void(uint64_t)>& on_bytes) {
  load_mapped(
      files, backend,
      [&rename](const std::string& name, const TensorInfo&) {
        View view;
        view.name = rename ? rename(name) : name;
        return view.name.empty() ? std::vector<View>{} : std::vector<View>{std::move(view)};
      },
      on_bytes);
}

void ModelWeights::load_mapped(const std::vector<std::string>& files, ggml_backend_t backend, const Mapping& mapping,
                               const std::function<void(uint64_t)>& on_bytes) {
  if (ctx_) throw std::logic_error("ModelWeights::load called twice");
  struct Pending {
    const SafetensorsFile* file;
    const std::string* path;
    std::string source_name;
    View view;
    ggml_tensor* tensor;
  };
  std::vector<std::unique_ptr<SafetensorsFile>> opened;
  std::vector<Pending> pending;
  for (size_t f = 0; f < files.size(); ++f) {
    opened.push_back(std::make_unique<SafetensorsFile>(files[f]));
    for (const auto& [source_name, info] : opened.back()->tensors()) {
      for (auto& view : mapping(source_name, info)) {
        if (view.name.empty()) continue;
        pending.push_back({opened.back().get(), &files[f], source_name, std::move(view), nullptr});
      }
    }
  }
  ctx_ = ggml_init({ggml_tensor_overhead() * (pending.size() + 1), nullptr, true});
  for (auto& item : pending) {
    const std::string& file = *item.path;
    if (tensors_.contains(item.view.name)) {
      throw std::runtime_error(fmt::format("'{}': tensor '{}' appears twice", file, item.view.name));
    }
    const TensorInfo& info = item.file->info(item.source_name);
    const std::vector<int64_t> shape = view_shape(file, item.source_name, info, item.view);
    int64_t ne[4] = {1, 1, 1, 1}; // ggml's order is PyTorch's reversed
    for (size_t i = 0; i < shape.size(); ++i)
      ne[i] = shape[shape.size() - 1 - i];
    ggml_type type = is_half_candidate(item.view.name, info.dtype, shape) ? GGML_TYPE_F16 : GGML_TYPE_F32;
    if (q8_0_ && shape.size() == 2 && shape[1] % ggml_blck_size(GGML_TYPE_Q8_0) == 0 &&
        item.view.name.find("embedding") == std::string::npos) {
      type = GGML_TYPE_Q8_0;
    }
    item.tensor = ggml_new_tensor(ctx_, type, std::max<int>(1, static_cast<int>(shape.size())), ne);
    ggml_set_name(item.tensor, item.view.name.c_str());
    tensors_[item.view.name] = item.tensor;
  }
  buffer_ = ggml_backend_alloc_ctx_tensors(ctx_, backend);
  if (!buffer_ && !pending.empty()) {
    throw std::runtime_error(fmt::format("'{}': cannot allocate the weights", files.empty() ? "" : files.front()));
  }
  uint64_t read = 0;
  std::vector<ggml_fp16_t> halves;
  std::vector<float> values, part;
  const Pending* converted = nullptr; // a packed tensor's views follow each other: convert it once
  for (const auto& item : pending) {
    if (!converted || converted->file != item.file || converted->source_name != item.source_name) {
      values = item.file->to_f32(item.source_name);
      converted = &item;
    }
    const TensorInfo& info = item.file->info(item.source_name);
    const size_t count = static_cast<size_t>(ggml_nelements(item.tensor));
    const float* data = values.data();
    if (item.view.rows >= 0) {
      const size_t row = info.shape.empty() || info.shape[0] == 0 ? 0 : values.size() / info.shape[0];
      data += static_cast<size_t>(item.view.first_row) * row;
    }
    if (item.view.transpose) {
      // The (sliced) source is [R, C] row-major; the view is [C, R].
      const size_t columns = static_cast<size_t>(info.shape[1]), rows = count / std::max<size_t>(columns, 1);
      part.resize(count);
      for (size_t r = 0; r < rows; ++r)
        for (size_t c = 0; c < columns; ++c)
          part[c * rows + r] = data[r * columns + c];
      data = part.data();
    }
    if (item.tensor->type == GGML_TYPE_Q8_0) {
      std::vector<uint8_t> blocks(ggml_nbytes(item.tensor));
      ggml_quantize_chunk(GGML_TYPE_Q8_0, data, blocks.data(), 0, item.tensor->ne[1], item.tensor->ne[0], nullptr);
      ggml_backend_tensor_set(item.tensor, blocks.data(), 0, blocks.size());
    } else if (item.tensor->type == GGML_TYPE_F16) {
      halves.resize(count);
      ggml_fp32_to_fp16_row(data, halves.data(), static_cast<int64_t>(count));
      ggml_backend_tensor_set(item.tensor, halves.data(), 0, count * sizeof(ggml_fp16_t));
    } else {
      ggml_backend_tensor_set(item.tensor, data, 0, count * sizeof(float));
    }
    read += (info.end - info.begin) / static_cast<uint64_t>(std::max<int64_t>(info.elements(), 1)) * count;
    if (on_bytes) on_bytes(read);
  }
}

ggml_tensor* ModelWeights::get(const std::string& name) const {
  const auto found = tensors_.find(name);
  if (found == tensors_.end()) throw std::runtime_error(fmt::format("the weights lack '{}'", name));
  return found->second;
}

int ModelWeights::count(const std::string& prefix, const std::string& suffix) const {
  int n = 0;
  while (has(fmt::format("{}{}{}", prefix, n, suffix)))
    ++n;
  return n;
}

uint64_t ModelWeights::bytes() const {
  return buffer_ ? ggml_backend_buffer_get_size(buffer_) : 0;
}

std::vector<float> ModelWeights::values(const std::string& name) const {
  ggml_tensor* tensor = get(name);
  std::vector<float> values(static_cast<size_t>(ggml_nelements(tensor)));
  if (tensor->type == GGML_TYPE_F16) {
    std::vector<ggml_fp16_t> halves(values.size());
    ggml_backend_tensor_get(tensor, halves.data(), 0, halves.size() * sizeof(ggml_fp16_t));
    ggml_fp16_to_fp32_row(halves.data(), values.data(), static_cast<int64_t>(values.size()));
  } else {
    ggml_backend_tensor_get(tensor, values.data(), 0, values.size() * sizeof(float));
  }
  return values;
}

Graph::Graph(size_t max_nodes) : max_nodes_(max_nodes) {
  ctx_ = ggml_init({ggml_tensor_overhead() * max_nodes + ggml_graph_overhead_custom(max_nodes, false), nullptr, true});
  if (!ctx_) throw std::runtime_error("ggml: cannot create a graph context");
}

Graph::~Graph() {
  ggml_free(ctx_);
}

ggml_tensor* Graph::input(HostTensor host) {
  if (host.ne.empty() || host.ne.size() > 4 || static_cast<size_t>(host.elements()) != host.values.size()) {
    throw std::invalid_argument("Graph::input: shape and values disagree");
  }
  int64_t ne[4] = {1, 1, 1, 1};
  std::copy(host.ne.begin(), host.ne.end(), ne);
  ggml_tensor* tensor = ggml_new_tensor(ctx_, GGML_TYPE_F32, static_cast<int>(host.ne.size()), ne);
  ggml_set_input(tensor);
  input_copies_.push_back(std::move(host));
  inputs_.emplace_back(tensor, input_copies_.back().values.data());
  return tensor;
}

ggml_tensor* Graph::input_ids(std::vector<int32_t> ids) {
  ids_.push_back(std::move(ids));
  ggml_tensor* tensor = ggml_new_tensor_1d(ctx_, GGML_TYPE_I32, static_cast<int64_t>(ids_.back().size()));
  ggml_set_input(tensor);
  inputs_.emplace_back(tensor, ids_.back().data());
  return tensor;
}

void Graph::output(ggml_tensor* tensor) {
  ggml_set_output(tensor);
  outputs_.push_back(tensor);
}

std::vector<HostTensor> Graph::compute(ggml_backend_t backend, int threads) {
  ggml_cgraph* graph = ggml_new_graph_custom(ctx_, max_nodes_, false);
  for (ggml_tensor* out : outputs_)
    ggml_build_forward_expand(graph, out);
  struct AllocatorFree {
    void operator()(ggml_gallocr* allocator) const { ggml_gallocr_free(allocator); }
  };
  std::unique_ptr<ggml_gallocr, AllocatorFree> allocator(
      ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend)));
  if (!ggml_gallocr_alloc_graph(allocator.get(), graph)) {
    throw std::runtime_error("ggml: cannot allocate the compute buffer (out of memory?)");
  }
  for (const auto& [tensor, data] : inputs_)
    ggml_backend_tensor_set(tensor, data, 0, ggml_nbytes(tensor));
  if (ggml_backend_is_cpu(backend)) ggml_backend_cpu_set_n_threads(backend, threads);
  if (ggml_backend_graph_compute(backend, graph) != GGML_STATUS_SUCCESS) {
    throw std::runtime_error("ggml: the graph failed to compute");
  }
  std::vector<HostTensor> results;
  for (ggml_tensor* out : outputs_) {
    HostTensor host;
    host.ne.assign(out->ne, out->ne + GGML_MAX_DIMS);
    host.values.resize(static_cast<size_t>(ggml_nelements(out)));
    ggml_backend_tensor_get(out, host.values.data(), 0, host.values.size() * sizeof(float));
    results.push_back(std::move(host));
  }
  return results;
}

ggml_tensor* Layers::linear(ggml_tensor* x, const std::string& prefix) const {
  x = ggml_mul_mat(ctx_, w_.get(prefix + ".weight"), x);
  if (w_.has(prefix + ".bias")) x = ggml_add(ctx_, x, w_.get(prefix + ".bias"));
  return x;
}

ggml_tensor* Layers::conv2d(ggml_tensor* x, const std::string& prefix, int stride, int pad) const {
  ggml_tensor* kernel = w_.get(prefix + ".weight");
  if (pad < 0) pad = static_cast<int>(kernel->ne[0] / 2);
  if (kernel->ne[0] == 1 && kernel->ne[1] == 1 && stride == 1 && pad == 0) {
    // A 1x1 convolution is a matrix product over channels.
    const int64_t w = x->ne[0], h = x->ne[1];
    ggml_tensor* tokens = image_to_tokens(x);
    ggml_tensor* matrix = ggml_reshape_2d(ctx_, kernel, kernel->ne[2], kernel->ne[3]);
    tokens = ggml_mul_mat(ctx_, matrix, tokens);
    if (w_.has(prefix + ".bias")) tokens = ggml_add(ctx_, tokens, w_.get(prefix + ".bias"));
    return tokens_to_image(tokens, w, h);
  }
  // ggml_conv_2d's im2col is always F16, which costs F32 models precision
  // (1e-3 relative): the patches here keep the kernel's own type.
  const ggml_type patch_type = kernel->type == GGML_TYPE_F16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
  ggml_tensor* patches = ggml_im2col(ctx_, kernel, x, stride, stride, pad, pad, 1, 1, true, patch_type);
  const int64_t out_w = patches->ne[1], out_h = patches->ne[2], batch = patches->ne[3];
  x = ggml_mul_mat(ctx_, ggml_reshape_2d(ctx_, patches, patches->ne[0], out_w * out_h * batch),
                   ggml_reshape_2d(ctx_, kernel, kernel->ne[0] * kernel->ne[1] * kernel->ne[2], kernel->ne[3]));
  x = ggml_reshape_4d(ctx_, x, out_w, out_h, batch, kernel->ne[3]); // [OW, OH, N, OC]
  x = ggml_cont(ctx_, ggml_permute(ctx_, x, 0, 1, 3, 2));           // [OW, OH, OC, N]
  if (w_.has(prefix + ".bias")) {
    ggml_tensor* bias = w_.get(prefix + ".bias");
    x = ggml_add(ctx_, x, ggml_reshape_4d(ctx_, bias, 1, 1, bias->ne[0], 1));
  }
  return x;
}

ggml_tensor* Layers::group_norm(ggml_tensor* x, const std::string& prefix, int groups, float eps) const {
  x = ggml_group_norm(ctx_, x, groups, eps);
  const int64_t channels = x->ne[2];
  x = ggml_mul(ctx_, x, ggml_reshape_4d(ctx_, w_.get(prefix + ".weight"), 1, 1, channels, 1));
  return ggml_add(ctx_, x, ggml_reshape_4d(ctx_, w_.get(prefix + ".bias"), 1, 1, channels, 1));
}

ggml_tensor* Layers::layer_norm(ggml_tensor* x, const std::string& prefix, float eps) const {
  x = ggml_norm(ctx_, x, eps);
  x = ggml_mul(ctx_, x, w_.get(prefix + ".weight"));
  return ggml_add(ctx_, x, w_.get(prefix + ".bias"));
}

constexpr int64_t kFlashAttentionMaxHeadDim = 128;

ggml_tensor* Layers::attention(ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads, bool causal,
                               int64_t query_slice) const {
  const int64_t channels = q->ne[0], queries = q->ne[1], batch = q->ne[2];
  const int64_t keys = k->ne[1];
  const int64_t head_dim = channels / heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  // [d, T, heads, N]
  ggml_tensor* q4 = ggml_permute(ctx_, ggml_reshape_4d(ctx_, q, head_dim, heads, queries, batch), 0, 2, 1, 3);
  ggml_tensor* k4 = ggml_permute(ctx_, ggml_reshape_4d(ctx_, k, head_dim, heads, keys, batch), 0, 2, 1, 3);
  // [S, d, heads, N]: keys innermost, so softmax(QK^T) V is one product
  ggml_tensor* v4 =
      ggml_cont(ctx_, ggml_permute(ctx_, ggml_reshape_4d(ctx_, v, head_dim, heads, keys, batch), 1, 2, 0, 3));
  const auto attend = [&](ggml_tensor* queries_view) {
    ggml_tensor* scores = ggml_mul_mat(ctx_, k4, queries_view); // [S, T, heads, N]
    if (causal) {
      scores = ggml_diag_mask_inf(ctx_, ggml_scale(ctx_, scores, scale), 0);
      scores = ggml_soft_max(ctx_, scores);
    } else {
      scores = ggml_soft_max_ext(ctx_, scores, nullptr, scale, 0.0f);
    }
    return ggml_mul_mat(ctx_, v4, scores); // [d, T, heads, N]
  };
  if (!causal && head_dim <= kFlashAttentionMaxHeadDim) {
    // Flash attention: the scores are never materialised, so memory stays
    // linear in the sequence. Not for wide heads (the VAE's one 512-wide
    // head), where ggml's CPU kernel made the VAE decode slower.
    ggml_tensor* v3 = ggml_permute(ctx_, ggml_reshape_4d(ctx_, v, head_dim, heads, keys, batch), 0, 2, 1, 3);
    ggml_tensor* fa = ggml_flash_attn_ext(ctx_, q4, k4, v3, nullptr, scale, 0.0f, 0.0f); // [d, heads, T, N]
    return ggml_reshape_3d(ctx_, fa, channels, queries, batch);
  }
  ggml_tensor* out = nullptr;
  if (query_slice <= 0 || query_slice >= queries || causal) {
    out = attend(q4);
  } else {
    for (int64_t start = 0; start < queries; start += query_slice) {
      const int64_t length = std::min(query_slice, queries - start);
      ggml_tensor* slice =
          ggml_view_4d(ctx_, q4, head_dim, length, heads, batch, q4->nb[1], q4->nb[2], q4->nb[3], start * q4->nb[1]);
      ggml_tensor* part = attend(slice);
      out = out ? ggml_concat(ctx_, out, part, 1) : part;
    }
  }
  out = ggml_cont(ctx_, ggml_permute(ctx_, out, 0, 2, 1, 3)); // [d, heads, T, N]
  return ggml_reshape_3d(ctx_, out, channels, queries, batch);
}

ggml_tensor* Layers::image_to_tokens(ggml_tensor* x) const {
  const int64_t w = x->ne[0], h = x->ne[1], c = x->ne[2], n = x->ne[3];
  x = ggml_cont(ctx_, ggml_permute(ctx_, x, 1, 2, 0, 3)); // [C, W, H, N]
  return ggml_reshape_3d(ctx_, x, c, w * h, n);
}

ggml_tensor* Layers::tokens_to_image(ggml_tensor* x, int64_t width, int64_t height) const {
  const int64_t c = x->ne[0], n = x->ne[2];
  x = ggml_reshape_4d(ctx_, x, c, width, height, n);
  return ggml_cont(ctx_, ggml_permute(ctx_, x, 2, 0, 1, 3)); // [W, H, C, N]
}

} // namespace mmserve::diffusion
