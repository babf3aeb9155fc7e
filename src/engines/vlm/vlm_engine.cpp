#include "engines/vlm/vlm_engine.hpp"

#include "core/api_error.hpp"

#include "chat.h"
#include "common.h"
#include "json-schema-to-grammar.h"
#include "llama.h"
#include "mtmd-helper.h"
#include "mtmd.h"
#include "sampling.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <random>

namespace mmserve::vlm {

using Clock = std::chrono::steady_clock;

namespace {

struct BitmapDeleter {
  void operator()(mtmd_bitmap* bitmap) const { mtmd_bitmap_free(bitmap); }
};
using BitmapPtr = std::unique_ptr<mtmd_bitmap, BitmapDeleter>;

struct ChunksDeleter {
  void operator()(mtmd_input_chunks* chunks) const { mtmd_input_chunks_free(chunks); }
};

// Length of the tail of `text` that is an incomplete UTF-8 sequence.
size_t incomplete_utf8_tail(const std::string& text) {
  for (size_t back = 1; back <= std::min<size_t>(4, text.size()); ++back) {
    const auto c = static_cast<unsigned char>(text[text.size() - back]);
    if ((c & 0xC0) == 0x80) continue; // continuation byte: look further back
    size_t need = 1;
    if ((c & 0xE0) == 0xC0)
      need = 2;
    else if ((c & 0xF0) == 0xE0)
      need = 3;
    else if ((c & 0xF8) == 0xF0)
      need = 4;
    return need > back ? back : 0;
  }
  return 0;
}

// The GPUs the model is spread over, null-terminated for llama_model_params;
// empty (the default: every GPU) when `count` is 0. A CPU build has none.
std::vector<ggml_backend_dev_t> choose_gpus(int count) {
  std::vector<ggml_backend_dev_t> gpus;
  for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
    auto* device = ggml_backend_dev_get(i);
    if (ggml_backend_dev_type(device) == GGML_BACKEND_DEVICE_TYPE_GPU) gpus.push_back(device);
  }
  if (count == 0) return {};
  if (gpus.empty()) {
    spdlog::warn("vision.gpu_count {}: this build has no GPU backend (build with -DMMSERVE_CUDA=ON); running on CPU",
                 count);
    return {};
  }
  if (static_cast<size_t>(count) > gpus.size()) {
    throw std::runtime_error(fmt::format("vision.gpu_count is {} but only {} GPU(s) are visible", count, gpus.size()));
  }
  gpus.resize(static_cast<size_t>(count));
  gpus.push_back(nullptr);
  return gpus;
}

// tensor_split as llama.cpp takes it: one share per device, padded to its maximum.
std::vector<float> gpu_split(const std::vector<double>& shares, size_t devices) {
  if (shares.empty()) return {};
  if (devices != 0 && shares.size() != devices) {
    throw std::runtime_error(fmt::format("vision.tensor_split has {} shares for {} GPUs", shares.size(), devices));
  }
  if (shares.size() > llama_max_devices()) {
    throw std::runtime_error(fmt::format("vision.tensor_split: at most {} devices", llama_max_devices()));
  }
  std::vector<float> split(llama_max_devices(), 0.0f);
  for (size_t i = 0; i < shares.size(); ++i)
    split[i] = static_cast<float>(shares[i]);
  return split;
}

} // namespace

void use_engine_logging() {
  // llama.cpp and libmtmd speak through spdlog, warnings and errors only.
  const auto forward = [](ggml_log_level level, const char* text, void*) {
    if (level != GGML_LOG_LEVEL_WARN && level != GGML_LOG_LEVEL_ERROR) return;
    std::string line(text);
    while (!line.empty() && line.back() == '\n')
      line.pop_back();
    if (!line.empty()) spdlog::warn("llama.cpp: {}", line);
  };
  llama_log_set(forward, nullptr);
  mtmd_helper_log_set(forward, nullptr);
}

void init_engine_backend() {
  static std::once_flag once;
  std::call_once(once, [] {
    llama_backend_init();
    use_engine_logging();
  });
}

struct Job {
  api::ChatRequest request;
  std::string prompt;
  std::vector<BitmapPtr> images;
  std::shared_ptr<AsyncChannel<GenerationEvent>> events;
  std::atomic<bool> cancelled{false};
  Clock::time_point queued_at = Clock::now();
};

// One position-bearing unit of a prompt, as a slot's KV cache holds it.
struct PromptPiece {
  llama_token token = -1; // a text token, or -1 for an image
  std::string image_id;   // the image's content hash
  llama_pos n_pos = 1;
  bool operator==(const PromptPiece&) const = default;
};

struct VlmEngine::Slot {
  int seq = 0;
  // What the KV cache of this sequence holds from the last request (its
  // prompt and the tokens decoded after it), so a request that starts the
  // same way (the same image, a longer conversation) evaluates only the rest.
  std::vector<PromptPiece> cached;
  std::string cached_prompt;
  std::vector<PromptPiece> prompt_pieces;
  std::vector<llama_token> decoded;
  // Prompt evaluation in progress (chunked prefill): the prompt, and the
  // index in prompt_pieces of the first piece not evaluated yet.
  bool prefilling = false;
  std::unique_ptr<mtmd_input_chunks, ChunksDeleter> chunks;
  std::vector<llama_token> tokens;
  size_t next_piece = 0;
  Clock::time_point prefill_started;
  std::shared_ptr<Job> job;
  common_sampler* sampler = nullptr;
  int n_past = 0;
  int n_prompt = 0;
  int n_generated = 0;
  int max_tokens = 0;
  int next_token = -1;
  int batch_index = -1;
  std::string text; // everything generated so far
  size_t sent = 0;  // bytes of `text` already sent
};

VlmEngine::VlmEngine(EngineOptions options, ServerMetrics& metrics, std::function<void(float)> progress)
    : options_(std::move(options)), metrics_(metrics) {
  init_engine_backend();
  auto model_params = llama_model_default_params();
  model_params.progress_callback = [](float value, void* user) {
    (*static_cast<std::function<void(float)>*>(user))(value);
    return true;
  };
  model_params.progress_callback_user_data = &progress;
  const auto gpus = choose_gpus(options_.gpu_count);
  std::vector<float> split = gpu_split(options_.tensor_split, gpus.size() > 1 ? gpus.size() - 1 : 0);
  if (!gpus.empty()) model_params.devices = const_cast<ggml_backend_dev_t*>(gpus.data());
  if (!split.empty()) model_params.tensor_split = split.data();
  model_ = llama_model_load_from_file(options_.model_path.c_str(), model_params);
  if (!model_) throw std::runtime_error(fmt::format("cannot load GGUF model '{}'", options_.model_path));

  // Past the trained context a model degrades silently: cap it, and say so.
  const int trained = llama_model_n_ctx_train(model_);
  if (trained > 0 && options_.context_per_slot > trained) {
    spdlog::warn("vision.max_model_len {} is longer than the {} tokens '{}' was trained on; using {}",
                 options_.context_per_slot, trained, options_.model_id, trained);
    options_.context_per_slot = trained;
  }
  const int threads = options_.threads > 0 ? options_.threads : static_cast<int>(std::thread::hardware_concurrency());
  auto context_params = llama_context_default_params();
  context_params.n_seq_max = static_cast<uint32_t>(options_.parallel);
  context_params.n_ctx = static_cast<uint32_t>(options_.context_per_slot * options_.parallel);
  context_params.n_batch = static_cast<uint32_t>(options_.batch_size);
  context_params.n_ubatch = static_cast<uint32_t>(options_.batch_size);
  context_params.n_threads = threads;
  context_params.n_threads_batch = threads;
  context_params.kv_unified = false; // each slot its own context_per_slot tokens
  context_params.no_perf = true;
  context_ = llama_init_from_model(model_, context_params);
  if (!context_) {
    llama_model_free(model_);
    throw std::runtime_error(
        fmt::format("cannot create a context of {} tokens for '{}'", context_params.n_ctx, options_.model_path));
  }

  if (!options_.mmproj_path.empty()) {
    auto vision_params = mtmd_context_params_default();
    vision_params.n_threads = threads;
    vision_params.print_timings = false;
    vision_ = mtmd_init_from_file(options_.mmproj_path.c_str(), model_, vision_params);
    if (!vision_) {
      llama_free(context_);
      llama_model_free(model_);
      throw std::runtime_error(
          fmt::format("cannot load projector '{}' for '{}'", options_.mmproj_path, options_.model_path));
    }
  }
  templates_ = common_chat_templates_init(model_, "").release();
  image_cache_ = std::make_unique<EmbeddingCache>(options_.image_cache_bytes);
  progress(1.0f);

  for (int i = 0; i < options_.parallel; ++i) {
    auto slot = std::make_unique<Slot>();
    slot->seq = i;
    slots_.push_back(std::move(slot));
  }
  scheduler_ = std::thread([this] { scheduler_loop(); });
}

VlmEngine::~VlmEngine() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (scheduler_.joinable()) scheduler_.join();
  for (auto& slot : slots_) {
    if (slot->sampler) common_sampler_free(slot->sampler);
  }
  if (templates_) common_chat_templates_free(templates_);
  if (vision_) mtmd_free(vision_);
  if (context_) llama_free(context_);
  if (model_) llama_model_free(model_);
}

std::string VlmEngine::render_prompt(const api::ChatRequest& request) const {
  common_chat_templates_inputs inputs;
  inputs.use_jinja = true;
  inputs.add_generation_prompt = true;
  // Tokenizing adds BOS where the vocabulary asks for it; a template that
  // writes one too (gemma's {{ bos_token }}) must not make it two.
  const llama_vocab* vocab = llama_model_get_vocab(model_);
  inputs.add_bos = llama_vocab_get_add_bos(vocab);
  inputs.add_eos = llama_vocab_get_add_eos(vocab);
  for (const auto& message : request.messages) {
    common_chat_msg converted;
    converted.role = message.role == "developer" ? "system" : message.role;
    for (const auto& part : message.parts) {
      if (part.kind == api::ChatContentPart::Kind::text) {
        converted.content += part.text;
      } else {
        converted.content += mtmd_default_marker();
      }
    }
    inputs.messages.push_back(std::move(converted));
  }
  try {
    return common_chat_templates_apply(templates_, inputs).prompt;
  } catch (const std::exception& error) {
    throw ApiError::bad_request(fmt::format("The model's chat template rejected these messages: {}", error.what()),
                                "messages", "chat_template_error");
  }
}

VlmEngine::Submission VlmEngine::submit(const api::ChatRequest& request, std::vector<ImageInput> images,
                                        boost::asio::any_io_executor executor) {
  auto job = std::make_shared<Job>();
  job->request = request;
  if (request.image_count() > 0 && !vision_) {
    throw ApiError::bad_request(
        fmt::format("The model '{}' takes text only (no vision projector is loaded).", options_.model_id), "messages",
        "images_not_supported");
  }
  if (images.size() != request.image_count()) {
    throw std::logic_error("VlmEngine::submit: one ImageInput per image part is required");
  }
  for (auto& input : images) {
    mtmd_bitmap* bitmap = mtmd_bitmap_init(input.image->width, input.image->height, input.image->pixels.data());
    mtmd_bitmap_set_id(bitmap, input.id.c_str());
    job->images.emplace_back(bitmap);
  }
  job->prompt = render_prompt(request);
  job->events = std::make_shared<AsyncChannel<GenerationEvent>>(std::move(executor));
  {
    std::lock_guard lock(mutex_);
    const auto busy = static_cast<size_t>(busy_slots_.load());
    if (queue_.size() + busy >= static_cast<size_t>(options_.max_queue + options_.parallel)) {
      throw ApiError::too_many_requests(fmt::format("The model '{}' is busy: {} requests are queued. Retry shortly.",
                                                    options_.model_id, queue_.size()),
                                        1);
    }
    queue_.push_back(job);
    metrics_.queue_depth.labels({"vision"}).set(static_cast<double>(queue_.size()));
  }
  wake_.notify_one();
  return {job->events, job};
}

void VlmEngine::cancel(const std::shared_ptr<Job>& job) {
  if (job) job->cancelled = true;
}

void VlmEngine::scheduler_loop() {
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      const auto has_active = [&] {
        return std::any_of(slots_.begin(), slots_.end(), [](const auto& slot) { return slot->job != nullptr; });
      };
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty() || has_active(); });
      if (stopping_) break;
      // Admit waiting requests into free slots between decode steps, each
      // into the free slot whose cached prompt shares the most with its own.
      while (!queue_.empty()) {
        auto job = queue_.front();
        if (job->cancelled) {
          queue_.pop_front();
          continue;
        }
        Slot* best = nullptr;
        size_t best_shared = 0;
        for (auto& slot : slots_) {
          if (slot->job) continue;
          const auto& cached = slot->cached_prompt;
          const size_t shared = static_cast<size_t>(
              std::mismatch(cached.begin(), cached.begin() + std::min(cached.size(), job->prompt.size()),
                            job->prompt.begin())
                  .first -
              cached.begin());
          if (!best || shared > best_shared) {
            best = slot.get();
            best_shared = shared;
          }
        }
        if (!best) break;
        queue_.pop_front();
        best->job = job; // reserved; started below, outside the lock
        ++busy_slots_;
        metrics_.slots_busy.labels({"vision"}).set(busy_slots_.load());
      }
      metrics_.queue_depth.labels({"vision"}).set(static_cast<double>(queue_.size()));
    }
    for (auto& slot : slots_) {
      if (slot->job && slot->sampler == nullptr) start_slot(*slot, slot->job);
    }
    // Chunked prefill: at most one batch of prompt tokens per step, so the
    // streams already generating get a token between prompt batches.
    size_t budget = static_cast<size_t>(options_.batch_size);
    for (auto& slot : slots_) {
      if (budget == 0) break;
      if (slot->job && slot->prefilling && !slot->job->cancelled) prefill_step(*slot, budget);
    }
    decode_step();
  }
  for (auto& slot : slots_) {
    if (slot->job) fail_slot(*slot, 503, "The server is shutting down.");
  }
  std::lock_guard lock(mutex_);
  for (auto& job : queue_) {
    job->events->push(GenerationEvent::failure(503, "The server is shutting down."));
  }
  queue_.clear();
}

bool VlmEngine::start_slot(Slot& slot, const std::shared_ptr<Job>& job) {
  const auto started = Clock::now();
  const auto& request = job->request;
  common_params_sampling sampling;
  sampling.temp = static_cast<float>(request.temperature);
  sampling.top_p = static_cast<float>(request.top_p);
  sampling.penalty_present = static_cast<float>(request.presence_penalty);
  sampling.penalty_freq = static_cast<float>(request.frequency_penalty);
  sampling.seed = request.seed ? static_cast<uint32_t>(*request.seed) : std::random_device{}();
  if (request.json_object) {
    sampling.grammar =
        common_grammar(COMMON_GRAMMAR_TYPE_USER, json_schema_to_grammar(common_json::parse(R"({"type":"object"})")));
  }
  slot.sampler = common_sampler_init(model_, sampling);
  slot.text.clear();
  slot.sent = 0;
  slot.n_generated = 0;
  slot.max_tokens = request.max_tokens.value_or(options_.context_per_slot);
  if (!slot.sampler) {
    fail_slot(slot, 400, "The sampling parameters could not be set up.");
    return false;
  }
  std::unique_ptr<mtmd_input_chunks, ChunksDeleter> chunks;
  std::vector<llama_token> tokens; // the text-only path
  std::vector<PromptPiece> pieces;
  if (vision_) {
    chunks.reset(mtmd_input_chunks_init());
    mtmd_input_text text{job->prompt.c_str(), job->prompt.size(), true, true};
    std::vector<const mtmd_bitmap*> bitmaps;
    for (const auto& image : job->images)
      bitmaps.push_back(image.get());
    if (mtmd_tokenize(vision_, chunks.get(), &text, bitmaps.data(), bitmaps.size()) != 0) {
      fail_slot(slot, 400, "The prompt and its images could not be tokenized.");
      return false;
    }
    for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); ++i) {
      const mtmd_input_chunk* chunk = mtmd_input_chunks_get(chunks.get(), i);
      if (mtmd_input_chunk_get_type(chunk) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
        size_t n = 0;
        const llama_token* text_tokens = mtmd_input_chunk_get_tokens_text(chunk, &n);
        for (size_t t = 0; t < n; ++t)
          pieces.push_back({text_tokens[t], {}, 1});
      } else {
        const char* id = mtmd_input_chunk_get_id(chunk);
        pieces.push_back({-1, id ? id : "", mtmd_input_chunk_get_n_pos(chunk)});
      }
    }
    slot.n_prompt = static_cast<int>(mtmd_helper_get_n_tokens(chunks.get()));
  } else {
    tokens = common_tokenize(context_, job->prompt, true, true);
    for (const llama_token token : tokens)
      pieces.push_back({token, {}, 1});
    slot.n_prompt = static_cast<int>(tokens.size());
  }
  if (pieces.empty() || slot.n_prompt >= options_.context_per_slot) {
    fail_slot(slot, 400,
              fmt::format("The prompt is {} tokens; the context holds {}.", slot.n_prompt, options_.context_per_slot));
    return false;
  }

  // Reuse the longest prefix the slot's KV cache already holds; at least one
  // piece is evaluated, for the logits of the first answer token.
  size_t common = 0;
  while (common < slot.cached.size() && common < pieces.size() && slot.cached[common] == pieces[common])
    ++common;
  if (common == pieces.size()) --common;
  llama_pos n_past = 0;
  for (size_t i = 0; i < common; ++i)
    n_past += pieces[i].n_pos;
  if (!llama_memory_seq_rm(llama_get_memory(context_), slot.seq, n_past, -1)) {
    llama_memory_seq_rm(llama_get_memory(context_), slot.seq, -1, -1); // this model cannot cut: start over
    common = 0;
    n_past = 0;
  }
  slot.cached.clear();
  slot.cached_prompt.clear();
  metrics_.prompt_tokens_cached_total.labels({"vision", options_.model_id}).inc(static_cast<double>(n_past));

  // Evaluated by prefill_step() a batch at a time, between decode steps.
  slot.prompt_pieces = std::move(pieces);
  slot.decoded.clear();
  slot.cached_prompt = job->prompt;
  slot.chunks = std::move(chunks);
  slot.tokens = std::move(tokens);
  slot.next_piece = common;
  slot.n_past = n_past;
  slot.prefill_started = started;
  slot.prefilling = true;
  return true;
}

bool VlmEngine::prefill_step(Slot& slot, size_t& budget) {
  llama_pos n_past = slot.n_past;
  bool ok = true;
  if (vision_) {
    const size_t count = mtmd_input_chunks_size(slot.chunks.get());
    size_t chunk_begin = 0;
    for (size_t i = 0; i < count && ok && budget > 0; ++i) {
      const mtmd_input_chunk* chunk = mtmd_input_chunks_get(slot.chunks.get(), i);
      const bool is_text = mtmd_input_chunk_get_type(chunk) == MTMD_INPUT_CHUNK_TYPE_TEXT;
      size_t n_text = 0;
      const llama_token* text = is_text ? mtmd_input_chunk_get_tokens_text(chunk, &n_text) : nullptr;
      const size_t chunk_end = chunk_begin + (is_text ? n_text : 1);
      const size_t begin = chunk_begin;
      chunk_begin = chunk_end;
      if (chunk_end <= slot.next_piece) continue; // evaluated already (or cached)
      const bool last_chunk = i + 1 == count;
      if (is_text) {
        const size_t from = slot.next_piece - begin;
        const size_t n = std::min(n_text - from, budget);
        ok = decode_tokens(text + from, n, slot.seq, n_past, last_chunk && from + n == n_text);
        slot.next_piece += n;
        budget -= n;
      } else {
        const size_t n_tokens = mtmd_input_chunk_get_n_tokens(chunk);
        ok = eval_image_chunk(chunk, slot.seq, n_past, last_chunk);
        slot.next_piece += 1;
        budget = budget > n_tokens ? budget - n_tokens : 0;
      }
    }
  } else {
    const size_t n = std::min(slot.tokens.size() - slot.next_piece, budget);
    ok = decode_tokens(slot.tokens.data() + slot.next_piece, n, slot.seq, n_past,
                       slot.next_piece + n == slot.tokens.size());
    slot.next_piece += n;
    budget -= n;
  }
  slot.n_past = n_past;
  if (!ok) {
    fail_slot(slot, 500, "Evaluating the prompt failed.");
    return false;
  }
  if (slot.next_piece < slot.prompt_pieces.size()) return true; // more next time
  slot.prefilling = false;
  slot.chunks.reset();
  slot.tokens.clear();
  metrics_.model_inference_seconds.labels({"vision", options_.model_id, "prefill"})
      .observe(std::chrono::duration<double>(Clock::now() - slot.prefill_started).count());
  const llama_token token = common_sampler_sample(slot.sampler, context_, -1);
  common_sampler_accept(slot.sampler, token, true);
  metrics_.time_to_first_token_seconds.labels({"vision", options_.model_id})
      .observe(std::chrono::duration<double>(Clock::now() - slot.job->queued_at).count());
  emit_token(slot, token);
  return true;
}

bool VlmEngine::decode_tokens(const llama_token* tokens, size_t count, int seq, llama_pos& n_past, bool logits_last) {
  llama_batch batch = llama_batch_init(options_.batch_size, 0, 1);
  bool ok = true;
  for (size_t begin = 0; begin < count && ok; begin += static_cast<size_t>(options_.batch_size)) {
    const size_t end = std::min(count, begin + static_cast<size_t>(options_.batch_size));
    common_batch_clear(batch);
    for (size_t i = begin; i < end; ++i)
      common_batch_add(batch, tokens[i], n_past + static_cast<llama_pos>(i), {seq}, logits_last && i + 1 == count);
    ok = llama_decode(context_, batch) == 0;
  }
  llama_batch_free(batch);
  if (ok) n_past += static_cast<llama_pos>(count);
  return ok;
}

bool VlmEngine::eval_image_chunk(const mtmd_input_chunk* chunk, int seq, llama_pos& n_past, bool last) {
  llama_pos new_n_past = n_past;
  if (last) { // the helper sets up the logits a prompt's last chunk needs
    if (mtmd_helper_eval_chunk_single(vision_, context_, chunk, n_past, seq, options_.batch_size, true, &new_n_past))
      return false;
    n_past = new_n_past;
    return true;
  }
  const char* id = mtmd_input_chunk_get_id(chunk);
  const std::string key = id ? id : "";
  EmbeddingCache::Embedding embedding = image_cache_->find(key);
  if (!embedding) {
    const auto started = Clock::now();
    if (mtmd_encode_chunk(vision_, chunk) != 0) return false;
    const size_t n_floats = mtmd_input_chunk_get_n_tokens(chunk) * static_cast<size_t>(llama_model_n_embd_inp(model_));
    const float* output = mtmd_get_output_embd(vision_);
    embedding = std::make_shared<const std::vector<float>>(output, output + n_floats);
    image_cache_->insert(key, embedding);
    metrics_.model_inference_seconds.labels({"vision", options_.model_id, "image_encode"})
        .observe(std::chrono::duration<double>(Clock::now() - started).count());
  }
  // decode_image_chunk only reads the embeddings; the cache's copy stays intact.
  if (mtmd_helper_decode_image_chunk(vision_, context_, chunk, const_cast<float*>(embedding->data()), n_past, seq,
                                     options_.batch_size, &new_n_past, nullptr, nullptr) != 0)
    return false;
  n_past = new_n_past;
  return true;
}

void VlmEngine::decode_step() {
  // Requests whose client went away free their slots first.
  for (auto& slot : slots_) {
    if (slot->job && slot->job->cancelled) release_slot(*slot);
  }
  std::vector<Slot*> active;
  for (auto& slot : slots_) {
    if (slot->job && slot->sampler && !slot->prefilling) active.push_back(slot.get());
  }
  if (active.empty()) return;

  const auto started = Clock::now();
  llama_batch batch = llama_batch_init(static_cast<int32_t>(active.size()), 0, 1);
  for (size_t i = 0; i < active.size(); ++i) {
    common_batch_add(batch, active[i]->next_token, active[i]->n_past, {active[i]->seq}, true);
    active[i]->batch_index = static_cast<int>(i);
  }
  const int rc = llama_decode(context_, batch);
  llama_batch_free(batch);
  if (rc != 0) {
    for (Slot* slot : active)
      fail_slot(*slot, 500, fmt::format("Decoding failed (llama_decode returned {}).", rc));
    return;
  }
  metrics_.model_inference_seconds.labels({"vision", options_.model_id, "decode"})
      .observe(std::chrono::duration<double>(Clock::now() - started).count());
  for (Slot* slot : active) {
    slot->decoded.push_back(slot->next_token);
    slot->n_past += 1;
    const llama_token token = common_sampler_sample(slot->sampler, context_, slot->batch_index);
    common_sampler_accept(slot->sampler, token, true);
    emit_token(*slot, token);
  }
}

void VlmEngine::emit_token(Slot& slot, int token) {
  const llama_vocab* vocab = llama_model_get_vocab(model_);
  if (llama_vocab_is_eog(vocab, token)) {
    finish_slot(slot, "stop");
    return;
  }
  slot.n_generated += 1;
  metrics_.tokens_generated_total.labels({"vision", options_.model_id}).inc();
  slot.text += common_token_to_piece(context_, token, false);

  const auto& stops = slot.job->request.stop;
  size_t longest_stop = 0;
  for (const auto& stop : stops)
    longest_stop = std::max(longest_stop, stop.size());
  const size_t search_from = slot.sent > longest_stop ? slot.sent - longest_stop : 0;
  for (const auto& stop : stops) {
    if (stop.empty()) continue;
    const size_t at = slot.text.find(stop, search_from);
    if (at != std::string::npos) {
      slot.text.resize(at);
      finish_slot(slot, "stop");
      return;
    }
  }
  if (slot.n_generated >= slot.max_tokens || slot.n_past + 1 >= options_.context_per_slot) {
    finish_slot(slot, "length");
    return;
  }
  // Hold back an incomplete UTF-8 character and any tail that may be the
  // start of a stop sequence; send the rest now.
  size_t safe_end = slot.text.size() - incomplete_utf8_tail(slot.text);
  for (const auto& stop : stops) {
    for (size_t n = std::min(stop.size() - 1, slot.text.size()); n > 0; --n) {
      if (slot.text.compare(slot.text.size() - n, n, stop, 0, n) == 0) {
        safe_end = std::min(safe_end, slot.text.size() - n);
        break;
      }
    }
  }
  if (safe_end > slot.sent) {
    slot.job->events->push(GenerationEvent::delta(slot.text.substr(slot.sent, safe_end - slot.sent)));
    slot.sent = safe_end;
  }
  slot.next_token = token;
}

void VlmEngine::finish_slot(Slot& slot, const std::string& reason) {
  // The slot is released before the client hears "done", so whatever the
  // client looks at next (metrics, another request) sees it free.
  const auto job = slot.job;
  std::string rest = slot.text.size() > slot.sent ? slot.text.substr(slot.sent) : std::string();
  GenerationEvent done;
  done.kind = GenerationEvent::Kind::done;
  done.finish_reason = reason;
  done.prompt_tokens = slot.n_prompt;
  done.completion_tokens = slot.n_generated;
  release_slot(slot, true);
  if (!rest.empty()) job->events->push(GenerationEvent::delta(std::move(rest)));
  job->events->push(std::move(done));
}

void VlmEngine::fail_slot(Slot& slot, int status, const std::string& message) {
  const auto job = slot.job;
  release_slot(slot);
  job->events->push(GenerationEvent::failure(status, message));
}

void VlmEngine::release_slot(Slot& slot, bool keep_cache) {
  if (slot.sampler) common_sampler_free(slot.sampler);
  slot.sampler = nullptr;
  if (keep_cache) {
    slot.cached = std::move(slot.prompt_pieces);
    for (const llama_token token : slot.decoded)
      slot.cached.push_back({token, {}, 1});
  } else {
    llama_memory_seq_rm(llama_get_memory(context_), slot.seq, -1, -1);
    slot.cached.clear();
    slot.cached_prompt.clear();
  }
  slot.prompt_pieces.clear();
  slot.decoded.clear();
  slot.prefilling = false;
  slot.chunks.reset();
  slot.tokens.clear();
  slot.job.reset();
  --busy_slots_;
  metrics_.slots_busy.labels({"vision"}).set(busy_slots_.load());
}

} // namespace mmserve::vlm
