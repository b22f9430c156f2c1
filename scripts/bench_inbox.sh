#!/usr/bin/env bash
# The inbox's cost: the Rust worker drains pre-filled queues with a no-op handler without an
# inbox and with the Redis inbox (`WorkerConfig::inbox(RedisInbox)`: one SMEMBERS before and one
# SADD+PEXPIRE after each message), alternating, in one run, on each broker.
# Environment: BENCH_BROKERS (redis,amqp), BENCH_WORKER_COUNT (20000), BENCH_ROUNDS (2),
# BENCH_CONCURRENCY (the worker's concurrency; "2 32" runs both: default 2 = the cores here).
set -euo pipefail
cd "$(dirname "$0")/.."

# Needs RabbitMQ and Redis up (scripts/services.sh starts them).
count="${BENCH_WORKER_COUNT:-20000}"
rounds="${BENCH_ROUNDS:-2}"
redis="redis://127.0.0.1:6379/0"
cargo build --quiet --release -p examples --example worker_drain
drain=target/release/examples/worker_drain
for broker in $(echo "${BENCH_BROKERS:-redis,amqp}" | tr ',' ' '); do
    case "$broker" in
        redis) url="$redis" ;;
        amqp) url="amqp://guest:guest@127.0.0.1:5672//" ;;
        *) echo "unknown broker $broker" >&2; exit 2 ;;
    esac
    for concurrency in ${BENCH_CONCURRENCY:-2 32}; do
    for round in $(seq "$rounds"); do
        for mode in plain inbox; do
            queue="bench_inbox_${broker}_${mode}_$$_${round}_${concurrency}"
            DRAIN_PREFILL_ONLY=1 "$drain" "$url" "$count" "$queue" >/dev/null
            if [ "$mode" = inbox ]; then
                out=$(DRAIN_CONCURRENCY=$concurrency DRAIN_SKIP_PREFILL=1 DRAIN_INBOX="$redis" \
                    "$drain" "$url" "$count" "$queue")
            else
                out=$(DRAIN_CONCURRENCY=$concurrency DRAIN_SKIP_PREFILL=1 "$drain" "$url" "$count" "$queue")
            fi
            echo "$broker concurrency $concurrency round $round $mode: $out"
            if [ "$mode" = inbox ]; then
                redis-cli --scan --pattern "bench.inbox.${queue}:*" | xargs -r -n 1000 redis-cli del >/dev/null
            fi
            if [ "$broker" = amqp ]; then
                # The drained queue is empty; delete it (and the inbox keys expire by themselves).
                rabbitmqctl delete_queue "$queue" >/dev/null 2>&1 || true
            fi
        done
    done
    done
done
