//! Hostile clients over real TCP on 127.0.0.x: connection caps and rates
//! per client address (while other addresses are served), slow clients cut
//! off at their deadline, the hard error limit, SMTP smuggling over
//! pipelining and BDAT, plaintext injected after STARTTLS, malformed bytes,
//! a 4 GiB IMAP literal announced, and the open-relay tricks from a client
//! outside mynetworks. Each gets a clear answer and the server stays up.
//! Limits changed by a reload apply to the next connection.
//! docs/SECURITY.md lists these cases and the answers asserted here.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::{data_frame, local_mail_config, make_test_ca, tcp_from, wait_filed, RawClient};
use tern::config::Config;
use tern::runtime::{self, ServerHandle};

/// Outside mynetworks in every test here.
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const OTHER_STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const TRUSTED: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// `local_mail_config` (alice@local.test, POP3 and IMAP listeners) with
/// only 127.0.0.1 trusted, so 127.0.0.2 and .3 are strangers.
fn hostile_config(dir: &Path) -> Config {
    let mut c = local_mail_config(dir);
    c.relay.mynetworks = vec!["127.0.0.1/32".parse().unwrap()];
    c
}

fn start(config: &Config) -> ServerHandle {
    runtime::start(config).expect("server starts")
}

/// A line-oriented client for POP3 and IMAP, every read bounded.
struct Lines {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Lines {
    fn connect_from(source: IpAddr, addr: SocketAddr) -> Lines {
        let stream = tcp_from(source, addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Lines {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// The next line without its CRLF; empty at EOF.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line.trim_end_matches(['\r', '\n']).to_string()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.line()
    }

    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0))
    }
}

/// A fresh SMTP session from 127.0.0.1 still gets a greeting and a NOOP.
fn assert_serving(server: &ServerHandle) {
    let (mut c, greeting) = RawClient::connect(server.smtp_addrs[0]).unwrap();
    assert_eq!(greeting.code, 220);
    assert_eq!(c.cmd("NOOP").unwrap().code, 250);
}

#[test]
fn per_ip_cap_refuses_every_protocol_while_other_addresses_connect() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = hostile_config(dir.path());
    config.limits.max_connections_per_ip = 2;
    // Reconnecting in a loop below must not meet the rate limit.
    config.limits.max_connection_rate_per_ip = 0;
    let server = start(&config);
    let (smtp, pop3, imap) = (
        server.smtp_addrs[0],
        server.pop3_addrs[0],
        server.imap_addrs[0],
    );
    let (mut first, greeting) = RawClient::connect_from(STRANGER, smtp).unwrap();
    assert_eq!(greeting.code, 220);
    let mut second = Lines::connect_from(STRANGER, imap);
    assert!(second.line().starts_with("* OK"));

    // The cap counts every listener: a third connection is refused by each.
    let (mut refused, reply) = RawClient::connect_from(STRANGER, smtp).unwrap();
    assert_eq!(
        reply.text(),
        "421 4.7.0 tern.test Too many connections from your address"
    );
    assert!(refused.is_closed());
    let mut refused = Lines::connect_from(STRANGER, pop3);
    assert_eq!(
        refused.line(),
        "-ERR [SYS/TEMP] Too many connections from your address"
    );
    assert!(refused.closed());
    let mut refused = Lines::connect_from(STRANGER, imap);
    assert_eq!(
        refused.line(),
        "* BYE Too many connections from your address"
    );
    assert!(refused.closed());

    // Other addresses are served meanwhile, and so is trusted loopback
    // (mynetworks is exempt) beyond the per-IP cap.
    let (mut other, greeting) = RawClient::connect_from(OTHER_STRANGER, smtp).unwrap();
    assert_eq!(greeting.code, 220);
    assert_eq!(other.cmd("NOOP").unwrap().code, 250);
    let mut other_pop3 = Lines::connect_from(OTHER_STRANGER, pop3);
    assert!(other_pop3.line().starts_with("+OK"));
    let trusted: Vec<RawClient> = (0..3)
        .map(|_| {
            let (c, greeting) = RawClient::connect_from(TRUSTED, smtp).unwrap();
            assert_eq!(greeting.code, 220);
            c
        })
        .collect();

    // Once one of its sessions ends, the stranger may connect again.
    assert_eq!(first.cmd("QUIT").unwrap().code, 221);
    assert!(first.is_closed());
    let admitted = common::sink::wait_for(Duration::from_secs(10), || {
        RawClient::connect_from(STRANGER, smtp).is_ok_and(|(_, greeting)| greeting.code == 220)
    });
    assert!(admitted, "the stranger's place was not given back");
    drop(trusted);
    server.shutdown();
}

#[test]
fn reloaded_limits_refuse_new_connections_and_cut_no_open_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = hostile_config(dir.path());
    config.limits.max_connection_rate_per_ip = 0;
    let mut server = start(&config);
    let smtp = server.smtp_addrs[0];
    let mut open: Vec<RawClient> = (0..2)
        .map(|_| RawClient::connect_from(STRANGER, smtp).unwrap().0)
        .collect();

    config.limits.max_connections_per_ip = 1;
    config.limits.mynetworks_exempt = false;
    let report = server
        .reload(&config, &tern::config::Source::Embedded)
        .unwrap();
    assert_eq!(
        report.applied,
        [
            "[limits] max_connections_per_ip",
            "[limits] mynetworks_exempt"
        ]
    );
    assert!(report.restart_needed.is_empty(), "{report:?}");
    for client in &mut open {
        assert_eq!(
            client.cmd("NOOP").unwrap().code,
            250,
            "an open session goes on"
        );
    }
    let (mut refused, reply) = RawClient::connect_from(STRANGER, smtp).unwrap();
    assert_eq!(
        reply.text(),
        "421 4.7.0 tern.test Too many connections from your address"
    );
    assert!(refused.is_closed());
    // Trusted loopback is no longer exempt: its second connection is refused.
    let (_trusted, greeting) = RawClient::connect_from(TRUSTED, smtp).unwrap();
    assert_eq!(greeting.code, 220);
    let (_, reply) = RawClient::connect_from(TRUSTED, smtp).unwrap();
    assert_eq!(reply.code, 421, "{reply:?}");
    // The stranger gets its place back only when under the new cap.
    open.pop().unwrap().cmd("QUIT").unwrap();
    let (_, reply) = RawClient::connect_from(STRANGER, smtp).unwrap();
    assert_eq!(reply.code, 421, "still one open: {reply:?}");
    open.pop().unwrap().cmd("QUIT").unwrap();
    let admitted = common::sink::wait_for(Duration::from_secs(10), || {
        RawClient::connect_from(STRANGER, smtp).is_ok_and(|(_, greeting)| greeting.code == 220)
    });
    assert!(admitted, "the stranger's place was not given back");
    server.shutdown();
}

#[test]
fn global_cap_refuses_even_trusted_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = hostile_config(dir.path());
    config.limits.max_connections = 3;
    let server = start(&config);
    let smtp = server.smtp_addrs[0];
    let held: Vec<RawClient> = (0..3)
        .map(|_| {
            let (c, greeting) = RawClient::connect(smtp).unwrap();
            assert_eq!(greeting.code, 220);
            c
        })
        .collect();
    let (mut refused, reply) = RawClient::connect(smtp).unwrap();
    assert_eq!(
        reply.text(),
        "421 4.7.0 tern.test Too many connections, try again later"
    );
    assert!(refused.is_closed());
    let mut refused = Lines::connect_from(OTHER_STRANGER, server.imap_addrs[0]);
    assert_eq!(
        refused.line(),
        "* BYE Too many connections, try again later"
    );
    drop(held);
    assert!(common::sink::wait_for(Duration::from_secs(10), || {
        RawClient::connect(smtp).is_ok_and(|(_, greeting)| greeting.code == 220)
    }));
    server.shutdown();
}

#[test]
fn connection_rate_per_ip_refuses_the_burst_but_not_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = hostile_config(dir.path());
    config.limits.max_connection_rate_per_ip = 3;
    let server = start(&config);
    let smtp = server.smtp_addrs[0];
    for _ in 0..3 {
        let (mut c, greeting) = RawClient::connect_from(STRANGER, smtp).unwrap();
        assert_eq!(greeting.code, 220);
        assert_eq!(c.cmd("QUIT").unwrap().code, 221);
    }
    let (mut refused, reply) = RawClient::connect_from(STRANGER, smtp).unwrap();
    assert_eq!(
        reply.text(),
        "421 4.7.0 tern.test Too many connections per minute from your address"
    );
    assert!(refused.is_closed());
    let mut refused = Lines::connect_from(STRANGER, server.pop3_addrs[0]);
    assert_eq!(
        refused.line(),
        "-ERR [SYS/TEMP] Too many connections per minute from your address"
    );
    let (_, greeting) = RawClient::connect_from(OTHER_STRANGER, smtp).unwrap();
    assert_eq!(greeting.code, 220);
    for _ in 0..5 {
        let (mut c, greeting) = RawClient::connect_from(TRUSTED, smtp).unwrap();
        assert_eq!(greeting.code, 220);
        assert_eq!(c.cmd("QUIT").unwrap().code, 221);
    }
    server.shutdown();
}

/// Sends `bytes` one at a time, `interval` apart (shorter than any read
/// timeout), until the server answers and closes or `bytes` run out.
/// Returns everything the server sent, and whether it closed first.
fn trickle(stream: TcpStream, bytes: &[u8], interval: Duration) -> (String, bool) {
    let mut reader = stream.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let reading = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let _ = reader.read_to_end(&mut seen);
        let _ = done_tx.send(());
        String::from_utf8_lossy(&seen).into_owned()
    });
    let mut writer = stream;
    let mut cut_off = false;
    for byte in bytes {
        if writer.write_all(std::slice::from_ref(byte)).is_err() {
            cut_off = true;
            break;
        }
        if done_rx.recv_timeout(interval).is_ok() {
            cut_off = true;
            break;
        }
    }
    let _ = writer.shutdown(std::net::Shutdown::Both);
    (reading.join().unwrap(), cut_off)
}

#[test]
fn slow_clients_are_cut_off_at_the_deadline_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = hostile_config(dir.path());
    config.smtp.command_timeout = Duration::from_secs(2);
    config.smtp.data_timeout = Duration::from_secs(2);
    config.limits.data_min_rate = 100_000;
    config.limits.pop3_autologout = Duration::from_secs(2);
    config.limits.imap_autologout = Duration::from_secs(2);
    let server = start(&config);
    let interval = Duration::from_millis(300);
    let endless = vec![b'x'; 100];

    // A command line trickled a byte at a time (each read well inside the
    // timeout) is cut off at the command deadline...
    let smtp = server.smtp_addrs[0];
    let mut script = b"NOOP ".to_vec();
    script.extend_from_slice(&endless);
    let slow = std::thread::spawn(move || {
        let stream = tcp_from(STRANGER, smtp).unwrap();
        trickle(stream, &script, interval)
    });
    // ...while another client is served meanwhile.
    std::thread::sleep(interval);
    let (mut other, _) = RawClient::connect_from(OTHER_STRANGER, smtp).unwrap();
    assert_eq!(other.cmd("EHLO other.test").unwrap().code, 250);
    assert_eq!(other.cmd("MAIL FROM:<bob@example.org>").unwrap().code, 250);
    assert_eq!(other.cmd("RCPT TO:<alice@local.test>").unwrap().code, 250);
    assert_eq!(other.cmd("DATA").unwrap().code, 354);
    other
        .send(&data_frame(b"Subject: meanwhile\r\n\r\nhi\r\n"))
        .unwrap();
    assert_eq!(other.read_reply().unwrap().code, 250);
    let (seen, cut_off) = slow.join().unwrap();
    assert!(cut_off, "the trickling client was never cut off: {seen:?}");
    assert!(
        seen.ends_with("421 4.4.2 tern.test Error: timeout exceeded\r\n"),
        "{seen:?}"
    );

    // Message content trickled below the minimum rate is cut off too.
    let mut stream = tcp_from(STRANGER, smtp).unwrap();
    stream
        .write_all(b"EHLO slow.test\r\nMAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n")
        .unwrap();
    let (seen, cut_off) = trickle(stream, &endless, interval);
    assert!(cut_off, "{seen:?}");
    assert!(seen.contains("354 "), "{seen:?}");
    assert!(
        seen.ends_with("421 4.4.2 tern.test Error: timeout exceeded\r\n"),
        "{seen:?}"
    );

    // POP3 and IMAP: the autologout timer runs until a command is whole.
    let stream = tcp_from(STRANGER, server.pop3_addrs[0]).unwrap();
    let (seen, cut_off) = trickle(stream, &endless, interval);
    assert!(cut_off, "{seen:?}");
    assert!(
        seen.ends_with("-ERR autologout timer expired\r\n"),
        "{seen:?}"
    );
    let stream = tcp_from(STRANGER, server.imap_addrs[0]).unwrap();
    let (seen, cut_off) = trickle(stream, &endless, interval);
    assert!(cut_off, "{seen:?}");
    assert!(
        seen.ends_with("* BYE Autologout; idle for too long\r\n"),
        "{seen:?}"
    );
    wait_filed(&server.spool, 1);
    assert_serving(&server);
    server.shutdown();
}

#[test]
fn hard_error_limit_closes_with_421_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = hostile_config(dir.path());
    config.limits.hard_error_limit = 3;
    let server = start(&config);
    let (mut c, _) = RawClient::connect_from(STRANGER, server.smtp_addrs[0]).unwrap();
    assert_eq!(c.cmd("BOGUS").unwrap().code, 500);
    assert_eq!(c.cmd("RCPT TO:<alice@local.test>").unwrap().code, 503);
    assert_eq!(c.cmd("NOOP\0").unwrap().code, 500);
    let last = c.read_reply().unwrap();
    assert_eq!(last.text(), "421 4.7.0 tern.test Error: too many errors");
    assert!(c.is_closed());
    let mut pop3 = Lines::connect_from(STRANGER, server.pop3_addrs[0]);
    pop3.line();
    for _ in 0..2 {
        assert_eq!(pop3.cmd("BOGUS"), "-ERR unknown command");
    }
    assert_eq!(pop3.cmd("BOGUS"), "-ERR unknown command");
    assert_eq!(pop3.line(), "-ERR too many bad commands, closing");
    assert!(pop3.closed());
    let mut imap = Lines::connect_from(STRANGER, server.imap_addrs[0]);
    imap.line();
    for _ in 0..2 {
        assert!(imap.cmd("a FROB").starts_with("a BAD"));
    }
    assert!(imap.cmd("a FROB").starts_with("a BAD"));
    assert_eq!(imap.line(), "* BYE Too many invalid commands");
    assert!(imap.closed());
    assert_serving(&server);
    server.shutdown();
}

#[test]
fn messages_per_connection_limit_answers_mail_with_421() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = hostile_config(dir.path());
    config.limits.max_messages_per_connection = 1;
    let server = start(&config);
    let (mut c, _) = RawClient::connect(server.smtp_addrs[0]).unwrap();
    c.cmd("EHLO client.test").unwrap();
    assert_eq!(c.cmd("MAIL FROM:<bob@example.org>").unwrap().code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@local.test>").unwrap().code, 250);
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.send(&data_frame(b"Subject: one\r\n\r\nhi\r\n")).unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    let refused = c.cmd("MAIL FROM:<bob@example.org>").unwrap();
    assert_eq!(
        refused.text(),
        "421 4.7.0 tern.test Error: too many messages in one connection, reconnect to send more"
    );
    assert!(c.is_closed());
    wait_filed(&server.spool, 1);
    server.shutdown();
}

#[test]
fn smuggling_over_pipelining_and_bdat_queues_nothing_extra() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&hostile_config(dir.path()));
    let smtp = server.smtp_addrs[0];
    let forged =
        "MAIL FROM:<evil@example.org>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\nforged\r\n.\r\n";
    // The whole transaction and the smuggled one in a single write.
    for smuggle in ["\n.\n", "\r.\n", "\n.\r\n", "\r\n.\r", "\r\n.\n", "\n..\n"] {
        let (mut c, _) = RawClient::connect(smtp).unwrap();
        c.cmd("EHLO client.test").unwrap();
        let payload = format!(
            "MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\nSubject: x\r\n\r\nhello{smuggle}{forged}"
        );
        c.send(payload.as_bytes()).unwrap();
        assert_eq!(c.read_reply().unwrap().code, 250);
        assert_eq!(c.read_reply().unwrap().code, 250);
        assert_eq!(c.read_reply().unwrap().code, 354);
        let refused = c.read_reply().unwrap();
        assert_eq!(
            refused.text(),
            "550 5.6.0 Error: bare <CR> or <LF> not allowed, lines must end with <CR><LF> (RFC 5321 2.3.8)",
            "smuggle {smuggle:?}"
        );
        assert_eq!(c.cmd("RCPT TO:<alice@local.test>").unwrap().code, 503);
    }
    // In BDAT: a bare line end in a chunk refuses the message...
    let (mut c, _) = RawClient::connect(smtp).unwrap();
    c.cmd("EHLO client.test").unwrap();
    let chunk = format!("Subject: x\r\n\r\nhello\n.\n{forged}");
    c.send(
        format!(
            "MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@local.test>\r\nBDAT {} LAST\r\n{chunk}",
            chunk.len()
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    assert_eq!(c.read_reply().unwrap().code, 250);
    assert_eq!(c.read_reply().unwrap().code, 550);
    assert_eq!(c.cmd("RCPT TO:<alice@local.test>").unwrap().code, 503);
    assert!(server.spool.queued().is_empty());
    // ...and a CRLF.CRLF inside a chunk is content, never an end of data:
    // one message, one recipient, the dot line kept as sent.
    let chunk = format!("Subject: x\r\n\r\nhello\r\n.\r\n{forged}");
    c.send(
        format!(
            "MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@local.test>\r\nBDAT {} LAST\r\n{chunk}",
            chunk.len()
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    assert_eq!(c.read_reply().unwrap().code, 250);
    assert_eq!(c.read_reply().unwrap().code, 250);
    let queued = server.spool.queued();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].envelope.sender, "a@example.org");
    assert_eq!(queued[0].envelope.recipients.len(), 1);
    let stored = server.spool.read(&queued[0].id).unwrap();
    assert_eq!(stored.data(), chunk.as_bytes());
    assert_serving(&server);
    server.shutdown();
}

/// One SMTP reply read from `reader`: its code and its lines joined.
fn read_reply(reader: &mut impl BufRead) -> (u16, String) {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "closed: {text:?}");
        text.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return (line[..3].parse().unwrap(), text);
        }
    }
}

#[test]
fn plaintext_injected_after_starttls_is_never_executed() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, cert, key) = make_test_ca(dir.path());
    let mut config = hostile_config(dir.path());
    config.tls.cert = Some(cert);
    config.tls.key = Some(key);
    let server = start(&config);
    let stream = TcpStream::connect(server.smtp_addrs[0]).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut plain = BufReader::new(stream.try_clone().unwrap());
    assert_eq!(read_reply(&mut plain).0, 220);
    let mut writer = stream.try_clone().unwrap();
    writer.write_all(b"EHLO client.test\r\n").unwrap();
    assert_eq!(read_reply(&mut plain).0, 250);
    // The injected MAIL rides in the same packet as STARTTLS.
    writer
        .write_all(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut plain).0, 220);
    assert!(plain.buffer().is_empty(), "an answer to the injected MAIL");

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let tls_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connection =
        rustls::ClientConnection::new(Arc::new(tls_config), "localhost".try_into().unwrap())
            .unwrap();
    let mut tls = BufReader::new(rustls::StreamOwned::new(connection, stream));
    tls.get_mut().write_all(b"EHLO client.test\r\n").unwrap();
    assert_eq!(read_reply(&mut tls).0, 250);
    // Had the injected MAIL run, this RCPT would be accepted.
    tls.get_mut()
        .write_all(b"RCPT TO:<alice@local.test>\r\n")
        .unwrap();
    let (code, text) = read_reply(&mut tls);
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("need MAIL"), "{text}");
    server.shutdown();
}

#[test]
fn malformed_bytes_get_clear_errors_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&hostile_config(dir.path()));
    let (mut c, _) = RawClient::connect_from(STRANGER, server.smtp_addrs[0]).unwrap();
    c.cmd("EHLO client.test").unwrap();
    let long = "A".repeat(10_000);
    assert_eq!(
        c.cmd(&long).unwrap().text(),
        "500 5.5.2 Error: line too long (RFC 5321 4.5.3.1.4: 512 octets)"
    );
    // A megabyte without any line end: one answer, the buffer stays bounded.
    c.send(&vec![b'B'; 1 << 20]).unwrap();
    c.send(b"\r\n").unwrap();
    assert_eq!(c.read_reply().unwrap().code, 500);
    assert_eq!(
        c.cmd("NOOP\0").unwrap().text(),
        "500 5.5.2 Error: control character or invalid UTF-8 in command"
    );
    c.send(b"MAIL FROM:<\xff\xfe@example.org>\r\n").unwrap();
    assert_eq!(
        c.read_reply().unwrap().text(),
        "500 5.5.2 Error: control character or invalid UTF-8 in command"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<jos\u{e9}@example.org>").unwrap().text(),
        "553 5.6.7 Error: non-ASCII address needs the SMTPUTF8 parameter"
    );
    assert_eq!(c.cmd("NOOP").unwrap().code, 250);

    let mut pop3 = Lines::connect_from(STRANGER, server.pop3_addrs[0]);
    pop3.line();
    assert_eq!(pop3.cmd(&long), "-ERR command line too long");
    assert_eq!(
        pop3.cmd("CA\0PA"),
        "-ERR control character or invalid UTF-8 in command"
    );
    assert_eq!(pop3.cmd("CAPA"), "+OK Capability list follows");

    // A 4 GiB literal is refused up front, nothing of that size is
    // allocated, and the connection stays usable (RFC 7888 4, RFC 7889).
    let mut imap = Lines::connect_from(STRANGER, server.imap_addrs[0]);
    imap.line();
    let reply = imap.cmd("a APPEND INBOX {4294967296}");
    assert!(
        reply.starts_with("a NO [TOOBIG] Literal of 4294967296 bytes exceeds the limit"),
        "{reply}"
    );
    assert_eq!(imap.cmd("b NOOP"), "b OK NOOP completed");
    let reply = imap.cmd(&format!("c {long}"));
    assert!(
        reply.starts_with("c BAD") || reply.starts_with("* BAD"),
        "{reply}"
    );
    assert!(imap.cmd("d NO\0OP").contains("BAD"));
    assert_eq!(imap.cmd("e NOOP"), "e OK NOOP completed");
    assert_serving(&server);
    server.shutdown();
}

#[test]
fn no_relaying_of_any_kind_from_outside_mynetworks() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&hostile_config(dir.path()));
    let (mut c, _) = RawClient::connect_from(STRANGER, server.smtp_addrs[0]).unwrap();
    c.cmd("EHLO stranger.test").unwrap();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").unwrap().code, 250);
    let relay_denied = "554 5.7.1";
    let unknown_user = "550 5.1.1";
    let bad_syntax = "553 5.1.3";
    for (recipient, answer) in [
        ("victim@example.net", relay_denied),
        ("victim@EXAMPLE.NET", relay_denied),
        // The %-hack and bang paths name no local user; never forwarded.
        ("victim%example.net@local.test", unknown_user),
        ("example.net!victim@local.test", unknown_user),
        // Quoted local parts with @: the domain is the last one.
        ("\"victim@example.net\"@local.test", unknown_user),
        ("\"alice@local.test\"@example.net", relay_denied),
        // Source routes are dropped (RFC 5321 C): the mailbox decides.
        ("@local.test:victim@example.net", relay_denied),
        (
            "@relay.example,@local.test:victim@example.net",
            relay_denied,
        ),
        // Address literals, ours or not, and trailing-dot domains.
        ("victim@[192.0.2.1]", relay_denied),
        ("victim@[127.0.0.1]", relay_denied),
        ("victim@[IPv6:::1]", relay_denied),
        ("victim@example.net.", bad_syntax),
        ("alice@local.test.", bad_syntax),
        ("victim@example.net@local.test", bad_syntax),
    ] {
        let reply = c.cmd(&format!("RCPT TO:<{recipient}>")).unwrap();
        assert!(reply.text().starts_with(answer), "<{recipient}>: {reply:?}");
    }
    // Only a real local user is accepted, whatever the case or route, and
    // the message is filed in alice's mailbox: never sent anywhere.
    assert_eq!(c.cmd("RCPT TO:<ALICE@LOCAL.TEST>").unwrap().code, 250);
    assert_eq!(c.cmd("RSET").unwrap().code, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").unwrap().code, 250);
    assert_eq!(
        c.cmd("RCPT TO:<@example.net:alice@local.test>")
            .unwrap()
            .code,
        250
    );
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.send(&data_frame(b"Subject: local only\r\n\r\nhi\r\n"))
        .unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    wait_filed(&server.spool, 1);
    let queued = server.spool.queued();
    assert_eq!(queued.len(), 1);
    let recipients: Vec<&str> = queued[0]
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(recipients, ["alice@local.test"]);
    server.shutdown();
}
