#!/usr/bin/env bash
# The fault suite (docs/RELIABILITY.md) in one command: worker crashes, broker restarts, load,
# bad input, handler faults, security — against the real RabbitMQ and Redis of this machine.
# Full sizes by default (100,000-event load, several crashes and restarts); FAULT_SCALE=quick
# runs the sizes CI runs. Prints the counts table; fails if any scenario fails (a lost message
# fails its scenario).
#
#   scripts/fault_suite.sh                      # full
#   FAULT_SCALE=quick scripts/fault_suite.sh    # what `cargo test` runs
#   scripts/fault_suite.sh fault_crash          # some scenarios only
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export FAULT_SCALE="${FAULT_SCALE:-full}"
export EVENTS_TEST_PYTHON="${EVENTS_TEST_PYTHON:-$PWD/.venv/bin/python}"
report="$(mktemp)"
export FAULT_REPORT="$report"
trap 'rm -f "$report"' EXIT

suites=("$@")
if [ ${#suites[@]} -eq 0 ]; then
    suites=(fault_crash fault_restart fault_load fault_bad_input fault_handlers fault_security fault_poison compression_bomb fault_flood fault_results)
fi
status=0
for suite in "${suites[@]}"; do
    echo "== $suite ($FAULT_SCALE)"
    # One scenario at a time: the counts are not muddied by other scenarios' load.
    cargo test -p tests --test "$suite" -- --test-threads 1 || status=1
done

echo
echo "| scenario | what was done | published | confirmed | failed (reported to the publisher) | processed | lost | duplicated | reproduce |"
echo "|---|---|---|---|---|---|---|---|---|"
sort "$report"
echo
if [ "$status" -ne 0 ]; then
    echo "FAILED: see the output above" >&2
fi
exit "$status"
