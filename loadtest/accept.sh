#!/usr/bin/env bash
# loadtest/accept.sh -- durable-accept load test: tern vs a private Postfix.
#
# Purpose: drive Postfix's smtp-source at (a) smtp-sink (no MTA: the ceiling
# of client + loopback), (b) tern with `[relay] hold = true` (accepted mail
# stays queued, nothing is relayed), (c) a private Postfix
# instance holding every message, for 1 KiB and 32 KiB messages at 10 and 100
# sessions, and print one line per case: msg/s of each, tern/Postfix ratio,
# tern as % of the sink ceiling, tern spool syncs/s and messages per sync,
# tern peak RSS and Postfix total RSS. Results go to stdout and to
# loadtest/out/accept-<date>.txt. Installs what it needs (Debian, as root).
#
# Must never: listen on or connect to anything but 127.0.0.1; share a port
# with a server that is already listening (it refuses to start instead);
# start, enable or reconfigure the system Postfix; leave a process it started
# running (exit trap); run unbounded (every load run has a message count and a
# `timeout`); run concurrently with another copy of itself (flock); kill
# anything it did not start.
#
# Usage (from the repo root, as root):
#   loadtest/accept.sh                 # full run (~10 min on 2 cores)
#   QUICK=1 loadtest/accept.sh         # small counts, a minute or two
# Environment (defaults in brackets):
#   QUICK [0]            1 = small counts (COUNT_1K=2000, COUNT_32K=500)
#   COUNT_1K [20000]     messages per 1 KiB case
#   COUNT_32K [5000]     messages per 32 KiB case
#   SIZES ["1024 32768"] message body sizes (bytes) to run; counts for other
#                        sizes come from COUNT_<bytes> or COUNT_1K
#   SESSIONS ["10 100"]  smtp-source -s values to run
#   RUN_TIMEOUT [300]    seconds allowed for one smtp-source run
#   LOADTEST_PORT_BASE [25250]  sink=N, tern=N+1, tern metrics=N+2, postfix=N+3
#   TERN_BIN [<repo>/target/release/tern, built with cargo if missing]
#   TERN_IO [auto]       tern [server] io: auto | uring | epoll; several, e.g.
#                        "epoll uring", run tern once per mode (one line each)
#   TERN_WORKERS [0]     tern [server] workers (0 = all cores)
#   SKIP_TERN / SKIP_POSTFIX / SKIP_SINK [0]  1 = leave that target out
#   SOURCE_EXTRA [""]    extra smtp-source options, e.g. "-d" to keep one
#                        connection per session instead of one per message
#   LOADTEST_WORKDIR [/tmp] where spools and the Postfix queue live (same
#                        filesystem for both, so their fsyncs are comparable)
#   KEEP_WORKDIR [0]     1 = keep spools, queue and logs after the run
#   INSTALL_ONLY [0]     1 = install the dependencies and stop
#   FORCE_INSTALL [0]    1 = run the apt-get step even if the tools are there
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
LT_NAME=accept
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
BASE=${LOADTEST_PORT_BASE:-25250}
SINK_PORT=$BASE
TERN_PORT=$((BASE + 1))
TERN_METRICS_PORT=$((BASE + 2))
PF_PORT=$((BASE + 3))
TERN_IO=${TERN_IO:-auto}
TERN_WORKERS=${TERN_WORKERS:-0}
SKIP_TERN=${SKIP_TERN:-0}
SKIP_POSTFIX=${SKIP_POSTFIX:-0}
SKIP_SINK=${SKIP_SINK:-0}
SOURCE_EXTRA=${SOURCE_EXTRA:-}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
SENDER=loadtest@sender.example
RCPT=rcpt@remote.example        # a remote domain: both MTAs must queue it for relay

for v in COUNT_1K COUNT_32K RUN_TIMEOUT BASE TERN_WORKERS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || lt_die "$v must be a non-negative integer (got '${!v}')"
done

for io in $TERN_IO; do
    case $io in auto | uring | epoll) ;; *) lt_die "TERN_IO: '$io' is not auto, uring or epoll" ;; esac
done

lt_lock
WORK=""
lt_trap_cleanup

# ---------------------------------------------------------------- preflight
PORTS=()
[ "$SKIP_SINK" = 1 ] || PORTS+=("$SINK_PORT")
[ "$SKIP_TERN" = 1 ] || PORTS+=("$TERN_PORT" "$TERN_METRICS_PORT")
[ "$SKIP_POSTFIX" = 1 ] || PORTS+=("$PF_PORT")
[ "${INSTALL_ONLY:-0}" = 1 ] || lt_require_free_ports "${PORTS[@]}"
[ "$(id -u)" = 0 ] || lt_die "run as root (installs packages, runs a private Postfix)"

lt_install_deps
if [ "${INSTALL_ONLY:-0}" = 1 ]; then lt_log "INSTALL_ONLY=1: dependencies present, done"; exit 0; fi

[ "$SKIP_TERN" = 1 ] || lt_tern_bin "$REPO"

lt_out_open "$HERE/out"

WORK=$(mktemp -d "${LOADTEST_WORKDIR:-/tmp}/tern-accept.XXXXXX") || lt_die "mktemp failed"
chmod 755 "$WORK"

if [ "$SKIP_POSTFIX" != 1 ]; then
    pf_setup "$WORK/postfix" "$PF_PORT" hold
fi

# ---------------------------------------------------------------- preamble
cmdline="QUICK=$QUICK COUNT_1K=$COUNT_1K COUNT_32K=$COUNT_32K SIZES=\"$SIZES\" SESSIONS=\"$SESSIONS\""
[ "$SKIP_TERN" = 1 ] && cmdline+=" SKIP_TERN=1" || cmdline+=" TERN_BIN=$TERN_BIN TERN_IO=\"$TERN_IO\" TERN_WORKERS=$TERN_WORKERS"
[ "$SKIP_POSTFIX" = 1 ] && cmdline+=" SKIP_POSTFIX=1"
[ "$SKIP_SINK" = 1 ] && cmdline+=" SKIP_SINK=1"
[ -n "$SOURCE_EXTRA" ] && cmdline+=" SOURCE_EXTRA=\"$SOURCE_EXTRA\""
lt_preamble "$WORK" "$cmdline"
lt_say "# smtp-source -r 1 -f $SENDER -t $RCPT ${SOURCE_EXTRA:-(one connection per message)}"
[ "$SKIP_TERN" = 1 ] || lt_say "# tern: $(lt_tern_describe), io=$TERN_IO workers=$TERN_WORKERS, [relay] hold = true"
lt_say "# columns: msg/s = messages / wall time of smtp-source; tern/pf = tern msg/s / postfix msg/s;"
lt_say "#   tern%sink = tern msg/s / sink msg/s; syncs/s = tern_spool_syncs_total delta / time;"
lt_say "#   msg/sync = mean tern_spool_commit_batch_size; tern RSS = VmHWM of the tern process;"
lt_say "#   pf RSS = peak sum of VmRSS over Postfix master + children (sampled 2/s), pf PSS = their Pss at the end"
lt_say ""
HDR=$(printf '%-17s %8s %8s %8s %7s %7s %8s %8s %8s %8s %8s  %s' \
    case "sink/s" "tern/s" "pf/s" "tern/pf" "%sink" "syncs/s" "msg/sync" "ternMiB" "pfRSSMiB" "pfPSSMiB" check)
lt_say "$HDR"

# ---------------------------------------------------------------- load runs
# run_tern NAME SIZE COUNT SESSIONS IO CASEDIR -> sets TR_RATE TR_SYNCS TR_PERSYNC
# TR_MIB and TR_NOTES (array). A fresh tern with a fresh spool every time.
run_tern() {
    local name=$1 size=$2 count=$3 sess=$4 io=$5 cdir=$6/tern-$5 ns rc st died
    TR_RATE=NA TR_SYNCS=NA TR_PERSYNC=NA TR_MIB=NA TR_NOTES=()
    lt_log "$name: tern (io=$io), $count messages"
    # hold = true: tern relays what it accepts; here everything stays queued
    # (the issue: "the accept load test uses it"), like Postfix's HOLD.
    lt_tern_start "$cdir" "$TERN_PORT" "$TERN_METRICS_PORT" "$io" "$TERN_WORKERS" \
        $'[relay]\nhold = true'
    lt_scrape "127.0.0.1:$TERN_METRICS_PORT" >"$cdir/metrics-before.txt"
    lt_run_source "$TERN_PORT" "$size" "$count" "$sess" "$cdir/source.log"; ns=$SRC_NS rc=$SRC_RC
    st=$(lt_source_status $rc "$cdir/source.log")
    lt_scrape "127.0.0.1:$TERN_METRICS_PORT" >"$cdir/metrics-after.txt"
    TR_MIB=$(lt_mib "$(lt_hwm_kib "$TERN_PID")")
    died=$(lt_tern_died "$cdir")
    [ -n "$died" ] && TR_NOTES+=("$died")
    lt_tern_stop
    [ -n "$st" ] && TR_NOTES+=("tern: $st")
    [ "$rc" = 0 ] && TR_RATE=$(lt_rate "$count" "$ns")
    local b=$cdir/metrics-before.txt a=$cdir/metrics-after.txt syn acc bs bc
    if [ -s "$a" ]; then
        # counters: after - before, summed over all label sets (cores)
        syn=$(lt_metric_delta "$b" "$a" tern_spool_syncs_total)
        acc=$(lt_metric_delta "$b" "$a" tern_messages_accepted_total)
        bs=$(lt_metric_delta "$b" "$a" tern_spool_commit_batch_size_sum)
        bc=$(lt_metric_delta "$b" "$a" tern_spool_commit_batch_size_count)
        if [ "$bs" != NA ] && [ "$bc" != NA ]; then
            TR_PERSYNC=$(lt_div "$bs" "$bc")
        else
            TR_PERSYNC=$(lt_div "$acc" "$syn")
        fi
        TR_SYNCS=$(lt_rate "$syn" "$ns")
        [ "$syn" = NA ] && TR_NOTES+=("no tern_spool_syncs_total")
        if [ "$acc" = NA ]; then TR_NOTES+=("no tern_messages_accepted_total")
        elif [ "$acc" != "$count" ]; then TR_NOTES+=("tern accepted $acc/$count"); fi
    else
        TR_NOTES+=("tern metrics unreachable")
    fi
    # free the disk between runs
    [ "$KEEP_WORKDIR" = 1 ] || rm -rf "$cdir/spool"
}

run_case() {
    local size=$1 sess=$2 count name sink_r=NA pf_r=NA
    local pf_mib=NA pf_pss=NA notes=() ns rc st
    count=$(lt_count_for "$size")
    name="$(lt_size_name "$size") s=$sess"
    local cdir=$WORK/case-$size-$sess
    mkdir -p "$cdir"
    chmod 755 "$cdir"

    # (a) ceiling: smtp-source -> smtp-sink
    if [ "$SKIP_SINK" != 1 ]; then
        lt_log "$name: sink, $count messages"
        lt_sink_start "$SINK_PORT" "$cdir/sink.log"
        lt_run_source "$SINK_PORT" "$size" "$count" "$sess" "$cdir/source-sink.log"; ns=$SRC_NS rc=$SRC_RC
        st=$(lt_source_status $rc "$cdir/source-sink.log")
        [ $rc = 0 ] && sink_r=$(lt_rate "$count" "$ns")
        [ -n "$st" ] && notes+=("sink: $st")
        lt_sink_stop "$SINK_PORT"
    fi

    # (b) tern, once per io mode in TERN_IO, fresh spool each time
    local io i=0 t_rate=() t_syncs=() t_persync=() t_mib=() t_notes=()
    if [ "$SKIP_TERN" != 1 ]; then
        for io in $TERN_IO; do
            run_tern "$name" "$size" "$count" "$sess" "$io" "$cdir"
            t_rate[i]=$TR_RATE t_syncs[i]=$TR_SYNCS t_persync[i]=$TR_PERSYNC t_mib[i]=$TR_MIB
            t_notes[i]=$(IFS=';'; echo "${TR_NOTES[*]}")
            i=$((i + 1))
        done
    fi

    # (c) private Postfix, empty queue, restarted per case (so RSS is per case)
    if [ "$SKIP_POSTFIX" != 1 ]; then
        lt_require_free_ports "$PF_PORT"
        lt_log "$name: postfix, $count messages"
        pf_flush_queue
        pf_start "$PF_PORT"
        local master held
        master=$(pf_master_pid)
        lt_rss_sampler_start "$master" "$WORK/pf-rss"
        lt_run_source "$PF_PORT" "$size" "$count" "$sess" "$cdir/source-postfix.log"; ns=$SRC_NS rc=$SRC_RC
        st=$(lt_source_status $rc "$cdir/source-postfix.log")
        lt_rss_sampler_stop "$WORK/pf-rss" >"$WORK/pf-rss.peak"
        # the sampler may miss a very short run: also take one sample now
        pf_mib=$(lt_mib "$(awk -v a="$(cat "$WORK/pf-rss.peak")" -v b="$(lt_family_rss_kib "$master")" \
            'BEGIN { print (b + 0 > a + 0) ? b : a }')")
        pf_pss=$(lt_mib "$(lt_family_pss_kib "$master")")
        held=$(pf_held)
        [ -n "$st" ] && notes+=("postfix: $st")
        [ $rc = 0 ] && pf_r=$(lt_rate "$count" "$ns")
        [ "$held" = "$count" ] || notes+=("postfix held $held/$count (queued $(pf_queued))")
        pf_stop
        lt_wait_free "$PF_PORT" 10
        lt_log "$name: postfix held $held, flushing its queue"
        pf_flush_queue
    fi

    # one line per tern io mode (one line with tern NA when SKIP_TERN=1)
    local modes=() label check k n=1
    read -ra modes <<<"$TERN_IO"
    [ "$SKIP_TERN" = 1 ] || n=${#modes[@]}
    for ((k = 0; k < n; k++)); do
        local tr=${t_rate[k]:-NA} allnotes=("${notes[@]}")
        [ -n "${t_notes[k]:-}" ] && allnotes+=("${t_notes[k]}")
        check=ok
        [ ${#allnotes[@]} -gt 0 ] && check=$(IFS=';'; echo "${allnotes[*]}")
        [ "$check" = ok ] || CHECK_FAILED=1
        label=$name
        [ "$SKIP_TERN" != 1 ] && [ ${#modes[@]} -gt 1 ] && label="$name ${modes[k]}"
        lt_say "$(printf '%-17s %8s %8s %8s %7s %7s %8s %8s %8s %8s %8s  %s' "$label" \
            "$sink_r" "$tr" "$pf_r" "$(lt_div "$tr" "$pf_r" %.2f)" \
            "$(lt_div "$(lt_div "$tr" 0.01 %.4f)" "$sink_r" %.0f%%)" \
            "${t_syncs[k]:-NA}" "${t_persync[k]:-NA}" "${t_mib[k]:-NA}" "$pf_mib" "$pf_pss" "$check")"
    done
}

CHECK_FAILED=0
for size in $SIZES; do
    for sess in $SESSIONS; do
        run_case "$size" "$sess"
    done
done
lt_say ""
lt_say "# load avg at end: $(cut -d' ' -f1-3 /proc/loadavg); results: ${LT_OUT#"$REPO"/}"
if [ "$CHECK_FAILED" = 1 ]; then
    lt_say "# FAILED: at least one case's check is not ok (see the check column)"
    exit 1
fi
