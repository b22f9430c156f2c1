#!/usr/bin/env bash
# The Celery benchmarks in one run, on the local brokers:
#   1. publishing: Python Celery's send_task vs the Rust CeleryBackend vs the raw client
#      (`cargo bench -p events-celery --bench celery_publish`);
#   2. draining: Python Celery's solo worker vs the Rust worker, the same number of pre-filled
#      messages on the same broker (`examples/python/bench_worker.py` with the `worker_drain`
#      example), msg/s, ratio and peak RSS.
# Environment: BENCH_BROKERS (redis,amqp,amqp-transient; the worker comparison skips the last), BENCH_WORKER_COUNT (20000), BENCH_SKIP_PUBLISH=1 to
# run only the worker comparison; the publish bench's own variables (see its header).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
brokers="${BENCH_BROKERS:-redis,amqp,amqp-transient}"
if [ "${BENCH_SKIP_PUBLISH:-0}" != "1" ]; then
    echo "== publishing =="
    BENCH_BROKERS="$brokers" cargo bench -p events-celery --bench celery_publish
fi
echo
echo "== draining (worker) =="
cargo build --quiet --release -p examples --example worker_drain
.venv/bin/python examples/python/bench_worker.py \
    --drain target/release/examples/worker_drain \
    --count "${BENCH_WORKER_COUNT:-20000}" \
    --brokers "$(echo "$brokers" | tr ',' '\n' | grep -vx 'amqp-transient' | paste -sd, -)"
