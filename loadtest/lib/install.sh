# shellcheck shell=bash
# loadtest/lib/install.sh -- sourced by loadtest/accept.sh, relay.sh and
# retrieval.sh.
#
# Purpose: make sure Postfix's load tools (smtp-source, smtp-sink, postconf,
# postfix, postsuper) and curl are present on a Debian machine, installing the
# `postfix` package non-interactively when they are not; for retrieval.sh,
# Dovecot's POP3 and IMAP servers (dovecot-imapd, dovecot-pop3d) instead.
#
# Must never: start, enable or configure the system Postfix (its daemon is kept
# down with a policy-rc.d that exits 101 and debconf is preseeded to "No
# configuration"); remove a /usr/sbin/policy-rc.d it did not create; touch
# /etc/postfix beyond creating an empty main.cf when none exists (removed again
# on exit by accept.sh); start, enable or configure the system Dovecot (the
# same policy-rc.d; retrieval.sh runs its own instance from its own config);
# run anything but apt-get against a package registry.

POLICY_RC_D=/usr/sbin/policy-rc.d
LT_CREATED_POLICY_RC_D=0
LT_CREATED_MAIN_CF=0

lt_remove_policy_rc_d() {
    # Only ever remove the policy-rc.d this script wrote itself.
    if [ "$LT_CREATED_POLICY_RC_D" = 1 ]; then
        rm -f "$POLICY_RC_D"
        LT_CREATED_POLICY_RC_D=0
        lt_log "removed the $POLICY_RC_D this script created"
    fi
}

# lt_apt_install PKG...: apt-get install the packages with no service
# started (policy-rc.d), Postfix's debconf preseeded to "No configuration".
lt_apt_install() {
    local need=()
    mapfile -t need < <(printf '%s\n' "$@" | sort -u)
    [ "$(id -u)" = 0 ] || lt_die "missing ${need[*]}; run as root so the script can apt-get install them"
    command -v apt-get >/dev/null 2>&1 || lt_die "missing ${need[*]} and no apt-get (Debian expected)"
    lt_log "installing: ${need[*]}"
    if [ ! -e "$POLICY_RC_D" ]; then
        # Keep every service installed now from starting (invoke-rc.d and
        # deb-systemd-invoke honour exit code 101 = "action forbidden").
        printf '#!/bin/sh\n# written by tern loadtest/%s.sh; removed when it exits\nexit 101\n' "$LT_NAME" >"$POLICY_RC_D"
        chmod 755 "$POLICY_RC_D"
        LT_CREATED_POLICY_RC_D=1
    fi
    # "No configuration": the package installs binaries only, no main.cf,
    # no listener on port 25.
    printf '%s\n' \
        'postfix postfix/main_mailer_type select No configuration' \
        'postfix postfix/mailname string loadtest.invalid' |
        debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -q || lt_die "apt-get update failed"
    timeout 900 apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${need[@]}" || lt_die "apt-get install ${need[*]} failed"
    lt_remove_policy_rc_d
}

lt_install_deps() {
    local need=()
    command -v smtp-source >/dev/null 2>&1 || need+=(postfix)
    command -v smtp-sink   >/dev/null 2>&1 || need+=(postfix)
    command -v postconf    >/dev/null 2>&1 || need+=(postfix)
    command -v curl        >/dev/null 2>&1 || need+=(curl)
    command -v hostname    >/dev/null 2>&1 || need+=(hostname)
    command -v ss          >/dev/null 2>&1 || need+=(iproute2)
    command -v timeout     >/dev/null 2>&1 || need+=(coreutils)
    [ "${FORCE_INSTALL:-0}" = 1 ] && need+=(postfix curl)
    [ ${#need[@]} -gt 0 ] && lt_apt_install "${need[@]}"
    for t in smtp-source smtp-sink postconf postfix postsuper curl ss timeout hostname; do
        command -v "$t" >/dev/null 2>&1 || lt_die "$t still missing after install"
    done
    hostname >/dev/null 2>&1 || lt_die "'hostname' does not work; Postfix needs a working hostname"
    getent passwd postfix >/dev/null || lt_die "user 'postfix' missing (postfix package broken?)"
    getent group postdrop >/dev/null || lt_die "group 'postdrop' missing (postfix package broken?)"
    # Several Postfix commands read the default /etc/postfix/main.cf even when
    # given -c DIR. With "No configuration" it does not exist: create an empty
    # one (all defaults, no listener is ever started from it) and remove it on
    # exit.
    if [ ! -e /etc/postfix/main.cf ]; then
        mkdir -p /etc/postfix
        : >/etc/postfix/main.cf
        LT_CREATED_MAIN_CF=1
    fi
}

lt_remove_main_cf() {
    if [ "$LT_CREATED_MAIN_CF" = 1 ]; then
        rm -f /etc/postfix/main.cf
        LT_CREATED_MAIN_CF=0
    fi
}

# Dovecot (master, doveadm), the IMAP and POP3 servers, curl, ss, timeout
# and a python3 for the driver.
lt_install_retrieval_deps() {
    local need=() t
    command -v dovecot >/dev/null 2>&1 || need+=(dovecot-core)
    command -v doveadm >/dev/null 2>&1 || need+=(dovecot-core)
    [ -x /usr/lib/dovecot/imap ] || need+=(dovecot-imapd)
    [ -x /usr/lib/dovecot/pop3 ] || need+=(dovecot-pop3d)
    command -v curl    >/dev/null 2>&1 || need+=(curl)
    command -v ss      >/dev/null 2>&1 || need+=(iproute2)
    command -v timeout >/dev/null 2>&1 || need+=(coreutils)
    command -v python3 >/dev/null 2>&1 || need+=(python3)
    [ "${FORCE_INSTALL:-0}" = 1 ] && need+=(dovecot-core dovecot-imapd dovecot-pop3d)
    [ ${#need[@]} -gt 0 ] && lt_apt_install "${need[@]}"
    for t in dovecot doveadm curl ss timeout python3; do
        command -v "$t" >/dev/null 2>&1 || lt_die "$t still missing after install"
    done
    for t in imap pop3; do
        [ -x /usr/lib/dovecot/$t ] || lt_die "/usr/lib/dovecot/$t still missing after install"
    done
    getent passwd dovecot >/dev/null || lt_die "user 'dovecot' missing (dovecot-core broken?)"
    getent passwd dovenull >/dev/null || lt_die "user 'dovenull' missing (dovecot-core broken?)"
}
