#!/usr/bin/env bash
# Builds what the benchmark needs and runs it on the small models in ../shared.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUILD=${BUILD_DIR:-build}
MODELS=${MMSERVE_TEST_MODELS:-$(pwd)/../shared/models}
MEDIA=${MMSERVE_TEST_MEDIA:-$(pwd)/../shared/media}
cmake --build "$BUILD" --target mmserve llama-server >/dev/null
# A LLaVA-1.5-type projector with a real-sized encoder (224 px, 14 px
# patches, 8 blocks of width 512: about 100 MB) so that encoding an image
# costs what it costs in real models; random weights, generated once.
PROJECTOR="$BUILD/bench-models/mmproj-stories260K-llava-bench.gguf"
if [[ ! -f $PROJECTOR ]]; then
  mkdir -p "$(dirname "$PROJECTOR")"
  PYTHONPATH=third_party/llama.cpp/gguf-py /usr/bin/python3 tools/gen_tiny_mmproj.py "$PROJECTOR" \
    --projector mlp --image-size 224 --patch-size 14 --width 512 --blocks 8
fi
node bench/vision/bench.mjs --mmserve "$BUILD/mmserve" --llama-server "$BUILD/bin/llama-server" \
  --model "$MODELS/stories260K.gguf" --mmproj "$PROJECTOR" \
  --image "$MEDIA/newspaper-moon.jpeg" "$@"
