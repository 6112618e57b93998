#!/usr/bin/env bash
# The local AWS API emulator (moto) that saga-steps-aws tests run against.
#
#   moto.sh start   installs moto into a virtual environment (reused when present), starts
#                   `moto_server` on a free 127.0.0.1 port, waits until it answers, and writes
#                   $SAGA_SERVICES_DIR/moto.env (SAGA_TEST_AWS_ENDPOINT and dummy credentials).
#   moto.sh stop    stops the server this script started (by its pid file); harmless otherwise.
#
# Environment: SAGA_SERVICES_DIR (default <repo>/target/services), SAGA_MOTO_VENV (default
# ~/.cache/saga-moto-venv-<version>).
set -euo pipefail

MOTO_VERSION="5.2.5"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
services_dir="${SAGA_SERVICES_DIR:-$root/target/services}"
venv="${SAGA_MOTO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/saga-moto-venv-$MOTO_VERSION}"
pid_file="$services_dir/moto.pid"
env_file="$services_dir/moto.env"
log_file="$services_dir/moto.log"

log() { echo "moto: $*" >&2; }

running_pid() {
  # The pid of the server this script started, if it still runs (and is still moto_server).
  [ -f "$pid_file" ] || return 1
  local pid
  pid="$(cat "$pid_file")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/cmdline" ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q moto_server; then
    return 1
  fi
  echo "$pid"
}

answers() {
  python3 - "$1" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=2).read()
except Exception:
    sys.exit(1)
EOF
}

install() {
  if [ -x "$venv/bin/moto_server" ] && "$venv/bin/python" -c "import moto, flask, flask_cors" 2>/dev/null; then
    return 0
  fi
  log "installing moto[server]==$MOTO_VERSION into $venv"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  local pip_opts=(--quiet --disable-pip-version-check --no-input)
  if python3 -m venv "$venv" 2>/dev/null; then
    "$venv/bin/python" -m pip install "${pip_opts[@]}" "moto[server]==$MOTO_VERSION"
    return 0
  fi
  # Debian's python3 lacks ensurepip without python3-venv: make the venv without pip and let the
  # system pip (22.3 or later) install into it.
  rm -rf "$venv"
  if python3 -m venv --without-pip "$venv" \
    && python3 -m pip --python "$venv/bin/python" install "${pip_opts[@]}" "moto[server]==$MOTO_VERSION"; then
    return 0
  fi
  rm -rf "$venv"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "python3 -m venv does not work here; installing python3-venv with apt-get"
    local minor
    minor="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$minor-venv" >&2 \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install "${pip_opts[@]}" "moto[server]==$MOTO_VERSION"
    return 0
  fi
  log "cannot create a virtual environment with python3 -m venv"
  return 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
  mkdir -p "$services_dir"
  if pid="$(running_pid)" && [ -f "$env_file" ]; then
    endpoint="$(sed -n 's/^SAGA_TEST_AWS_ENDPOINT=//p' "$env_file")"
    if [ -n "$endpoint" ] && answers "$endpoint"; then
      log "already running (pid $pid) at $endpoint"
      return 0
    fi
    stop
  fi
  install
  local port endpoint pid
  for _ in 1 2 3; do
    port="$(free_port)"
    endpoint="http://127.0.0.1:$port"
    rm -f "$env_file"
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log_file" 2>&1 &
    pid=$!
    echo "$pid" >"$pid_file"
    for _ in $(seq 1 100); do
      if answers "$endpoint"; then
        cat >"$env_file" <<EOF
SAGA_TEST_AWS_ENDPOINT=$endpoint
AWS_ACCESS_KEY_ID=testing
AWS_SECRET_ACCESS_KEY=testing
AWS_REGION=us-east-1
EOF
        log "started (pid $pid) at $endpoint"
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    log "server on port $port did not answer; log follows"
    cat "$log_file" >&2 || true
    stop
  done
  log "could not start moto_server"
  return 1
}

stop() {
  if pid="$(running_pid)"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    log "stopped (pid $pid)"
  fi
  rm -f "$pid_file" "$env_file"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
