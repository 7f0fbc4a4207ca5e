# shellcheck shell=bash
# shellcheck disable=SC2034  # globals set here are read by the calling scripts
# loadtest/lib/procs.sh -- sourced by loadtest/accept.sh, relay.sh and
# retrieval.sh (after common.sh, install.sh and postfix.sh or dovecot.sh).
#
# Purpose: start, watch and stop the processes a load test drives: Postfix's
# smtp-source (the load) and smtp-sink (the receiving end, optionally with
# running counters), and tern with a fresh spool; plus the exit trap that
# stops all of them, the private Postfix and the install leftovers.
#
# Must never: signal a process it did not start (only the PIDs recorded
# here); listen on or connect to anything but 127.0.0.1; run a load or a wait
# without a time bound.
#
# Globals the calling script sets: RUN_TIMEOUT (s per smtp-source run),
# SENDER, RCPT, SOURCE_EXTRA (extra smtp-source options), WORK (temp dir),
# KEEP_WORKDIR (1 = keep WORK).

LT_SOURCE_PID=""
LT_SINK_PID=""
TERN_PID=""

# Exit trap: stop everything we started, keep WORK for a look after an error
# (exit 1) or when asked, remove it otherwise. Install with lt_trap_cleanup.
lt_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$LT_SOURCE_PID" ] && lt_stop_pid "$LT_SOURCE_PID" 5
    if [ -n "${LT_SAMPLER_PID:-}" ]; then
        [ -n "$LT_SAMPLER_STOP" ] && touch "$LT_SAMPLER_STOP" 2>/dev/null
        kill "$LT_SAMPLER_PID" 2>/dev/null
    fi
    lt_stop_pid "$LT_SINK_PID" 5
    lt_stop_pid "$TERN_PID" 30
    # the private Postfix (accept, relay) or Dovecot (retrieval)
    if declare -F pf_stop >/dev/null; then pf_stop; fi
    if declare -F dc_stop >/dev/null; then dc_stop; fi
    lt_remove_policy_rc_d
    lt_remove_main_cf
    if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
        # kept for a look when asked or after an error (not after ^C / TERM)
        if [ "${KEEP_WORKDIR:-0}" = 1 ] || [ $rc = 1 ]; then
            lt_log "work dir kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit $rc
}
lt_trap_cleanup() {
    trap lt_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# ---------------------------------------------------------------- smtp-source
# lt_run_source PORT SIZE COUNT SESSIONS LOGFILE -> sets SRC_T0 (start, ns),
# SRC_NS (elapsed ns) and SRC_RC (smtp-source's exit code, 124 = timed out).
# Runs smtp-source in the background and waits, so a TERM/INT reaches the
# trap at once.
SRC_T0=0
SRC_NS=0
SRC_RC=0
lt_run_source() {
    local port=$1 size=$2 count=$3 sess=$4 log=$5 t0 t1
    t0=$(lt_now_ns)
    SRC_T0=$t0
    # shellcheck disable=SC2086  # SOURCE_EXTRA is a list of options
    timeout "$RUN_TIMEOUT" smtp-source -s "$sess" -m "$count" -l "$size" -r 1 \
        -f "$SENDER" -t "$RCPT" $SOURCE_EXTRA "127.0.0.1:$port" >"$log" 2>&1 &
    LT_SOURCE_PID=$!
    wait "$LT_SOURCE_PID"
    SRC_RC=$?
    t1=$(lt_now_ns)
    LT_SOURCE_PID=""
    SRC_NS=$((t1 - t0))
}
# lt_source_status RC LOGFILE -> "" when the run was clean, else a short note.
lt_source_status() {
    local rc=$1 log=$2 n
    if [ "$rc" = 124 ]; then echo "timeout ${RUN_TIMEOUT}s"; return; fi
    [ "$rc" = 0 ] || { echo "smtp-source rc=$rc: $(tail -1 "$log" | cut -c1-80)"; return; }
    n=$(grep -c . "$log")
    [ "$n" = 0 ] || echo "$n smtp-source msgs: $(head -1 "$log" | cut -c1-60)"
}

# ---------------------------------------------------------------- smtp-sink
# lt_sink_start PORT LOGFILE [smtp-sink options...] -> sets LT_SINK_PID.
# With -c smtp-sink writes running counters to LOGFILE ("sess=N quit=N
# mesg=N", each update ended by CR, flushed at once), which lt_sink_counter
# reads; smtp-sink counts a message when it receives the final ".". Its
# stderr goes to LOGFILE.err.
lt_sink_start() {
    local port=$1 log=$2
    shift 2
    lt_require_free_ports "$port"
    smtp-sink "$@" -u postfix "127.0.0.1:$port" 1024 >"$log" 2>"$log.err" &
    LT_SINK_PID=$!
    lt_wait_listen "$port" 10 "$LT_SINK_PID" || lt_die "smtp-sink did not start: $(cat "$log.err")"
}
lt_sink_stop() {
    lt_stop_pid "$LT_SINK_PID" 5
    LT_SINK_PID=""
    lt_wait_free "$1" 10
}
# lt_sink_counter LOGFILE NAME -> last complete value of counter NAME (sess:
# sessions ended, quit, mesg: messages received), 0 before the first update.
lt_sink_counter() {
    local log=$1 name=$2 s
    s=$(tail -c 160 "$log" 2>/dev/null)
    s=${s%$'\r'*}          # drop an update still being written (after the last CR)
    s=${s##*$'\r'}         # the last complete update
    s=$(grep -o "$name=[0-9]*" <<<"$s")
    echo "${s#*=}" | grep -x '[0-9][0-9]*' || echo 0
}
# lt_sink_wait LOGFILE COUNT TIMEOUT STALL [PID] -> 0 once the sink has
# received COUNT messages; 1 after TIMEOUT s in all, after STALL s without a
# new message, or when PID (the relay under test) or the sink has died
# (LT_SINK_PID: what lt_sink_start started). Sets SINK_GOT
# (messages received) and SINK_WHY (why it gave up). Polls every 20 ms, so
# the time of the return is within ~20 ms of the last message's arrival.
SINK_GOT=0
SINK_WHY=""
lt_sink_wait() {
    local log=$1 count=$2 limit=$3 stall=$4 pid=${5:-} now last_change deadline prev=-1
    now=$(lt_now_ns)
    deadline=$((now + limit * 1000000000))
    last_change=$now
    SINK_WHY=""
    while :; do
        SINK_GOT=$(lt_sink_counter "$log" mesg)
        [ "$SINK_GOT" -ge "$count" ] && return 0
        now=$(lt_now_ns)
        if [ "$SINK_GOT" != "$prev" ]; then prev=$SINK_GOT; last_change=$now; fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then SINK_WHY="relay died"; return 1; fi
        if ! kill -0 "$LT_SINK_PID" 2>/dev/null; then
            wait "$LT_SINK_PID"
            SINK_WHY="sink died (exit $?): $(tail -1 "$log.err" | cut -c1-60)"
            LT_SINK_PID=""
            return 1
        fi
        if [ "$now" -ge "$deadline" ]; then SINK_WHY="timeout ${limit}s"; return 1; fi
        if [ $((now - last_change)) -ge $((stall * 1000000000)) ]; then SINK_WHY="stalled ${stall}s"; return 1; fi
        sleep 0.02
    done
}

# ---------------------------------------------------------------- tern
# lt_tern_bin REPO: sets TERN_BIN to REPO/target/release/tern unless already
# set, building it with cargo when missing; dies when it is not executable.
lt_tern_bin() {
    local repo=$1
    if [ -z "${TERN_BIN:-}" ]; then
        TERN_BIN=$repo/target/release/tern
        if [ ! -x "$TERN_BIN" ]; then
            lt_log "building tern (cargo build --release in $repo)"
            (cd "$repo" && timeout 3600 cargo build --release) >&2 ||
                lt_die "cargo build --release failed (set TERN_BIN or SKIP_TERN=1)"
        fi
    fi
    [ -x "$TERN_BIN" ] || lt_die "TERN_BIN=$TERN_BIN is not an executable"
}
lt_tern_describe() {
    echo "$TERN_BIN (git $(git -C "$(dirname "$TERN_BIN")" rev-parse --short HEAD 2>/dev/null || echo '?'))"
}

# lt_tern_start DIR SMTP_PORT METRICS_PORT IO WORKERS EXTRA_TOML [MAILBOX_TOML]
# -> sets TERN_PID. Writes DIR/tern.toml (EXTRA_TOML appended: the caller's
# [relay] section) with a fresh spool DIR/spool, starts tern (stderr in
# DIR/stderr.log) and waits until both ports listen; dies otherwise.
# MAILBOX_TOML replaces the [pop3] and [imap] sections (default: no
# listeners); the caller waits for the ports it names there.
lt_tern_start() {
    local dir=$1 port=$2 mport=$3 io=$4 workers=$5 extra=$6
    local mailbox=${7:-$'# No mailbox listeners: the load tests measure SMTP only.\n[pop3]\nlisten = []\n[imap]\nlisten = []'}
    lt_require_free_ports "$port" "$mport"
    rm -rf "$dir/spool"
    mkdir -p "$dir/spool"
    cat >"$dir/tern.toml" <<TOML
# written by loadtest/$LT_NAME.sh for one case; fresh spool
[server]
workers = $workers
io = "$io"
[smtp]
listen = ["127.0.0.1:$port"]
submission = []
max_message_size = 10485760
[spool]
dir = "$dir/spool"
[users]
file = "$dir/users.toml"
$mailbox
[metrics]
listen = "127.0.0.1:$mport"
$extra
TOML
    (cd "$dir" && exec "$TERN_BIN" -c "$dir/tern.toml") 2>"$dir/stderr.log" &
    TERN_PID=$!
    if ! lt_wait_listen "$port" 30 "$TERN_PID" || ! lt_wait_listen "$mport" 10 "$TERN_PID"; then
        tail -20 "$dir/stderr.log" >&2
        lt_die "tern (io=$io) did not listen on 127.0.0.1:$port and :$mport"
    fi
}
lt_tern_stop() {
    lt_stop_pid "$TERN_PID" 30
    TERN_PID=""
}
# "" when tern is alive, else a note with the last line of its stderr.
lt_tern_died() {
    kill -0 "$TERN_PID" 2>/dev/null || echo "tern died: $(tail -1 "$1/stderr.log" | cut -c1-80)"
}
