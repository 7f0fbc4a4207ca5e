# shellcheck shell=bash
# loadtest/lib/dovecot.sh -- sourced by loadtest/retrieval.sh (after
# common.sh).
#
# Purpose: a private Dovecot instance for the retrieval load test: its own
# config file, base_dir, state_dir and log under the run's temp dir, POP3
# and IMAP on 127.0.0.1 high ports, a passwd-file user db whose password
# hashes are tern's own (the same argon2id strings, so a login costs both
# servers the same), mail in Maildirs owned by an unprivileged user.
#
# Must never: read or change /etc/dovecot or the system Dovecot's run, state
# or mail folders; listen on anything but 127.0.0.1; signal a process other
# than the master it started (the master stops its own children).

DC_DIR=""
DC_PID=""
DC_CONF=""
# The Maildirs' owner: Dovecot's mail processes run as this uid. nobody is
# above first_valid_uid and owns nothing else that matters.
DC_MAIL_USER=nobody

dc_version() { dovecot --version 2>/dev/null | awk '{ print $1 }'; }

# dc_setup DIR POP3_PORT IMAP_PORT MAX_SESSIONS: writes DIR/dovecot.conf;
# DIR/passwd and DIR/mail/USER/Maildir are filled by dc_add_users and the
# driver's maildir command.
dc_setup() {
    local dir=$1 pop3=$2 imap=$3 max=$4 uid gid
    DC_DIR=$dir
    DC_CONF=$dir/dovecot.conf
    uid=$(id -u "$DC_MAIL_USER") gid=$(id -g "$DC_MAIL_USER")
    mkdir -p "$dir/run" "$dir/state" "$dir/mail"
    chmod 755 "$dir" "$dir/mail"
    : >"$dir/passwd"
    # The limits: MAX_SESSIONS (the most concurrent sessions of any case)
    # plus room for sessions that are closing while the next one logs in.
    local procs=$((max * 2 + 50))
    cat >"$DC_CONF" <<CONF
# written by loadtest/$LT_NAME.sh: a private Dovecot for the retrieval load
# test. Everything not set here is Dovecot's default.
# Own folders: never the system instance's /run/dovecot or /var/lib/dovecot.
base_dir = $dir/run
state_dir = $dir/state
instance_name = tern-loadtest-$LT_NAME
log_path = $dir/dovecot.log
info_log_path = $dir/dovecot.log
protocols = imap pop3
# Loopback only, like every server in the load tests.
listen = 127.0.0.1
# No TLS: tern is tested in clear on loopback too.
ssl = no
# Passwords in clear (loopback, no TLS): what tern's allow_plaintext_auth
# = true allows.
disable_plaintext_auth = no
auth_mechanisms = plain login
# Users: tern's argon2id hashes ({ARGON2ID}\$argon2id\$...), checked by
# libsodium; every mail process runs as $DC_MAIL_USER.
passdb {
  driver = passwd-file
  args = username_format=%u $dir/passwd
}
userdb {
  driver = passwd-file
  args = username_format=%u $dir/passwd
  default_fields = uid=$uid gid=$gid home=$dir/mail/%u
}
mail_location = maildir:$dir/mail/%u/Maildir
# The test opens up to $max sessions of one user each from 127.0.0.1; the
# default of 10 per user and IP is not reached, raised so it never is.
mail_max_userip_connections = $max
# Every process type may have this many processes (default 100): one imap
# or pop3 process per session plus those still exiting.
default_process_limit = $procs
# Connections one process (login, auth, anvil...) may serve (default
# 1000): above the sessions so no service queues a client.
default_client_limit = $((procs * 4))
# Login processes in Dovecot's documented high-performance mode: a few
# long-lived processes (one per core, started at once) each serving many
# connections, instead of one new process per connection.
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $imap
  }
  inet_listener imaps {
    port = 0
  }
  service_count = 0
  process_min_avail = $(nproc)
  client_limit = $((procs * 2))
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $pop3
  }
  inet_listener pop3s {
    port = 0
  }
  service_count = 0
  process_min_avail = $(nproc)
  client_limit = $((procs * 2))
}
# No LMTP, submission or doveadm server listeners: retrieval only.
service lmtp {
  unix_listener lmtp {
    mode = 0
  }
}
CONF
    chown -R "$DC_MAIL_USER:" "$dir/mail"
}

# dc_add_users USERS_TOML USER_FILE: one passwd-file line per login in
# USER_FILE with the argon2id hash tern's users file holds for it.
dc_add_users() {
    local users_toml=$1 user_file=$2
    python3 - "$users_toml" "$user_file" >>"$DC_DIR/passwd" <<'PY' || lt_die "could not copy tern's password hashes for Dovecot"
import sys, tomllib
users = {u["name"]: u["password"] for u in tomllib.load(open(sys.argv[1], "rb"))["user"]}
for name in (l.strip() for l in open(sys.argv[2]) if l.strip()):
    print(f"{name}:{{ARGON2ID}}{users[name]}::::::")
PY
    chmod 640 "$DC_DIR/passwd"
    chown "root:dovecot" "$DC_DIR/passwd"
}

# dc_start: starts the master in the foreground (our child: DC_PID) and
# waits until both ports listen.
dc_start() {
    local pop3=$1 imap=$2
    lt_require_free_ports "$pop3" "$imap"
    chown -R "$DC_MAIL_USER:" "$DC_DIR/mail"
    dovecot -F -c "$DC_CONF" 2>>"$DC_DIR/dovecot.stderr" &
    DC_PID=$!
    if ! lt_wait_listen "$pop3" 30 "$DC_PID" || ! lt_wait_listen "$imap" 10 "$DC_PID"; then
        tail -20 "$DC_DIR/dovecot.log" "$DC_DIR/dovecot.stderr" >&2
        lt_die "dovecot did not listen on 127.0.0.1:$pop3 and :$imap"
    fi
}
dc_stop() {
    lt_stop_pid "$DC_PID" 30
    DC_PID=""
}
# "" when Dovecot's master is alive, else a note.
dc_died() {
    kill -0 "$DC_PID" 2>/dev/null || echo "dovecot died: $(tail -1 "$DC_DIR/dovecot.log" | cut -c1-80)"
}
# Errors and fatal lines Dovecot logged (a count).
dc_log_errors() { grep -c -E ' (Error|Fatal|Panic): ' "$DC_DIR/dovecot.log" 2>/dev/null || true; }
