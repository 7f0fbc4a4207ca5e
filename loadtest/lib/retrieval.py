#!/usr/bin/env python3
"""loadtest/lib/retrieval.py -- the messages, the mailbox filling and the
POP3/IMAP load driver of loadtest/retrieval.sh (standard library only).

Purpose: make the test messages (the same bytes for tern and Dovecot), send
them to tern over SMTP or write them into Dovecot's Maildirs, and drive S
concurrent POP3 or IMAP sessions against one server for a bounded time,
checking every message fetched, then print one JSON line of counts.

Must never: connect anywhere but the host and port it is given (127.0.0.1
from retrieval.sh); delete, flag or otherwise change a message it reads
(POP3 without DELE, IMAP with BODY.PEEK on a mailbox it only reads); run
without a time bound (socket timeouts, a deadline per run); print a
password.

Subcommands (retrieval.sh calls them; see --help of each):
  smtp      send MSGS messages of SIZE bytes to a list of recipients
  maildir   write MSGS messages of SIZE bytes into USER/Maildir/new of
            every user (hard links to one copy, as a shared store would)
  load      S sessions of login -> read every message -> logout, repeated
            until the deadline; prints {"msgs":..,"bytes":..,"secs":..,...}
"""

import argparse
import imaplib
import json
import multiprocessing
import os
import poplib
import re
import smtplib
import socket
import sys
import threading
import time

# ---------------------------------------------------------------- messages

SEQ_HEADER = re.compile(rb"\r\nX-Loadtest-Seq: (\d+)\r\n")
# What a server may put in front of a stored message: whole header fields
# (tern adds Return-Path: and Received: when it serves a message).
TRACE_PREFIX = re.compile(rb"\A(?:[A-Za-z0-9-]+:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)*\Z")
TRACE_PREFIX_MAX = 4096
SENDER = "loadtest@sender.example"


def message(size, seq):
    """Message number `seq` of exactly `size` bytes, CRLF line ends, lines
    of at most 78 characters, none starting with '.'."""
    head = (
        f"From: tern load test <{SENDER}>\r\n"
        f"To: <mailbox@localhost>\r\n"
        f"Subject: retrieval load test, {size} bytes, message {seq}\r\n"
        f"Date: Sun, 06 Dec 2026 00:00:00 +0000\r\n"
        f"Message-ID: <lt-{size}-{seq}@loadtest.invalid>\r\n"
        f"X-Loadtest-Seq: {seq}\r\n"
        f"\r\n"
    ).encode()
    if len(head) + 2 > size:
        raise ValueError(f"size {size} is smaller than the headers ({len(head)} bytes)")
    lines, left, n = [], size - len(head), 0
    while left > 0:
        n += 1
        width = min(78, left - 2)
        text = f"line {n:05d} of message {seq} " + "abcdefghijklmnopqrstuvwxyz0123456789" * 3
        if width <= 0:
            # a lone CRLF closes the body when 2 bytes are left
            lines.append(b"\r\n")
            left -= 2
            continue
        if left - (width + 2) == 1:
            # never leave 1 byte: it cannot hold a line end
            width -= 1
        lines.append(text[:width].encode() + b"\r\n")
        left -= width + 2
    data = head + b"".join(lines)
    assert len(data) == size, (len(data), size)
    return data


class Expected:
    """The messages a mailbox of `msgs` messages of `size` bytes holds."""

    def __init__(self, size, msgs):
        self.size = size
        self.msgs = msgs
        self.data = {seq: message(size, seq) for seq in range(1, msgs + 1)}

    def check(self, data):
        """None when `data` is one of the messages (optionally behind trace
        header fields), else what is wrong. Returns (seq or None, problem)."""
        m = SEQ_HEADER.search(data)
        if not m:
            return None, f"message of {len(data)} bytes without X-Loadtest-Seq"
        seq = int(m.group(1))
        want = self.data.get(seq)
        if want is None:
            return None, f"unknown message {seq}"
        if not data.endswith(want):
            return seq, f"message {seq}: {len(data)} bytes, content differs from the {len(want)} sent"
        prefix = data[: len(data) - len(want)]
        if len(prefix) > TRACE_PREFIX_MAX or not TRACE_PREFIX.match(prefix):
            return seq, f"message {seq}: {len(prefix)} unexpected bytes in front"
        return seq, None


# ---------------------------------------------------------------- filling


def cmd_smtp(args):
    rcpts = [line.strip() for line in open(args.rcpt_file) if line.strip()]
    with smtplib.SMTP(args.host, args.port, timeout=60) as s:
        s.ehlo("loadtest.invalid")
        for seq in range(1, args.msgs + 1):
            refused = s.sendmail(SENDER, rcpts, message(args.size, seq))
            if refused:
                sys.exit(f"retrieval.py smtp: message {seq} refused for {len(refused)} recipients: {refused}")
    return 0


def cmd_maildir(args):
    """Dovecot's LDA stores messages with LF line ends and names the file
    with its size (S=) and its CRLF size (W=) so that Dovecot never has to
    read a file to learn them; this does the same."""
    users = [line.strip() for line in open(args.user_file) if line.strip()]
    store = os.path.join(args.root, f".store-{args.size}")
    os.makedirs(store, exist_ok=True)
    names = []
    base = int(time.time())
    for seq in range(1, args.msgs + 1):
        crlf = message(args.size, seq)
        lf = crlf.replace(b"\r\n", b"\n")
        # seconds part increases with seq, so Maildir order = delivery order
        name = f"{base + seq}.M{seq}P{os.getpid()}.loadtest,S={len(lf)},W={len(crlf)}"
        with open(os.path.join(store, name), "wb") as f:
            f.write(lf)
        names.append(name)
    for user in users:
        md = os.path.join(args.root, user, "Maildir")
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
        for name in names:
            os.link(os.path.join(store, name), os.path.join(md, "new", name))
    return 0


# ---------------------------------------------------------------- sessions


class Tally:
    def __init__(self):
        self.msgs = 0
        self.bytes = 0
        self.rounds = 0
        self.errors = 0
        self.first_error = ""

    def error(self, text):
        self.errors += 1
        if not self.first_error:
            self.first_error = text[:160]


def check_round(expected, got, tally, where):
    """got: list of fetched message bytes of one session round."""
    seqs = set()
    for data in got:
        seq, problem = expected.check(data)
        if problem:
            tally.error(f"{where}: {problem}")
            return
        seqs.add(seq)
    if len(got) != expected.msgs or len(seqs) != expected.msgs:
        tally.error(f"{where}: {len(got)} messages read ({len(seqs)} distinct), {expected.msgs} expected")
        return
    tally.msgs += len(got)
    tally.bytes += sum(len(d) for d in got)
    tally.rounds += 1


def pop3_round(args, user, password, expected, tally):
    """login -> STAT -> RETR 1..n -> QUIT, as a POP3 client that keeps mail
    on the server does (no DELE, so every round finds the same messages)."""
    c = poplib.POP3(args.host, args.port, timeout=args.io_timeout)
    try:
        c.user(user)
        c.pass_(password)
        count, _ = c.stat()
        got = []
        for i in range(1, count + 1):
            _, lines, _ = c.retr(i)
            got.append(b"\r\n".join(lines) + b"\r\n")
        c.quit()
    finally:
        c.close()
    check_round(expected, got, tally, f"pop3 {user}")


FETCH_LITERAL = re.compile(rb"BODY\[\] \{(\d+)\}$")


def imap_round(args, user, password, expected, tally):
    """login -> SELECT INBOX -> UID FETCH 1:* (UID FLAGS) -> UID FETCH of the
    bodies in batches of IMAP_BATCH UIDs (BODY.PEEK[], so nothing is marked
    seen) -> LOGOUT, as a client that downloads a whole mailbox for offline
    use does (Thunderbird's offline sync fetches bodies in UID chunks)."""
    c = imaplib.IMAP4(args.host, args.port, timeout=args.io_timeout)
    try:
        c.login(user, password)
        typ, _ = c.select("INBOX")
        if typ != "OK":
            raise RuntimeError(f"SELECT INBOX: {typ}")
        typ, data = c.uid("FETCH", "1:*", "(UID FLAGS)")
        if typ != "OK":
            raise RuntimeError(f"UID FETCH 1:* (UID FLAGS): {typ}")
        uids = []
        for item in data:
            if isinstance(item, bytes):
                m = re.search(rb"UID (\d+)", item)
                if m:
                    uids.append(int(m.group(1)))
        uids.sort()
        got = []
        for k in range(0, len(uids), args.imap_batch):
            batch = ",".join(str(u) for u in uids[k : k + args.imap_batch])
            typ, data = c.uid("FETCH", batch, "(UID RFC822.SIZE BODY.PEEK[])")
            if typ != "OK":
                raise RuntimeError(f"UID FETCH bodies: {typ}")
            for item in data:
                if isinstance(item, tuple) and FETCH_LITERAL.search(item[0]):
                    got.append(item[1])
        c.logout()
    finally:
        try:
            c.shutdown()
        except OSError:
            pass
    check_round(expected, got, tally, f"imap {user}")


def session(args, user, password, expected, deadline, tally):
    one = pop3_round if args.proto == "pop3" else imap_round
    rounds = 0
    while True:
        try:
            one(args, user, password, expected, tally)
        except (OSError, EOFError, poplib.error_proto, imaplib.IMAP4.error, RuntimeError) as e:
            tally.error(f"{args.proto} {user}: {type(e).__name__}: {e}")
            # a refused or broken server: do not spin
            time.sleep(0.1)
        rounds += 1
        if (args.rounds and rounds >= args.rounds) or (not args.rounds and time.monotonic() >= deadline):
            return


def worker(args, users, password, go, start_box, results):
    expected = Expected(args.size, args.msgs)
    go.wait()
    deadline = start_box.value + args.duration
    tallies = [Tally() for _ in users]
    threads = [
        threading.Thread(target=session, args=(args, u, password, expected, deadline, t), daemon=True)
        for u, t in zip(users, tallies)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.monotonic()
    results.put(
        {
            "msgs": sum(t.msgs for t in tallies),
            "bytes": sum(t.bytes for t in tallies),
            "rounds": sum(t.rounds for t in tallies),
            "errors": sum(t.errors for t in tallies),
            "first_error": next((t.first_error for t in tallies if t.first_error), ""),
            "end": end,
        }
    )


def cmd_load(args):
    users = [line.strip() for line in open(args.user_file) if line.strip()]
    if len(users) < args.sessions:
        sys.exit(f"retrieval.py load: {args.sessions} sessions need {args.sessions} users, file has {len(users)}")
    users = users[: args.sessions]
    password = open(args.password_file).read().strip()
    socket.setdefaulttimeout(args.io_timeout)
    procs = max(1, min(args.procs, args.sessions))
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    start_box = ctx.Value("d", 0.0)
    results = ctx.Queue()
    children = [
        ctx.Process(target=worker, args=(args, users[k::procs], password, go, start_box, results))
        for k in range(procs)
    ]
    for p in children:
        p.start()
    # Every worker has built its expected messages before the clock starts.
    time.sleep(0.5)
    start_box.value = time.monotonic()
    go.set()
    parts = []
    for _ in children:
        parts.append(results.get(timeout=args.duration + args.io_timeout * 4 + 60))
    for p in children:
        p.join(timeout=10)
    secs = max(p["end"] for p in parts) - start_box.value
    # CPU of this process and of the workers it has joined (reaped).
    cpu = os.times()
    out = {
        "proto": args.proto,
        "size": args.size,
        "sessions": args.sessions,
        "msgs": sum(p["msgs"] for p in parts),
        "bytes": sum(p["bytes"] for p in parts),
        "rounds": sum(p["rounds"] for p in parts),
        "errors": sum(p["errors"] for p in parts),
        "first_error": next((p["first_error"] for p in parts if p["first_error"]), ""),
        "secs": round(secs, 3),
        "client_cpu": round(cpu.user + cpu.system + cpu.children_user + cpu.children_system, 3),
    }
    print(json.dumps(out))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("smtp", help="send the messages to tern over SMTP")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--rcpt-file", required=True, help="one recipient address per line")
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--msgs", type=int, required=True)

    m = sub.add_parser("maildir", help="write the messages into Maildirs")
    m.add_argument("--root", required=True, help="folder holding USER/Maildir")
    m.add_argument("--user-file", required=True, help="one user name per line")
    m.add_argument("--size", type=int, required=True)
    m.add_argument("--msgs", type=int, required=True)

    ld = sub.add_parser("load", help="run S sessions against one server")
    ld.add_argument("--proto", choices=("pop3", "imap"), required=True)
    ld.add_argument("--host", default="127.0.0.1")
    ld.add_argument("--port", type=int, required=True)
    ld.add_argument("--user-file", required=True, help="one login per line, one per session")
    ld.add_argument("--password-file", required=True)
    ld.add_argument("--size", type=int, required=True)
    ld.add_argument("--msgs", type=int, required=True, help="messages in every mailbox")
    ld.add_argument("--sessions", type=int, required=True)
    ld.add_argument("--duration", type=float, default=10.0, help="seconds; a round started before it ends runs to its end")
    ld.add_argument("--rounds", type=int, default=0, help="rounds per session instead of a duration (0 = use --duration)")
    ld.add_argument("--procs", type=int, default=4, help="client processes the sessions are spread over")
    ld.add_argument("--imap-batch", type=int, default=50, help="UIDs per body FETCH")
    ld.add_argument("--io-timeout", type=float, default=30.0, help="seconds per socket operation")

    args = ap.parse_args()
    return {"smtp": cmd_smtp, "maildir": cmd_maildir, "load": cmd_load}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
