#!/usr/bin/env bash
# Runs every benchmark of saga-benches (criterion benches and the `scale` figures), then prints
# the table of BENCHMARKS.md. Extra arguments go to `cargo bench` (e.g. a filter after `--`).
# Takes about 10 minutes on the 2-core reference machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The PostgreSQL store's figures need the server the tests use; started here (and stopped at the
# end) unless one runs already. Without it, those rows say "not run".
export SAGA_SERVICES_DIR="${SAGA_SERVICES_DIR:-$PWD/target/services}"
already_running=false
[ -f "$SAGA_SERVICES_DIR/postgres.pid" ] && already_running=true
if bash scripts/services/postgres.sh start; then
  set -a; . "$SAGA_SERVICES_DIR/postgres.env"; set +a
  if ! $already_running; then trap 'bash scripts/services/postgres.sh stop || true' EXIT; fi
else
  echo "bench: PostgreSQL did not start; its rows will say not run" >&2
fi
# `peers`: steno and duroxide on the same workloads, for the comparison rows.
cargo bench -p saga-benches --features peers "$@"
cargo run --quiet --release -p saga-benches --bin bench-summary
