#!/usr/bin/env bash
# loadtest/relay.sh -- end-to-end relay load test: tern vs a private Postfix.
#
# Purpose: for 1 KiB and 32 KiB messages at 10 and 100 sessions, time
# smtp-source -> smtp-sink ("direct", no MTA: the ceiling), smtp-source ->
# tern -> smtp-sink and smtp-source -> Postfix -> smtp-sink, each from the
# first connection until the sink has received every message, and print one
# line per case: msg/s of each, tern/Postfix ratio, tern as % of direct, the
# rates at which each MTA accepted (smtp-source done), connections used at
# the sink, each MTA's CPU time per message, tern's peak RSS and anonymous
# RSS, and a check. Results go to stdout and to
# loadtest/out/relay-<date>.txt. Installs what it needs (Debian, as root).
#
# Must never: listen on or connect to anything but 127.0.0.1; share a port
# with a server that is already listening (it refuses to start instead);
# start, enable or reconfigure the system Postfix; leave a process it started
# running (exit trap); run or wait unbounded (every load run has a message
# count and a `timeout`, every wait for the sink a deadline and a stall
# limit); run concurrently with another copy of itself (flock); kill anything
# it did not start; report a case as ok when a message is missing at the sink
# or tern died.
#
# Usage (from the repo root, as root):
#   loadtest/relay.sh                  # full run (~3 min on 2 cores)
#   QUICK=1 loadtest/relay.sh          # small counts, under a minute
# Environment (defaults in brackets):
#   QUICK [0]            1 = small counts (COUNT_1K=2000, COUNT_32K=500)
#   COUNT_1K [20000]     messages per 1 KiB case
#   COUNT_32K [5000]     messages per 32 KiB case
#   SIZES ["1024 32768"] message body sizes (bytes) to run; counts for other
#                        sizes come from COUNT_<bytes> or COUNT_1K
#   SESSIONS ["10 100"]  smtp-source -s values to run
#   RUN_TIMEOUT [300]    seconds allowed for one smtp-source run
#   DRAIN_TIMEOUT [300]  seconds allowed, after smtp-source is done, until the
#                        sink has every message
#   STALL_TIMEOUT [30]   give up waiting when the sink gets nothing new this long
#   LOADTEST_PORT_BASE [25270]  sink=N, tern=N+1, tern metrics=N+2, postfix=N+3
#   TERN_BIN [<repo>/target/release/tern, built with cargo if missing]
#   TERN_IO [auto]       tern [server] io: auto | uring | epoll
#   TERN_WORKERS [0]     tern [server] workers (0 = all cores)
#   TERN_RELAY_EXTRA [""] extra lines for tern's [relay] section, e.g.
#                        'max_connections_per_destination = 50'
#   PF_CONCURRENCY [20]  Postfix default_destination_concurrency_limit (and
#                        initial concurrency): parallel deliveries to the sink
#   SKIP_TERN / SKIP_POSTFIX / SKIP_DIRECT [0]  1 = leave that target out
#   SOURCE_EXTRA [""]    extra smtp-source options, e.g. "-d" to keep one
#                        connection per session instead of one per message
#   LOADTEST_WORKDIR [/tmp] where the spool and the Postfix queue live (same
#                        filesystem for both, so their fsyncs are comparable)
#   KEEP_WORKDIR [0]     1 = keep spools, queue and logs after the run
#   INSTALL_ONLY [0]     1 = install the dependencies and stop
#   FORCE_INSTALL [0]    1 = run the apt-get step even if the tools are there
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
LT_NAME=relay
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
# shellcheck source=lib/install.sh
. "$HERE/lib/install.sh"
# shellcheck source=lib/postfix.sh
. "$HERE/lib/postfix.sh"
# shellcheck source=lib/procs.sh
. "$HERE/lib/procs.sh"

# ---------------------------------------------------------------- settings
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    COUNT_1K=${COUNT_1K:-2000}
    COUNT_32K=${COUNT_32K:-500}
else
    COUNT_1K=${COUNT_1K:-20000}
    COUNT_32K=${COUNT_32K:-5000}
fi
SIZES=${SIZES:-"1024 32768"}
SESSIONS=${SESSIONS:-"10 100"}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-300}
STALL_TIMEOUT=${STALL_TIMEOUT:-30}
BASE=${LOADTEST_PORT_BASE:-25270}
SINK_PORT=$BASE
TERN_PORT=$((BASE + 1))
TERN_METRICS_PORT=$((BASE + 2))
PF_PORT=$((BASE + 3))
TERN_IO=${TERN_IO:-auto}
TERN_WORKERS=${TERN_WORKERS:-0}
TERN_RELAY_EXTRA=${TERN_RELAY_EXTRA:-}
PF_CONCURRENCY=${PF_CONCURRENCY:-20}
SKIP_TERN=${SKIP_TERN:-0}
SKIP_POSTFIX=${SKIP_POSTFIX:-0}
SKIP_DIRECT=${SKIP_DIRECT:-0}
SOURCE_EXTRA=${SOURCE_EXTRA:-}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
CLK_TCK=$(getconf CLK_TCK)
SENDER=loadtest@sender.example
RCPT=rcpt@remote.example        # a remote domain: both MTAs relay it to the sink

for v in COUNT_1K COUNT_32K RUN_TIMEOUT DRAIN_TIMEOUT STALL_TIMEOUT BASE TERN_WORKERS PF_CONCURRENCY; do
    [[ ${!v} =~ ^[0-9]+$ ]] || lt_die "$v must be a non-negative integer (got '${!v}')"
done
case $TERN_IO in auto | uring | epoll) ;; *) lt_die "TERN_IO: '$TERN_IO' is not auto, uring or epoll" ;; esac

lt_lock
WORK=""
lt_trap_cleanup

# ---------------------------------------------------------------- preflight
PORTS=("$SINK_PORT")
[ "$SKIP_TERN" = 1 ] || PORTS+=("$TERN_PORT" "$TERN_METRICS_PORT")
[ "$SKIP_POSTFIX" = 1 ] || PORTS+=("$PF_PORT")
[ "${INSTALL_ONLY:-0}" = 1 ] || lt_require_free_ports "${PORTS[@]}"
[ "$(id -u)" = 0 ] || lt_die "run as root (installs packages, runs a private Postfix)"

lt_install_deps
if [ "${INSTALL_ONLY:-0}" = 1 ]; then lt_log "INSTALL_ONLY=1: dependencies present, done"; exit 0; fi
[ "$SKIP_TERN" = 1 ] || lt_tern_bin "$REPO"

lt_out_open "$HERE/out"
WORK=$(mktemp -d "${LOADTEST_WORKDIR:-/tmp}/tern-relay.XXXXXX") || lt_die "mktemp failed"
chmod 755 "$WORK"

# tern's [relay] section: everything to the sink, nothing held. The rest
# (max_connections_per_destination = 20, max_messages_per_connection =
# 1000, connection_idle_timeout = 5s, tls = opportunistic: smtp-sink offers
# no STARTTLS) stays at tern's defaults unless TERN_RELAY_EXTRA says otherwise.
TERN_RELAY=$(printf '[relay]\nhold = false\nsmarthost = "127.0.0.1:%s"\n%s' "$SINK_PORT" "$TERN_RELAY_EXTRA")

if [ "$SKIP_POSTFIX" != 1 ]; then
    pf_setup "$WORK/postfix" "$PF_PORT" relay "$SINK_PORT" "$PF_CONCURRENCY"
fi

# ---------------------------------------------------------------- preamble
cmdline="QUICK=$QUICK COUNT_1K=$COUNT_1K COUNT_32K=$COUNT_32K SIZES=\"$SIZES\" SESSIONS=\"$SESSIONS\""
[ "$SKIP_TERN" = 1 ] && cmdline+=" SKIP_TERN=1" || cmdline+=" TERN_BIN=$TERN_BIN TERN_IO=$TERN_IO TERN_WORKERS=$TERN_WORKERS"
[ -n "$TERN_RELAY_EXTRA" ] && cmdline+=" TERN_RELAY_EXTRA='$TERN_RELAY_EXTRA'"
[ "$SKIP_POSTFIX" = 1 ] && cmdline+=" SKIP_POSTFIX=1" || cmdline+=" PF_CONCURRENCY=$PF_CONCURRENCY"
[ "$SKIP_DIRECT" = 1 ] && cmdline+=" SKIP_DIRECT=1"
[ -n "$SOURCE_EXTRA" ] && cmdline+=" SOURCE_EXTRA=\"$SOURCE_EXTRA\""
lt_preamble "$WORK" "$cmdline"
lt_say "# smtp-source -r 1 -f $SENDER -t $RCPT ${SOURCE_EXTRA:-(one connection per message)}; sink: smtp-sink -c, fresh per run"
if [ "$SKIP_TERN" != 1 ]; then
    lt_say "# tern: $(lt_tern_describe), io=$TERN_IO workers=$TERN_WORKERS, fresh spool per case; $(tr '\n' ' ' <<<"$TERN_RELAY")"
fi
[ "$SKIP_POSTFIX" = 1 ] || lt_say "# postfix relay settings: lib/postfix.sh (relay mode), concurrency $PF_CONCURRENCY; postconf -n at the end of ${LT_OUT#"$REPO"/}"
lt_say "# columns: direct/s, tern/s, pf/s = messages / time from smtp-source's start until the sink had all of them;"
lt_say "#   tern/pf = tern/s / pf/s; %direct = tern/s / direct/s; tAcc/s, pfAcc/s = messages / time until smtp-source"
lt_say "#   was done (accept side, relaying at the same time); tConn, pfConn = SMTP sessions the sink saw;"
lt_say "#   tCPUus, pfCPUus = CPU time (user + system, all threads and processes) per message, in microseconds;"
lt_say "#   ternMiB = tern's peak RSS (VmHWM); tAnonMiB = its RssAnon at the end (RSS without file pages: mapped spool)"
lt_say ""
FMT='%-12s %8s %8s %8s %7s %7s %8s %8s %6s %6s %7s %8s %7s %8s  %s'
# shellcheck disable=SC2059  # FMT is the one table format
lt_say "$(printf "$FMT" case "direct/s" "tern/s" "pf/s" "tern/pf" "%direct" "tAcc/s" "pfAcc/s" tConn pfConn tCPUus pfCPUus ternMiB tAnonMiB check)"

# ---------------------------------------------------------------- one target
# relay_run NAME TARGET PORT SIZE COUNT SESSIONS CASEDIR WATCH_PID STOP_CMD
# (WATCH_PID: the MTA under test, "" for none) -> sets
# RR_RATE (end to end, NA unless every message arrived), RR_ACC (accept
# side), RR_CONNS (sessions the sink saw) and RR_NOTES (array). The sink must
# be running with -c (counters in CASEDIR/sink-TARGET.log); it is stopped
# here after the MTA under test has been stopped by the caller-supplied
# STOP_CMD, so its session count includes connections closed at that stop.
relay_run() {
    local name=$1 target=$2 port=$3 size=$4 count=$5 sess=$6 cdir=$7 watch=$8 stop_cmd=$9
    local slog=$cdir/sink-$target.log ns rc st t1 got
    RR_RATE=NA RR_ACC=NA RR_CONNS=NA RR_NOTES=()
    lt_run_source "$port" "$size" "$count" "$sess" "$cdir/source-$target.log"; ns=$SRC_NS rc=$SRC_RC
    st=$(lt_source_status "$rc" "$cdir/source-$target.log")
    [ -n "$st" ] && RR_NOTES+=("$target: $st")
    [ "$rc" = 0 ] && RR_ACC=$(lt_rate "$count" "$ns")
    if lt_sink_wait "$slog" "$count" "$DRAIN_TIMEOUT" "$STALL_TIMEOUT" "$watch"; then
        t1=$(lt_now_ns)
        [ "$rc" = 0 ] && RR_RATE=$(lt_rate "$count" $((t1 - SRC_T0)))
    else
        RR_NOTES+=("$target: sink got $SINK_GOT/$count ($SINK_WHY)")
    fi
    $stop_cmd
    # smtp-sink counts a session when it ends: give closed connections a moment
    sleep 0.3
    RR_CONNS=$(lt_sink_counter "$slog" sess)
    got=$(lt_sink_counter "$slog" mesg)
    [ "$got" -gt "$count" ] && RR_NOTES+=("$target: sink got $got/$count ($((got - count)) duplicates)")
    lt_sink_stop "$SINK_PORT"
    lt_log "$name: $target done, sink got $got/$count, rate ${RR_RATE}/s"
}

# STOP_CMDs for relay_run. The tern and Postfix ones first take what can
# only be measured while the MTA still runs; they set run_case's locals
# (bash's dynamic scope): died, t_mib, t_anon, t_ticks (tern), left, sent,
# p_ticks (Postfix).
stop_nothing() { :; }
stop_tern_measured() {
    t_ticks=$(($(lt_family_cpu_ticks "$TERN_PID") - t_ticks))
    died=$(lt_tern_died "$tdir")
    lt_scrape "127.0.0.1:$TERN_METRICS_PORT" >"$tdir/metrics-after.txt"
    t_mib=$(lt_mib "$(lt_hwm_kib "$TERN_PID")")
    t_anon=$(lt_mib "$(lt_status_kib "$TERN_PID" RssAnon)")
    lt_tern_stop
}
stop_postfix_measured() {
    p_ticks=$(($(lt_family_cpu_ticks "$(pf_master_pid)") - p_ticks))
    pf_wait_empty 10
    left=$(pf_queued)
    sent=$(($(pf_sent_total) - sent0))
    pf_stop
    lt_wait_free "$PF_PORT" 10
}

# cpu_us TICKS COUNT -> CPU microseconds per message (NA when unmeasured)
cpu_us() { awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN { if (t == "NA" || n + 0 == 0) print "NA"; else printf "%.0f\n", t / hz * 1e6 / n }'; }

# ---------------------------------------------------------------- one case
run_case() {
    local size=$1 sess=$2 count name notes=() check
    local d_rate=NA t_rate=NA p_rate=NA t_acc=NA p_acc=NA t_conns=NA p_conns=NA t_mib=NA t_anon=NA
    local t_ticks=NA p_ticks=NA
    count=$(lt_count_for "$size")
    name="$(lt_size_name "$size") s=$sess"
    local cdir=$WORK/case-$size-$sess
    mkdir -p "$cdir"
    chmod 755 "$cdir"

    # (a) direct: smtp-source -> smtp-sink, the ceiling of client + loopback
    if [ "$SKIP_DIRECT" != 1 ]; then
        lt_log "$name: direct, $count messages"
        lt_sink_start "$SINK_PORT" "$cdir/sink-direct.log" -c
        relay_run "$name" direct "$SINK_PORT" "$size" "$count" "$sess" "$cdir" "" stop_nothing
        d_rate=$RR_RATE
        notes+=("${RR_NOTES[@]}")
    fi

    # (b) tern with a fresh spool, relaying to a fresh sink
    if [ "$SKIP_TERN" != 1 ]; then
        local tdir=$cdir/tern delivered b a died=""
        lt_log "$name: tern, $count messages"
        lt_sink_start "$SINK_PORT" "$cdir/sink-tern.log" -c
        lt_tern_start "$tdir" "$TERN_PORT" "$TERN_METRICS_PORT" "$TERN_IO" "$TERN_WORKERS" "$TERN_RELAY"
        b=$tdir/metrics-before.txt a=$tdir/metrics-after.txt
        lt_scrape "127.0.0.1:$TERN_METRICS_PORT" >"$b"
        t_ticks=$(lt_family_cpu_ticks "$TERN_PID")
        relay_run "$name" tern "$TERN_PORT" "$size" "$count" "$sess" "$cdir" "$TERN_PID" stop_tern_measured
        t_rate=$RR_RATE t_acc=$RR_ACC t_conns=$RR_CONNS
        notes+=("${RR_NOTES[@]}")
        [ -n "$died" ] && { notes+=("$died"); t_rate=NA; }
        delivered=$(lt_metric_delta "$b" "$a" tern_delivery_attempts_total 'result="delivered"')
        if [ "$delivered" = NA ]; then
            lt_log "$name: tern reports no tern_delivery_attempts_total{result=\"delivered\"}"
        elif [ "$delivered" -lt "$count" ]; then
            notes+=("tern delivered $delivered/$count")
        fi
        [ "$KEEP_WORKDIR" = 1 ] || rm -rf "$tdir/spool"
    fi

    # (c) private Postfix, empty queue, relaying to a fresh sink
    if [ "$SKIP_POSTFIX" != 1 ]; then
        local sent0 sent=0 left=0
        lt_log "$name: postfix, $count messages"
        pf_flush_queue
        lt_sink_start "$SINK_PORT" "$cdir/sink-postfix.log" -c
        lt_require_free_ports "$PF_PORT"
        pf_start "$PF_PORT"
        sent0=$(pf_sent_total)
        p_ticks=$(lt_family_cpu_ticks "$(pf_master_pid)")
        relay_run "$name" postfix "$PF_PORT" "$size" "$count" "$sess" "$cdir" "$(pf_master_pid)" stop_postfix_measured
        p_rate=$RR_RATE p_acc=$RR_ACC p_conns=$RR_CONNS
        notes+=("${RR_NOTES[@]}")
        [ "$left" = 0 ] || notes+=("postfix queue still holds $left")
        [ "$sent" -lt "$count" ] && lt_log "$name: postfix logged $sent/$count status=sent (maillog may lag)"
        pf_flush_queue
    fi

    check=ok
    [ ${#notes[@]} -gt 0 ] && check=$(IFS=';'; echo "${notes[*]}")
    [ "$check" = ok ] || CHECK_FAILED=1
    # shellcheck disable=SC2059  # FMT is the one table format
    lt_say "$(printf "$FMT" "$name" "$d_rate" "$t_rate" "$p_rate" \
        "$(lt_div "$t_rate" "$p_rate" %.2f)" \
        "$(lt_div "$(lt_div "$t_rate" 0.01 %.4f)" "$d_rate" %.0f%%)" \
        "$t_acc" "$p_acc" "$t_conns" "$p_conns" \
        "$(cpu_us "$t_ticks" "$count")" "$(cpu_us "$p_ticks" "$count")" "$t_mib" "$t_anon" "$check")"
}

CHECK_FAILED=0
RUN_T0=$(lt_now_ns)
for size in $SIZES; do
    for sess in $SESSIONS; do
        run_case "$size" "$sess"
    done
done
lt_say ""
lt_say "# load avg at end: $(cut -d' ' -f1-3 /proc/loadavg); whole run $(( ($(lt_now_ns) - RUN_T0) / 1000000000 )) s; results: ${LT_OUT#"$REPO"/}"
if [ "$SKIP_POSTFIX" != 1 ]; then
    { echo; echo "# postfix: postconf -n"; sed 's/^/#   /' "$PF_DIR/postconf-n.txt"; } >>"$LT_OUT"
fi
if [ "$CHECK_FAILED" = 1 ]; then
    lt_say "# FAILED: at least one case's check is not ok (see the check column)"
    exit 1
fi
