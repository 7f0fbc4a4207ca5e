#!/usr/bin/env bash
# Interop with real POP3 and IMAP clients: mail for a local user is sent
# with Python's smtplib, then read with Python's poplib (USER/PASS in
# clear, STLS, implicit TLS), curl (pop3://, STLS, pop3s://, imap://,
# imaps://), fetchmail (POP3 with STLS, certificate checked against a test
# CA made here) and Python's imaplib (LOGIN, STARTTLS, IMAP over TLS,
# SELECT/FETCH/STORE/SEARCH/COPY/EXPUNGE, APPEND, and IDLE seeing a new
# delivery) and mbsync (two-way sync with a local Maildir over IMAPS),
# against the release binary. Installs curl, fetchmail, openssl and iproute2 (Debian) when
# missing. Must never use anything but 127.0.0.1, ports it checked are
# free, and a temp dir it removes.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
interop_install curl:curl fetchmail:fetchmail mbsync:isync
SMTP=$(interop_port); POP3=$(interop_port); POP3S=$(interop_port); IMAP=$(interop_port); IMAPS=$(interop_port)

cat > "$WORK/tern.toml" <<TOML
[server]
workers = 2
hostname = "interop.test"
[smtp]
listen = ["127.0.0.1:$SMTP"]
submission = []
[spool]
dir = "$WORK/spool"
[relay]
local_domains = ["local.test"]
[users]
file = "$WORK/users.toml"
[pop3]
listen = ["127.0.0.1:$POP3"]
tls_listen = ["127.0.0.1:$POP3S"]
[imap]
listen = ["127.0.0.1:$IMAP"]
tls_listen = ["127.0.0.1:$IMAPS"]
[tls]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
[metrics]
listen = ""
TOML
PASSWORD="interop secret"
printf '%s\n' "$PASSWORD" | "$TERN" -c "$WORK/tern.toml" user add alice@local.test --password-stdin

interop_start_tern

echo "-- python smtplib in, poplib out (USER/PASS, STLS, implicit TLS)"
timeout 120 python3 - "$SMTP" "$POP3" "$POP3S" "$WORK/ca.pem" "$PASSWORD" <<'PY'
import poplib, smtplib, ssl, sys, time
smtp, pop3, pop3s, ca, password = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
for n in range(3):
    with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as s:
        s.sendmail("bob@example.org", ["alice@local.test"],
                   f"Subject: interop {n}\r\nMessage-ID: <{n}@interop.test>\r\n\r\n.leading dot\r\nbody {n}\r\n")
context = ssl.create_default_context(cafile=ca)

def login(kind):
    if kind == "plain":
        p = poplib.POP3("127.0.0.1", pop3, timeout=30)
    elif kind == "stls":
        p = poplib.POP3("127.0.0.1", pop3, timeout=30)
        p.stls(context=context)
    else:
        p = poplib.POP3_SSL("127.0.0.1", pop3s, context=context, timeout=30)
    p.user("alice@local.test")
    p.pass_(password)
    return p

deadline = time.time() + 30
while True:
    p = login("plain")
    count, _ = p.stat()
    p.quit()
    if count == 3 or time.time() > deadline:
        break
    time.sleep(0.2)
assert count == 3, f"{count} messages in the maildrop"
p = login("stls")
assert "STLS" not in p.capa(), p.capa()
lines = p.retr(1)[1]
assert lines[0].startswith(b"Return-Path: <bob@example.org>"), lines[:3]
assert b".leading dot" in lines, lines
uidls = p.uidl()[1]
p.quit()
p = login("implicit")
assert p.uidl()[1] == uidls, (p.uidl(), uidls)
top = p.top(2, 0)[1]
assert b"Subject: interop 1" in top and b"body 1" not in top, top
p.dele(3)
p.quit()
p = login("plain")
assert p.stat()[0] == 2, p.stat()
p.quit()
print("poplib: plain, STLS and implicit TLS ok; deletion at QUIT applied")
PY

echo "-- curl (pop3://, STLS, pop3s://)"
timeout 60 curl -sS --user "alice@local.test:$PASSWORD" "pop3://127.0.0.1:$POP3/1" -o "$WORK/curl1.eml"
grep -q "Subject: interop 0" "$WORK/curl1.eml"
timeout 60 curl -sS --ssl-reqd --cacert "$WORK/ca.pem" --user "alice@local.test:$PASSWORD" \
  "pop3://localhost:$POP3/2" -o "$WORK/curl2.eml"
grep -q "Subject: interop 1" "$WORK/curl2.eml"
timeout 60 curl -sS --cacert "$WORK/ca.pem" --user "alice@local.test:$PASSWORD" \
  "pop3s://localhost:$POP3S/" > "$WORK/curl.list"
[ "$(wc -l < "$WORK/curl.list")" -eq 2 ] || { cat "$WORK/curl.list"; exit 1; }

echo "-- fetchmail (STLS, certificate checked, messages kept)"
cat > "$WORK/fetchmailrc" <<RC
set no syslog
poll localhost protocol POP3 port $POP3 uidl
  user "alice@local.test" password "$PASSWORD"
  sslproto tls1.2+ sslcertck sslcertfile "$WORK/ca.pem"
  keep fetchall
  mda "/bin/sh -c 'cat >> $WORK/fetched.mbox'"
RC
chmod 600 "$WORK/fetchmailrc"
timeout 60 fetchmail -f "$WORK/fetchmailrc" --nodetach --idfile "$WORK/fetchids" >"$WORK/fetchmail.log" 2>&1 \
  || { cat "$WORK/fetchmail.log"; exit 1; }
[ "$(grep -c '^Subject: interop' "$WORK/fetched.mbox")" -eq 2 ] || { cat "$WORK/fetchmail.log"; exit 1; }
echo "-- python imaplib (LOGIN, STARTTLS, IMAP over TLS, IDLE)"
timeout 120 python3 - "$SMTP" "$IMAP" "$IMAPS" "$WORK/ca.pem" "$PASSWORD" <<'PY'
import imaplib, smtplib, ssl, sys
smtp, imap, imaps, ca, password = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
context = ssl.create_default_context(cafile=ca)

def send(subject):
    with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as s:
        s.sendmail("carol@example.org", ["alice@local.test"],
                   f"Subject: {subject}\r\nFrom: Carol <carol@example.org>\r\n\r\nimap body {subject}\r\n")

plain = imaplib.IMAP4("127.0.0.1", imap, timeout=30)
plain.login("alice@local.test", password)
typ, data = plain.select("INBOX")
assert typ == "OK", (typ, data)
count = int(data[0])
assert count == 2, data
typ, data = plain.search(None, "ALL")
assert typ == "OK" and len(data[0].split()) == count, data
typ, data = plain.fetch("1", "(FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODYSTRUCTURE ENVELOPE)")
assert typ == "OK" and b"Subject: interop" in data[0][1], data
typ, data = plain.store("1", "+FLAGS", "(\\Flagged)")
assert typ == "OK" and b"\\Flagged" in data[0], data
typ, data = plain.search(None, "FLAGGED")
assert data[0] == b"1", data
typ, data = plain.search(None, "BODY", "body")
assert typ == "OK" and data[0], data
typ, data = plain.copy("1", "Trash")
assert typ == "OK", data
typ, data = plain.append("Drafts", "(\\Draft)", None, b"Subject: draft\r\n\r\nunfinished\r\n")
assert typ == "OK" and b"APPENDUID" in data[0], data
typ, data = plain.list()
names = b" ".join(data)
assert b"\\Sent" in names and b"Drafts" in names, data
typ, data = plain.status("Trash", "(MESSAGES)")
assert b"MESSAGES 1" in data[0], data
plain.logout()

starttls = imaplib.IMAP4("127.0.0.1", imap, timeout=30)
starttls.starttls(ssl_context=context)
starttls.login("alice@local.test", password)
assert starttls.select("INBOX")[0] == "OK"
starttls.logout()

# IDLE over implicit TLS sees a new delivery (RFC 2177).
idle = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=context, timeout=30)
idle.login("alice@local.test", password)
idle.select("INBOX")
tag = idle._new_tag()
idle.send(tag + b" IDLE\r\n")
assert idle.readline().startswith(b"+"), "no IDLE continuation"
send("while idling")
line = b""
for _ in range(10):
    line = idle.readline()
    if b"EXISTS" in line:
        break
assert line.startswith(b"* 3 EXISTS"), line
idle.send(b"DONE\r\n")
while True:
    line = idle.readline()
    if line.startswith(tag):
        assert b" OK" in line, line
        break
typ, data = idle.fetch("3", "(BODY[TEXT])")
assert b"imap body while idling" in data[0][1], data
idle.logout()
print("imaplib: LOGIN, STARTTLS, TLS, FETCH/STORE/SEARCH/COPY/APPEND/LIST/STATUS and IDLE ok")
PY

echo "-- curl (imap://, imaps://)"
timeout 60 curl -sS --user "alice@local.test:$PASSWORD" "imap://127.0.0.1:$IMAP/INBOX;UID=1" -o "$WORK/curl-imap.eml"
grep -q "Subject: interop" "$WORK/curl-imap.eml" || { cat "$WORK/curl-imap.eml"; exit 1; }
timeout 60 curl -sS --cacert "$WORK/ca.pem" --user "alice@local.test:$PASSWORD" \
  "imaps://localhost:$IMAPS/" > "$WORK/curl-imap.list"
grep -q "INBOX" "$WORK/curl-imap.list" || { cat "$WORK/curl-imap.list"; exit 1; }
echo "-- mbsync (two-way sync with a Maildir over IMAPS)"
mkdir -p "$WORK/maildir"
cat > "$WORK/mbsyncrc" <<RC
IMAPAccount tern
Host localhost
Port $IMAPS
User alice@local.test
Pass "$PASSWORD"
SSLType IMAPS
CertificateFile $WORK/ca.pem

IMAPStore tern-remote
Account tern

MaildirStore local
Path $WORK/maildir/
Inbox $WORK/maildir/INBOX
SubFolders Verbatim

Channel tern
Far :tern-remote:
Near :local:
Patterns INBOX Drafts
Create Near
SyncState *
RC
timeout 60 mbsync -c "$WORK/mbsyncrc" -a >"$WORK/mbsync1.log" 2>&1 || { cat "$WORK/mbsync1.log"; exit 1; }
[ "$(find "$WORK/maildir/INBOX/cur" "$WORK/maildir/INBOX/new" -type f | wc -l)" -eq 3 ] \
  || { ls -R "$WORK/maildir"; cat "$WORK/mbsync1.log"; exit 1; }
grep -rqs "unfinished" "$WORK/maildir/Drafts" || { ls -R "$WORK/maildir"; exit 1; }
# A message written into the local Maildir goes up to the server.
printf 'Subject: from mbsync\r\n\r\nwritten locally\r\n' > "$WORK/maildir/Drafts/new/1.local:2,"
timeout 60 mbsync -c "$WORK/mbsyncrc" -a >"$WORK/mbsync2.log" 2>&1 || { cat "$WORK/mbsync2.log"; exit 1; }
timeout 30 python3 - "$IMAP" "$PASSWORD" <<'PY'
import imaplib, sys
imap = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]), timeout=30)
imap.login("alice@local.test", sys.argv[2])
typ, data = imap.select("Drafts")
typ, data = imap.search(None, 'SUBJECT "from mbsync"')
assert typ == "OK" and data[0], data
imap.logout()
print("mbsync: pulled INBOX and Drafts, pushed a local message")
PY
echo "interop: POP3 and IMAP clients ok"
