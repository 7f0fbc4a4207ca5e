#!/usr/bin/env bash
# loadtest/run-all.sh -- run every load test, then write one markdown table
# and one PNG chart of the rates (by message size and sessions, tern vs
# Postfix, and tern vs Dovecot for retrieval) to loadtest/results/<date>.md
# and .png.
#
# Purpose: one command for the figures the README quotes. It runs
# accept.sh, relay.sh and retrieval.sh (when present) one after the
# other with the same environment (QUICK, TERN_BIN, SIZES, SESSIONS... are
# passed through), keeps each script's stdout in loadtest/out/, and hands
# them to lib/report.py. The chart needs matplotlib: installed with apt
# (python3-matplotlib, Debian) or pip when missing.
#
# Must never: run two load tests at once (they would share the 2 cores and
# each other's figures), hide a failed test (the table says which case
# failed and the script exits 1), or install anything but the chart's
# package. Each test keeps its own safety rules (see loadtest/README.md).
#
# Usage (from the repo root, as root):
#   loadtest/run-all.sh                  # full runs, ~25 minutes on 2 cores
#   QUICK=1 loadtest/run-all.sh          # small counts, a few minutes
#   TESTS="relay" loadtest/run-all.sh    # a subset
#   REPORT_ONLY="accept=FILE relay=FILE" loadtest/run-all.sh
#                                        # only the table and chart, from
#                                        # captured outputs
# Environment: TESTS [accept relay, + retrieval if present],
#   RESULTS_DIR [loadtest/results], and every knob of the tests themselves.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RESULTS_DIR=${RESULTS_DIR:-$HERE/results}
STAMP=$(date +%Y-%m-%d-%H%M%S)
log() { printf '[run-all %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

default_tests="accept relay"
[ -x "$HERE/retrieval.sh" ] && default_tests+=" retrieval"
TESTS=${TESTS:-$default_tests}

# A python3 that has matplotlib, installing it when none has.
chart_python() {
    local py
    for py in python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import matplotlib' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        log "installing python3-matplotlib with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-matplotlib >&2 ||
            { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-matplotlib >&2; }
        if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
            echo /usr/bin/python3
            return 0
        fi
    fi
    log "installing matplotlib with pip"
    python3 -m pip install --quiet matplotlib >&2 && python3 -c 'import matplotlib' 2>/dev/null &&
        { echo python3; return 0; }
    return 1
}

inputs=()
failed=0
if [ -n "${REPORT_ONLY:-}" ]; then
    read -ra inputs <<<"$REPORT_ONLY"
else
    mkdir -p "$HERE/out"
    for t in $TESTS; do
        [ -x "$HERE/$t.sh" ] || { log "no loadtest/$t.sh"; exit 2; }
        out="$HERE/out/run-all-$t-$STAMP.txt"
        log "running loadtest/$t.sh (stdout kept in ${out#"$HERE"/})"
        "$HERE/$t.sh" | tee "$out"
        status=${PIPESTATUS[0]}
        if [ "$status" != 0 ]; then
            log "loadtest/$t.sh exited $status"
            failed=1
        fi
        inputs+=("$t=$out")
    done
fi

mkdir -p "$RESULTS_DIR"
py=$(chart_python) || { log "no matplotlib: cannot draw the chart"; py=""; }
if [ -n "$py" ]; then
    "$py" "$HERE/lib/report.py" "$RESULTS_DIR/$STAMP" "${inputs[@]}" || failed=1
    log "wrote $RESULTS_DIR/$STAMP.md and $RESULTS_DIR/$STAMP.png"
else
    failed=1
fi
exit "$failed"
