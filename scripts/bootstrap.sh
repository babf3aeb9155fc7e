#!/usr/bin/env bash
# Installs everything mmserve needs to build and test on a fresh Debian bookworm
# machine: Debian packages, then the engine sources from pinned npm tarballs
# (sha512-verified) into third_party/. Idempotent: re-running does only what is
# missing. Needs network access to the Debian and npm registries, nothing else.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
THIRD_PARTY="${ROOT}/third_party"
DOWNLOADS="${THIRD_PARTY}/downloads"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# ---- Debian packages ---------------------------------------------------------
# Build: compiler toolchain, CMake, the libraries DESIGN.md names, and node/npm
# (npm fetches the engine sources below).
BUILD_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git ca-certificates curl
  libboost-dev nlohmann-json3-dev libyaml-cpp-dev libspdlog-dev libfmt-dev libcli11-dev
  libssl-dev libvips-dev libjemalloc-dev
  libavformat-dev libavcodec-dev libswresample-dev libavutil-dev zlib1g-dev
  nodejs npm openssl
)
# Test: GoogleTest/Benchmark, promtool (prometheus), python3-numpy (model
# generators), python3-torch (the independent Stable Diffusion reference,
# tools/sd_reference.py), ffmpeg and espeak-ng (audio fixtures made at test
# time), clang with its sanitizer and libFuzzer runtimes (fuzz targets),
# chromium and a font for the playground's browser tests. Bench peers:
# vipsthumbnail, Pillow, nginx, and wrk to load nginx and the gateway alike.
TEST_PACKAGES=(
  libgtest-dev libgmock-dev libbenchmark-dev
  prometheus python3 python3-numpy python3-torch ffmpeg espeak-ng
  clang libclang-rt-14-dev libvips-tools python3-pil nginx wrk
  chromium fonts-dejavu-core
)
# --build-only (the container image's build stage): what building mmserve
# needs, without the test tools and the node test packages.
BUILD_ONLY=0
[[ "${1:-}" == "--build-only" ]] && BUILD_ONLY=1
APT_PACKAGES=("${BUILD_PACKAGES[@]}")
((BUILD_ONLY)) || APT_PACKAGES+=("${TEST_PACKAGES[@]}")

missing_packages() {
  local pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
      printf '%s\n' "$pkg"
    fi
  done
}

install_apt_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  if ((${#missing[@]} == 0)); then
    log "Debian packages: all ${#APT_PACKAGES[@]} present"
    return
  fi
  # npm/nodejs may come from another source (nodesource); don't fight it.
  if command -v node >/dev/null && command -v npm >/dev/null; then
    local filtered=()
    for p in "${missing[@]}"; do [[ "$p" == nodejs || "$p" == npm ]] || filtered+=("$p"); done
    missing=("${filtered[@]}")
    ((${#missing[@]} == 0)) && { log "Debian packages: all present (node from elsewhere)"; return; }
  fi
  log "installing Debian packages: ${missing[*]}"
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ---- engine sources from pinned npm tarballs ----------------------------------
# name@version  sha512 integrity (from the npm registry's dist.integrity)
LLAMA_NPM="node-llama-cpp@3.22.1"
LLAMA_SHA512="bltIipuWmc123H7tMIgDGKSsSrhmhlQYeVUC48XTjVW7XGJJiJJyCdlTMzQ/LiWoPkGDpcL4FviDpgw7qfTiDw=="
WHISPER_NPM="nodejs-whisper@0.3.1"
WHISPER_SHA512="ceoilUVraRuR5FnNyXpGQT2auAR48Oc3AQBEmkXnVpSn9iN6yVRzQBFCqVTGWbk6Wdi95NhvwXNzFvuR7erLWw=="

# Fetches an npm tarball (once) and checks its sha512 before anyone uses it.
fetch_verified_tarball() {
  local spec="$1" expected="$2" name version file actual
  name="${spec%@*}"
  version="${spec##*@}"
  file="${DOWNLOADS}/${name}-${version}.tgz"
  mkdir -p "$DOWNLOADS"
  if [[ ! -f "$file" ]]; then
    log "downloading ${spec} from the npm registry"
    # Errors go to stderr: behind a TLS-intercepting proxy, say, npm names the cause.
    if ! (cd "$DOWNLOADS" && npm pack --loglevel error "$spec" >/dev/null) || [[ ! -f "$file" ]]; then
      log "ERROR: npm pack ${spec} failed (see npm's message above)"
      exit 1
    fi
  fi
  actual="$(openssl dgst -sha512 -binary "$file" | base64 -w0)"
  if [[ "$actual" != "$expected" ]]; then
    rm -f "$file"
    log "ERROR: sha512 mismatch for ${spec}: expected ${expected}, got ${actual}" >&2
    exit 1
  fi
  printf '%s\n' "$file"
}

install_llama_cpp() {
  local dest="${THIRD_PARTY}/llama.cpp" stamp="${THIRD_PARTY}/.llama.cpp.${LLAMA_SHA512:0:16}"
  [[ -f "$stamp" && -f "$dest/CMakeLists.txt" ]] && { log "llama.cpp: present"; return; }
  local tarball tmp
  tarball="$(fetch_verified_tarball "$LLAMA_NPM" "$LLAMA_SHA512")"
  tmp="$(mktemp -d)"
  tar -xzf "$tarball" -C "$tmp" package/llama/gitRelease.bundle package/llama/llama.cpp.info.json
  rm -rf "$dest"
  git -c advice.detachedHead=false clone -q "$tmp/package/llama/gitRelease.bundle" "$dest"
  cp "$tmp/package/llama/llama.cpp.info.json" "$dest/.node-llama-cpp-release.json"
  rm -rf "$tmp"
  touch "$stamp"
  log "llama.cpp: unpacked to ${dest} ($(git -C "$dest" rev-parse --short HEAD))"
}

install_whisper_cpp() {
  local dest="${THIRD_PARTY}/whisper.cpp" stamp="${THIRD_PARTY}/.whisper.cpp.${WHISPER_SHA512:0:16}"
  [[ -f "$stamp" && -f "$dest/src/whisper.cpp" ]] && { log "whisper.cpp: present"; return; }
  local tarball tmp
  tarball="$(fetch_verified_tarball "$WHISPER_NPM" "$WHISPER_SHA512")"
  tmp="$(mktemp -d)"
  tar -xzf "$tarball" -C "$tmp" package/cpp/whisper.cpp
  rm -rf "$dest"
  mv "$tmp/package/cpp/whisper.cpp" "$dest"
  rm -rf "$tmp"
  touch "$stamp"
  log "whisper.cpp: unpacked to ${dest} ($(grep -m1 -o 'VERSION [0-9]*\.[0-9]*\.[0-9]*' "$dest/CMakeLists.txt"))"
}

# The test clients (openai SDK, ...), exactly as pinned in the lockfile.
install_node_test_packages() {
  local dir="${ROOT}/tests/node" stamp
  stamp="${dir}/node_modules/.mmserve-lock-$(openssl dgst -sha256 -r "${dir}/package-lock.json" | cut -c1-16)"
  [[ -f "$stamp" ]] && { log "node test packages: present"; return; }
  log "installing node test packages from tests/node/package-lock.json"
  (cd "$dir" && npm ci --silent --no-audit --no-fund --ignore-scripts)
  touch "$stamp"
}

main() {
  install_apt_packages
  mkdir -p "$THIRD_PARTY"
  install_llama_cpp
  install_whisper_cpp
  ((BUILD_ONLY)) || install_node_test_packages
  log "done"
}

main "$@"
