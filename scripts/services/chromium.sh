#!/usr/bin/env bash
# Headless Chromium behind chromedriver, which the saga-admin dashboard test drives over WebDriver.
#
#   chromium.sh start   installs Debian's chromium and chromium-driver packages when chromium or
#                       chromedriver is missing (apt-get install -y, with apt-get update as the
#                       fallback), starts `chromedriver --port=<free port>` on 127.0.0.1 in a
#                       session of its own (so that stop ends it and the browsers it started), and
#                       writes $SAGA_SERVICES_DIR/chromium.env with SAGA_TEST_WEBDRIVER_URL. A
#                       chromedriver this script started that still answers is reused.
#   chromium.sh stop    ends the chromedriver this script started (its pid file) and its process
#                       group; harmless when none runs.
#
# The test starts Chromium itself, through WebDriver, with --headless=new --no-sandbox (needed as
# root) --disable-gpu --disable-dev-shm-usage.
#
# Environment: SAGA_SERVICES_DIR (default <repo>/target/services).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
services_dir="${SAGA_SERVICES_DIR:-$root/target/services}"
pid_file="$services_dir/chromium.pid"
env_file="$services_dir/chromium.env"
log_file="$services_dir/chromedriver.log"

log() { echo "chromium.sh: $*" >&2; }

install() {
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "chromium and chromedriver are not installed and cannot be installed here (apt-get as root)"
    return 1
  fi
  log "installing Debian's chromium and chromium-driver packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium chromium-driver >&2 ||
    { apt-get update -qq >&2 && apt-get install -y -qq chromium chromium-driver >&2; }
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Whether chromedriver answers on the port.
ready() {
  python3 - "$1" <<'PY' >/dev/null 2>&1
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/status", timeout=2) as r:
    sys.exit(0 if json.load(r)["value"]["ready"] else 1)
PY
}

# The pid this script started, if it still runs and is chromedriver.
running_pid() {
  [ -f "$pid_file" ] || return 1
  local pid
  pid="$(sed -n 1p "$pid_file")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q chromedriver || return 1
  echo "$pid"
}

start() {
  mkdir -p "$services_dir"
  install
  local pid port
  if pid="$(running_pid)"; then
    port="$(sed -n 2p "$pid_file")"
    if [ -n "$port" ] && ready "$port"; then
      echo "SAGA_TEST_WEBDRIVER_URL=http://127.0.0.1:$port" >"$env_file"
      log "already running (pid $pid) on 127.0.0.1:$port"
      return 0
    fi
    stop
  fi
  for _ in 1 2 3; do
    port="$(free_port)"
    rm -f "$env_file"
    setsid chromedriver --port="$port" --allowed-ips=127.0.0.1 --log-path="$log_file" \
      </dev/null >/dev/null 2>&1 &
    pid=$!
    printf '%s\n%s\n' "$pid" "$port" >"$pid_file"
    for _ in $(seq 1 100); do
      if ready "$port"; then
        echo "SAGA_TEST_WEBDRIVER_URL=http://127.0.0.1:$port" >"$env_file"
        log "chromedriver $(chromedriver --version | awk '{print $2}') started (pid $pid) on 127.0.0.1:$port; $env_file written"
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    log "chromedriver did not start on port $port; log follows"
    tail -n 20 "$log_file" >&2 || true
    stop
  done
  log "could not start chromedriver"
  return 1
}

stop() {
  local pid
  if pid="$(running_pid)"; then
    # Its own session and process group (setsid): the browsers it started go with it.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "stopped (pid $pid)"
  fi
  rm -f "$pid_file" "$env_file"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
