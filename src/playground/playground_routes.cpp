#include "playground/playground_routes.hpp"

#include "core/task.hpp"
#include "playground/embedded_files.hpp"

#include <fmt/format.h>

namespace mmserve::playground {
namespace {

std::string_view content_type_of(std::string_view path) {
  if (path.ends_with(".html")) return "text/html; charset=utf-8";
  if (path.ends_with(".js")) return "text/javascript; charset=utf-8";
  if (path.ends_with(".css")) return "text/css; charset=utf-8";
  if (path.ends_with(".svg")) return "image/svg+xml";
  return "application/octet-stream";
}

const EmbeddedFile* find_file(std::string_view path) {
  for (const auto& file : embedded_files()) {
    if (file.path == path) return &file;
  }
  return nullptr;
}

Task<void> serve_file(http::HttpExchange& exchange, const EmbeddedFile& file) {
  const std::string etag = fmt::format("\"{}\"", file.sha256.substr(0, 32));
  // Revalidated on every load (cheap with the ETag), so an upgraded binary's
  // page is never mixed with an old cached script.
  exchange.set_header("Cache-Control", "no-cache");
  exchange.set_header("ETag", etag);
  exchange.set_header("X-Content-Type-Options", "nosniff");
  // Everything the page loads or calls is this server; images it shows are
  // data: and blob: URLs made in the page.
  exchange.set_header("Content-Security-Policy",
                      "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                      "object-src 'none'; base-uri 'none'; frame-ancestors 'self'");
  exchange.set_header("Referrer-Policy", "no-referrer");
  if (http::etag_matches(exchange.header(http::bhttp::field::if_none_match), etag)) {
    co_await exchange.respond(304, std::string(), content_type_of(file.path));
    co_return;
  }
  co_await exchange.respond(200, std::string(file.bytes), content_type_of(file.path));
}

} // namespace

void register_playground_routes(http::Router& router) {
  router.add("GET", "/", [](http::HttpExchange& exchange) -> Task<void> {
    co_await serve_file(exchange, *find_file("index.html"));
  });
  router.add("GET", "/playground/{file}", [](http::HttpExchange& exchange) -> Task<void> {
    const std::string& name = exchange.path_params().at("file");
    const EmbeddedFile* file = find_file(name);
    if (!file) throw ApiError::not_found(fmt::format("The playground has no file '{}'.", name), "not_found");
    co_await serve_file(exchange, *file);
  });
}

} // namespace mmserve::playground
