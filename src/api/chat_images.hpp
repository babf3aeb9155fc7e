// The images of a chat request, from wherever the client put them (data:
// URI or http(s) URL) to preprocessed RGB pixels named by content hash,
// before the request reaches the engine. Fetching is asynchronous on the
// connection's executor; nothing here blocks on the network.
#pragma once

#include "api/chat_request.hpp"
#include "core/config.hpp"
#include "core/server_metrics.hpp"
#include "engines/vlm/vlm_engine.hpp"
#include "media/image_preprocess.hpp"
#include "media/url_fetch.hpp"

#include <boost/asio/awaitable.hpp>

namespace mmserve::api {

struct ChatImagePolicy {
  media::FetchPolicy fetch;
  media::PreprocessPolicy preprocess;
};
// Throws ConfigError for a value the config reader could not check alone.
ChatImagePolicy chat_image_policy(const MediaConfig& media);

// One entry per image part, in message order. Throws ApiError (400, 415).
boost::asio::awaitable<std::vector<vlm::ImageInput>>
prepare_chat_images(const ChatRequest& request, const ChatImagePolicy& policy, ServerMetrics& metrics);

} // namespace mmserve::api
