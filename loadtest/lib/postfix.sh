# shellcheck shell=bash
# loadtest/lib/postfix.sh -- sourced by loadtest/accept.sh and relay.sh.
#
# Purpose: build, start, stop and empty a private Postfix instance for the
# load tests: its own config_directory and queue_directory under the run's
# temp dir, smtpd on 127.0.0.1:$PF_PORT only, in one of two modes:
#   hold  -- every accepted message is kept in the hold queue (accept.sh:
#            the counterpart of tern's `[relay] hold = true`);
#   relay -- every accepted message is relayed to 127.0.0.1:SINKPORT (relay.sh:
#            the counterpart of tern's `[relay] smarthost`), tuned for speed.
#
# Must never: touch the system instance (/etc/postfix, /var/spool/postfix),
# listen on anything but 127.0.0.1, deliver or relay a message anywhere but
# the given loopback sink port, or leave its master process running (the
# exit trap in procs.sh calls pf_stop).

PF_DIR=""      # instance root (set by pf_setup)
PF_CONF=""     # config_directory
PF_QUEUE=""    # queue_directory
PF_STARTED=0

pf_postconf() { postconf -c "$PF_CONF" "$@"; }

# pf_setup ROOTDIR PORT hold
# pf_setup ROOTDIR PORT relay SINKPORT [CONCURRENCY]
pf_setup() {
    PF_DIR=$1
    local port=$2 mode=$3 sink=${4:-} conc=${5:-20} dist
    case $mode in
        hold) ;;
        relay) [[ $sink =~ ^[0-9]+$ ]] || lt_die "pf_setup relay: no sink port" ;;
        *) lt_die "pf_setup: mode '$mode' is not hold or relay" ;;
    esac
    PF_CONF=$PF_DIR/etc
    PF_QUEUE=$PF_DIR/queue
    mkdir -p "$PF_CONF" "$PF_QUEUE" "$PF_DIR/data"
    chown postfix "$PF_DIR/data"
    : >"$PF_CONF/main.cf"
    # Start from the packaged master.cf (what an admin would edit), then
    # change only the smtpd listener and chroot.
    for dist in /usr/share/postfix/master.cf.dist /etc/postfix/master.cf; do
        [ -r "$dist" ] && { cp "$dist" "$PF_CONF/master.cf"; break; }
    done
    [ -s "$PF_CONF/master.cf" ] || lt_die "no master.cf template found (postfix package incomplete?)"

    local -a settings=(
        # --- the instance: own dirs, own identity, loopback only ---------------
        "queue_directory = $PF_QUEUE"
        "data_directory = $PF_DIR/data"
        "mail_owner = postfix"                  # unprivileged daemon user
        "setgid_group = postdrop"               # group of postdrop/postqueue
        "myhostname = loadtest.localdomain"     # fixed FQDN: no dependence on the machine's hostname
        "mydomain = localdomain"
        "inet_interfaces = 127.0.0.1"           # loopback only
        "inet_protocols = ipv4"
        "mydestination ="                       # nothing is local: every recipient is remote
        "mynetworks = 127.0.0.0/8"              # loopback clients may relay ...
        "relay_domains ="                       # ... to any domain (the test uses a remote one)
        "local_recipient_maps ="
        "alias_maps ="                          # no alias database to open
        "alias_database ="
        "compatibility_level = 3.6"             # modern defaults, no compatibility warnings
        "maillog_file = $PF_DIR/maillog"        # log to a file via postlogd (no syslog here)
        "maillog_file_prefixes = $PF_DIR"       # ... which must be under an allowed prefix
        "message_size_limit = 10485760"         # same limit as tern's max_message_size
        "queue_minfree = 0"
        "smtpd_relay_restrictions = permit_mynetworks, reject"
        "smtpd_recipient_restrictions ="
        # --- tuning, as a performance-minded admin would ------------------------
        # No per-client connection/rate limits: all load comes from one client
        # (127.0.0.1) by design. The anvil exceptions cover the same ground.
        "smtpd_client_connection_count_limit = 0"
        "smtpd_client_connection_rate_limit = 0"
        "smtpd_client_message_rate_limit = 0"
        "smtpd_client_recipient_rate_limit = 0"
        "smtpd_client_new_tls_session_rate_limit = 0"
        "smtpd_client_event_limit_exceptions = 127.0.0.0/8"
        # Inflow control would pause smtpd up to 1 s per message whenever the
        # queue manager is not delivering -- which, with mail held, is always.
        "in_flow_delay = 0s"
        # No DNS anywhere: no reverse lookup of the client, native (files)
        # host lookups only.
        "smtpd_peername_lookup = no"
        "smtp_host_lookup = native"
        "lmtp_host_lookup = native"
        "smtp_dns_support_level = disabled"     # successor of disable_dns_lookups
        # Reject decisions deferred to RCPT (the default, stated explicitly).
        "smtpd_delay_reject = yes"
        # No work the test does not ask for on the receive path.
        "receive_override_options = no_address_mappings, no_header_body_checks, no_milters"
        "smtpd_helo_required = no"
        "smtpd_tls_security_level = none"       # plaintext, like the tern side of the test
        "smtpd_sasl_auth_enable = no"
        "biff = no"
    )
    if [ "$mode" = hold ]; then
        settings+=(
            # --- keep accepted mail queued: HOLD -------------------------------
            # Chosen over defer_transports: with HOLD the cleanup daemon writes
            # the (fsynced) queue file straight into the hold queue and the
            # queue manager never touches it, so Postfix does exactly what tern
            # does here: durable accept, no delivery attempt. defer_transports
            # would add queue-manager scans and deferred-queue moves on top.
            "smtpd_end_of_data_restrictions = check_client_access static:HOLD"
            # Enough smtpd (and cleanup) processes to serve 100 sessions at
            # once (the default of 100 would make the 101st client wait).
            "default_process_limit = 200"
        )
    else
        settings+=(
            # --- relay everything to the sink, as fast as it goes --------------
            # One smarthost for all mail; brackets = use the address as is, no
            # MX (or any DNS) lookup.
            "relayhost = [127.0.0.1]:$sink"
            # 100 smtpd + 100 cleanup + CONCURRENCY smtp clients + qmgr & co.
            # must all fit (the default of 100 would throttle the first two).
            "default_process_limit = 300"
            # Parallel deliveries to the one destination (default 20), and
            # start there at once instead of the slow start from 5 that
            # Postfix uses for a destination it does not know yet.
            "default_destination_concurrency_limit = $conc"
            "initial_destination_concurrency = $conc"
            # Keep SMTP connections to the smarthost open and reuse them for
            # the next message: always for this destination (not only "on
            # demand" when a backlog builds), idle ones closed after 5 s like
            # tern's connection_idle_timeout, no cap on messages per
            # connection (Postfix's default; tern's is 1000).
            "smtp_connection_cache_on_demand = yes"
            "smtp_connection_cache_destinations = [127.0.0.1]:$sink"
            "smtp_connection_cache_time_limit = 5s"
            "smtp_connection_reuse_count_limit = 0"
            # Let the queue manager take every message of a run into the
            # active queue at once (defaults 20000 would cap the full run).
            "qmgr_message_active_limit = 100000"
            "qmgr_message_recipient_limit = 100000"
            # No pause between deliveries to one destination (the default,
            # stated so nobody has to look it up).
            "smtp_destination_rate_delay = 0s"
            # Plaintext to the sink (smtp-sink offers no STARTTLS; tern's
            # opportunistic TLS ends up plaintext there too).
            "smtp_tls_security_level = none"
        )
    fi
    # Drop settings this Postfix version does not know (e.g. smtpd_peername_lookup
    # before 3.?): postconf -d prints the defaults of every known parameter.
    local known s name
    known=$(postconf -d 2>/dev/null | awk '{ print $1 }')
    local -a apply=()
    for s in "${settings[@]}"; do
        name=${s%% =*}
        if grep -qx "$name" <<<"$known"; then apply+=("$s")
        else lt_log "postfix: '$name' unknown to this version, skipped"; fi
    done
    pf_postconf -e "${apply[@]}" || lt_die "postconf -e failed"

    # master.cf: no chroot (the instance's queue dir has no chroot files),
    # the packaged port-25 listener off, ours on 127.0.0.1:PORT instead.
    pf_postconf -F '*/*/chroot = n'
    pf_postconf -M# smtp/inet 2>/dev/null || true
    pf_postconf -M "127.0.0.1:$port/inet = 127.0.0.1:$port inet n - n - - smtpd"
    # postlogd serves maillog_file; older master.cf templates lack it.
    pf_postconf -M postlog/unix-dgram >/dev/null 2>&1 ||
        pf_postconf -M "postlog/unix-dgram = postlog unix-dgram n - n - 1 postlogd"

    # postfix(1) reports to syslog unless stderr is a terminal; on failure the
    # reason is in $PF_DIR/maillog (once the instance logs) or rerun by hand.
    postfix -c "$PF_CONF" check >>"$PF_DIR/start.log" 2>&1 ||
        lt_die "postfix -c $PF_CONF check failed (see $PF_DIR/maillog, or run: script -qc 'postfix -c $PF_CONF check' /dev/null)"
    pf_postconf -n >"$PF_DIR/postconf-n.txt"
    pf_postconf -Mf >"$PF_DIR/master-cf.txt"
}

pf_master_pid() { awk '{ print $1 }' "$PF_QUEUE/pid/master.pid" 2>/dev/null; }

pf_start() {
    local port=$1
    postfix -c "$PF_CONF" start >>"$PF_DIR/start.log" 2>&1 || {
        cat "$PF_DIR/start.log" >&2
        tail -5 "$PF_DIR/maillog" >&2 2>/dev/null
        lt_die "postfix start failed (rerun by hand: script -qc 'postfix -c $PF_CONF start' /dev/null)"
    }
    PF_STARTED=1
    lt_wait_listen "$port" 30 || lt_die "postfix smtpd did not listen on 127.0.0.1:$port"
    local i
    for ((i = 0; i < 50; i++)); do [ -n "$(pf_master_pid)" ] && break; sleep 0.1; done
}

pf_stop() {
    [ "$PF_STARTED" = 1 ] || return 0
    postfix -c "$PF_CONF" stop >>"$PF_DIR/start.log" 2>&1 ||
        postfix -c "$PF_CONF" abort >>"$PF_DIR/start.log" 2>&1
    local i pid
    pid=$(pf_master_pid)
    for ((i = 0; i < 100; i++)); do
        { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; } || break
        sleep 0.1
    done
    PF_STARTED=0
}

# Deliveries Postfix logged as sent so far (maillog is kept across cases:
# callers take a before/after difference; postlogd may lag a few ms).
pf_sent_total() {
    [ -r "$PF_DIR/maillog" ] || { echo 0; return; }
    awk '/ status=sent / { n++ } END { print n + 0 }' "$PF_DIR/maillog"
}
# pf_wait_empty SECS: 0 once no message is left in the queue.
pf_wait_empty() {
    local i
    for ((i = 0; i < $1 * 10; i++)); do
        [ "$(pf_queued)" = 0 ] && return 0
        sleep 0.1
    done
    return 1
}
# Messages currently in the hold queue (files, the queue is not hashed by default).
pf_held() { find "$PF_QUEUE/hold" -type f 2>/dev/null | wc -l; }
# Messages anywhere in the queue.
pf_queued() {
    find "$PF_QUEUE/incoming" "$PF_QUEUE/active" "$PF_QUEUE/deferred" \
        "$PF_QUEUE/hold" "$PF_QUEUE/maildrop" -type f 2>/dev/null | wc -l
}
pf_flush_queue() { postsuper -c "$PF_CONF" -d ALL >/dev/null 2>&1 || true; }
