#!/usr/bin/env bash
# Fuzzes the codec's decoders (not run in CI: needs nightly and cargo-fuzz).
#
#   cargo install cargo-fuzz
#   events-celery/fuzz/run.sh [RUNS]      # default 1,000,000 inputs
#
# Seeds: every Redis envelope and every AMQP body captured from Python Celery
# (events-celery/tests/fixtures). The corpus grows in fuzz/corpus/decode (not committed).
set -euo pipefail
cd "$(dirname "$0")"
runs="${1:-1000000}"
fixtures=../tests/fixtures
mkdir -p corpus/decode seeds
cp "$fixtures"/redis/*.json seeds/
for capture in "$fixtures"/amqp/*.json; do
    python3 -c 'import json,sys; sys.stdout.write(json.load(open(sys.argv[1]))["body_text"])' \
        "$capture" > "seeds/amqp_body_$(basename "$capture")"
done
cargo +nightly fuzz run decode corpus/decode seeds -- -runs="$runs" -max_len=4096 \
    -print_final_stats=1
