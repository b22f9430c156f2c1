#!/usr/bin/env bash
# What Celery's task events (`-E`) cost the Rust worker: `worker_drain` drains the same number
# of pre-filled messages with task events off and on, in interleaved rounds, on each broker, and
# prints msg/s, the ratio on/off and the events the background publisher dropped
# (`WorkerStats::events_dropped`). Environment: BENCH_BROKERS (redis,amqp), BENCH_WORKER_COUNT
# (20000), BENCH_ROUNDS (3), BENCH_DRAIN (a `worker_drain` binary to run instead of building
# this tree's: to compare two builds with the same script).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
drain="${BENCH_DRAIN:-}"
if [ -z "$drain" ]; then
    cargo build --quiet --release -p examples --example worker_drain
    drain=target/release/examples/worker_drain
fi
.venv/bin/python examples/python/bench_worker.py --events-cost \
    --drain "$drain" \
    --count "${BENCH_WORKER_COUNT:-20000}" \
    --rounds "${BENCH_ROUNDS:-3}" \
    --brokers "${BENCH_BROKERS:-redis,amqp}"
