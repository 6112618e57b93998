#!/usr/bin/env bash
# A local PostgreSQL server that the saga-store-postgres tests run against.
#
#   postgres.sh start   installs Debian's postgresql package when initdb is missing, initialises a
#                       cluster in $SAGA_SERVICES_DIR/postgres/data (reused when present), starts it
#                       on a free 127.0.0.1 port with fsync and synchronous_commit on, creates the
#                       role and database `saga` (idempotently) and writes
#                       $SAGA_SERVICES_DIR/postgres.env with SAGA_TEST_POSTGRES_URL. A server this
#                       script started that still runs and answers is reused.
#                       Then a second cluster that takes TLS connections only (see below).
#   postgres.sh stop    `pg_ctl stop -m fast` for the servers this script started (their pid
#                       files: the pair's too); harmless when none runs.
#   postgres.sh restart `pg_ctl restart -m fast` of the server this script started, on the same
#                       port with the same settings (pg_ctl reuses the options it was started
#                       with), waiting until it answers again; the pid file follows the new
#                       postmaster. Its sessions are cut, as in a real restart. When no server of
#                       this script runs, the same as `start`. The TLS cluster is left as it is.
#   postgres.sh start-pair
#                       Only the primary and synchronous standby pair (below): what `start` does
#                       for it, for a test that needs a fresh pair after a failover. Prints the
#                       pair's multi-host URL on stdout.
#   postgres.sh failover
#                       SIGKILLs every process of the pair's primary at once (its postmaster and
#                       its children: a crash of its machine), waits until they are gone, then
#                       promotes the standby (`pg_ctl promote -w`) and waits until it takes
#                       writes. The pair is then used up: the next `start` or `start-pair` builds
#                       a new one (about 3 s).
#
# The pair (`start` starts it too: reusing a running, healthy pair costs a few queries; building
# one, about 3 s): a primary ($SAGA_SERVICES_DIR/postgres-primary) and a streaming standby made
# from it with `pg_basebackup -R` ($SAGA_SERVICES_DIR/postgres-standby, application_name
# saga_standby), each on a free 127.0.0.1 port (the same ports again when they are free), the
# primary with `synchronous_standby_names = 'saga_standby'` and `synchronous_commit = on`: a
# commit is acknowledged once the standby has flushed it too. A pair is reused only when both run,
# the primary is not in recovery, the standby is, and the primary reports the standby `sync`;
# anything else (a failover happened, one of them stopped) is stopped, removed and built again.
# postgres.env gets SAGA_TEST_POSTGRES_FAILOVER_URL
# (postgres://saga:...@127.0.0.1:P1,127.0.0.1:P2/saga?target_session_attrs=read-write),
# SAGA_TEST_POSTGRES_FAILOVER_PRIMARY and SAGA_TEST_POSTGRES_FAILOVER_STANDBY (127.0.0.1:port).
#
# The TLS cluster ($SAGA_SERVICES_DIR/postgres-tls, the same role, database and password rules):
# `ssl = on` with a server certificate for `localhost` and `127.0.0.1` issued by a certificate
# authority made here with openssl (installed from Debian when missing), and a pg_hba.conf whose
# TCP lines are all `hostssl`, so that a plain connection is refused. The authorities live in
# $SAGA_SERVICES_DIR/postgres-tls-certs: ca.crt issued the server's certificate, other-ca.crt
# (a second authority) issued nothing the server shows, for tests that must see an unknown
# authority refused. They are made once and kept while valid for a day more. postgres.env gets
# SAGA_TEST_POSTGRES_TLS_URL (no TLS parameters: tests add sslmode and sslrootcert),
# SAGA_TEST_POSTGRES_TLS_CA and SAGA_TEST_POSTGRES_TLS_OTHER_CA.
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
tls_pid_file="$services_dir/postgres-tls.pid"
tls_certs="$services_dir/postgres-tls-certs"
primary_pid_file="$services_dir/postgres-primary.pid"
standby_pid_file="$services_dir/postgres-standby.pid"
pair_ports="$services_dir/postgres-pair.ports"
standby_name="saga_standby"
db_name="saga"
role="saga"

log() { echo "postgres.sh: $*" >&2; }

# The directory holding the cluster (data/, run/ for the socket, the log and the password).
# Normally $services_dir/postgres; see `choose_base`.
base=""

# Prints the password kept in file $1, made (random, readable by its owner only) if missing.
ensure_password() {
  if [ ! -f "$1" ]; then
    python3 -c 'import secrets; print(secrets.token_hex(16))' >"$1"
    chmod 600 "$1"
  fi
  cat "$1"
}

# init_cluster BIN DATA LOG LABEL: initdb a cluster in DATA (the same settings for every cluster
# of this script) unless DATA holds one already; initdb's output goes to LOG, shown on failure.
init_cluster() {
  local bin="$1" data="$2" initlog="$3" label="$4"
  if [ -f "$data/PG_VERSION" ]; then
    log "reusing the $label in $data"
    return 0
  fi
  log "initialising a $label in $data"
  as_pg rm -rf "$data"
  as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$initlog" 2>&1 || {
    cat "$initlog" >&2
    return 1
  }
}

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

# Picks the directory of cluster $1 (default `postgres`). As root the cluster lives in a
# directory owned by `postgres`, which must be able to reach it: every directory above it needs
# the search (x) bit for others.
# Rather than change the permissions of the user's directories, a tree that `postgres` cannot
# traverse (a home directory with mode 700, say) gets its cluster under /tmp instead, in a
# directory named after the services directory so that every start finds the same one. The unix
# socket path must stay under 107 bytes, which a deep services directory may also exceed.
choose_base() {
  local name="${1:-postgres}"
  base="$services_dir/$name"
  mkdir -p "$base"
  if is_root; then
    chown postgres:postgres "$base"
    chmod 700 "$base"
    if ! runuser -u postgres -- test -w "$base" 2>/dev/null || [ "${#base}" -gt 80 ]; then
      local tag
      tag="$(printf '%s' "$services_dir" | sha256sum | cut -c1-12)"
      base="/tmp/saga-$name-$tag"
      log "user postgres cannot reach $services_dir/$name (or its path is too long for a socket); using $base"
      mkdir -p "$base"
      chown postgres:postgres "$base"
      chmod 700 "$base"
    fi
  fi
  as_pg mkdir -p "$base/run"
}

running_pid() {
  # The postmaster pid this script started (pid file $1, default the first cluster's), if it
  # still runs and is that cluster's postmaster.
  local file="${1:-$pid_file}"
  [ -f "$file" ] || return 1
  local pid data
  pid="$(sed -n 1p "$file")"
  data="$(sed -n 2p "$file")"
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

start_main() {
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
    stop_main
  fi

  password="$(ensure_password "$password_file")"

  init_cluster "$bin" "$data" "$base/initdb.log" "cluster" || return 1
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

stop_main() {
  local pid data bin
  if pid="$(running_pid)"; then
    data="$(sed -n 2p "$pid_file")"
    bin="$(bin_dir)"
    as_pg "$bin/pg_ctl" -D "$data" stop -m fast -w -t 60 >/dev/null || kill "$pid" 2>/dev/null || true
    log "stopped (pid $pid)"
  fi
  rm -f "$pid_file" "$env_file"
}

# openssl, for the TLS cluster's certificates.
install_openssl() {
  command -v openssl >/dev/null && return 0
  if ! is_root || ! command -v apt-get >/dev/null; then
    log "openssl is not installed and cannot be installed here"
    return 1
  fi
  log "installing Debian's openssl package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq openssl >&2 || { apt-get update -qq >&2 && apt-get install -y -qq openssl >&2; }
}

# Whether the certificates in $tls_certs are all there, chain as they should and stay valid for
# a day more.
certs_usable() {
  local d="$tls_certs" f
  for f in ca.crt ca.key other-ca.crt other-ca.key server.crt server.key; do
    [ -s "$d/$f" ] || return 1
  done
  for f in ca.crt other-ca.crt server.crt; do
    openssl x509 -checkend 86400 -noout -in "$d/$f" >/dev/null 2>&1 || return 1
  done
  openssl verify -CAfile "$d/ca.crt" "$d/server.crt" >/dev/null 2>&1
}

# A certificate authority: $1 the file stem, $2 its name.
make_ca() {
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -days 3650 -subj "/CN=$2" -keyout "$tls_certs/$1.key" -out "$tls_certs/$1.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}

# The server's key and certificate for localhost and 127.0.0.1, issued by ca.
make_server_cert() {
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -subj "/CN=localhost" -keyout "$tls_certs/server.key" -out "$tls_certs/server.csr" &&
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$tls_certs/server.ext" &&
    openssl x509 -req -sha256 -days 3650 -in "$tls_certs/server.csr" -CA "$tls_certs/ca.crt" \
      -CAkey "$tls_certs/ca.key" -set_serial "0x$(openssl rand -hex 15)" \
      -extfile "$tls_certs/server.ext" -out "$tls_certs/server.crt" &&
    rm -f "$tls_certs/server.csr" "$tls_certs/server.ext"
}

# The two authorities and the server's certificate, made when missing or about to expire; sets
# certs_made=1 when it made them.
certs_made=0
make_certs() {
  install_openssl
  mkdir -p "$tls_certs"
  chmod 755 "$tls_certs"
  if certs_usable; then
    return 0
  fi
  log "making two certificate authorities and a server certificate in $tls_certs"
  local out="$tls_certs/openssl.log"
  if ! (umask 077 && make_ca ca "saga test CA" && make_ca other-ca "saga test CA unknown to the server" &&
    make_server_cert) >"$out" 2>&1; then
    log "openssl failed; its output follows"
    cat "$out" >&2
    return 1
  fi
  chmod 644 "$tls_certs/ca.crt" "$tls_certs/other-ca.crt" "$tls_certs/server.crt"
  certs_usable || { log "the certificates made in $tls_certs do not verify"; return 1; }
  certs_made=1
}

# The TLS cluster's lines of postgres.env (replacing any earlier ones).
write_tls_env() {
  local port="$1" password="$2" kept
  kept="$(grep -v '^SAGA_TEST_POSTGRES_TLS_' "$env_file" 2>/dev/null || true)"
  {
    [ -n "$kept" ] && printf '%s\n' "$kept"
    echo "SAGA_TEST_POSTGRES_TLS_URL=postgres://$role:$password@127.0.0.1:$port/$db_name"
    echo "SAGA_TEST_POSTGRES_TLS_CA=$tls_certs/ca.crt"
    echo "SAGA_TEST_POSTGRES_TLS_OTHER_CA=$tls_certs/other-ca.crt"
  } >"$env_file.tmp"
  mv "$env_file.tmp" "$env_file"
}

start_tls() {
  local bin
  bin="$(bin_dir)"
  make_certs
  choose_base postgres-tls
  local data="$base/data"
  local password_file="$base/password"
  local pid port password
  if pid="$(running_pid "$tls_pid_file")" && [ -f "$password_file" ] && [ "$certs_made" = 0 ]; then
    port="$(sed -n 's/^port=//p' "$base/port" 2>/dev/null || true)"
    if [ -n "$port" ] && "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
      write_tls_env "$port" "$(cat "$password_file")"
      log "TLS server already running (pid $pid) on 127.0.0.1:$port"
      return 0
    fi
  fi
  stop_tls

  password="$(ensure_password "$password_file")"

  init_cluster "$bin" "$data" "$base/initdb.log" "TLS cluster" || return 1
  if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "a server of $data runs without this script's pid file; stopping it first"
    as_pg "$bin/pg_ctl" -D "$data" stop -m fast -w >/dev/null
  fi
  # TLS only over TCP: no `host` line, so a plain connection finds no entry and is refused.
  printf '%s\n' "# Written by scripts/services/postgres.sh: TCP connections must use TLS." \
    "local all all trust" \
    "hostssl all all 127.0.0.1/32 scram-sha-256" \
    "hostssl all all ::1/128 scram-sha-256" | as_pg tee "$data/pg_hba.conf" >/dev/null
  # The server's key must belong to the server's user and be readable by it alone (`command`:
  # this script's own `install` installs PostgreSQL).
  if is_root; then
    command install -o postgres -g postgres -m 644 "$tls_certs/server.crt" "$data/server.crt"
    command install -o postgres -g postgres -m 600 "$tls_certs/server.key" "$data/server.key"
  else
    command install -m 644 "$tls_certs/server.crt" "$data/server.crt"
    command install -m 600 "$tls_certs/server.key" "$data/server.key"
  fi

  for _ in 1 2 3; do
    port="$(free_port)"
    local opts="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$base/run"
    opts="$opts -c fsync=on -c synchronous_commit=on -c ssl=on"
    opts="$opts -c ssl_cert_file=$data/server.crt -c ssl_key_file=$data/server.key"
    if as_pg "$bin/pg_ctl" -D "$data" -l "$base/server.log" -o "$opts" -w -t 60 start >/dev/null; then
      "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 30
      pid="$(as_pg sed -n 1p "$data/postmaster.pid")"
      printf '%s\n%s\n' "$pid" "$data" >"$tls_pid_file"
      echo "port=$port" | as_pg tee "$base/port" >/dev/null
      provision "$bin" "$port" "$password"
      write_tls_env "$port" "$password"
      log "TLS server started (pid $pid) on 127.0.0.1:$port; $env_file written"
      return 0
    fi
    log "the TLS server did not start on port $port; log follows"
    tail -n 30 "$base/server.log" >&2 || true
  done
  log "could not start the TLS PostgreSQL"
  return 1
}

stop_tls() {
  local pid data bin
  if pid="$(running_pid "$tls_pid_file")"; then
    data="$(sed -n 2p "$tls_pid_file")"
    bin="$(bin_dir)"
    as_pg "$bin/pg_ctl" -D "$data" stop -m fast -w -t 60 >/dev/null || kill "$pid" 2>/dev/null || true
    log "TLS server stopped (pid $pid)"
  fi
  rm -f "$tls_pid_file"
}


# --- The primary and its synchronous standby --------------------------------------------------

# The pair's directories (set by `pair_dirs`).
primary_base=""
standby_base=""

pair_dirs() {
  choose_base postgres-primary
  primary_base="$base"
  choose_base postgres-standby
  standby_base="$base"
}

# psql as the server's user over the unix socket of the cluster in $1 on port $2.
pair_psql() {
  local dir="$1" port="$2"
  shift 2
  as_pg "$(bin_dir)/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir/run" -p "$port" -d postgres -tA "$@"
}

# A port recorded in $pair_ports under key $1, when nothing listens on it (as the server binds:
# SO_REUSEADDR, past the killed primary's TIME_WAIT connections); else a free one.
pair_port() {
  local key="$1" port
  port="$(sed -n "s/^$key=//p" "$pair_ports" 2>/dev/null || true)"
  if [ -n "$port" ] && python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.close()' "$port" 2>/dev/null; then
    echo "$port"
  else
    free_port
  fi
}

# Whether the pair runs as built: both postmasters alive, the primary out of recovery, the
# standby in it, and the primary reporting the standby synchronous.
pair_healthy() {
  local p_port s_port
  running_pid "$primary_pid_file" >/dev/null || return 1
  running_pid "$standby_pid_file" >/dev/null || return 1
  p_port="$(sed -n 's/^primary=//p' "$pair_ports" 2>/dev/null || true)"
  s_port="$(sed -n 's/^standby=//p' "$pair_ports" 2>/dev/null || true)"
  [ -n "$p_port" ] && [ -n "$s_port" ] || return 1
  [ "$(pair_psql "$primary_base" "$p_port" -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] || return 1
  [ "$(pair_psql "$standby_base" "$s_port" -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = t ] || return 1
  [ "$(pair_psql "$primary_base" "$p_port" -c \
    "SELECT sync_state FROM pg_stat_replication WHERE application_name = '$standby_name'" 2>/dev/null)" = sync ]
}

# Polls `$@` every 0.1 s until it succeeds, for at most $timeout seconds.
wait_for() {
  local what="$1" timeout="$2"
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$what: not within ${timeout} s"
      return 1
    fi
    sleep 0.1
  done
}

write_pair_env() {
  local p_port="$1" s_port="$2" password="$3" kept
  kept="$(grep -v '^SAGA_TEST_POSTGRES_FAILOVER_' "$env_file" 2>/dev/null || true)"
  {
    [ -n "$kept" ] && printf '%s\n' "$kept"
    echo "SAGA_TEST_POSTGRES_FAILOVER_URL=postgres://$role:$password@127.0.0.1:$p_port,127.0.0.1:$s_port/$db_name?target_session_attrs=read-write"
    echo "SAGA_TEST_POSTGRES_FAILOVER_PRIMARY=127.0.0.1:$p_port"
    echo "SAGA_TEST_POSTGRES_FAILOVER_STANDBY=127.0.0.1:$s_port"
  } >"$env_file.tmp"
  mv "$env_file.tmp" "$env_file"
}

# Stops both servers of the pair that still run (a failover leaves the promoted standby).
stop_pair_servers() {
  local file pid data bin
  bin="$(bin_dir)"
  for file in "$primary_pid_file" "$standby_pid_file"; do
    if pid="$(running_pid "$file")"; then
      data="$(sed -n 2p "$file")"
      as_pg "$bin/pg_ctl" -D "$data" stop -m fast -w -t 60 >/dev/null || kill "$pid" 2>/dev/null || true
      log "stopped the pair's $(basename "$file" .pid) (pid $pid)"
    fi
    rm -f "$file"
  done
}

# Starts the cluster in $1/data on port $2 with options $3; records its pid in $4.
pair_server_start() {
  local dir="$1" port="$2" opts="$3" pid_out="$4" bin
  bin="$(bin_dir)"
  opts="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir/run $opts"
  if ! as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "$opts" -w -t 60 start >/dev/null; then
    log "the server of $dir did not start on port $port; log follows"
    tail -n 30 "$dir/server.log" >&2 || true
    return 1
  fi
  printf '%s\n%s\n' "$(as_pg sed -n 1p "$dir/data/postmaster.pid")" "$dir/data" >"$pid_out"
}

start_pair() {
  mkdir -p "$services_dir"
  install
  local bin
  bin="$(bin_dir)"
  pair_dirs
  local password_file="$primary_base/password" password p_port s_port
  password="$(ensure_password "$password_file")"
  if pair_healthy; then
    p_port="$(sed -n 's/^primary=//p' "$pair_ports")"
    s_port="$(sed -n 's/^standby=//p' "$pair_ports")"
    write_pair_env "$p_port" "$s_port" "$password"
    log "primary (127.0.0.1:$p_port) and synchronous standby (127.0.0.1:$s_port) already running"
    return 0
  fi

  stop_pair_servers
  # Servers of these directories without our pid files (a failover's orphans) go too.
  local dir
  for dir in "$primary_base" "$standby_base"; do
    if [ -f "$dir/data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      as_pg "$bin/pg_ctl" -D "$dir/data" stop -m immediate -w >/dev/null || true
    fi
    as_pg rm -rf "$dir/data"
  done

  log "building a primary and a synchronous standby"
  init_cluster "$bin" "$primary_base/data" "$primary_base/initdb.log" "primary" || return 1
  p_port="$(pair_port primary)"
  # Durable commits; WAL for a standby (the defaults of wal_level and max_wal_senders, said).
  pair_server_start "$primary_base" "$p_port" \
    "-c fsync=on -c synchronous_commit=on -c wal_level=replica -c max_wal_senders=4 -c max_connections=100" \
    "$primary_pid_file"
  # The role and database before the standby is synchronous (no commit waits for it yet).
  base="$primary_base" provision "$bin" "$p_port" "$password"

  # The standby: a copy of the primary that streams from it (`-R`: standby.signal and
  # primary_conninfo, with the standby's application_name), over the primary's unix socket.
  as_pg "$bin/pg_basebackup" -D "$standby_base/data" -R -X stream -c fast \
    -d "host=$primary_base/run port=$p_port user=postgres application_name=$standby_name" \
    >"$standby_base/basebackup.log" 2>&1 || {
    cat "$standby_base/basebackup.log" >&2
    return 1
  }
  s_port="$(pair_port standby)"
  [ "$s_port" != "$p_port" ] || s_port="$(free_port)"
  pair_server_start "$standby_base" "$s_port" \
    "-c fsync=on -c hot_standby=on -c cluster_name=$standby_name -c max_connections=100" \
    "$standby_pid_file"
  printf 'primary=%s\nstandby=%s\n' "$p_port" "$s_port" >"$pair_ports"
  wait_for "the standby streams from the primary" 60 pair_streaming "$p_port"
  # Synchronous from now on: written to the primary's own postgresql.auto.conf (the standby
  # was copied before, so once promoted it waits for nobody).
  pair_psql "$primary_base" "$p_port" \
    -c "ALTER SYSTEM SET synchronous_standby_names = '$standby_name'" -c "SELECT pg_reload_conf()" >/dev/null
  wait_for "the primary reports the standby synchronous" 60 pair_healthy
  write_pair_env "$p_port" "$s_port" "$password"
  log "primary on 127.0.0.1:$p_port, synchronous standby on 127.0.0.1:$s_port; $env_file written"
}

pair_streaming() {
  [ "$(pair_psql "$primary_base" "$1" -c \
    "SELECT state FROM pg_stat_replication WHERE application_name = '$standby_name'" 2>/dev/null)" = streaming ]
}

# The pids of process $1 and of its descendants.
process_tree() {
  local pid="$1" child
  echo "$pid"
  for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
    process_tree "$child"
  done
}

failover() {
  local pid pids s_port bin
  bin="$(bin_dir)"
  pair_dirs
  pid="$(running_pid "$primary_pid_file")" || { log "the pair's primary does not run: start-pair first"; return 1; }
  running_pid "$standby_pid_file" >/dev/null || { log "the pair's standby does not run: start-pair first"; return 1; }
  s_port="$(sed -n 's/^standby=//p' "$pair_ports")"
  # Every process at once, by pid: no backend outlives its postmaster to answer a client.
  pids="$(process_tree "$pid")"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  rm -f "$primary_pid_file"
  local p
  for p in $pids; do
    wait_for "process $p of the killed primary ends" 30 not_running "$p"
  done
  log "primary killed (pids $(echo $pids | tr '\n' ' '))"
  as_pg "$bin/pg_ctl" -D "$standby_base/data" promote -w -t 60 >/dev/null
  wait_for "the promoted standby takes writes" 60 promoted "$s_port"
  log "standby promoted on 127.0.0.1:$s_port"
}

not_running() { ! kill -0 "$1" 2>/dev/null; }

promoted() {
  [ "$(pair_psql "$standby_base" "$1" -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]
}

start() {
  start_main
  start_tls
  start_pair
}

stop() {
  stop_main
  stop_tls
  pair_dirs
  stop_pair_servers
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
  start-pair)
    start_pair
    grep '^SAGA_TEST_POSTGRES_FAILOVER_URL=' "$env_file" | cut -d= -f2-
    ;;
  failover) failover ;;
  *) echo "usage: $0 start|stop|restart|start-pair|failover" >&2; exit 2 ;;
esac
