#!/usr/bin/env bash
# The outbox suite (docs/RELIABILITY.md, "Outbox") at full size: a relay killed with kill -9
# three times over 100,000 committed events, two relay processes sharing one table with
# 100,000 events, and the other outbox scenarios (rollback, retries and parking, Python
# workers, terminated PostgreSQL connections, a broker outage). Prints each scenario's counts;
# fails if any fails (a lost event, a duplicate without a fault, or an event out of key order
# fails its scenario). `cargo test` (scripts/test.sh) runs the same tests at 5,000 events.
#
#   scripts/outbox_suite.sh                     # full
#   OUTBOX_SCALE=quick scripts/outbox_suite.sh  # the sizes CI runs
#   scripts/outbox_suite.sh two_relay           # some tests only (a name filter)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export OUTBOX_SCALE="${OUTBOX_SCALE:-full}"
export EVENTS_TEST_PYTHON="${EVENTS_TEST_PYTHON:-$PWD/.venv/bin/python}"
echo "== outbox suite ($OUTBOX_SCALE)"
# One scenario at a time: the counts are not muddied by other scenarios' load.
cargo test -p tests --test outbox -- --test-threads 1 --nocapture "$@" 2>&1 |
    grep -E "^(test |kill|two relays|broker outage|[0-9]+ connections)|lost|panicked|test result"
exit "${PIPESTATUS[0]}"
