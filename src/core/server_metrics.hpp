// The metrics every mmserve process exports: the seed's five (exact names and
// types), HTTP, queue and model state, and process statistics.
#pragma once

#include "core/metrics.hpp"

namespace mmserve {

struct ServerMetrics {
  ServerMetrics();
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  metrics::Registry registry;

  // The seed's table.
  metrics::HistogramFamily& image_processing_seconds; // service, step
  metrics::HistogramFamily& image_size_bytes;         // service
  metrics::HistogramFamily& model_inference_seconds;  // service, model, phase
  metrics::CounterFamily& tokens_generated_total;     // service, model
  metrics::CounterFamily& images_generated_total;     // model
  metrics::CounterFamily& prompt_tokens_cached_total; // service, model

  // HTTP.
  metrics::CounterFamily& http_requests_total;             // method, route, code
  metrics::HistogramFamily& http_request_duration_seconds; // method, route
  metrics::GaugeFamily& http_requests_in_flight;           // (none)
  metrics::GaugeFamily& http_connections_open;             // (none)

  // Services.
  metrics::GaugeFamily& queue_depth;                     // service
  metrics::GaugeFamily& slots_busy;                      // service
  metrics::HistogramFamily& time_to_first_token_seconds; // service, model
  metrics::GaugeFamily& model_ready;                     // service, model
  metrics::CounterFamily& audio_seconds_total;           // service, model
  metrics::HistogramFamily& real_time_factor;            // service, model
  metrics::HistogramFamily& image_step_seconds;          // model: one denoising step
  metrics::CounterFamily& image_jobs_total;              // model, result: completed failed cancelled interrupted
  metrics::GaugeFamily& build_info;                      // version

  // The media temp cache (media.storage).
  metrics::GaugeFamily& media_cache_bytes;             // (none)
  metrics::GaugeFamily& media_cache_entries;           // (none)
  metrics::CounterFamily& media_cache_lookups_total;   // result: hit miss
  metrics::CounterFamily& media_cache_writes_total;    // result: stored refused
  metrics::CounterFamily& media_cache_evictions_total; // reason: size expired

  // Gateway.
  metrics::GaugeFamily& upstream_requests_in_flight; // pool
  metrics::CounterFamily& upstream_errors_total;     // pool, kind
  metrics::CounterFamily& upstream_ejections_total;  // pool
  metrics::GaugeFamily& upstream_endpoints;          // pool, state
  metrics::CounterFamily& gateway_refused_total;     // reason

  // Model registry.
  metrics::GaugeFamily& models_memory_bytes;            // (none): estimates of loaded and loading models
  metrics::GaugeFamily& models_memory_budget_bytes;     // (none)
  metrics::GaugeFamily& models_gpu_memory_bytes;        // gpu: estimates of loaded and loading models per GPU
  metrics::GaugeFamily& models_gpu_memory_budget_bytes; // gpu
  metrics::CounterFamily& model_loads_total;            // service, model, result: loaded failed
  metrics::CounterFamily& model_unloads_total;          // service, model, reason: idle evicted admin

  // Uploaded inputs kept in object storage.
  metrics::CounterFamily& inputs_archived_total; // service, result: stored known failed dropped
};

} // namespace mmserve
