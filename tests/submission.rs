//! Message submission over real TCP and TLS on 127.0.0.1 (RFC 6409, SMTP
//! AUTH RFC 4954, implicit TLS RFC 8314): a real client (lettre) logging in
//! with PLAIN and LOGIN after STARTTLS and over the implicit-TLS listener,
//! and a raw client for the refusals (AUTH before TLS, wrong passwords,
//! bad base64, spoofed senders, relaying without AUTH). The client is kept
//! outside mynetworks so that only AUTH can let it relay; mail is held.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::sink::{Sink, SinkConfig};
use common::{data_frame, local_mail_config, make_test_ca, read_reply_from, Reply, ALICE_PASSWORD};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};
use tern::config::Config;
use tern::runtime::outbound::{client_config, roots_from_pem, CertCheck};
use tern::runtime::{self, ServerHandle};

/// base64 of `\0alice\0correct horse`.
const PLAIN_ALICE: &str = "AGFsaWNlAGNvcnJlY3QgaG9yc2U=";
/// base64 of `\0alice\0wrong`.
const PLAIN_WRONG: &str = "AGFsaWNlAHdyb25n";

struct Setup {
    _dir: tempfile::TempDir,
    server: ServerHandle,
    ca_pem: String,
    ca_file: std::path::PathBuf,
}

/// alice@local.test with a password; submission with STARTTLS and over
/// implicit TLS; 127.0.0.1 is not in mynetworks; mail is held.
fn start() -> Setup {
    start_with(|_| {})
}

/// `start()` with `adjust` applied to the config before the server starts.
fn start_with(adjust: impl FnOnce(&mut Config)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, cert, key) = make_test_ca(dir.path());
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let mut config: Config = local_mail_config(dir.path());
    config.relay.hold = true;
    config.relay.mynetworks = vec!["192.0.2.0/24".parse().unwrap()];
    config.pop3.listen = vec![];
    config.imap.listen = vec![];
    config.smtp.submission = vec!["127.0.0.1:0".parse().unwrap()];
    config.smtp.submissions = vec!["127.0.0.1:0".parse().unwrap()];
    config.tls.cert = Some(cert);
    config.tls.key = Some(key);
    adjust(&mut config);
    let server = runtime::start(&config).expect("server starts");
    Setup {
        _dir: dir,
        server,
        ca_pem,
        ca_file,
    }
}

fn message(from: &str, to: &str) -> Message {
    Message::builder()
        .from(from.parse::<Mailbox>().unwrap())
        .to(to.parse::<Mailbox>().unwrap())
        .subject("submitted")
        .body(String::from("Hello from a mail client\r\n"))
        .unwrap()
}

fn tls_parameters(ca_pem: &str) -> TlsParameters {
    TlsParameters::builder("localhost".to_string())
        .add_root_certificate(Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

fn lettre_client(addr: SocketAddr, tls: Tls, mechanism: Mechanism) -> SmtpTransport {
    SmtpTransport::builder_dangerous("localhost")
        .port(addr.port())
        .tls(tls)
        .credentials(Credentials::new("alice".into(), ALICE_PASSWORD.into()))
        .authentication(vec![mechanism])
        .timeout(Some(Duration::from_secs(20)))
        .build()
}

/// An SMTP client over implicit TLS, reading replies line by line.
struct TlsClient {
    stream: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsClient {
    fn connect(addr: SocketAddr, ca_file: &std::path::Path) -> (TlsClient, Reply) {
        let roots = roots_from_pem(ca_file).unwrap();
        let config = client_config(CertCheck::Roots(Arc::new(roots)));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let connection = rustls::ClientConnection::new(config, name).unwrap();
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut client = TlsClient {
            stream: BufReader::new(rustls::StreamOwned::new(connection, tcp)),
        };
        let greeting = read_reply_from(&mut client.stream).unwrap();
        (client, greeting)
    }

    fn send(&mut self, bytes: &[u8]) {
        let stream = self.stream.get_mut();
        stream.write_all(bytes).unwrap();
        stream.flush().unwrap();
    }

    fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        read_reply_from(&mut self.stream).unwrap()
    }

    /// The next reply, or None once the server has closed.
    fn next_reply(&mut self) -> Option<Reply> {
        read_reply_from(&mut self.stream).ok()
    }
}

fn status(reply: &Reply) -> String {
    reply.lines.last().cloned().unwrap_or_default()
}

#[test]
fn lettre_logs_in_with_plain_and_login_after_starttls_and_relays_anywhere() {
    let setup = start();
    let submission = setup.server.submission_addrs[0];
    for (mechanism, to) in [
        (Mechanism::Plain, "Bob <bob@far.example>"),
        (Mechanism::Login, "Carol <carol@elsewhere.example>"),
    ] {
        let client = lettre_client(
            submission,
            Tls::Required(tls_parameters(&setup.ca_pem)),
            mechanism,
        );
        let response = client
            .send(&message("Alice <alice@local.test>", to))
            .unwrap_or_else(|e| panic!("{mechanism:?}: {e}"));
        assert!(response.is_positive());
    }
    let queued = setup.server.spool.queued();
    assert_eq!(queued.len(), 2);
    for message in &queued {
        let client = &message.envelope.client;
        assert_eq!(client.auth.as_deref(), Some("alice"));
        assert!(client.tls && client.esmtp);
        assert_eq!(message.envelope.sender, "alice@local.test");
    }
    let mut recipients: Vec<&str> = queued
        .iter()
        .map(|m| m.envelope.recipients[0].address.as_str())
        .collect();
    recipients.sort();
    assert_eq!(recipients, ["bob@far.example", "carol@elsewhere.example"]);
    setup.server.shutdown();
}

#[test]
fn implicit_tls_listener_serves_submission_and_refuses_bad_auth_and_spoofing() {
    let setup = start();
    let submissions = setup.server.submission_tls_addrs[0];
    // A real client first: TLS from the first byte (lettre's wrapper mode).
    let client = lettre_client(
        submissions,
        Tls::Wrapper(tls_parameters(&setup.ca_pem)),
        Mechanism::Plain,
    );
    client
        .send(&message("alice@local.test", "dave@far.example"))
        .expect("sends over implicit TLS");

    let (mut c, greeting) = TlsClient::connect(submissions, &setup.ca_file);
    assert_eq!(greeting.code, 220);
    let ehlo = c.cmd("EHLO client.test").text();
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "already under TLS: {ehlo}");
    // Without AUTH a stranger may not even start a transaction.
    let r = c.cmd("MAIL FROM:<alice@local.test>");
    assert_eq!(status(&r), "530 5.7.0 Error: authentication required");
    // Bad base64 gets a clear error and the session goes on.
    let r = c.cmd("AUTH PLAIN not*base64");
    assert_eq!(
        status(&r),
        "501 5.5.2 Error: invalid base64 in AUTH response"
    );
    assert_eq!(c.cmd("AUTH LOGIN").code, 334);
    assert_eq!(c.cmd("!!!!").code, 501);
    assert_eq!(c.cmd("NOOP").code, 250);
    // A wrong password.
    let r = c.cmd(&format!("AUTH PLAIN {PLAIN_WRONG}"));
    assert_eq!(
        status(&r),
        "535 5.7.8 Error: authentication credentials invalid"
    );
    // LOGIN, step by step.
    assert_eq!(status(&c.cmd("AUTH LOGIN")), "334 VXNlcm5hbWU6");
    assert_eq!(status(&c.cmd("YWxpY2U=")), "334 UGFzc3dvcmQ6");
    let r = c.cmd("Y29ycmVjdCBob3JzZQ==");
    assert_eq!(status(&r), "235 2.7.0 Authentication successful");
    // Someone else's sender is refused, one's own is taken.
    let r = c.cmd("MAIL FROM:<bob@local.test>");
    assert_eq!(r.code, 553, "{r:?}");
    assert!(status(&r).starts_with("553 5.7.1"), "{r:?}");
    assert_eq!(c.cmd("MAIL FROM:<alice@local.test> AUTH=<>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<erin@far.example>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(&data_frame(b"Subject: raw\r\n\r\nhi\r\n"));
    assert_eq!(c.next_reply().map(|r| r.code), Some(250));
    assert_eq!(c.cmd("QUIT").code, 221);

    let queued = setup.server.spool.queued();
    assert_eq!(queued.len(), 2);
    assert!(queued
        .iter()
        .all(|m| m.envelope.client.auth.as_deref() == Some("alice") && m.envelope.client.tls));
    setup.server.shutdown();
}

#[test]
fn no_auth_before_tls_and_no_relay_for_strangers() {
    let setup = start();
    let (mut c, _) = common::RawClient::connect(setup.server.submission_addrs[0]).unwrap();
    let ehlo = c.cmd("EHLO client.test").unwrap().text();
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "AUTH offered in clear: {ehlo}");
    let r = c.cmd(&format!("AUTH PLAIN {PLAIN_ALICE}")).unwrap();
    assert_eq!(r.code, 538);
    assert!(status(&r).starts_with("538 5.7.11"), "{r:?}");
    let r = c.cmd("MAIL FROM:<alice@local.test>").unwrap();
    assert_eq!(status(&r), "530 5.7.0 Error: authentication required");
    c.cmd("QUIT").unwrap();

    // The relay port never offers AUTH, and a stranger cannot relay there.
    let (mut c, _) = common::RawClient::connect(setup.server.smtp_addrs[0]).unwrap();
    c.cmd("EHLO client.test").unwrap();
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {PLAIN_ALICE}")).unwrap().code,
        502
    );
    assert_eq!(c.cmd("MAIL FROM:<alice@local.test>").unwrap().code, 250);
    let r = c.cmd("RCPT TO:<bob@far.example>").unwrap();
    assert_eq!(r.code, 554, "{r:?}");
    assert!(status(&r).contains("Relay access denied"), "{r:?}");
    assert_eq!(c.cmd("RCPT TO:<alice@local.test>").unwrap().code, 250);
    c.cmd("QUIT").unwrap();
    assert!(setup.server.spool.queued().is_empty());
    setup.server.shutdown();
}

#[test]
fn repeated_wrong_passwords_close_the_connection_and_the_server_stays_up() {
    let setup = start();
    let submissions = setup.server.submission_tls_addrs[0];
    let (mut c, _) = TlsClient::connect(submissions, &setup.ca_file);
    c.cmd("EHLO client.test");
    for _ in 0..2 {
        assert_eq!(c.cmd(&format!("AUTH PLAIN {PLAIN_WRONG}")).code, 535);
    }
    assert_eq!(c.cmd(&format!("AUTH PLAIN {PLAIN_WRONG}")).code, 535);
    let closing = c.next_reply().expect("421 before the close");
    assert_eq!(closing.code, 421, "{closing:?}");
    assert!(status(&closing).contains("4.7.0"), "{closing:?}");
    assert!(c.next_reply().is_none(), "connection closed");
    // The server keeps serving, and the right password still works.
    let (mut c, _) = TlsClient::connect(submissions, &setup.ca_file);
    c.cmd("EHLO client.test");
    assert_eq!(c.cmd(&format!("AUTH PLAIN {PLAIN_ALICE}")).code, 235);
    assert_eq!(c.cmd("QUIT").code, 221);
    setup.server.shutdown();
}

#[test]
fn relayed_submission_carries_an_esmtpsa_trace() {
    let sink = Sink::start(SinkConfig::default());
    let setup = start_with(|config| {
        config.relay.hold = false;
        config.relay.smarthost = Some(format!("[127.0.0.1]:{}", sink.addr.port()));
    });
    let client = lettre_client(
        setup.server.submission_addrs[0],
        Tls::Required(tls_parameters(&setup.ca_pem)),
        Mechanism::Plain,
    );
    client
        .send(&message("alice@local.test", "frank@far.example"))
        .expect("submits");
    let got = sink.wait_for_messages(1, Duration::from_secs(20));
    assert_eq!(got[0].mail_from, "alice@local.test");
    assert_eq!(got[0].rcpt_to, ["frank@far.example"]);
    // RFC 3848: submitted under TLS by an authenticated user.
    let text = String::from_utf8_lossy(&got[0].data);
    let header_end = text.find("\r\n\r\n").expect("a header");
    let trace = text[..header_end]
        .split("\r\nReceived:")
        .next()
        .expect("the first field");
    assert!(trace.starts_with("Received: from "), "{text}");
    assert!(trace.contains("with ESMTPSA"), "{text}");
    setup.server.shutdown();
}
