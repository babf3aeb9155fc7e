#!/usr/bin/env bash
# bench/gateway: mmserve's gateway against nginx (Debian's), in the same run,
# in front of the same upstream, configured alike (the seed's route, body
# limit 100m, read timeout 300 s, kept-alive upstream connections, the same
# forwarding and request-id fields, access logs off on both): requests/s and p50/p99 latency of small proxied
# requests with wrk, and peak RSS growth with four concurrent 100 MB uploads.
#
#   bash bench/gateway/run.sh [--seconds N] [--connections N] [--rounds N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUILD=${BUILD_DIR:-build}
SECONDS_PER_RUN=10 CONNECTIONS=32 ROUNDS=3
while (($#)); do
  case $1 in
    --seconds) SECONDS_PER_RUN=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
for tool in nginx wrk curl; do
  command -v "$tool" >/dev/null || { echo "bench/gateway needs $tool (scripts/bootstrap.sh installs it)" >&2; exit 2; }
done
cmake --build "$BUILD" --target mmserve >/dev/null
MMSERVE=$(realpath "$BUILD/mmserve")

WORK=$(mktemp -d /tmp/bench-gateway.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # A gateway that died shows why (its crash report) before the folder goes.
  if grep -qs "mmserve: \(fatal\|uncaught\|std::terminate\)" "$WORK/gateway.log"; then tail -60 "$WORK/gateway.log" >&2; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; exit 1; }

UPSTREAM_PORT=$(free_port) NGINX_PORT=$(free_port) GATEWAY_PORT=$(free_port)
common_nginx() { # $1: prefix dir
  mkdir -p "$1"
  cat <<CONF
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1/body; proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi; uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;
CONF
}
# The upstream both proxies share: a small JSON answer for any request; bodies read and dropped.
{ common_nginx "$WORK/upstream"; cat <<CONF
  server {
    listen 127.0.0.1:$UPSTREAM_PORT;
    keepalive_requests 1000000;
    client_max_body_size 200m;
    location / { default_type application/json; return 200 '{"id":"chatcmpl-bench","object":"chat.completion"}'; }
  }
}
CONF
} > "$WORK/upstream.conf"
sed -i '1i worker_processes 1;' "$WORK/upstream.conf"
# nginx as the seed's Ingress would configure it, passing on the request the
# way ingress-nginx does and mmserve's gateway does: X-Forwarded-*, X-Real-IP
# and an X-Request-Id (the client's, else a new random one) to the upstream,
# the same X-Request-Id back to the client. Without these nginx would do less
# work per request than the gateway (a smaller head for the upstream to parse).
{ common_nginx "$WORK/proxy"; cat <<CONF
  map \$http_x_request_id \$req_id { default \$http_x_request_id; "" \$request_id; }
  upstream vision { server 127.0.0.1:$UPSTREAM_PORT; keepalive 32; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    keepalive_requests 1000000;
    client_max_body_size 100m;          # proxy-body-size: 100m
    location /v1/chat/completions {
      proxy_pass http://vision;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 300s;          # proxy-read-timeout: 300
      proxy_request_buffering off;      # stream uploads through, as mmserve does
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Request-Id \$req_id;
      add_header X-Request-Id \$req_id always;
    }
  }
}
CONF
} > "$WORK/proxy.conf"
sed -i '1i worker_processes 2;' "$WORK/proxy.conf"
cat > "$WORK/gateway.yaml" <<CONF
logging: {access_log: false}
server: {io_threads: 2, max_body_size: 100m}
gateway:
  read_timeout: 300
  routes: [{path: /v1/chat/completions, pool: vision}]
  pools:
    vision: {endpoints: ["http://127.0.0.1:$UPSTREAM_PORT"]}
    image: {endpoints: ["http://127.0.0.1:$UPSTREAM_PORT"]}
    speech: {endpoints: ["http://127.0.0.1:$UPSTREAM_PORT"]}
CONF

nginx -c "$WORK/upstream.conf" -p "$WORK/upstream" & PIDS+=($!)
nginx -c "$WORK/proxy.conf" -p "$WORK/proxy" & PIDS+=($!)
NGINX_MASTER=$!
"$MMSERVE" gateway --config "$WORK/gateway.yaml" --port "$GATEWAY_PORT" >"$WORK/gateway.log" 2>&1 & PIDS+=($!)
GATEWAY_PID=$!
wait_port "$UPSTREAM_PORT"; wait_port "$NGINX_PORT"; wait_port "$GATEWAY_PORT"
for port in "$NGINX_PORT" "$GATEWAY_PORT"; do
  body=$(curl -s "http://127.0.0.1:$port/v1/chat/completions")
  [[ $body == *chatcmpl-bench* ]] || { echo "port $port does not proxy: $body" >&2; exit 1; }
done

# wrk's summary: requests/s, p50 and p99 in ms.
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v/=1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v*=1000 } printf "%.3f", v }'; }
run_wrk() {
  local out; out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "http://127.0.0.1:$1/v1/chat/completions")
  local rps p50 p99 errors
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
  [[ -z $errors ]] || echo "  wrk on port $1: $errors" >&2
  echo "$rps $p50 $p99"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "bench/gateway: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); nginx $(nginx -v 2>&1 | cut -d/ -f2); load average $(cut -d' ' -f1 /proc/loadavg)"
echo "wrk -t1 -c$CONNECTIONS -d${SECONDS_PER_RUN}s GET /v1/chat/completions through each proxy to one nginx upstream; median of $ROUNDS rounds, interleaved"
run_wrk "$NGINX_PORT" >/dev/null; run_wrk "$GATEWAY_PORT" >/dev/null # warm-up
: > "$WORK/nginx.txt"; : > "$WORK/gateway.txt"
for _ in $(seq 1 "$ROUNDS"); do
  run_wrk "$NGINX_PORT" >> "$WORK/nginx.txt"
  run_wrk "$GATEWAY_PORT" >> "$WORK/gateway.txt"
done
col() { awk -v c="$1" '{print $c}' "$2" | median; }
N_RPS=$(col 1 "$WORK/nginx.txt") N_P50=$(col 2 "$WORK/nginx.txt") N_P99=$(col 3 "$WORK/nginx.txt")
G_RPS=$(col 1 "$WORK/gateway.txt") G_P50=$(col 2 "$WORK/gateway.txt") G_P99=$(col 3 "$WORK/gateway.txt")
printf '%-22s | %12s | %10s | %10s\n' proxy "requests/s" "p50 ms" "p99 ms"
printf '%-22s | %12s | %10s | %10s\n' nginx "$N_RPS" "$N_P50" "$N_P99"
printf '%-22s | %12s | %10s | %10s\n' "mmserve gateway" "$G_RPS" "$G_P50" "$G_P99"
awk -v g="$G_RPS" -v n="$N_RPS" -v gp="$G_P99" -v np="$N_P99" -v g5="$G_P50" -v n5="$N_P50" \
  'BEGIN { printf "ratios mmserve/nginx: requests/s %.2f (target >= 1.0), p50 %.2f, p99 %.2f (target <= 1.2)\n", g/n, g5/n5, gp/np }'

# Peak RSS growth with four concurrent 100 MB uploads: VmHWM, the kernel's
# high-water mark, reset first (clear_refs 5) so the wrk phase does not count.
head -c 100000000 /dev/urandom > "$WORK/upload.bin"
hwm() { awk '/VmHWM/ {s+=$2} END {print s*1024}' "$@"; }
nginx_status_files() { for pid in $(pgrep -P "$NGINX_MASTER"); do echo "/proc/$pid/status"; done; echo "/proc/$NGINX_MASTER/status"; }
upload4() {
  for _ in 1 2 3 4; do
    curl -s -o /dev/null -w '%{http_code}\n' -H 'Transfer-Encoding: chunked' --data-binary @"$WORK/upload.bin" \
      "http://127.0.0.1:$1/v1/chat/completions" &
  done | sort | uniq -c | awk '{printf "%s x HTTP %s; ", $1, $2}'
  wait
}
reset_hwm() { for file in "$@"; do echo 5 > "${file%/status}/clear_refs"; done; }
reset_hwm $(nginx_status_files) "/proc/$GATEWAY_PID/status"
N_BEFORE=$(hwm $(nginx_status_files)); N_CODES=$(upload4 "$NGINX_PORT"); N_AFTER=$(hwm $(nginx_status_files))
G_BEFORE=$(hwm "/proc/$GATEWAY_PID/status"); G_CODES=$(upload4 "$GATEWAY_PORT"); G_AFTER=$(hwm "/proc/$GATEWAY_PID/status")
echo "four concurrent 100 MB chunked uploads: peak RSS growth (all nginx processes; the one mmserve process)"
awk -v a="$N_BEFORE" -v b="$N_AFTER" -v c="$N_CODES" 'BEGIN { printf "  nginx:           %6.1f MiB  (%s)\n", (b-a)/1048576, c }'
awk -v a="$G_BEFORE" -v b="$G_AFTER" -v c="$G_CODES" 'BEGIN { printf "  mmserve gateway: %6.1f MiB  (%s) target <= 64 MiB\n", (b-a)/1048576, c }'
