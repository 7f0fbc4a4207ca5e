# shellcheck shell=bash
# Shared by the interop scripts (sourced, not run): installing missing
# tools, a temp dir and a tern process that are removed on exit, free
# loopback ports, a test CA with a localhost certificate, and starting the
# release binary. Must never touch anything but 127.0.0.1 and its temp dir.

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
REPO=$(pwd)

# interop_install CMD:PACKAGE ... — apt-get install the packages whose
# command is missing (Debian).
interop_install() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

interop_install python3:python3 openssl:openssl ss:iproute2
[ -x target/release/tern ] || cargo build --release
TERN="$REPO/target/release/tern"

WORK=$(mktemp -d)
TERN_PID=""
interop_cleanup() {
  if [ -n "$TERN_PID" ]; then kill "$TERN_PID" 2>/dev/null || true; wait "$TERN_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap interop_cleanup EXIT

# interop_port — a loopback port nobody listens on; refuses (exit 2) if
# the port turns out to be taken (SO_REUSEPORT servers share silently).
interop_port() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  if ss -ltnH "sport = :$port" | grep -q .; then
    echo "interop: port $port is taken; refusing to start" >&2
    exit 2
  fi
  echo "$port"
}

# Test CA ($WORK/ca.pem) and a certificate for localhost and 127.0.0.1
# signed by it ($WORK/cert.pem, $WORK/key.pem).
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=tern interop CA" \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
  -keyout "$WORK/key.pem" -out "$WORK/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$WORK/ext.cnf"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 1 -extfile "$WORK/ext.cnf" -out "$WORK/cert.pem" 2>/dev/null

# interop_start_tern — run tern on $WORK/tern.toml and wait until it accepts.
interop_start_tern() {
  "$TERN" -c "$WORK/tern.toml" 2>"$WORK/tern.log" &
  TERN_PID=$!
  for _ in $(seq 100); do
    grep -qs "tern accepting" "$WORK/tern.log" && return 0
    sleep 0.1
  done
  cat "$WORK/tern.log"
  exit 1
}
