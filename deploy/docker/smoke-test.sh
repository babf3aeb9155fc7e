#!/usr/bin/env bash
# Runs a built mmserve image the way the manifests' pods do (one role each,
# the seed's environment variables, as the image's non-root user, the root
# file system read-only with /models, /tmp and /outputs writable) and checks each service answers for real: vision chat with a
# JPEG (llama.cpp + libvips), a transcription of an MP3 (whisper + FFmpeg), a
# generated PNG (the diffusion engine), and the default `serve` command's
# probes and metrics. The models are the test suite's generated small ones
# (build/test-models: deterministic random weights, so the checks are of the
# plumbing and the libraries in the image, not of answers).
#
#   bash deploy/docker/smoke-test.sh [IMAGE] [--runner podman|chroot] [--tool podman|docker]
#                                    [--cuda-driver FILE]
#
# A CUDA image (label io.mmserve.cuda=ON) links the GPU driver's libcuda.so.1,
# which the NVIDIA container toolkit mounts from the node. The test first
# checks that every other library the binary needs is in the image, then
# mounts a libcuda.so.1 (--cuda-driver FILE; by default the host's driver, else
# the CUDA toolkit's stub library, whose every call fails as on a node without
# a GPU) and runs the same checks: with no usable GPU each service must start
# and answer on the CPU.
#
# --runner chroot runs the image's file system with chroot in private mount
# and PID namespaces instead of an OCI runtime, for machines where crun/runc
# cannot start containers (nested sandboxes); podman supplies the file system.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
image="" runner=podman tool="${CONTAINER_TOOL:-}" cuda_driver=""
while (($#)); do
  case "$1" in
    --runner) runner="$2"; shift 2 ;;
    --tool) tool="$2"; shift 2 ;;
    --cuda-driver) cuda_driver="$2"; shift 2 ;;
    -*) echo "usage: $0 [IMAGE] [--runner podman|chroot] [--tool podman|docker] [--cuda-driver FILE]" >&2; exit 2 ;;
    *) image="$1"; shift ;;
  esac
done
# shellcheck source=container-tool.sh
source "$(dirname "${BASH_SOURCE[0]}")/container-tool.sh"
tool="$(container_tool "$tool")"
[[ -n "$image" ]] || image="mmserve:$(sed -n 's/^project(mmserve VERSION \([0-9.]*\).*/\1/p' "$ROOT/CMakeLists.txt")"
[[ "$runner" != chroot || "$tool" == podman ]] || { echo "--runner chroot needs podman (image mount)" >&2; exit 2; }

MEDIA="${MMSERVE_TEST_MEDIA:-$ROOT/../shared/media}"
GENERATED="${MMSERVE_TEST_GENERATED:-$ROOT/build/test-models}"
for needed in "$MEDIA/jfk.mp3" "$MEDIA/newspaper-moon.jpeg" \
  "$GENERATED/tiny-llama-random.gguf" "$GENERATED/mmproj-stories260K-random.gguf" "$GENERATED/tiny-sd" \
  "$GENERATED/tiny-whisper-random.en.bin"; do
  [[ -e "$needed" ]] || { echo "smoke test needs $needed (the test models: make build)" >&2; exit 2; }
done

log() { printf '[smoke] %s\n' "$*" >&2; }
WORK="$(mktemp -d /tmp/mmserve-smoke.XXXXXX)"
RUNNING=()
cleanup() {
  for entry in "${RUNNING[@]}"; do stop_container "$entry"; done
  [[ "$runner" != chroot ]] || "$tool" image unmount "$image" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The models volume, as docs/deploy.md lays it out: one folder or file per model.
mkdir -p "$WORK/models/tiny-vlm"
cp "$GENERATED/tiny-llama-random.gguf" "$GENERATED/mmproj-stories260K-random.gguf" "$WORK/models/tiny-vlm/"
cp "$GENERATED/tiny-whisper-random.en.bin" "$WORK/models/"
cp -r "$GENERATED/tiny-sd" "$WORK/models/tiny-sd"
chmod a+rx "$WORK"

user="$("$tool" image inspect --format '{{.Config.User}}' "$image")"
chown -R "$user" "$WORK/models" # the pods' model volume is theirs to write (converted weights go to /models/cache)
mapfile -t image_env < <("$tool" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | sed '/^$/d')
[[ "$runner" != chroot ]] || rootfs="$("$tool" image mount "$image")"

# A CUDA image: the driver library in a folder on LD_LIBRARY_PATH (the image's
# empty /usr/local/lib), standing for the node's that the toolkit mounts.
driver_env=() driver_dir="" driver_args=()
if [[ "$("$tool" image inspect --format '{{index .Config.Labels "io.mmserve.cuda"}}' "$image")" == ON ]]; then
  if [[ -z "$cuda_driver" ]]; then
    cuda_driver="$(ldconfig -p | awk '$1 == "libcuda.so.1" { print $NF; exit }')"
    [[ -n "$cuda_driver" ]] || cuda_driver=/usr/local/cuda/lib64/stubs/libcuda.so
  fi
  [[ -f "$cuda_driver" ]] || { echo "a CUDA image needs a libcuda.so.1 to run: --cuda-driver FILE (the GPU driver's, or the CUDA toolkit's stub)" >&2; exit 2; }
  mkdir -p "$WORK/driver"
  cp -L "$cuda_driver" "$WORK/driver/libcuda.so.1"
  driver_env=(LD_LIBRARY_PATH=/usr/local/lib)
  driver_dir="$WORK/driver"
  driver_args=(-v "$driver_dir:/usr/local/lib:ro" -e "${driver_env[0]}")
  chmod a+rx "$WORK/driver" "$WORK/driver/libcuda.so.1"
  # ldd without the driver: only libcuda.so.1 may be missing.
  ldd_command=(sh -c 'ldd /usr/local/bin/mmserve')
  if [[ "$runner" == chroot ]]; then
    missing="$(chroot "$rootfs" "${ldd_command[@]}" | grep 'not found' || true)"
  else
    missing="$("$tool" run --rm --entrypoint "" "$image" "${ldd_command[@]}" | grep 'not found' || true)"
  fi
  missing="$(grep -v 'libcuda.so.1 =>' <<<"$missing" || true)"
  [[ -z "$missing" ]] || { echo "FAIL cuda: libraries missing from the image:"; echo "$missing"; exit 1; }
  echo "ok   cuda: every library but the node's driver is in the image"
  log "running the services with $cuda_driver as the driver"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# in_rootfs FOLDER COMMAND...: COMMAND in the image's file system (chroot
# runner) as the image's user with its environment, in private mount and PID
# namespaces: the root read-only, FOLDER's tmp and outputs as /tmp and
# /outputs, the models volume as /models, /proc and /dev.
in_rootfs() {
  local work="$1"
  shift
  mkdir -p "$work/tmp" "$work/outputs"
  chown -R "$user" "$work"
  unshare --mount --pid --fork --kill-child bash -c '
    set -e; root="$1"; work="$2"; models="$3"; driver="$4"; shift 4
    mount --make-rprivate /
    mount --bind "$work/tmp" "$root/tmp"
    mount --bind "$work/outputs" "$root/outputs"
    mount --bind "$models" "$root/models"
    [[ -z "$driver" ]] || mount --bind "$driver" "$root/usr/local/lib"
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    exec "$@"' _ "$rootfs" "$work" "$WORK/models" "$driver_dir" \
    chroot --userspec="$user" "$rootfs" env -i "${image_env[@]}" "${driver_env[@]}" HOME=/home/mmserve "$@"
}

# start NAME PORT "ENV=V ..." ARGS...: the image's entrypoint with ARGS, host network.
start() {
  local name="$1" port="$2" env_list="$3"
  shift 3
  local env_pairs=() env_args=() entry
  read -r -a env_pairs <<<"$env_list"
  for entry in "${env_pairs[@]}"; do env_args+=(-e "$entry"); done
  if [[ "$runner" == podman ]]; then
    "$tool" run -d --rm --name "mmserve-smoke-$name" --network host --read-only -v "$WORK/models:/models" \
      --tmpfs /tmp --tmpfs /outputs "${driver_args[@]}" \
      "${env_args[@]}" "$image" "$@" --host 127.0.0.1 --port "$port" >/dev/null
    RUNNING+=("podman:mmserve-smoke-$name")
  else
    in_rootfs "$WORK/$name" env "${env_pairs[@]}" \
      sh -c 'cd /home/mmserve && exec mmserve "$@"' _ "$@" --host 127.0.0.1 --port "$port" \
      >"$WORK/$name.log" 2>&1 &
    RUNNING+=("pid:$!")
  fi
  local deadline=$((SECONDS + 120))
  until curl -sf -o /dev/null "http://127.0.0.1:$port${probe:-/readyz}"; do
    if ((SECONDS > deadline)); then
      log "$name: not ready within 120 s: $(curl -s "http://127.0.0.1:$port/readyz")"
      service_log "$name" | grep -v 'path=/readyz' | tail -30 >&2
      exit 1
    fi
    sleep 0.5
  done
  log "$name: ready on port $port"
}
stop_container() {
  case "$1" in
    podman:*) "$tool" stop -t 10 "${1#podman:}" >/dev/null 2>&1 || true ;;
    # unshare ignores SIGTERM while its child runs: the server (its child) drains and exits.
    pid:*) pkill -TERM -P "${1#pid:}" 2>/dev/null || true; wait "${1#pid:}" 2>/dev/null || true ;;
  esac
}
service_log() { # NAME: what the service has written so far
  if [[ "$runner" == podman ]]; then "$tool" logs "mmserve-smoke-$1" 2>&1; else cat "$WORK/$1.log"; fi
}
check() { # DESCRIPTION PYTHON-EXPRESSION-ON-r (the parsed JSON) < response
  python3 -c 'import json,sys; r=json.load(sys.stdin); ok=eval(sys.argv[2]); print(("ok  " if ok else "FAIL"), sys.argv[1]); sys.exit(0 if ok else 1)' "$1" "$2"
}

if [[ "$runner" == chroot ]]; then
  in_rootfs "$WORK/version" mmserve --version
else
  "$tool" run --rm "${driver_args[@]}" "$image" --version
fi

# llava-service: MODEL_PATH and LOAD_8BIT as the seed sets them.
port=$(free_port)
start vision "$port" "MODEL_PATH=/models/tiny-vlm LOAD_8BIT=false" vision
image_b64="$(base64 -w0 "$MEDIA/newspaper-moon.jpeg")"
printf '{"model":"tiny-vlm","max_tokens":8,"messages":[{"role":"user","content":[{"type":"text","text":"Describe."},{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,%s"}}]}]}' "$image_b64" >"$WORK/chat.json"
curl -sf -H 'content-type: application/json' --data-binary @"$WORK/chat.json" "http://127.0.0.1:$port/v1/chat/completions" |
  check "vision: chat completion with a JPEG" 'r["object"]=="chat.completion" and r["usage"]["prompt_tokens"]>10'
if [[ -n "$driver_dir" ]]; then # ggml's CUDA backend is in the binary and said what it found
  cuda_line="$(service_log vision | grep -m1 'ggml_cuda_init' || true)"
  [[ -n "$cuda_line" ]] || { echo "FAIL cuda: ggml's CUDA backend did not start"; exit 1; }
  echo "ok   cuda: $cuda_line"
fi

# whisper-service: MODEL_SIZE, DEVICE, COMPUTE_TYPE as the seed sets them; the model file from /models.
port=$(free_port)
start speech "$port" "MODEL_PATH=/models/tiny-whisper-random.en.bin DEVICE=cpu COMPUTE_TYPE=float32" speech
curl -sf -F model=whisper-1 -F file=@"$MEDIA/jfk.mp3" -F response_format=verbose_json \
  "http://127.0.0.1:$port/v1/audio/transcriptions" |
  check "speech: an MP3 transcribed (FFmpeg decoding, whisper)" 'r["duration"]>10 and "text" in r'

# stable-diffusion: MODEL_PATH as the seed sets it; one PNG.
port=$(free_port)
start image "$port" "MODEL_PATH=/models/tiny-sd" image
curl -sf -H 'content-type: application/json' \
  -d '{"prompt":"a red circle","size":"64x64","steps":1,"seed":1,"response_format":"b64_json"}' \
  "http://127.0.0.1:$port/v1/images/generations" |
  check "image: a generated PNG" '__import__("base64").b64decode(r["data"][0]["b64_json"])[:8]==b"\x89PNG\r\n\x1a\n"'

# The default command (serve, the shipped config) with no models: alive, not
# ready (503 naming what is missing), and the seed's metrics.
port=$(free_port)
probe=/healthz start serve "$port" "" serve --config /etc/mmserve/mmserve.yaml
echo "ok   serve: /healthz"
curl -s "http://127.0.0.1:$port/readyz" |
  check "serve: /readyz says not ready and names the missing models" 'r["status"]=="not_ready" and len(r["reasons"])==3'
curl -sf "http://127.0.0.1:$port/metrics" >"$WORK/metrics.txt"
for metric in image_processing_seconds image_size_bytes model_inference_seconds tokens_generated_total images_generated_total; do
  grep -q "^# TYPE $metric " "$WORK/metrics.txt" || { echo "FAIL serve: /metrics lacks $metric"; exit 1; }
done
echo "ok   serve: /metrics has the seed's metrics"
log "all checks passed for $image ($runner)"
