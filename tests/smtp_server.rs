//! End-to-end tests of ingest over real TCP on 127.0.0.1: a real client
//! crate (lettre), raw sockets for pipelining, smuggling and BDAT, STARTTLS
//! with a CA made at test time, both I/O drivers, spool full, and recovery
//! of queued mail across a restart.

mod common;

use std::time::Duration;

use common::{data_frame, make_test_ca, queue_id_of, test_config, RawClient};
use lettre::message::Mailbox;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};
use tern::config::{Config, IoMode};
use tern::runtime::{self, ServerHandle};
use tern::spool::QueueId;

fn start(config: &Config) -> ServerHandle {
    runtime::start(config).expect("server starts")
}

fn lettre_message(subject: &str) -> Message {
    Message::builder()
        .from("Alice <alice@example.org>".parse::<Mailbox>().unwrap())
        .to("Bob <bob@example.net>".parse::<Mailbox>().unwrap())
        .subject(subject)
        .body(String::from("Hello Bob,\r\n.leading dot line\r\nbye\r\n"))
        .unwrap()
}

fn stored_data(server: &ServerHandle, id: &str) -> Vec<u8> {
    let id: QueueId = id.parse().expect("queue id parses");
    server
        .spool
        .read(&id)
        .expect("message readable")
        .data()
        .to_vec()
}

fn send_with_lettre(config: &Config, io: IoMode) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config.clone();
    config.spool.dir = dir.path().join("spool");
    config.server.io = io;
    let server = start(&config);
    let port = server.smtp_addrs[0].port();
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let email = lettre_message("lettre test");
    let expected = email.formatted();
    let response = mailer.send(&email).expect("lettre sends");
    assert!(response.is_positive());
    let id = response
        .message()
        .last()
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .to_string();
    let queued = server.spool.queued();
    assert_eq!(queued.len(), 1);
    let m = &queued[0];
    assert_eq!(m.id.to_string(), id);
    assert_eq!(m.envelope.sender, "alice@example.org");
    assert_eq!(m.envelope.recipients[0].address, "bob@example.net");
    assert!(m.envelope.received_at_ms > 0);
    // lettre ends DATA with CRLF "." CRLF after the body even when the body
    // already ends in CRLF, so one empty line may follow the message.
    let stored = stored_data(&server, &id);
    let with_blank = [expected.as_slice(), b"\r\n"].concat();
    assert!(
        stored == expected || stored == with_blank,
        "stored bytes differ"
    );
    server.shutdown();
}

#[test]
fn lettre_delivers_over_epoll() {
    let dir = tempfile::tempdir().unwrap();
    send_with_lettre(&test_config(dir.path()), IoMode::Epoll);
}

#[test]
fn lettre_delivers_over_io_uring() {
    let dir = tempfile::tempdir().unwrap();
    send_with_lettre(&test_config(dir.path()), IoMode::Uring);
}

#[test]
fn pipelined_transaction_gets_replies_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&test_config(dir.path()));
    let (mut c, greeting) = RawClient::connect(server.smtp_addrs[0]).unwrap();
    assert_eq!(greeting.code, 220);
    let ehlo = c.cmd("EHLO client.test").unwrap();
    assert_eq!(ehlo.code, 250);
    let caps = ehlo.text();
    for cap in [
        "PIPELINING",
        "SIZE 262144",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
    ] {
        assert!(caps.contains(cap), "EHLO lacks {cap}: {caps}");
    }
    assert!(!caps.contains("STARTTLS"), "no TLS configured: {caps}");
    let mut batch = Vec::new();
    batch.extend_from_slice(b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\n");
    batch.extend_from_slice(b"RCPT TO:<b@example.net> NOTIFY=FAILURE,DELAY\r\n");
    batch.extend_from_slice(b"RCPT TO:<c@example.net>\r\n");
    batch.extend_from_slice(b"DATA\r\n");
    c.send(&batch).unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    assert_eq!(c.read_reply().unwrap().code, 250);
    assert_eq!(c.read_reply().unwrap().code, 250);
    assert_eq!(c.read_reply().unwrap().code, 354);
    let body = b"Subject: pipelined\r\n\r\n.dot\r\nend\r\n";
    let mut tail = data_frame(body);
    tail.extend_from_slice(b"QUIT\r\n");
    c.send(&tail).unwrap();
    let stored = c.read_reply().unwrap();
    assert_eq!(stored.code, 250, "{stored:?}");
    assert!(stored.text().contains("2.0.0"));
    let id = queue_id_of(&stored).unwrap();
    assert_eq!(c.read_reply().unwrap().code, 221);
    assert_eq!(stored_data(&server, &id), body);
    let m = server.spool.queued();
    assert_eq!(m[0].envelope.recipients.len(), 2);
    assert!(m[0].envelope.recipients[0].notify.failure);
    server.shutdown();
}

#[test]
fn smuggled_end_of_data_is_rejected_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&test_config(dir.path()));
    for smuggle in [
        &b"\n.\n"[..],
        &b"\r.\n"[..],
        &b"\n.\r\n"[..],
        &b"\r\n.\r"[..],
    ] {
        let (mut c, _) = RawClient::connect(server.smtp_addrs[0]).unwrap();
        c.cmd("EHLO client.test").unwrap();
        assert_eq!(c.cmd("MAIL FROM:<a@example.org>").unwrap().code, 250);
        assert_eq!(c.cmd("RCPT TO:<b@example.net>").unwrap().code, 250);
        assert_eq!(c.cmd("DATA").unwrap().code, 354);
        let mut payload = b"Subject: x\r\n\r\nhello".to_vec();
        payload.extend_from_slice(smuggle);
        payload.extend_from_slice(b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nforged\r\n.\r\n");
        c.send(&payload).unwrap();
        let reply = c.read_reply().unwrap();
        assert_eq!(reply.code / 100, 5, "smuggle {smuggle:?}: {reply:?}");
        // The session is usable and no smuggled transaction is open.
        assert_eq!(c.cmd("RCPT TO:<x@example.net>").unwrap().code, 503);
        assert_eq!(c.cmd("QUIT").unwrap().code, 221);
    }
    assert!(server.spool.queued().is_empty());
    server.shutdown();
}

#[test]
fn bdat_chunks_are_assembled() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&test_config(dir.path()));
    let (mut c, _) = RawClient::connect(server.smtp_addrs[0]).unwrap();
    c.cmd("EHLO client.test").unwrap();
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nBDAT 14\r\nSubject: x\r\n\r\nBDAT 7 LAST\r\nhi\r\n.\r\n")
        .unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    assert_eq!(c.read_reply().unwrap().code, 250);
    assert_eq!(c.read_reply().unwrap().code, 250);
    let last = c.read_reply().unwrap();
    assert_eq!(last.code, 250, "{last:?}");
    let id = queue_id_of(&last).unwrap();
    assert_eq!(stored_data(&server, &id), b"Subject: x\r\n\r\nhi\r\n.\r\n");
    server.shutdown();
}

#[test]
fn starttls_with_a_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, cert, key) = make_test_ca(dir.path());
    let mut config = test_config(dir.path());
    config.tls.cert = Some(cert);
    config.tls.key = Some(key);
    let server = start(&config);

    // Plaintext pipelined after STARTTLS must never be executed.
    let (mut c, _) = RawClient::connect(server.smtp_addrs[0]).unwrap();
    assert!(c
        .cmd("EHLO client.test")
        .unwrap()
        .text()
        .contains("STARTTLS"));
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
        .unwrap();
    assert_eq!(c.read_reply().unwrap().code, 220);
    drop(c);

    let tls = TlsParameters::builder("localhost".to_string())
        .add_root_certificate(Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let mailer = SmtpTransport::builder_dangerous("localhost")
        .port(server.smtp_addrs[0].port())
        .tls(Tls::Required(tls))
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let email = lettre_message("over tls");
    mailer.send(&email).expect("sends over STARTTLS");
    let queued = server.spool.queued();
    assert_eq!(queued.len(), 1);
    assert!(queued[0].envelope.client.tls);
    assert_eq!(queued[0].envelope.sender, "alice@example.org");
    server.shutdown();
}

#[test]
fn spool_full_answers_452_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.spool.max_size = 2 * config.spool.segment_size;
    let server = start(&config);
    let (mut c, _) = RawClient::connect(server.smtp_addrs[0]).unwrap();
    c.cmd("EHLO client.test").unwrap();
    let body = vec![b'x'; 100 * 1024];
    let mut body_lines = Vec::new();
    for chunk in body.chunks(998) {
        body_lines.extend_from_slice(chunk);
        body_lines.extend_from_slice(b"\r\n");
    }
    let mut saw_full = false;
    for _ in 0..40 {
        assert_eq!(c.cmd("MAIL FROM:<a@example.org>").unwrap().code, 250);
        assert_eq!(c.cmd("RCPT TO:<b@example.net>").unwrap().code, 250);
        assert_eq!(c.cmd("DATA").unwrap().code, 354);
        c.send(&data_frame(&body_lines)).unwrap();
        let reply = c.read_reply().unwrap();
        if reply.code == 452 {
            assert!(reply.text().contains("4.3.1"), "{reply:?}");
            saw_full = true;
            break;
        }
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    assert!(saw_full, "the spool never filled up");
    // Still serving: the session goes on and new connections are answered.
    assert_eq!(c.cmd("NOOP").unwrap().code, 250);
    let (mut c2, greeting) = RawClient::connect(server.smtp_addrs[0]).unwrap();
    assert_eq!(greeting.code, 220);
    assert_eq!(c2.cmd("QUIT").unwrap().code, 221);
    server.shutdown();
}

#[test]
fn queued_mail_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let mut ids = Vec::new();
    {
        let server = start(&config);
        let (mut c, _) = RawClient::connect(server.smtp_addrs[0]).unwrap();
        c.cmd("EHLO client.test").unwrap();
        for i in 0..5 {
            c.cmd("MAIL FROM:<a@example.org>").unwrap();
            c.cmd(&format!("RCPT TO:<r{i}@example.net>")).unwrap();
            c.cmd("DATA").unwrap();
            c.send(&data_frame(
                format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes(),
            ))
            .unwrap();
            ids.push(queue_id_of(&c.read_reply().unwrap()).unwrap());
        }
        c.cmd("QUIT").unwrap();
        server.shutdown();
    }
    let server = start(&config);
    let queued = server.spool.queued();
    let found: Vec<String> = queued.iter().map(|m| m.id.to_string()).collect();
    for (i, id) in ids.iter().enumerate() {
        assert!(found.contains(id), "{id} lost across restart");
        assert_eq!(
            stored_data(&server, id),
            format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes()
        );
    }
    server.shutdown();
}

#[test]
fn idle_client_is_timed_out_with_421() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.smtp.command_timeout = Duration::from_millis(300);
    let server = start(&config);
    let (mut c, _) = RawClient::connect(server.smtp_addrs[0]).unwrap();
    let reply = c.read_reply().unwrap();
    assert_eq!(reply.code, 421);
    assert!(reply.text().contains("4.4.2"));
    assert!(c.is_closed());
    server.shutdown();
}

#[test]
fn no_open_relay_for_untrusted_clients_and_only_known_local_users() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Loopback is not trusted here, so the test client is a stranger.
    config.relay.mynetworks = vec![];
    config.relay.local_domains = vec!["local.test".into()];
    let mut users = tern::users::Users::new();
    users
        .add("user", b"secret", &["user@local.test".to_string()])
        .unwrap();
    users.save(&config.users.file).unwrap();
    let server = start(&config);
    let (mut c, _) = RawClient::connect(server.smtp_addrs[0]).unwrap();
    c.cmd("EHLO stranger.test").unwrap();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").unwrap().code, 250);
    let denied = c.cmd("RCPT TO:<victim@example.net>").unwrap();
    assert_eq!(denied.code, 554, "{denied:?}");
    assert!(denied.text().contains("5.7.1"), "{denied:?}");
    // A local domain takes mail for its users only, from anyone.
    let unknown = c.cmd("RCPT TO:<nobody@local.test>").unwrap();
    assert_eq!(unknown.code, 550, "{unknown:?}");
    assert!(unknown.text().contains("5.1.1"), "{unknown:?}");
    assert_eq!(c.cmd("RCPT TO:<User@Local.test>").unwrap().code, 250);
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.send(&data_frame(b"Subject: local only\r\n\r\nhi\r\n"))
        .unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    let queued = server.spool.queued();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].envelope.recipients.len(), 1);
    assert_eq!(queued[0].envelope.recipients[0].address, "User@Local.test");
    server.shutdown();
}

#[test]
fn shutdown_sends_421_to_idle_sessions_and_keeps_acknowledged_mail() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.shutdown_timeout = Duration::from_secs(30);
    let server = start(&config);
    let (mut c, _) = RawClient::connect(server.smtp_addrs[0]).unwrap();
    c.cmd("EHLO client.test").unwrap();
    c.cmd("MAIL FROM:<a@example.org>").unwrap();
    c.cmd("RCPT TO:<b@example.net>").unwrap();
    c.cmd("DATA").unwrap();
    c.send(&data_frame(b"Subject: before shutdown\r\n\r\nhi\r\n"))
        .unwrap();
    let id = queue_id_of(&c.read_reply().unwrap()).unwrap();
    let spool_dir = config.spool.dir.clone();
    let stopper = std::thread::spawn(move || server.shutdown());
    let reply = c.read_reply().unwrap();
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(reply.text().contains("4.3.2"), "{reply:?}");
    assert!(c.is_closed());
    stopper.join().unwrap();
    let scanned = tern::spool::Spool::scan_readonly(&spool_dir).unwrap();
    assert!(scanned.iter().any(|m| m.id.to_string() == id));
}
