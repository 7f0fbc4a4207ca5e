# shellcheck shell=bash
# loadtest/lib/common.sh -- sourced by loadtest/accept.sh.
#
# Purpose: small helpers for the accept load test: logging, loopback port
# checks, timing, Prometheus scraping and memory (RSS) measurement.
#
# Must never: kill or signal a process it was not handed the PID of; bind or
# probe anything but 127.0.0.1; read or print credentials.

lt_log() { printf '[accept %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
lt_die() { printf '[accept] ERROR: %s\n' "$*" >&2; exit 1; }

# Refuse to use a port that something already listens on. SO_REUSEPORT
# servers (tern itself, for one) would otherwise silently share it and the
# load would be split between two servers.
lt_port_busy() { [ -n "$(ss -ltnH "sport = :$1" 2>/dev/null)" ]; }
lt_require_free_ports() {
    local p busy=()
    for p in "$@"; do lt_port_busy "$p" && busy+=("$p"); done
    if [ ${#busy[@]} -gt 0 ]; then
        printf '[accept] ERROR: port(s) %s already in use (ss -ltn):\n' "${busy[*]}" >&2
        for p in "${busy[@]}"; do ss -ltnp "sport = :$p" >&2; done
        printf '[accept] pick other ports with LOADTEST_PORT_BASE=N (uses N..N+3)\n' >&2
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
# Sum of all series of one metric name (any labels) in a scrape file.
lt_metric() {
    awk -v n="$2" '
        $1 == n || index($1, n "{") == 1 { s += $NF; f = 1 }
        END { if (f) printf "%.0f\n", s; else print "NA" }' "$1"
}

# Max resident set (VmHWM, KiB) of one process.
lt_hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }

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

# Background sampler: records the peak of lt_family_rss_kib ROOT into FILE
# every 0.5 s until FILE.stop exists. Sets LT_SAMPLER_PID (call it directly,
# not inside $(...), so the sampler is our own child and can be waited for).
# shellcheck disable=SC2034  # read by accept.sh
LT_SAMPLER_PID=""
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
    # shellcheck disable=SC2034  # read by accept.sh
    LT_SAMPLER_PID=$!
}
lt_rss_sampler_stop() {
    local pid=$1 file=$2
    touch "$file.stop"
    wait "$pid" 2>/dev/null
    cat "$file"
}

# Formatting helpers (awk does the float maths; "NA" propagates).
lt_div() { awk -v a="$1" -v b="$2" -v f="${3:-%.1f}" 'BEGIN { if (a == "NA" || b == "NA" || b + 0 == 0) print "NA"; else printf f "\n", a / b }'; }
lt_rate() { awk -v n="$1" -v ns="$2" 'BEGIN { if (n == "NA" || ns + 0 <= 0) print "NA"; else printf "%.0f\n", n / (ns / 1e9) }'; }
lt_mib() { awk -v k="$1" 'BEGIN { if (k == "NA" || k == "") print "NA"; else printf "%.1f\n", k / 1024 }'; }
