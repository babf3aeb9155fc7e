#!/usr/bin/python3
"""Seed corpora for the fuzz targets, made from real files at build time.

make_corpus.py OUT_DIR MEDIA_DIR writes OUT_DIR/image (small images of
every supported format and colour model, written by libvips' and FFmpeg's
command-line tools from ../shared/media's photo and FFmpeg's test pattern)
and OUT_DIR/multipart (request bodies as OpenAI's clients send them, with
the Content-Type line the fuzz target reads first) and OUT_DIR/url (URLs
and redirect Locations as clients and servers write them). Small files keep
each fuzz iteration fast; the fuzzers grow the rest.
"""
import io
import os
import subprocess
import sys
import tempfile
import zipfile


def run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def with_orientation(jpeg: bytes, orientation: int) -> bytes:
    # libvips writes EXIF big-endian: tag 0x0112, type SHORT, count 1, value.
    tag = b"\x01\x12\x00\x03\x00\x00\x00\x01"
    at = jpeg.find(tag)
    if at < 0:
        raise SystemExit("no EXIF orientation tag in the photo")
    value = at + len(tag)
    return jpeg[:value] + bytes([0, orientation]) + jpeg[value + 2:]


def images(out: str, media: str, tmp: str):
    photo = os.path.join(media, "newspaper-moon.jpeg")
    pattern = os.path.join(tmp, "pattern.png")
    run("ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=48x32", "-frames:v", "1", pattern)
    small = os.path.join(tmp, "photo.v")
    run("vips", "thumbnail", photo, small, "160")  # keeps the photo's EXIF block
    panorama = os.path.join(tmp, "panorama.v")  # 320x64: crop sizes on the short side
    run("vips", "thumbnail", photo, panorama, "320", "--height", "64", "--crop", "centre")
    rgba = os.path.join(tmp, "rgba.v")
    run("vips", "bandjoin_const", pattern, rgba, "128")
    grey = os.path.join(tmp, "grey.v")
    run("vips", "colourspace", pattern, grey, "b-w")
    rgb16 = os.path.join(tmp, "rgb16.v")
    run("vips", "colourspace", pattern, rgb16, "rgb16")
    cmyk = os.path.join(tmp, "cmyk.v")
    run("vips", "icc_export", pattern, cmyk, "--output-profile", "cmyk")
    saves = {
        "photo.jpg": (small, "[Q=70]"),
        "progressive.jpg": (pattern, "[interlace,Q=60]"),
        "grey.jpg": (grey, "[Q=60]"),
        "cmyk.jpg": (cmyk, "[Q=60,strip]"),  # no 1 MB ICC profile
        "panorama.jpg": (panorama, "[Q=60]"),
        "rgb.png": (pattern, ""),
        "rgba.png": (rgba, ""),
        "grey.png": (grey, ""),
        "rgb16.png": (rgb16, ""),
        "palette.png": (pattern, "[palette]"),
        "interlaced.png": (pattern, "[interlace]"),
        "lossy.webp": (pattern, "[Q=50]"),
        "lossless-alpha.webp": (rgba, "[lossless]"),
        "still.gif": (pattern, ""),
    }
    for name, (source, options) in saves.items():
        run("vips", "copy", source, os.path.join(out, name) + options)
    for name in ("animated.gif", "animated.webp"):  # three frames
        run("ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=48x32:rate=5", "-frames:v", "3",
            "-loop", "0", os.path.join(out, name))
    with open(os.path.join(out, "photo.jpg"), "rb") as f:
        jpeg = f.read()
    for orientation in range(2, 9):
        with open(os.path.join(out, f"orientation-{orientation}.jpg"), "wb") as f:
            f.write(with_orientation(jpeg, orientation))
    # A PNG with a ZIP appended (a polyglot) and a truncated JPEG.
    with open(os.path.join(out, "rgb.png"), "rb") as f:
        png = f.read()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("payload.txt", "not an image")
    with open(os.path.join(out, "polyglot-png-zip.png"), "wb") as f:
        f.write(png + archive.getvalue())
    with open(os.path.join(out, "truncated.jpg"), "wb") as f:
        f.write(jpeg[: len(jpeg) // 2])


BOUNDARY = "----mmserveFuzz7MA4YWxk"


def part(name, value, filename=None, content_type=None):
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"'
    if filename is not None:
        head += f'; filename="{filename}"'
    head += "\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def multipart(out: str, media: str):
    with open(os.path.join(media, "jfk.mp3"), "rb") as f:
        audio = f.read(1500)
    content_type = f"multipart/form-data; boundary={BOUNDARY}\n".encode()
    closing = f"--{BOUNDARY}--\r\n".encode()
    bodies = {
        "openai-sdk": part("file", audio, "jfk.mp3", "audio/mpeg") + part("model", b"whisper-1")
        + part("response_format", b"verbose_json") + part("timestamp_granularities[]", b"word")
        + part("timestamp_granularities[]", b"segment") + closing,
        "curl-fields-first": part("model", b"whisper-1") + part("language", b"en")
        + part("file", audio[:200], 'a \\"quoted\\" name.mp3') + closing,
        "preamble-epilogue": b"preamble\r\n" + part("prompt", b"--" + BOUNDARY.encode()[:12] + b"\r\n")
        + part("file", b"\r\n--\r\n" + audio[:64], "x.wav", "audio/wav") + closing + b"epilogue",
        "no-closing": part("model", b"whisper-1") + part("file", audio[:100], "y.mp3"),
        "two-files": part("file", b"a", "1.mp3") + part("file", b"b", "2.mp3") + closing,
        "empty": closing,
    }
    for name, body in bodies.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(content_type + body)
    quoted = f'multipart/form-data; charset=utf-8; boundary="{BOUNDARY}"\n'.encode()
    with open(os.path.join(out, "quoted-boundary"), "wb") as f:
        f.write(quoted + part("model", b"whisper-1") + part("file", audio[:50], "z.ogg") + closing)


def urls(out: str):
    seeds = {
        "plain": b"https://example.com/images/moon.jpeg",
        "port-query": b"http://images.example:8080/a/b.png?size=large&v=2#top",
        "ipv6": b"http://[2001:db8::1]:9000/bucket/key\0/other/key",
        "user": b"https://user:secret@Models.Example.ORG\0//cdn.example/x",
        "relative": b"http://host/dir/page?q=1\0../up/file.png",
        "spaces": b"http://host/my photo.png\0next photo.png",
        "hf-resolve": b"https://huggingface.co/ggml-org/model/resolve/main/model.gguf"
        b"\0https://cdn-lfs.hf.co/repos/ab/cd/ef?X-Amz-Signature=1",
    }
    for name, url in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(url)


def main():
    out, media = sys.argv[1], sys.argv[2]
    for sub in ("image", "multipart", "url"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        images(os.path.join(out, "image"), media, tmp)
    multipart(os.path.join(out, "multipart"), media)
    urls(os.path.join(out, "url"))


if __name__ == "__main__":
    main()
