#!/usr/bin/env bash
# Interop with real SMTP clients beyond the Rust test suite: Python's
# smtplib (plain, SMTPUTF8, STARTTLS with a test CA made here) and swaks
# (pipelining, STARTTLS), against the release binary, then checks that
# `tern queue` lists every acknowledged message with the bytes sent.
# Installs swaks (Debian) when missing. Must never use anything but
# 127.0.0.1, a port it checked is free, and a temp dir it removes.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
interop_install swaks:swaks
PORT=$(interop_port)

cat > "$WORK/tern.toml" <<TOML
[server]
workers = 2
hostname = "interop.test"
[smtp]
listen = ["127.0.0.1:$PORT"]
submission = []
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
interop_start_tern

echo "-- python smtplib"
timeout 60 python3 tests/interop/smtplib_client.py 127.0.0.1 "$PORT" "$WORK/ca.pem" | tee "$WORK/ids"

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

echo "-- queue contents"
"$TERN" queue list --json -c "$WORK/tern.toml" > "$WORK/queue.json"
python3 - "$WORK/queue.json" "$WORK/ids" <<'PY'
import json, sys
queue = json.load(open(sys.argv[1]))
ids = {line.split()[1]: line.split()[0] for line in open(sys.argv[2])}
listed = {m["id"]: m for m in queue}
missing = [i for i in ids if i not in listed]
assert not missing, f"acknowledged but not queued: {missing}"
assert len(queue) == len(ids) + 2, f"expected {len(ids) + 2} messages, found {len(queue)}"
utf8 = listed[[i for i, l in ids.items() if l == "smtputf8"][0]]
assert utf8["sender"] == "jörg@exämple.org", utf8
tls = listed[[i for i, l in ids.items() if l == "starttls"][0]]
assert tls["tls"] is True, tls
subjects = [m for m in queue if m["helo"] == "swaks.test"]
assert len(subjects) == 2, subjects
print(f"interop: {len(queue)} messages queued, all acknowledged ones present")
PY
swaks_tls_id=$(python3 -c 'import json,sys; q=json.load(open(sys.argv[1])); print([m["id"] for m in q if m["tls"] and m["helo"]=="swaks.test"][0])' "$WORK/queue.json")
"$TERN" queue show "$swaks_tls_id" -c "$WORK/tern.toml" | grep -q "swaks tls body"
echo "interop: 2 passed, 0 failed"
