"""Real-client interop: Python's smtplib against a running tern.

Sends plain, pipelined-by-smtplib, SMTPUTF8 and STARTTLS (certificate
verified against the test CA) messages, then submits one with login()
after STARTTLS on the submission port (and checks that AUTH is not offered
before TLS, that a wrong password gets 535 and a foreign sender 553),
checks every reply, and prints the queue ids it got, one per line, as
"label id". Talks to 127.0.0.1 only; every socket has a timeout. Must
never send anywhere else.
"""
import smtplib
import ssl
import sys
from email.message import EmailMessage

host, port, ca_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
submission_port, password = int(sys.argv[4]), sys.argv[5]


def message(subject, sender, rcpt, body):
    m = EmailMessage()
    m["From"] = sender
    m["To"] = rcpt
    m["Subject"] = subject
    m.set_content(body)
    return m


def queue_id(reply_text):
    return reply_text.decode().rsplit(" ", 1)[-1]


def send(label, s, msg, sender, rcpts, mail_options=()):
    # sendmail returns only refused recipients; the DATA reply is in
    # s.getreply-history, so use the lower-level calls to read the 250.
    code, _ = s.mail(sender, list(mail_options))
    assert code == 250, (label, "MAIL", code)
    for r in rcpts:
        code, text = s.rcpt(r)
        assert code == 250, (label, "RCPT", code, text)
    # As send_message does: CRLF line ends (smtplib sends bytes unchanged,
    # and tern rejects bare LF like Postfix's smtpd_forbid_bare_newline).
    code, text = s.data(msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")))
    assert code == 250, (label, "DATA", code, text)
    print(label, queue_id(text), flush=True)


with smtplib.SMTP(host, port, timeout=10) as s:
    s.ehlo("interop.test")
    for ext in ("pipelining", "8bitmime", "smtputf8", "chunking", "dsn", "starttls", "size"):
        assert s.has_extn(ext), ext
    send("plain", s, message("plain", "a@example.org", "b@example.net", "hello\n.dot line\n"),
         "a@example.org", ["b@example.net", "c@example.net"])
    utf8 = message("Grüße", "jörg@exämple.org", "zoë@exämple.net", "Grüße aus Köln\n")
    send("smtputf8", s, utf8, "jörg@exämple.org", ["zoë@exämple.net"],
         mail_options=("SMTPUTF8", "BODY=8BITMIME"))
    # Bare LF in DATA (SMTP smuggling) is refused and the session goes on.
    s.mail("a@example.org")
    s.rcpt("b@example.net")
    code, _ = s.data(b"Subject: lf\n\nbare lf\n")
    assert code == 550, code
    # A refused command leaves the session usable.
    code, _ = s.docmd("RCPT TO:<nobody@example.net>")
    assert code == 503, code
    s.rset()

ctx = ssl.create_default_context(cafile=ca_file)
with smtplib.SMTP(host, port, timeout=10) as s:
    s.ehlo("interop.test")
    s.starttls(context=ctx)
    s.ehlo("interop.test")
    assert not s.has_extn("starttls")
    assert s.sock.version() in ("TLSv1.2", "TLSv1.3"), s.sock.version()
    send("starttls", s, message("tls", "a@example.org", "b@example.net", "secret\n"),
         "a@example.org", ["b@example.net"])

with smtplib.SMTP(host, submission_port, timeout=10) as s:
    s.ehlo("interop.test")
    assert not s.has_extn("auth"), "AUTH offered before TLS"
    s.starttls(context=ctx)
    s.ehlo("interop.test")
    assert s.has_extn("auth"), "no AUTH after STARTTLS"
    try:
        s.login("alice@example.org", "wrong " + password)
        raise AssertionError("wrong password accepted")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e
    s.login("alice@example.org", password)
    code, text = s.mail("mallory@example.net")
    assert code == 553, (code, text)
    s.rset()
    send("submission", s, message("submitted", "alice@example.org", "b@example.net", "sent by a user\n"),
         "alice@example.org", ["b@example.net"])
