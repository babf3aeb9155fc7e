#!/usr/bin/python3
"""bench/media: images per second fitting large images inside SIZE x SIZE.

mmserve: its preprocessing function in-process (mmserve_media_bench), the
code the vision API runs on each upload: decode, EXIF orientation, sRGB8,
resize, out to RGB8 pixels in memory.
vipsthumbnail: one process per image, as it is used from a shell, and one
process for all rounds (start-up paid once); output to libvips' own
uncompressed .v format so no encoder is timed.
Pillow: in-process, Image.draft (JPEG DCT shrink-on-load) then
Image.thumbnail with LANCZOS, then RGB bytes.
Median of ROUNDS per image; ratios are mmserve's images/s over the peer's.
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

from PIL import Image


def pillow(path, size):
    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG only: DCT scaling, as libjpeg's shrink-on-load
        im = im.convert("RGB")
        im.thumbnail((size, size), Image.LANCZOS)
        return im.tobytes()


def median_seconds(action, rounds):
    action()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--driver", required=True)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()
    out = subprocess.run([args.driver, "--max", str(args.size), "--rounds", str(args.rounds), *args.images],
                         check=True, capture_output=True, text=True).stdout
    mmserve = {row["file"]: row for row in map(json.loads, out.splitlines())}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for image in args.images:
            target = os.path.join(tmp, "tn_%s.v")
            one = ["vipsthumbnail", image, "-s", f"{args.size}x{args.size}", "-o", target]
            per_process = median_seconds(lambda: subprocess.run(one, check=True), args.rounds)
            batch = ["vipsthumbnail", *([image] * args.rounds), "-s", f"{args.size}x{args.size}", "-o", target]
            subprocess.run(batch, check=True)  # warm-up
            start = time.perf_counter()
            subprocess.run(batch, check=True)
            batched = (time.perf_counter() - start) / args.rounds
            pil = median_seconds(lambda: pillow(image, args.size), args.rounds)
            m = mmserve[image]
            rows.append((os.path.basename(image), m, per_process, batched, pil))
    print(f"{args.rounds} rounds per image, fit inside {args.size}x{args.size}, {os.cpu_count()} cores; images/s")
    print("| image | mmserve (in-process) | vipsthumbnail (process per image) | vipsthumbnail (one process) "
          "| Pillow | vs vipsthumbnail per image | vs vipsthumbnail one process | vs Pillow |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m, per_process, batched, pil in rows:
        ours = m["images_per_s"]
        print(f"| {name} -> {m['width']}x{m['height']} | {ours:.1f} (decode {m['decode_s'] * 1000:.0f} ms, "
              f"resize {m['resize_s'] * 1000:.0f} ms) | {1 / per_process:.1f} | {1 / batched:.1f} | {1 / pil:.1f} "
              f"| {ours * per_process:.2f} | {ours * batched:.2f} | {ours * pil:.2f} |")


if __name__ == "__main__":
    main()
