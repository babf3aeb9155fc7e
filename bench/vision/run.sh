#!/usr/bin/env bash
# Builds what the benchmark needs and runs it on the small models in ../shared.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUILD=${BUILD_DIR:-build}
MODELS=${MMSERVE_TEST_MODELS:-$(pwd)/../shared/models}
MEDIA=${MMSERVE_TEST_MEDIA:-$(pwd)/../shared/media}
cmake --build "$BUILD" --target mmserve llama-server mmserve_test_models >/dev/null
node bench/vision/bench.mjs --mmserve "$BUILD/mmserve" --llama-server "$BUILD/bin/llama-server" \
  --model "$MODELS/stories260K.gguf" --mmproj "$BUILD/test-models/mmproj-stories260K-random.gguf" \
  --image "$MEDIA/newspaper-moon.jpeg" "$@"
