#!/usr/bin/env bash
# The outbox benchmarks in one run (events-outbox/benches/outbox.rs), on the local PostgreSQL,
# Redis and RabbitMQ: publish_in's cost inside a transaction, relay throughput vs direct
# publish, and commit-to-broker latency at 1,000 events/s. Prints the ratios.
# Environment: OUTBOX_BENCH_N (events per throughput run, default 20000), EVENTS_TEST_PG_URL,
# EVENTS_TEST_REDIS_URL, EVENTS_TEST_AMQP_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo bench -p events-outbox --bench outbox
