#!/usr/bin/env bash
# Makes the Dockerfile's base image, debian:bookworm-slim, from Debian's own
# package mirror with debootstrap, for machines that reach Debian's packages
# but no container registry. Where a registry is reachable, `docker pull
# debian:bookworm-slim` does the same job and this script is not needed.
#
#   bash deploy/docker/base-image.sh [--tool podman|docker] [--mirror URL]
#
# The result is tagged docker.io/library/debian:bookworm-slim, the name the
# Dockerfile's FROM lines resolve to, so a build finds it locally. Like the
# official image it has apt's sources in deb822 form
# (/etc/apt/sources.list.d/debian.sources, bookworm, -updates, -security) and
# no package lists or documentation.
set -euo pipefail

tool="${CONTAINER_TOOL:-}"
mirror="http://deb.debian.org/debian"
security_mirror="http://deb.debian.org/debian-security"
tag="docker.io/library/debian:bookworm-slim"

while (($#)); do
  case "$1" in
    --tool) tool="$2"; shift 2 ;;
    --mirror) mirror="$2"; shift 2 ;;
    --security-mirror) security_mirror="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) echo "usage: $0 [--tool podman|docker] [--mirror URL] [--security-mirror URL] [--tag NAME]" >&2; exit 2 ;;
  esac
done

log() { printf '[base-image] %s\n' "$*" >&2; }

# shellcheck source=container-tool.sh
source "$(dirname "${BASH_SOURCE[0]}")/container-tool.sh"
tool="$(container_tool "$tool")"
command -v debootstrap >/dev/null || { log "ERROR: debootstrap not found (apt-get install debootstrap)"; exit 1; }
[[ $(id -u) -eq 0 ]] || { log "ERROR: debootstrap needs root"; exit 1; }

if "$tool" image exists "$tag" 2>/dev/null || "$tool" image inspect "$tag" >/dev/null 2>&1; then
  log "$tag: present"
  exit 0
fi

rootfs="$(mktemp -d /var/tmp/mmserve-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

log "debootstrap bookworm (minbase) from $mirror"
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >&2

rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
# What the official slim image leaves out: package lists, caches, docs, logs.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
: >"$rootfs/etc/hostname"

log "importing as $tag"
tar -C "$rootfs" --numeric-owner -c . |
  "$tool" import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$tag" >&2
log "done: $("$tool" image inspect --format '{{.Id}} {{.Size}}' "$tag" 2>/dev/null || true)"
