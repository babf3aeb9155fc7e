#!/usr/bin/env bash
# bench/media: mmserve's image preprocessing against vipsthumbnail and
# Pillow on a 4000x3000 JPEG and PNG, fitted inside 1024x1024.
#   ROUNDS=N bash bench/media/run.sh
# Inputs are made once under $BUILD/bench-media/ from ../shared/media's
# photo: upscaled to 4000x3000 with libvips plus Gaussian noise (so the PNG
# does not compress like a flat upscale, and the JPEG has real detail).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUILD=${BUILD_DIR:-build}
MEDIA=${MMSERVE_TEST_MEDIA:-$(pwd)/../shared/media}
ROUNDS=${ROUNDS:-15}
SIZE=1024
cmake --build "$BUILD" --target mmserve_media_bench >/dev/null
DIR="$BUILD/bench-media"
mkdir -p "$DIR"
if [[ ! -f $DIR/photo-4000x3000.png ]]; then
  vips resize "$MEDIA/newspaper-moon.jpeg" "$DIR/up.v" 6.25 --kernel lanczos3
  vips extract_area "$DIR/up.v" "$DIR/crop.v" 0 0 4000 3000
  vips gaussnoise "$DIR/noise.v" 4000 3000 --sigma 6 --mean 0
  vips add "$DIR/crop.v" "$DIR/noise.v" "$DIR/sum.v"
  vips cast "$DIR/sum.v" "$DIR/photo.v" uchar
  vips copy "$DIR/photo.v" "$DIR/photo-4000x3000.jpg[Q=90]"
  vips copy "$DIR/photo.v" "$DIR/photo-4000x3000.png"
  rm -f "$DIR"/{up,crop,noise,sum,photo}.v
fi
exec /usr/bin/python3 bench/media/bench.py --driver "$BUILD/bin/mmserve_media_bench" --rounds "$ROUNDS" \
  --size "$SIZE" "$DIR/photo-4000x3000.jpg" "$DIR/photo-4000x3000.png"
