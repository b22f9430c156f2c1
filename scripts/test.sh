#!/usr/bin/env bash
# Sets up what the tests need (brokers, Python Celery) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export EVENTS_TEST_PYTHON="$PWD/.venv/bin/python"
# Benches are compiled by clippy and run with `cargo bench`, not here.
cargo test --workspace --lib --bins --tests --examples "$@"
cargo test --workspace --doc
# The workspace build has every compression codec (the tests crate enables brotli); this one
# has the default features, where a brotli message is refused naming the feature.
cargo test -p events-celery --lib codec::compression
