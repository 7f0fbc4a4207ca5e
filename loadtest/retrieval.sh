#!/usr/bin/env bash
# loadtest/retrieval.sh -- POP3 and IMAP retrieval load test: tern vs a
# private Dovecot.
#
# Purpose: fill tern (over SMTP) and a private Dovecot (Maildirs) with the
# same MSGS messages of 1 KiB and 32 KiB in each of a hundred mailboxes,
# then drive S concurrent sessions (10 and 100), each repeating
# login -> read every message -> logout for DURATION seconds, against each
# server in turn, and print one line per case (protocol x size x sessions):
# messages and MiB read per second from tern and from Dovecot, the ratio,
# and a check that every message read had exactly the bytes sent. Results go
# to stdout and to loadtest/out/retrieval-<date>-<time>.txt. Installs what
# it needs (Debian, as root). Postfix has no mailbox server: Dovecot is the
# usual partner of Postfix and the fair baseline.
#
# Must never: listen on or connect to anything but 127.0.0.1; share a port
# with a server that is already listening (it refuses to start instead);
# start, enable or reconfigure the system Dovecot (its own config, base_dir,
# state_dir and mail under the temp dir); leave a process it started running
# (exit trap); run unbounded (every load run has a duration and a
# `timeout`); run concurrently with another copy of itself (flock); kill
# anything it did not start; change a message it reads (POP3 without DELE,
# IMAP BODY.PEEK).
#
# Usage (from the repo root, as root):
#   loadtest/retrieval.sh              # full run (~7 min on 2 cores)
#   QUICK=1 loadtest/retrieval.sh      # short run, about two minutes
# Environment (defaults in brackets):
#   QUICK [0]            1 = MSGS=20, DURATION=3
#   MSGS [100]           messages in every mailbox (each size)
#   DURATION [20]        seconds of load per case and server (a session round
#                        started before the end runs to its end)
#   SIZES ["1024 32768"] message sizes in bytes (the whole message)
#   SESSIONS ["10 100"]  concurrent sessions; every session has its own user
#                        and mailbox (tern allows one POP3 session per
#                        maildrop, RFC 1939 8)
#   PROTOCOLS ["pop3 imap"]
#   IMAP_BATCH [50]      UIDs per IMAP body FETCH
#   CLIENT_PROCS [4]     client processes the sessions are spread over
#   RUN_TIMEOUT [300]    seconds allowed beyond DURATION for one load run
#   FILL_TIMEOUT [300]   seconds allowed for tern to file the messages
#   LOADTEST_PORT_BASE [25290]  tern SMTP=N, metrics=N+1, POP3=N+2,
#                        IMAP=N+3; Dovecot POP3=N+4, IMAP=N+5
#   TERN_BIN [<repo>/target/release/tern, built with cargo if missing]
#   TERN_IO [auto]       tern [server] io: auto | uring | epoll
#   TERN_WORKERS [0]     tern [server] workers (0 = all cores)
#   SKIP_TERN / SKIP_DOVECOT [0]  1 = leave that server out
#   LOADTEST_WORKDIR [/tmp] where tern's spool and Dovecot's Maildirs live
#   KEEP_WORKDIR [0]     1 = keep spool, Maildirs and logs after the run
#   INSTALL_ONLY [0]     1 = install the dependencies and stop
#   FORCE_INSTALL [0]    1 = run the apt-get step even if Dovecot is there
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
LT_NAME=retrieval
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
# shellcheck source=lib/install.sh
. "$HERE/lib/install.sh"
# shellcheck source=lib/dovecot.sh
. "$HERE/lib/dovecot.sh"
# shellcheck source=lib/procs.sh
. "$HERE/lib/procs.sh"
DRIVER=$HERE/lib/retrieval.py
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- settings
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    MSGS=${MSGS:-20}
    DURATION=${DURATION:-3}
else
    MSGS=${MSGS:-100}
    DURATION=${DURATION:-20}
fi
SIZES=${SIZES:-"1024 32768"}
SESSIONS=${SESSIONS:-"10 100"}
PROTOCOLS=${PROTOCOLS:-"pop3 imap"}
IMAP_BATCH=${IMAP_BATCH:-50}
CLIENT_PROCS=${CLIENT_PROCS:-4}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
FILL_TIMEOUT=${FILL_TIMEOUT:-300}
BASE=${LOADTEST_PORT_BASE:-25290}
TERN_PORT=$BASE
TERN_METRICS_PORT=$((BASE + 1))
TERN_POP3_PORT=$((BASE + 2))
TERN_IMAP_PORT=$((BASE + 3))
DC_POP3_PORT=$((BASE + 4))
DC_IMAP_PORT=$((BASE + 5))
TERN_IO=${TERN_IO:-auto}
TERN_WORKERS=${TERN_WORKERS:-0}
SKIP_TERN=${SKIP_TERN:-0}
SKIP_DOVECOT=${SKIP_DOVECOT:-0}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}

for v in MSGS DURATION IMAP_BATCH CLIENT_PROCS RUN_TIMEOUT FILL_TIMEOUT BASE TERN_WORKERS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || lt_die "$v must be a non-negative integer (got '${!v}')"
done
for v in MSGS DURATION IMAP_BATCH CLIENT_PROCS; do
    [ "${!v}" -gt 0 ] || lt_die "$v must be at least 1"
done
for s in $SIZES; do
    { [[ $s =~ ^[0-9]+$ ]] && [ "$s" -ge 512 ]; } || lt_die "SIZES: '$s' is not a size in bytes of at least 512"
done
USERS=0
for s in $SESSIONS; do
    { [[ $s =~ ^[0-9]+$ ]] && [ "$s" -gt 0 ]; } || lt_die "SESSIONS: '$s' is not a positive integer"
    [ "$s" -gt "$USERS" ] && USERS=$s
done
for p in $PROTOCOLS; do
    case $p in pop3 | imap) ;; *) lt_die "PROTOCOLS: '$p' is not pop3 or imap" ;; esac
done
case $TERN_IO in auto | uring | epoll) ;; *) lt_die "TERN_IO: '$TERN_IO' is not auto, uring or epoll" ;; esac

lt_lock
WORK=""
lt_trap_cleanup

# ---------------------------------------------------------------- preflight
PORTS=()
[ "$SKIP_TERN" = 1 ] || PORTS+=("$TERN_PORT" "$TERN_METRICS_PORT" "$TERN_POP3_PORT" "$TERN_IMAP_PORT")
[ "$SKIP_DOVECOT" = 1 ] || PORTS+=("$DC_POP3_PORT" "$DC_IMAP_PORT")
[ "${INSTALL_ONLY:-0}" = 1 ] || lt_require_free_ports "${PORTS[@]}"
[ "$(id -u)" = 0 ] || lt_die "run as root (installs packages, runs a private Dovecot)"

lt_install_retrieval_deps
if [ "${INSTALL_ONLY:-0}" = 1 ]; then lt_log "INSTALL_ONLY=1: dependencies present, done"; exit 0; fi

# tern makes the users (and their argon2id hashes) for both servers.
lt_tern_bin "$REPO"

lt_out_open "$HERE/out"
RUN_T0=$(lt_now_ns)

WORK=$(mktemp -d "${LOADTEST_WORKDIR:-/tmp}/tern-retrieval.XXXXXX") || lt_die "mktemp failed"
chmod 755 "$WORK"
TDIR=$WORK/tern
mkdir -p "$TDIR"

# ---------------------------------------------------------------- users
# One user per session and size, the same login and password on both
# servers: lt1k001..lt1k100 hold the 1 KiB messages, lt32k001.. the 32 KiB.
PASSWORD_FILE=$WORK/password
(umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$PASSWORD_FILE")
users_file() { echo "$WORK/users-$1.txt"; }
user_prefix() { if (($1 % 1024 == 0)); then echo "$(($1 / 1024))k"; else echo "${1}b"; fi; }
rcpts_file() { echo "$WORK/rcpts-$1.txt"; }
printf '[users]\nfile = "%s"\n' "$TDIR/users.toml" >"$WORK/users-only.toml"
lt_log "adding $((USERS * $(wc -w <<<"$SIZES"))) users with tern user add (argon2id hashes)"
for size in $SIZES; do
    : >"$(users_file "$size")"
    : >"$(rcpts_file "$size")"
    for ((i = 1; i <= USERS; i++)); do
        u=$(printf 'lt%s%03d' "$(user_prefix "$size")" "$i")
        echo "$u" >>"$(users_file "$size")"
        echo "$u@localhost" >>"$(rcpts_file "$size")"
        "$TERN_BIN" -c "$WORK/users-only.toml" user add "$u" --address "$u@localhost" --password-stdin \
            <"$PASSWORD_FILE" >>"$WORK/user-add.log" 2>&1 ||
            lt_die "tern user add $u failed: $(tail -1 "$WORK/user-add.log")"
    done
done

# ---------------------------------------------------------------- tern
TERN_MAILBOX_TOML="# POP3 and IMAP on loopback, passwords in clear (loopback, no TLS)
[pop3]
listen = [\"127.0.0.1:$TERN_POP3_PORT\"]
allow_plaintext_auth = true
[imap]
listen = [\"127.0.0.1:$TERN_IMAP_PORT\"]
allow_plaintext_auth = true"
# tern_deliveries: tern_mailbox_deliveries_total now (0 before the first).
tern_deliveries() {
    local f=$WORK/metrics.txt n
    lt_scrape "127.0.0.1:$TERN_METRICS_PORT" >"$f"
    n=$(lt_metric "$f" tern_mailbox_deliveries_total)
    [ "$n" = NA ] && n=0
    echo "$n"
}
if [ "$SKIP_TERN" != 1 ]; then
    lt_tern_start "$TDIR" "$TERN_PORT" "$TERN_METRICS_PORT" "$TERN_IO" "$TERN_WORKERS" \
        $'[relay]\nlocal_domains = ["localhost"]' "$TERN_MAILBOX_TOML"
    { lt_wait_listen "$TERN_POP3_PORT" 10 "$TERN_PID" && lt_wait_listen "$TERN_IMAP_PORT" 10 "$TERN_PID"; } ||
        lt_die "tern did not listen on POP3 127.0.0.1:$TERN_POP3_PORT and IMAP :$TERN_IMAP_PORT"
    want=0
    for size in $SIZES; do
        lt_log "tern: sending $MSGS messages of $size bytes to $USERS mailboxes over SMTP"
        timeout "$FILL_TIMEOUT" python3 "$DRIVER" smtp --port "$TERN_PORT" --rcpt-file "$(rcpts_file "$size")" \
            --size "$size" --msgs "$MSGS" || lt_die "sending the messages to tern failed"
        want=$((want + MSGS * USERS))
    done
    # Filed = in the mailboxes (tern_mailbox_deliveries_total), bounded wait.
    deadline=$(($(date +%s) + FILL_TIMEOUT))
    while [ "$(tern_deliveries)" -lt "$want" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || lt_die "tern filed $(tern_deliveries) of $want messages in ${FILL_TIMEOUT}s"
        [ -z "$(lt_tern_died "$TDIR")" ] || lt_die "$(lt_tern_died "$TDIR")"
        sleep 0.2
    done
    lt_log "tern: $want messages filed"
fi

# ---------------------------------------------------------------- dovecot
if [ "$SKIP_DOVECOT" != 1 ]; then
    dc_setup "$WORK/dovecot" "$DC_POP3_PORT" "$DC_IMAP_PORT" "$USERS"
    for size in $SIZES; do
        dc_add_users "$TDIR/users.toml" "$(users_file "$size")"
        lt_log "dovecot: writing $MSGS messages of $size bytes into $USERS Maildirs"
        python3 "$DRIVER" maildir --root "$WORK/dovecot/mail" --user-file "$(users_file "$size")" \
            --size "$size" --msgs "$MSGS" || lt_die "writing the Maildirs failed"
    done
    dc_start "$DC_POP3_PORT" "$DC_IMAP_PORT"
fi

# ---------------------------------------------------------------- load runs
# drive SERVER PROTO SIZE SESSIONS ROUNDS LOG -> the driver's JSON line
# in LOG; returns the driver's (or timeout's) exit code. ROUNDS > 0: that
# many rounds per session instead of DURATION.
drive() {
    local server=$1 proto=$2 size=$3 sess=$4 rounds=$5 log=$6 port
    case $server/$proto in
        tern/pop3) port=$TERN_POP3_PORT ;;
        tern/imap) port=$TERN_IMAP_PORT ;;
        dovecot/pop3) port=$DC_POP3_PORT ;;
        dovecot/imap) port=$DC_IMAP_PORT ;;
    esac
    timeout $((DURATION + RUN_TIMEOUT)) python3 "$DRIVER" load --proto "$proto" --port "$port" \
        --user-file "$(users_file "$size")" --password-file "$PASSWORD_FILE" --size "$size" \
        --msgs "$MSGS" --sessions "$sess" --duration "$DURATION" --rounds "$rounds" \
        --procs "$CLIENT_PROCS" --imap-batch "$IMAP_BATCH" >"$log" 2>"$log.err"
}
# json FILE KEY -> a value of the driver's JSON line ("" when missing).
json() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$1" "$2" 2>/dev/null; }
# outcome SERVER RC LOG -> "" when the run read every message it should
# have and had no error, else a short note.
outcome() {
    local server=$1 rc=$2 log=$3 errors msgs
    [ "$rc" = 124 ] && { echo "$server: timeout $((DURATION + RUN_TIMEOUT))s"; return; }
    [ "$rc" = 0 ] || { echo "$server: driver rc=$rc: $(tail -1 "$log.err" | cut -c1-80)"; return; }
    errors=$(json "$log" errors) msgs=$(json "$log" msgs)
    [ "$errors" = 0 ] || { echo "$server: $errors errors: $(json "$log" first_error | cut -c1-100)"; return; }
    [ "${msgs:-0}" -gt 0 ] || echo "$server: no message read"
}
# Servers still alive (notes for the check column).
servers_died() {
    local notes=()
    [ "$SKIP_TERN" = 1 ] || { local t; t=$(lt_tern_died "$TDIR"); [ -n "$t" ] && notes+=("$t"); }
    [ "$SKIP_DOVECOT" = 1 ] || { local d; d=$(dc_died); [ -n "$d" ] && notes+=("$d"); }
    [ ${#notes[@]} -eq 0 ] || (IFS=';'; echo "${notes[*]}")
}

SERVERS=()
[ "$SKIP_TERN" = 1 ] || SERVERS+=(tern)
[ "$SKIP_DOVECOT" = 1 ] || SERVERS+=(dovecot)

# Warm-up, not timed: one round of every session of every mailbox on each
# server and protocol (Dovecot builds its index and moves new/ to cur/,
# tern loads its mailbox journals), which also checks every message once.
for server in "${SERVERS[@]}"; do
    for proto in $PROTOCOLS; do
        for size in $SIZES; do
            log=$WORK/warmup-$server-$proto-$size.json
            lt_log "warm-up: $server $proto, $USERS mailboxes of $MSGS x $size bytes"
            drive "$server" "$proto" "$size" "$USERS" 1 "$log"
            note=$(outcome "$server" $? "$log")
            [ -z "$note" ] || lt_die "warm-up failed: $note (logs in $WORK)"
        done
    done
done

# ---------------------------------------------------------------- preamble
cmdline="QUICK=$QUICK MSGS=$MSGS DURATION=$DURATION SIZES=\"$SIZES\" SESSIONS=\"$SESSIONS\" PROTOCOLS=\"$PROTOCOLS\" IMAP_BATCH=$IMAP_BATCH CLIENT_PROCS=$CLIENT_PROCS"
[ "$SKIP_TERN" = 1 ] && cmdline+=" SKIP_TERN=1" || cmdline+=" TERN_BIN=$TERN_BIN TERN_IO=$TERN_IO TERN_WORKERS=$TERN_WORKERS"
[ "$SKIP_DOVECOT" = 1 ] && cmdline+=" SKIP_DOVECOT=1"
lt_preamble "$WORK" "$cmdline" "dovecot: $(dc_version); python3 $(python3 -c 'import platform; print(platform.python_version())') (client)"
[ "$SKIP_TERN" = 1 ] || lt_say "# tern: $(lt_tern_describe), io=$TERN_IO workers=$TERN_WORKERS, mail filed over SMTP"
[ "$SKIP_DOVECOT" = 1 ] || lt_say "# dovecot: private instance, Maildir (LF, S=/W= sizes in the names, hard links), settings in lib/dovecot.sh; doveconf -n at the end of ${LT_OUT#"$REPO"/}"
lt_say "# load: $USERS users per size with $MSGS messages each, one user per session; session = login (argon2id, the same hash"
lt_say "#   on both servers) -> pop3: STAT, RETR 1..n, QUIT | imap: SELECT INBOX, UID FETCH 1:* (UID FLAGS), UID FETCH of"
lt_say "#   $IMAP_BATCH UIDs at a time (UID RFC822.SIZE BODY.PEEK[]), LOGOUT; repeated for ${DURATION}s; Python client, $CLIENT_PROCS processes"
lt_say "# columns: tern/s, dc/s = messages read / time (from the start until the last session ended); tern/dc = their ratio;"
lt_say "#   ternMiB/s, dcMiB/s = bytes read / time (tern's include the Return-Path:/Received: it puts in front);"
lt_say "#   tCPUus, dcCPUus = server CPU time (user + system; Dovecot: master, its children and the ones it reaped) per"
lt_say "#   message read, in microseconds; tCli, dcCli = the Python client's CPU time / wall time (100% = one core busy);"
lt_say "#   tRounds, dcRounds = whole sessions (login to logout); check = every message read had the bytes sent, no error"
lt_say ""
FMT='%-16s %8s %8s %7s %9s %9s %8s %8s %6s %6s %7s %8s  %s'
# shellcheck disable=SC2059  # FMT is this script's own format
lt_say "$(printf "$FMT" case "tern/s" "dc/s" "tern/dc" "ternMiB/s" "dcMiB/s" "tCPUus" "dcCPUus" "tCli" "dcCli" tRounds dcRounds check)"

CHECK_FAILED=0
for proto in $PROTOCOLS; do
    for size in $SIZES; do
        for sess in $SESSIONS; do
            name="$(lt_size_name "$size") s=$sess $proto"
            declare -A rate=() mib=() rounds=() cpu=() cli=()
            notes=()
            for server in "${SERVERS[@]}"; do
                log=$WORK/$server-$proto-$size-$sess.json
                pid=$TERN_PID
                [ "$server" = dovecot ] && pid=$DC_PID
                lt_log "$name: $server, ${DURATION}s"
                ticks0=$(lt_family_cpu_ticks "$pid")
                drive "$server" "$proto" "$size" "$sess" 0 "$log"
                rc=$?
                ticks1=$(lt_family_cpu_ticks "$pid")
                note=$(outcome "$server" $rc "$log")
                [ -n "$note" ] && notes+=("$note")
                secs=$(json "$log" secs) msgs=$(json "$log" msgs)
                if [ -z "$note" ] && [ -n "$secs" ]; then
                    rate[$server]=$(awk -v n="$msgs" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
                    mib[$server]=$(awk -v n="$(json "$log" bytes)" -v s="$secs" 'BEGIN { printf "%.1f", n / s / 1048576 }')
                    cpu[$server]=$(awk -v t=$((ticks1 - ticks0)) -v hz="$CLK_TCK" -v n="$msgs" 'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
                    cli[$server]=$(awk -v c="$(json "$log" client_cpu)" -v s="$secs" 'BEGIN { printf "%.0f%%", c / s * 100 }')
                fi
                rounds[$server]=$(json "$log" rounds)
            done
            died=$(servers_died)
            [ -n "$died" ] && notes+=("$died")
            check=ok
            [ ${#notes[@]} -gt 0 ] && check=$(IFS=';'; echo "${notes[*]}")
            [ "$check" = ok ] || CHECK_FAILED=1
            t=${rate[tern]:-NA} d=${rate[dovecot]:-NA}
            # shellcheck disable=SC2059
            lt_say "$(printf "$FMT" "$name" "$t" "$d" "$(lt_div "$t" "$d" %.2f)" "${mib[tern]:-NA}" \
                "${mib[dovecot]:-NA}" "${cpu[tern]:-NA}" "${cpu[dovecot]:-NA}" "${cli[tern]:-NA}" \
                "${cli[dovecot]:-NA}" "${rounds[tern]:-NA}" "${rounds[dovecot]:-NA}" "$check")"
            unset rate mib rounds cpu cli
        done
    done
done

lt_say ""
[ "$SKIP_TERN" = 1 ] || lt_say "# tern peak RSS (VmHWM): $(lt_mib "$(lt_hwm_kib "$TERN_PID")") MiB"
[ "$SKIP_DOVECOT" = 1 ] || lt_say "# dovecot errors logged: $(dc_log_errors) (log kept in the work dir with KEEP_WORKDIR=1)"
lt_say "# load avg at end: $(cut -d' ' -f1-3 /proc/loadavg); whole run $((($(lt_now_ns) - RUN_T0) / 1000000000)) s; results: ${LT_OUT#"$REPO"/}"
if [ "$SKIP_DOVECOT" != 1 ]; then
    { echo; echo "# dovecot: doveconf -n"; doveconf -c "$DC_CONF" -n 2>&1 | sed 's/^/#   /'; } >>"$LT_OUT"
fi
if [ "$CHECK_FAILED" = 1 ]; then
    lt_say "# FAILED: at least one case's check is not ok (see the check column)"
    exit 1
fi
