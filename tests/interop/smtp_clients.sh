#!/usr/bin/env bash
# Interop with real SMTP clients beyond the Rust test suite: Python's
# smtplib (plain, SMTPUTF8, STARTTLS with a test CA made here, and
# submission with login() after STARTTLS) and swaks (pipelining, STARTTLS,
# AUTH PLAIN and LOGIN on the submission port), against the release binary,
# then checks that `tern queue` lists every acknowledged message with the
# bytes sent and the authenticated user where there was one.
# Installs swaks (Debian) when missing. Must never use anything but
# 127.0.0.1, a port it checked is free, and a temp dir it removes.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
interop_install swaks:swaks
PORT=$(interop_port)
SUBMISSION_PORT=$(interop_port)
PASSWORD='interop pass phrase'

cat > "$WORK/tern.toml" <<TOML
[server]
workers = 2
hostname = "interop.test"
[smtp]
listen = ["127.0.0.1:$PORT"]
submission = ["127.0.0.1:$SUBMISSION_PORT"]
[spool]
dir = "$WORK/spool"
[relay]
# Keep the test mail queued: nothing may be relayed off this machine.
hold = true
[users]
file = "$WORK/users.toml"
[pop3]
listen = []
[imap]
listen = []
[tls]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
[metrics]
listen = ""
TOML
printf '%s\n' "$PASSWORD" | "$TERN" -c "$WORK/tern.toml" user add alice@example.org --password-stdin
interop_start_tern

echo "-- python smtplib"
timeout 60 python3 tests/interop/smtplib_client.py 127.0.0.1 "$PORT" "$WORK/ca.pem" \
  "$SUBMISSION_PORT" "$PASSWORD" | tee "$WORK/ids"

echo "-- swaks (pipelining)"
timeout 60 swaks --server 127.0.0.1 --port "$PORT" --pipeline --helo swaks.test \
  --from s@example.org --to t@example.net --header "Subject: swaks pipelined" \
  --body "swaks body" >"$WORK/swaks1.log" 2>&1 || { cat "$WORK/swaks1.log"; exit 1; }
echo "-- swaks (STARTTLS)"
timeout 60 swaks --server 127.0.0.1 --port "$PORT" --tls --tls-verify --tls-ca-path "$WORK/ca.pem" \
  --tls-sni localhost --helo swaks.test --from s@example.org --to t@example.net \
  --header "Subject: swaks tls" --body "swaks tls body" >"$WORK/swaks2.log" 2>&1 \
  || { cat "$WORK/swaks2.log"; exit 1; }
grep -q "TLS started" "$WORK/swaks2.log" || { cat "$WORK/swaks2.log"; exit 1; }
for mechanism in PLAIN LOGIN; do
  echo "-- swaks (submission, STARTTLS, AUTH $mechanism)"
  timeout 60 swaks --server 127.0.0.1 --port "$SUBMISSION_PORT" --tls --tls-verify \
    --tls-ca-path "$WORK/ca.pem" --tls-sni localhost --helo swaks-auth.test \
    --auth "$mechanism" --auth-user alice@example.org --auth-password "$PASSWORD" \
    --from alice@example.org --to t@example.net --header "Subject: swaks auth $mechanism" \
    --body "swaks auth body" >"$WORK/swaks-$mechanism.log" 2>&1 \
    || { cat "$WORK/swaks-$mechanism.log"; exit 1; }
  grep -q "235 2.7.0" "$WORK/swaks-$mechanism.log" || { cat "$WORK/swaks-$mechanism.log"; exit 1; }
done

echo "-- queue contents"
"$TERN" queue list --json -c "$WORK/tern.toml" > "$WORK/queue.json"
python3 - "$WORK/queue.json" "$WORK/ids" <<'PY'
import json, sys
queue = json.load(open(sys.argv[1]))
ids = {line.split()[1]: line.split()[0] for line in open(sys.argv[2])}
listed = {m["id"]: m for m in queue}
missing = [i for i in ids if i not in listed]
assert not missing, f"acknowledged but not queued: {missing}"
assert len(queue) == len(ids) + 4, f"expected {len(ids) + 4} messages, found {len(queue)}"
utf8 = listed[[i for i, l in ids.items() if l == "smtputf8"][0]]
assert utf8["sender"] == "jörg@exämple.org", utf8
tls = listed[[i for i, l in ids.items() if l == "starttls"][0]]
assert tls["tls"] is True, tls
subjects = [m for m in queue if m["helo"] == "swaks.test"]
assert len(subjects) == 2, subjects
submitted = [m for m in queue if m["helo"] == "swaks-auth.test"]
assert len(submitted) == 2 and all(m["auth"] == "alice@example.org" and m["tls"] for m in submitted), submitted
login = listed[[i for i, l in ids.items() if l == "submission"][0]]
assert login["auth"] == "alice@example.org" and login["tls"], login
assert all(m["auth"] is None for m in queue if m not in submitted and m is not login), queue
print(f"interop: {len(queue)} messages queued, all acknowledged ones present")
PY
swaks_tls_id=$(python3 -c 'import json,sys; q=json.load(open(sys.argv[1])); print([m["id"] for m in q if m["tls"] and m["helo"]=="swaks.test"][0])' "$WORK/queue.json")
"$TERN" queue show "$swaks_tls_id" -c "$WORK/tern.toml" | grep -q "swaks tls body"
echo "interop: 3 passed, 0 failed"
