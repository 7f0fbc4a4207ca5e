# shellcheck shell=bash
# loadtest/lib/common.sh -- sourced by loadtest/accept.sh, relay.sh and
# retrieval.sh.
#
# Purpose: small helpers for the load tests: logging, the results file and
# its preamble, case names and counts, loopback port checks, timing,
# Prometheus scraping and memory (RSS) measurement.
#
# Must never: kill or signal a process it was not handed the PID of; bind or
# probe anything but 127.0.0.1; read or print credentials.

# LT_NAME: the calling script's short name, used in log lines and file names.
LT_NAME=${LT_NAME:-loadtest}
lt_log() { printf '[%s %s] %s\n' "$LT_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
lt_die() { printf '[%s] ERROR: %s\n' "$LT_NAME" "$*" >&2; exit 1; }

# Only one copy of a script at a time (fd 9 stays open, and locked, until exit).
lt_lock() {
    local lock=/tmp/tern-loadtest-$LT_NAME.lock
    exec 9>"$lock"
    flock -n 9 || lt_die "another loadtest/$LT_NAME.sh is running (lock $lock)"
}

# Results file: lt_out_open DIR creates DIR/<LT_NAME>-<date>-<time>.txt and
# sets LT_OUT; lt_say prints a line to stdout and appends it there.
LT_OUT=""
lt_out_open() {
    mkdir -p "$1"
    LT_OUT=$1/$LT_NAME-$(date +%Y%m%d-%H%M%S).txt
    : >"$LT_OUT"
}
lt_say() { printf '%s\n' "$*" | tee -a "$LT_OUT"; }

# Preamble lines shared by every results file: lt_preamble WORKDIR COMMAND
# [VERSIONS] (machine, load, versions; the caller adds its own settings and
# columns). VERSIONS is the line naming the other server (default: Postfix).
lt_preamble() {
    local work=$1 cmd=$2 versions=${3:-"postfix: $(postconf -d mail_version 2>/dev/null | awk '{ print $3 }')"}
    lt_say "# tern $LT_NAME load test, $(date -Is)"
    lt_say "# command: $cmd loadtest/$LT_NAME.sh"
    lt_say "# host: $(nproc) cores, $(uname -sr), $(awk '/MemTotal/ { printf "%.1f GiB RAM", $2/1048576 }' /proc/meminfo), work dir fs: $(df -T "$work" | awk 'NR==2 { print $2 " on " $1 }')"
    lt_say "# load avg at start: $(cut -d' ' -f1-3 /proc/loadavg)  (other work on the machine makes every figure noisy; compare within one run)"
    lt_say "# $versions"
}

# Message count for a body size: COUNT_1K / COUNT_32K (set by the caller),
# COUNT_<bytes> for other sizes, else COUNT_1K.
lt_count_for() {
    local size=$1 var="COUNT_$1"
    case $size in
        1024) echo "$COUNT_1K" ;;
        32768) echo "$COUNT_32K" ;;
        *) echo "${!var:-$COUNT_1K}" ;;
    esac
}
lt_size_name() { if (($1 % 1024 == 0)); then echo "$(($1 / 1024))KiB"; else echo "${1}B"; fi; }

# Refuse to use a port that something already listens on. SO_REUSEPORT
# servers (tern itself, for one) would otherwise silently share it and the
# load would be split between two servers.
lt_port_busy() { [ -n "$(ss -ltnH "sport = :$1" 2>/dev/null)" ]; }
lt_require_free_ports() {
    local p busy=()
    for p in "$@"; do lt_port_busy "$p" && busy+=("$p"); done
    if [ ${#busy[@]} -gt 0 ]; then
        printf '[%s] ERROR: port(s) %s already in use (ss -ltn):\n' "$LT_NAME" "${busy[*]}" >&2
        for p in "${busy[@]}"; do ss -ltnp "sport = :$p" >&2; done
        printf '[%s] pick other ports with LOADTEST_PORT_BASE=N (see the script header)\n' "$LT_NAME" >&2
        exit 2
    fi
}
# Wait (bounded) until 127.0.0.1:PORT listens. $2 = seconds, $3 = pid to watch.
lt_wait_listen() {
    local port=$1 secs=${2:-30} pid=${3:-} i
    for ((i = 0; i < secs * 10; i++)); do
        [ -n "$(ss -ltnH "src 127.0.0.1 and sport = :$port" 2>/dev/null)" ] && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
    return 1
}
lt_wait_free() {
    local port=$1 secs=${2:-30} i
    for ((i = 0; i < secs * 10; i++)); do
        lt_port_busy "$port" || return 0
        sleep 0.1
    done
    return 1
}

lt_now_ns() { date +%s%N; }

# Stop a process we started: SIGTERM, wait up to $2 s, then SIGKILL.
lt_stop_pid() {
    local pid=$1 secs=${2:-20} i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.1
    done
    lt_log "pid $pid ignored SIGTERM for ${secs}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

# Prometheus text scrape; prints the exposition or nothing.
lt_scrape() { curl -fsS --max-time 5 "http://$1/metrics" 2>/dev/null; }
# lt_metric FILE NAME [LABEL]: sum of all series of one metric name in a
# scrape file, or only of those whose labels contain LABEL (e.g.
# 'result="delivered"'); NA when there is none.
lt_metric() {
    awk -v n="$2" -v l="${3:-}" '
        ($1 == n && l == "") || (index($1, n "{") == 1 && index($1, l) > 0) { s += $NF; f = 1 }
        END { if (f) printf "%.0f\n", s; else print "NA" }' "$1"
}
# lt_metric_delta BEFORE AFTER NAME [LABEL]: AFTER - BEFORE (a series missing
# before counts as 0), NA when missing after.
lt_metric_delta() {
    local a b
    a=$(lt_metric "$2" "$3" "${4:-}")
    [ "$a" = NA ] && { echo NA; return; }
    b=$(lt_metric "$1" "$3" "${4:-}")
    [ "$b" = NA ] && b=0
    echo $((a - b))
}

# lt_status_kib PID FIELD: one KiB field of /proc/PID/status (VmHWM: peak
# resident set; RssAnon: resident anonymous memory now, i.e. without
# file-backed pages such as a mapped spool).
lt_status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null; }
lt_hwm_kib() { lt_status_kib "$1" VmHWM; }

# PIDs of a process and its direct children (Postfix's master forks every
# daemon itself, so that is the whole instance).
lt_family() {
    local root=$1
    grep -sH '^PPid:' /proc/[0-9]*/status 2>/dev/null |
        awk -F'[/:\t ]+' -v r="$root" '$0 ~ /PPid/ && $NF == r { print $3 }'
    echo "$root"
}
# Sum of VmRSS (KiB) over a process and its direct children.
lt_family_rss_kib() {
    local root=$1
    # one grep over /proc: "/proc/PID/status:PPid:\tN" and "...:VmRSS:\tN kB"
    grep -sH -E '^(PPid|VmRSS):' /proc/[0-9]*/status 2>/dev/null |
        awk -F'[/:\t ]+' -v r="$root" '
            # fields: "" proc PID status NAME VALUE [kB]
            $5 == "PPid"  { pp[$3] = $6 }
            $5 == "VmRSS" { rss[$3] = $6 }
            END { for (p in rss) if (p == r || pp[p] == r) s += rss[p]; printf "%d\n", s }'
}
# Sum of Pss (KiB) over the same set: shared pages counted once overall.
lt_family_pss_kib() {
    local p s=0 v
    for p in $(lt_family "$1"); do
        v=$(awk '/^Pss:/ { print $2; exit }' "/proc/$p/smaps_rollup" 2>/dev/null)
        s=$((s + ${v:-0}))
    done
    echo "$s"
}

# lt_family_cpu_ticks PID: CPU time (clock ticks, user + system) of a
# process (all its threads), of its live direct children, and of the
# children it has already reaped (cutime + cstime: Dovecot's master reaps
# every imap and pop3 process that ends).
lt_family_cpu_ticks() {
    awk -v r="$1" '
        {
            pid = FILENAME; sub(/^\/proc\//, "", pid); sub(/\/stat$/, "", pid)
            sub(/^.*\) /, "")   # after "pid (comm) ": $1 = state, $2 = ppid, $12.. = utime stime cutime cstime
            if (pid == r) s += $12 + $13 + $14 + $15
            else if ($2 == r) s += $12 + $13
        }
        END { printf "%d\n", s }' /proc/[0-9]*/stat 2>/dev/null
}

# Background sampler: records the peak of lt_family_rss_kib ROOT into FILE
# every 0.5 s until FILE.stop exists. Sets LT_SAMPLER_PID and LT_SAMPLER_STOP
# (call it directly, not inside $(...), so the sampler is our own child and
# can be waited for; the exit trap in procs.sh stops it if still running).
LT_SAMPLER_PID=""
# shellcheck disable=SC2034  # read by the exit trap in procs.sh
LT_SAMPLER_STOP=""
lt_rss_sampler_start() {
    local root=$1 file=$2
    rm -f "$file.stop"
    echo 0 >"$file"
    (
        max=0
        while [ ! -e "$file.stop" ]; do
            v=$(lt_family_rss_kib "$root")
            if [ "${v:-0}" -gt "$max" ]; then max=$v; echo "$max" >"$file"; fi
            sleep 0.5
        done
    ) >/dev/null 2>&1 &
    LT_SAMPLER_PID=$!
    LT_SAMPLER_STOP=$file.stop
}
# lt_rss_sampler_stop FILE -> prints the peak (KiB).
lt_rss_sampler_stop() {
    local file=$1
    touch "$file.stop"
    wait "$LT_SAMPLER_PID" 2>/dev/null
    LT_SAMPLER_PID=""
    # shellcheck disable=SC2034  # read by the exit trap in procs.sh
    LT_SAMPLER_STOP=""
    cat "$file"
}

# Formatting helpers (awk does the float maths; "NA" propagates).
lt_div() { awk -v a="$1" -v b="$2" -v f="${3:-%.1f}" 'BEGIN { if (a == "NA" || b == "NA" || b + 0 == 0) print "NA"; else printf f "\n", a / b }'; }
lt_rate() { awk -v n="$1" -v ns="$2" 'BEGIN { if (n == "NA" || ns + 0 <= 0) print "NA"; else printf "%.0f\n", n / (ns / 1e9) }'; }
lt_mib() { awk -v k="$1" 'BEGIN { if (k == "NA" || k == "") print "NA"; else printf "%.1f\n", k / 1024 }'; }
