#!/usr/bin/env bash
# bench/image: seconds per denoising step and peak RSS of mmserve's Stable
# Diffusion engine at 512x512 and 1024x1024, with and without attention
# slicing and VAE tiling, on one model with SD 1.5's real shapes (random
# weights, f16: tools/gen_tiny_sd_model.py --variant sd15-size, made once
# under $BUILD/bench-models/). Each configuration runs in its own process
# (its peak RSS is its own) and prints one JSON line; a table follows.
# No SD engine is in the registries we build from, so there is no peer to
# run beside it: the figures are for comparing with other engines run on
# the same machine with the same model (e.g. `--model path/to/a/diffusers/folder`).
#   bash bench/image/run.sh [--model DIR] [--steps N] [--sizes "512 1024"] [--threads N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUILD=${BUILD_DIR:-build}
MODEL=""
STEPS=2
SIZES="512 1024"
THREADS=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --model) MODEL=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --sizes) SIZES=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cmake --build "$BUILD" --target mmserve_image_bench >/dev/null
if [[ -z $MODEL ]]; then
  MODEL="$BUILD/bench-models/sd15-size"
  if [[ ! -f $MODEL/model_index.json ]]; then
    echo "generating a random-weight model with SD 1.5's shapes in $MODEL (2 GB, about a minute)" >&2
    /usr/bin/python3 tools/gen_tiny_sd_model.py "$MODEL.tmp" --variant sd15-size --dtype f16
    mv "$MODEL.tmp" "$MODEL"
  fi
fi
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT
for size in $SIZES; do
  for options in "" "--slicing --tiling"; do
    echo "== ${size}x${size} ${options:-(no slicing, no tiling)}" >&2
    # A configuration that runs out of memory is reported, not fatal.
    if ! "$BUILD/bin/mmserve_image_bench" "$MODEL" "$size" "$STEPS" $options --threads "$THREADS" >>"$RESULTS"; then
      echo "{\"size\": $size, \"options\": \"$options\", \"failed\": true}" >>"$RESULTS"
    fi
  done
done
/usr/bin/python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"{'size':>9} {'slicing':>8} {'tiling':>7} {'s/step':>8} {'text s':>7} {'vae s':>7} {'peak RSS MiB':>13}")
for r in rows:
    if r.get("failed"):
        print(f"{r['size']:>9} {r['options'] or '-':>16}   failed (out of memory?)")
        continue
    p = r["phases"]
    print(f"{r['size']:>9} {str(r['attention_slicing']):>8} {str(r['vae_tiling']):>7} {r['seconds_per_step']:8.2f} "
          f"{p.get('text_encode', 0):7.2f} {p.get('vae_decode', 0):7.2f} {r['peak_rss_mib']:13.0f}")
PY
