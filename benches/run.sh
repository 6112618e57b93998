#!/usr/bin/env bash
# Runs every benchmark of saga-benches (criterion benches and the `scale` figures), then prints
# the table of BENCHMARKS.md. Extra arguments go to `cargo bench` (e.g. a filter after `--`).
# Takes about 10 minutes on the 2-core reference machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo bench -p saga-benches "$@"
cargo run --quiet --release -p saga-benches --bin bench-summary
