#!/usr/bin/env bash
# Interop with real SMTP clients beyond the Rust test suite: Python's
# smtplib (plain, SMTPUTF8, STARTTLS with a test CA made here) and swaks
# (pipelining, STARTTLS), against the release binary, then checks that
# `tern queue` lists every acknowledged message with the bytes sent.
# Installs swaks (Debian) when missing. Must never use anything but
# 127.0.0.1, a port it checked is free, and a temp dir it removes.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)

# swaks for the client, openssl for the test CA, ss (iproute2) for the port check.
missing=()
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x target/release/tern ] || cargo build --release
TERN="$REPO/target/release/tern"

WORK=$(mktemp -d)
TERN_PID=""
cleanup() {
  if [ -n "$TERN_PID" ]; then kill "$TERN_PID" 2>/dev/null || true; wait "$TERN_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
if ss -ltnH "sport = :$PORT" | grep -q .; then
  echo "interop: port $PORT is taken; refusing to start" >&2
  exit 2
fi

# Test CA and a localhost certificate signed by it.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=tern interop CA" \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
  -keyout "$WORK/key.pem" -out "$WORK/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$WORK/ext.cnf"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 1 -extfile "$WORK/ext.cnf" -out "$WORK/cert.pem" 2>/dev/null

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
[tls]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
[metrics]
listen = ""
TOML
"$TERN" -c "$WORK/tern.toml" 2>"$WORK/tern.log" &
TERN_PID=$!
for _ in $(seq 100); do
  grep -qs "tern accepting" "$WORK/tern.log" && break
  sleep 0.1
done
grep -q "tern accepting" "$WORK/tern.log" || { cat "$WORK/tern.log"; exit 1; }

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
