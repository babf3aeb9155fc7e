# Sourced by the scripts beside it: prints the container tool to use, the one
# named ($1, from --tool or CONTAINER_TOOL) or else podman, else docker; fails
# naming the package when there is none.
container_tool() {
  local tool="${1:-}"
  if [[ -z "$tool" ]]; then
    if command -v podman >/dev/null; then tool=podman; else tool=docker; fi
  fi
  if ! command -v "$tool" >/dev/null; then
    printf 'ERROR: %s not found (apt-get install podman)\n' "$tool" >&2
    return 1
  fi
  printf '%s\n' "$tool"
}
