#!/usr/bin/env bash
# Builds the mmserve container image from the repository root with podman or
# docker (whichever is installed; CONTAINER_TOOL or --tool picks).
#
#   bash deploy/docker/build.sh [--cuda] [--cuda-architectures LIST]
#                               [--tag NAME] [--tool podman|docker]
#                               [--isolation chroot] [--ca-bundle FILE]
#
# --cuda-architectures LIST (with --cuda) replaces the Dockerfile's list of
# GPU architectures, e.g. "80-real" for A100 nodes only: each architecture
# compiles ggml's CUDA kernels once more, so fewer build faster and make a
# smaller image.
#
# --ca-bundle FILE (default: $NODE_EXTRA_CA_CERTS when set) hands a CA bundle
# to the build as a secret, for networks whose TLS goes through an
# intercepting proxy; it is not stored in the image.
#
# --isolation chroot (podman) runs the RUN steps without an OCI runtime, for
# machines where crun/runc cannot set up a container (nested sandboxes that
# refuse rlimits or hybrid cgroups).
#
# The base image (debian:bookworm-slim) comes from the local store, else from
# the registry, else it is made from Debian's package mirror by base-image.sh,
# so a machine that reaches only Debian's packages and npm can build too. The
# build stage's RUN steps need those two (apt and the pinned engine sources).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tool="${CONTAINER_TOOL:-}"
cuda=OFF
cuda_architectures=""
tag=""
isolation=""
ca_bundle="${NODE_EXTRA_CA_CERTS:-}"
base="docker.io/library/debian:bookworm-slim"

while (($#)); do
  case "$1" in
    --cuda) cuda=ON; shift ;;
    --cuda-architectures) cuda_architectures="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --tool) tool="$2"; shift 2 ;;
    --isolation) isolation="$2"; shift 2 ;;
    --ca-bundle) ca_bundle="$2"; shift 2 ;;
    *) echo "usage: $0 [--cuda] [--cuda-architectures LIST] [--tag NAME] [--tool podman|docker] [--isolation chroot] [--ca-bundle FILE]" >&2; exit 2 ;;
  esac
done

log() { printf '[image] %s\n' "$*" >&2; }

# shellcheck source=container-tool.sh
source "$(dirname "${BASH_SOURCE[0]}")/container-tool.sh"
tool="$(container_tool "$tool")"

version="$(sed -n 's/^project(mmserve VERSION \([0-9.]*\).*/\1/p' "$ROOT/CMakeLists.txt")"
revision="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ -z "$tag" ]]; then
  tag="mmserve:${version}"
  [[ $cuda == OFF ]] || tag+="-cuda"
fi

if ! "$tool" image inspect "$base" >/dev/null 2>&1; then
  if ! "$tool" pull "$base" >&2; then
    log "no registry reachable: making $base from Debian's mirror"
    bash "$ROOT/deploy/docker/base-image.sh" --tool "$tool"
  fi
fi

build_args=()
if [[ -n "$cuda_architectures" ]]; then
  [[ $cuda == ON ]] || { log "ERROR: --cuda-architectures needs --cuda"; exit 2; }
  build_args+=(--build-arg CUDA_ARCHITECTURES="$cuda_architectures")
fi
if [[ -n "$ca_bundle" ]]; then
  [[ -s "$ca_bundle" ]] || { log "ERROR: CA bundle $ca_bundle is missing or empty"; exit 1; }
  build_args+=(--secret "id=ca_bundle,src=$ca_bundle")
fi
# podman reads the ignore file given; docker (BuildKit) finds
# Dockerfile.dockerignore beside the Dockerfile by itself.
if [[ "$tool" == podman ]]; then
  build_args+=(--ignorefile "$ROOT/deploy/docker/Dockerfile.dockerignore" --pull=never)
  [[ -z "$isolation" ]] || build_args+=(--isolation "$isolation")
fi

log "building $tag with $tool (MMSERVE_CUDA=$cuda, revision $revision)"
"$tool" build "${build_args[@]}" --network host \
  -f "$ROOT/deploy/docker/Dockerfile" \
  --build-arg MMSERVE_CUDA="$cuda" --build-arg VERSION="$version" --build-arg REVISION="$revision" \
  -t "$tag" "$ROOT" >&2
log "built $tag: $("$tool" image inspect --format '{{.Size}} bytes' "$tag")"
printf '%s\n' "$tag"
