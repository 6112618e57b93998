#!/usr/bin/env bash
# Two local image registries (Debian's docker-registry) on free 127.0.0.1 ports, with a test image
# pushed to both, for the tests of saga-steps-docker.
#
#   registry.sh start   installs what is missing (docker-registry, busybox-static), starts both
#                       registries with their own config and storage under $SAGA_SERVICES_DIR/registry,
#                       builds the test image FROM scratch (static busybox serving HTTP, with a
#                       HEALTHCHECK), pushes it to both and writes $SAGA_SERVICES_DIR/registry.env.
#   registry.sh stop    stops the registries this script started (pid files); harmless when none runs.
#
# registry.env holds SAGA_TEST_REGISTRY_A, SAGA_TEST_REGISTRY_B (127.0.0.1:PORT each) and
# SAGA_TEST_IMAGE (the repository path and tag inside a registry, e.g. saga-test/httpd:1).
#
# Without a Docker Engine, `start` fails under CI=true and otherwise says why and writes no env
# file, so that the tests skip loudly.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
services_dir="${SAGA_SERVICES_DIR:-$root/target/services}"
dir="$services_dir/registry"
env_file="$services_dir/registry.env"
image_path="saga-test/httpd:1"
build_tag="saga-test-build/httpd:1"

log() { echo "registry.sh: $*" >&2; }

fail_or_skip() {
  if [ "${CI:-}" = "true" ]; then
    log "error: $*"
    exit 1
  fi
  log "skipping the registry service: $*"
  rm -f "$env_file"
  exit 0
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 20000))
    if ! port_in_use "$port"; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

stop_one() {
  local pidfile="$1" pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    # Only a docker-registry process that this script started, never another process that
    # happens to have the pid now.
    if grep -q "docker-registry" "/proc/$pid/cmdline" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

stop() {
  stop_one "$dir/a.pid"
  stop_one "$dir/b.pid"
  rm -f "$env_file"
}

install_missing() {
  local missing=()
  command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
  busybox_static_installed || missing+=(busybox-static)
  [ "${#missing[@]}" -eq 0 ] && return 0
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  log "installing ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry busybox-static >/dev/null
}

# busybox-static installs /bin/busybox statically linked; a dynamic busybox (package busybox) would
# not run in a FROM scratch image.
busybox_static_installed() {
  [ -x /bin/busybox ] && dpkg -s busybox-static >/dev/null 2>&1
}

start_one() {
  local name="$1" port="$2"
  local d="$dir/$name"
  rm -rf "$d"
  mkdir -p "$d/storage"
  cat >"$d/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $d/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  secret: saga-test-$name
EOF
  setsid docker-registry serve "$d/config.yml" >"$d/registry.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
  for _ in $(seq 1 100); do
    if port_in_use "$port"; then
      return 0
    fi
    if ! kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; then
      log "registry $name exited; its log:"
      cat "$d/registry.log" >&2
      return 1
    fi
    sleep 0.1
  done
  log "registry $name did not listen on 127.0.0.1:$port"
  return 1
}

build_image() {
  local ctx="$dir/image"
  rm -rf "$ctx"
  mkdir -p "$ctx/bin" "$ctx/www"
  cp /bin/busybox "$ctx/bin/busybox"
  echo "saga test image" >"$ctx/www/index.html"
  cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY bin/busybox /bin/busybox
COPY www /www
EXPOSE 8080
HEALTHCHECK --interval=1s --timeout=2s --start-period=1s --retries=3 \
  CMD ["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
EOF
  # The legacy builder: it needs no buildx plugin and nothing from the network.
  DOCKER_BUILDKIT=0 docker build -q -t "$build_tag" "$ctx" >/dev/null
}

start() {
  if ! command -v docker >/dev/null 2>&1; then
    fail_or_skip "no docker command"
  fi
  if ! docker info >/dev/null 2>&1; then
    fail_or_skip "the Docker Engine does not answer (docker info failed)"
  fi
  install_missing
  stop
  mkdir -p "$dir"
  local port_a port_b
  port_a="$(free_port)"
  start_one a "$port_a"
  port_b="$(free_port)"
  while [ "$port_b" = "$port_a" ]; do port_b="$(free_port)"; done
  start_one b "$port_b"
  build_image
  for port in "$port_a" "$port_b"; do
    docker tag "$build_tag" "127.0.0.1:$port/$image_path"
    docker push -q "127.0.0.1:$port/$image_path" >/dev/null
    docker rmi "127.0.0.1:$port/$image_path" >/dev/null
  done
  # The engine keeps nothing of it: the tests pull it from the registries.
  docker rmi "$build_tag" >/dev/null
  cat >"$env_file" <<EOF
SAGA_TEST_REGISTRY_A=127.0.0.1:$port_a
SAGA_TEST_REGISTRY_B=127.0.0.1:$port_b
SAGA_TEST_IMAGE=$image_path
EOF
  log "registries on 127.0.0.1:$port_a and 127.0.0.1:$port_b serve $image_path ($env_file)"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
