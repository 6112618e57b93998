#!/usr/bin/env bash
# A local PostgreSQL server that the saga-store-postgres tests run against.
#
#   postgres.sh start   installs Debian's postgresql package when initdb is missing, initialises a
#                       cluster in $SAGA_SERVICES_DIR/postgres/data (reused when present), starts it
#                       on a free 127.0.0.1 port with fsync and synchronous_commit on, creates the
#                       role and database `saga` (idempotently) and writes
#                       $SAGA_SERVICES_DIR/postgres.env with SAGA_TEST_POSTGRES_URL. A server this
#                       script started that still runs and answers is reused.
#   postgres.sh stop    `pg_ctl stop -m fast` for the server this script started (its pid file);
#                       harmless when none runs.
#   postgres.sh restart `pg_ctl restart -m fast` of the server this script started, on the same
#                       port with the same settings (pg_ctl reuses the options it was started
#                       with), waiting until it answers again; the pid file follows the new
#                       postmaster. Its sessions are cut, as in a real restart. When no server of
#                       this script runs, the same as `start`.
#
# The server never runs as root (PostgreSQL refuses): as root, everything runs as the `postgres`
# user that the Debian package creates, in a directory owned by it; as another user, as that user.
# It listens on 127.0.0.1 only; its unix socket is in the cluster's directory. Local (socket)
# connections are trusted, TCP connections need the role's password (scram-sha-256), which is made
# once per cluster and kept beside it.
#
# Environment: SAGA_SERVICES_DIR (default <repo>/target/services).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
services_dir="${SAGA_SERVICES_DIR:-$root/target/services}"
pid_file="$services_dir/postgres.pid"
env_file="$services_dir/postgres.env"
db_name="saga"
role="saga"

log() { echo "postgres.sh: $*" >&2; }

# The directory holding the cluster (data/, run/ for the socket, the log and the password).
# Normally $services_dir/postgres; see `choose_base`.
base=""

is_root() { [ "$(id -u)" = 0 ]; }

# Runs a command as the server's user.
as_pg() {
  if is_root; then
    # From /, which postgres can always enter (the caller's directory may be closed to it).
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

bin_dir() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
    echo "$dir"
    return 0
  fi
  return 1
}

install() {
  if bin_dir >/dev/null; then
    return 0
  fi
  if ! is_root || ! command -v apt-get >/dev/null; then
    log "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb) and cannot be installed here"
    return 1
  fi
  log "installing Debian's postgresql package"
  # The package would create and start a default cluster ("main", port 5432) that nobody here
  # asked for; postgresql-common reads this file before it does, so say no when nothing else
  # has configured it yet.
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq postgresql >&2 || { apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2; }
  bin_dir >/dev/null
}

# Picks the cluster's directory. As root the cluster lives in a directory owned by `postgres`,
# which must be able to reach it: every directory above it needs the search (x) bit for others.
# Rather than change the permissions of the user's directories, a tree that `postgres` cannot
# traverse (a home directory with mode 700, say) gets its cluster under /tmp instead, in a
# directory named after the services directory so that every start finds the same one. The unix
# socket path must stay under 107 bytes, which a deep services directory may also exceed.
choose_base() {
  base="$services_dir/postgres"
  mkdir -p "$base"
  if is_root; then
    chown postgres:postgres "$base"
    chmod 700 "$base"
    if ! runuser -u postgres -- test -w "$base" 2>/dev/null || [ "${#base}" -gt 80 ]; then
      local tag
      tag="$(printf '%s' "$services_dir" | sha256sum | cut -c1-12)"
      base="/tmp/saga-postgres-$tag"
      log "user postgres cannot reach $services_dir/postgres (or its path is too long for a socket); using $base"
      mkdir -p "$base"
      chown postgres:postgres "$base"
      chmod 700 "$base"
    fi
  fi
  as_pg mkdir -p "$base/run"
}

running_pid() {
  # The postmaster pid this script started, if it still runs and is that cluster's postmaster.
  [ -f "$pid_file" ] || return 1
  local pid data
  pid="$(sed -n 1p "$pid_file")"
  data="$(sed -n 2p "$pid_file")"
  [ -n "$pid" ] && [ -n "$data" ] && kill -0 "$pid" 2>/dev/null || return 1
  [ -f "$data/postmaster.pid" ] && [ "$(sed -n 1p "$data/postmaster.pid")" = "$pid" ] || return 1
  echo "$pid"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# psql as the server's user over the unix socket, to the postgres database.
admin_psql() {
  local bin="$1" port="$2"
  shift 2
  as_pg "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$base/run" -p "$port" -d postgres "$@"
}

# The role and database, created when missing; the role's password set from the password file.
provision() {
  local bin="$1" port="$2" password="$3"
  local has_role has_db
  has_role="$(admin_psql "$bin" "$port" -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$role'")"
  if [ "$has_role" != 1 ]; then
    admin_psql "$bin" "$port" -c "CREATE ROLE $role LOGIN CREATEDB PASSWORD '$password'"
  else
    admin_psql "$bin" "$port" -c "ALTER ROLE $role LOGIN CREATEDB PASSWORD '$password'"
  fi
  has_db="$(admin_psql "$bin" "$port" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db_name'")"
  if [ "$has_db" != 1 ]; then
    admin_psql "$bin" "$port" -c "CREATE DATABASE $db_name OWNER $role"
  fi
}

write_env() {
  local port="$1" password="$2"
  cat >"$env_file" <<EOF
SAGA_TEST_POSTGRES_URL=postgres://$role:$password@127.0.0.1:$port/$db_name
EOF
}

start() {
  mkdir -p "$services_dir"
  install
  local bin
  bin="$(bin_dir)"
  choose_base
  local data="$base/data"
  local password_file="$base/password"
  local pid port password
  if pid="$(running_pid)" && [ -f "$env_file" ] && [ -f "$password_file" ]; then
    port="$(sed -n 's/^port=//p' "$base/port" 2>/dev/null || true)"
    if [ -n "$port" ] && "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
      log "already running (pid $pid) on 127.0.0.1:$port"
      return 0
    fi
    stop
  fi

  if [ ! -f "$password_file" ]; then
    python3 -c 'import secrets; print(secrets.token_hex(16))' >"$password_file"
    chmod 600 "$password_file"
  fi
  password="$(cat "$password_file")"

  if [ ! -f "$data/PG_VERSION" ]; then
    log "initialising a cluster in $data"
    as_pg rm -rf "$data"
    as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$base/initdb.log" 2>&1 || {
      cat "$base/initdb.log" >&2
      return 1
    }
  else
    log "reusing the cluster in $data"
  fi
  # A server of this cluster that is not ours (its pid file is gone) still holds the directory:
  # stop it cleanly rather than fail to start a second one.
  if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "a server of $data runs without this script's pid file; stopping it first"
    as_pg "$bin/pg_ctl" -D "$data" stop -m fast -w >/dev/null
  fi

  for _ in 1 2 3; do
    port="$(free_port)"
    rm -f "$env_file"
    local opts="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$base/run"
    opts="$opts -c fsync=on -c synchronous_commit=on -c max_connections=200"
    if as_pg "$bin/pg_ctl" -D "$data" -l "$base/server.log" -o "$opts" -w -t 60 start >/dev/null; then
      "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 30
      pid="$(as_pg sed -n 1p "$data/postmaster.pid")"
      printf '%s\n%s\n' "$pid" "$data" >"$pid_file"
      echo "port=$port" | as_pg tee "$base/port" >/dev/null
      provision "$bin" "$port" "$password"
      write_env "$port" "$password"
      log "started (pid $pid) on 127.0.0.1:$port; $env_file written"
      return 0
    fi
    log "the server did not start on port $port; log follows"
    tail -n 30 "$base/server.log" >&2 || true
  done
  log "could not start PostgreSQL"
  return 1
}

stop() {
  local pid data bin
  if pid="$(running_pid)"; then
    data="$(sed -n 2p "$pid_file")"
    bin="$(bin_dir)"
    as_pg "$bin/pg_ctl" -D "$data" stop -m fast -w -t 60 >/dev/null || kill "$pid" 2>/dev/null || true
    log "stopped (pid $pid)"
  fi
  rm -f "$pid_file" "$env_file"
}

restart() {
  local pid data bin port
  if ! pid="$(running_pid)"; then
    start
    return
  fi
  data="$(sed -n 2p "$pid_file")"
  bin="$(bin_dir)"
  choose_base
  port="$(sed -n 's/^port=//p' "$base/port" 2>/dev/null || true)"
  as_pg "$bin/pg_ctl" -D "$data" -l "$base/server.log" restart -m fast -w -t 60 >/dev/null
  pid="$(as_pg sed -n 1p "$data/postmaster.pid")"
  printf '%s\n%s\n' "$pid" "$data" >"$pid_file"
  if [ -n "$port" ]; then
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 30
  fi
  log "restarted (pid $pid) on 127.0.0.1:$port"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) restart ;;
  *) echo "usage: $0 start|stop|restart" >&2; exit 2 ;;
esac
