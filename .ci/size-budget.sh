#!/usr/bin/env bash
# Binary-size budget: each shipped binary, as built by the release profile
# (fat LTO, stripped), must stay under BUDGET_BYTES (8 MiB). Size is a
# feature: the agent goes to every GPU host. docs/BENCHMARKS.md ("Binary
# size") says what takes the space and what was cut.
#
#   bash .ci/size-budget.sh [BIN_DIR]   # default target/release
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${1:-target/release}
BUDGET_BYTES=${BUDGET_BYTES:-$((8 * 1024 * 1024))}
over=0
printf '%-20s %12s %12s\n' binary bytes MiB
for bin in gantry-coordinator gantry-agent gantryctl; do
    path="$BIN_DIR/$bin"
    if [ ! -f "$path" ]; then
        echo "size-budget: $path is missing (build it with cargo build --release)" >&2
        exit 2
    fi
    bytes=$(stat -c %s "$path")
    printf '%-20s %12d %12s\n' "$bin" "$bytes" "$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')"
    if [ "$bytes" -gt "$BUDGET_BYTES" ]; then
        echo "size-budget: $bin is $bytes bytes, over the budget of $BUDGET_BYTES" >&2
        over=1
    fi
done
exit $over
