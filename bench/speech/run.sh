#!/usr/bin/env bash
# Builds what the benchmark needs and runs it on the media in ../shared.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUILD=${BUILD_DIR:-build}
MODELS=${MMSERVE_TEST_MODELS:-$(pwd)/../shared/models}
MEDIA=${MMSERVE_TEST_MEDIA:-$(pwd)/../shared/media}
cmake --build "$BUILD" --target mmserve whisper-cli whisper-server >/dev/null
# A real whisper.cpp model when one is at hand; otherwise a model of
# whisper-tiny's shapes (384 wide, 6 heads, 4+4 layers, 30 s windows) with
# random weights shaped to decode into timestamped segments, so each
# transcription costs what real tiny costs. Generated once.
MODEL=""
for name in ggml-tiny.en.bin ggml-tiny.bin ggml-base.en.bin ggml-base.bin; do
  if [[ -f $MODELS/$name ]]; then MODEL=$MODELS/$name; break; fi
done
if [[ -z $MODEL ]]; then
  MODEL="$BUILD/bench-models/whisper-tiny-shaped.bin"
  if [[ ! -f $MODEL ]]; then
    mkdir -p "$(dirname "$MODEL")"
    /usr/bin/python3 tools/gen_tiny_whisper_model.py "$MODEL" --from "$MODELS/for-tests-ggml-tiny.bin" --shape tiny
  fi
fi
# 16 kHz mono 32-bit float WAV: whisper.cpp's miniaudio and mmserve's FFmpeg
# read the very same samples. jfk-x6 (66 s) spans three 30 s windows.
AUDIO="$BUILD/bench-media"
mkdir -p "$AUDIO"
wav() { [[ -f $AUDIO/$1.wav ]] || ffmpeg -v error -y "${@:2}" -ar 16000 -ac 1 -c:a pcm_f32le "$AUDIO/$1.wav"; }
wav jfk -i "$MEDIA/jfk.mp3"
wav speech-2 -i "$MEDIA/speech-2.mp3"
wav jfk-x6 -stream_loop 5 -i "$MEDIA/jfk.mp3"
node bench/speech/bench.mjs --mmserve "$BUILD/mmserve" --whisper-cli "$BUILD/bin/whisper-cli" \
  --whisper-server "$BUILD/bin/whisper-server" --model "$MODEL" --rounds "${ROUNDS:-5}" \
  --audio "$AUDIO/jfk.wav" --audio "$AUDIO/speech-2.wav" --audio "$AUDIO/jfk-x6.wav" \
  --batch-audio "$AUDIO/speech-2.wav" "$@"
