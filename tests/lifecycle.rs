//! Signals on a real `tern` process. SIGHUP: a new certificate serves new
//! TLS handshakes while a session opened before keeps working; a setting
//! that needs a restart is named in the log; a broken config (or
//! certificate) is logged and the server keeps serving with the old one.
//! SIGTERM: idle sessions get 421, a session in the middle of DATA may
//! finish, every acknowledged message is in the spool, and tern exits 0.
//!
//! The same reload in process (`ServerHandle::reload`) swaps the
//! certificate of the implicit-TLS POP3 and IMAP listeners too.
//!
//! TLS uses certificates from CAs made at test time; every wait is bounded.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::sink::wait_for;
use common::{
    config_file, data_frame, make_test_ca_for, queue_id_of, queue_list_json, signal,
    spawn_tern_logged, wait_log, RawClient,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, StreamOwned};

/// How long a log line or a state change may take to show.
const PROMPT: Duration = Duration::from_secs(10);

type TlsSmtp = BufReader<StreamOwned<ClientConnection, TcpStream>>;

/// A reply's code and text, read from any line source.
fn read_reply(reader: &mut impl BufRead) -> (u16, String) {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "connection closed"
        );
        text.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return (line[..3].parse().unwrap(), text);
        }
    }
}

fn cmd(tls: &mut TlsSmtp, line: &str) -> (u16, String) {
    tls.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .unwrap();
    read_reply(tls)
}

/// A client that trusts every CA in `cas`.
fn client_config(cas: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in cas {
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// An SMTP session switched to TLS with STARTTLS, and the certificate
/// the server presented.
fn starttls(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> (TlsSmtp, Vec<u8>) {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut plain = BufReader::new(tcp.try_clone().unwrap());
    assert_eq!(read_reply(&mut plain).0, 220);
    (&tcp).write_all(b"EHLO tls.test\r\n").unwrap();
    let (code, ehlo) = read_reply(&mut plain);
    assert!(code == 250 && ehlo.contains("STARTTLS"), "{ehlo}");
    (&tcp).write_all(b"STARTTLS\r\n").unwrap();
    assert_eq!(read_reply(&mut plain).0, 220);
    drop(plain);
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::clone(config), name).unwrap();
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    let cert = stream.conn.peer_certificates().unwrap()[0].to_vec();
    let mut tls = BufReader::new(stream);
    assert_eq!(cmd(&mut tls, "EHLO tls.test").0, 250);
    (tls, cert)
}

/// Send one message over an open TLS session; returns the final reply.
fn send_over(tls: &mut TlsSmtp, rcpt: &str) -> (u16, String) {
    assert_eq!(cmd(tls, "MAIL FROM:<s@example.org>").0, 250);
    assert_eq!(cmd(tls, &format!("RCPT TO:<{rcpt}>")).0, 250);
    assert_eq!(cmd(tls, "DATA").0, 354);
    tls.get_mut()
        .write_all(&data_frame(b"Subject: over tls\r\n\r\nhello\r\n"))
        .unwrap();
    read_reply(tls)
}

/// Two certificates for "localhost" from two test CAs, and the files the
/// server is configured with (`cert`, `key`), holding certificate a.
struct TwoCertificates {
    /// The CAs' certificates, PEM.
    ca_a: String,
    ca_b: String,
    cert_a: PathBuf,
    key_a: PathBuf,
    cert_b: PathBuf,
    key_b: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TwoCertificates {
    fn new(dir: &Path) -> TwoCertificates {
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let (ca_a, cert_a, key_a) = make_test_ca_for(&a, &["localhost"]);
        let (ca_b, cert_b, key_b) = make_test_ca_for(&b, &["localhost"]);
        let certs = TwoCertificates {
            ca_a,
            ca_b,
            cert_a,
            key_a,
            cert_b,
            key_b,
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::copy(&certs.cert_a, &certs.cert).unwrap();
        std::fs::copy(&certs.key_a, &certs.key).unwrap();
        certs
    }

    /// Put certificate b (and its key) where the configuration points.
    fn install_b(&self) {
        std::fs::copy(&self.cert_b, &self.cert).unwrap();
        std::fs::copy(&self.key_b, &self.key).unwrap();
    }
}

fn leaf_der(cert: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(cert).unwrap().to_vec()
}

#[test]
fn sighup_swaps_the_certificate_and_keeps_open_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TwoCertificates::new(dir.path());
    let (cert, key) = (&certs.cert, &certs.key);
    let tls_keys = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let (_, config) = config_file(dir.path(), &tls_keys);
    let (mut server, smtp, logs) = spawn_tern_logged(&config);
    let client = client_config(&[&certs.ca_a, &certs.ca_b]);

    let (mut old, seen) = starttls(smtp, &client);
    assert_eq!(seen, leaf_der(&certs.cert_a));

    // Renew the certificate in place, as certbot does, and reload.
    certs.install_b();
    signal(&server, libc::SIGHUP);
    wait_log(&logs, "configuration reloaded", PROMPT).expect("reload logged");
    let (mut new, seen) = starttls(smtp, &client);
    assert_eq!(
        seen,
        leaf_der(&certs.cert_b),
        "a new handshake gets the new certificate"
    );
    // The session opened before the reload still carries mail.
    let (code, text) = send_over(&mut old, "one@old.example");
    assert_eq!(code, 250, "{text}");
    let (code, text) = send_over(&mut new, "two@new.example");
    assert_eq!(code, 250, "{text}");

    // A setting that needs a restart is named; the live one is applied.
    let (_, config) = config_file(
        dir.path(),
        &format!("{tls_keys}[server]\nworkers = 3\n[smtp]\nmax_recipients = 150\n"),
    );
    signal(&server, libc::SIGHUP);
    let line = wait_log(&logs, "needs a restart", PROMPT).expect("restart-needed warning");
    assert!(line.contains("[server] workers"), "{line}");
    let line = wait_log(&logs, "configuration reloaded", PROMPT).expect("reload logged");
    assert!(line.contains("[smtp] max_recipients"), "{line}");

    // A broken file: logged, nothing changes, the server keeps serving.
    std::fs::write(&config, "[smtp\nlisten = ").unwrap();
    signal(&server, libc::SIGHUP);
    let line = wait_log(&logs, "reload failed", PROMPT).expect("failure logged");
    assert!(line.contains("tern.toml"), "{line}");
    // A certificate that does not parse: the same.
    config_file(dir.path(), &tls_keys);
    std::fs::write(cert, "not a certificate").unwrap();
    signal(&server, libc::SIGHUP);
    let line = wait_log(&logs, "reload failed", PROMPT).expect("failure logged");
    assert!(line.contains("[tls] cert"), "{line}");
    let (mut after, seen) = starttls(smtp, &client);
    assert_eq!(
        seen,
        leaf_der(&certs.cert_b),
        "the running certificate stays"
    );
    let (code, text) = send_over(&mut after, "three@after.example");
    assert_eq!(code, 250, "{text}");
    assert!(server.0.try_wait().unwrap().is_none(), "tern still runs");
    let (code, text) = send_over(&mut old, "four@old.example");
    assert_eq!(code, 250, "{text}");
    assert_eq!(queue_list_json(&config).as_array().unwrap().len(), 4);
}

/// The certificate an implicit-TLS listener at `addr` presents, and the
/// first line it sends after the handshake.
fn implicit_tls(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> (Vec<u8>, String) {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::clone(config), name).unwrap();
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    let cert = stream.conn.peer_certificates().unwrap()[0].to_vec();
    let mut greeting = String::new();
    BufReader::new(stream).read_line(&mut greeting).unwrap();
    (cert, greeting)
}

#[test]
fn reload_swaps_the_certificate_of_pop3s_and_imaps() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TwoCertificates::new(dir.path());
    let (cert, key) = (&certs.cert, &certs.key);
    let (config, path) = config_file(
        dir.path(),
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [pop3]\ntls_listen = [\"127.0.0.1:0\"]\n[imap]\ntls_listen = [\"127.0.0.1:0\"]\n",
            cert.display(),
            key.display()
        ),
    );
    let mut server = tern::runtime::start(&config).unwrap();
    let client = client_config(&[&certs.ca_a, &certs.ca_b]);
    let pop3s = server.pop3_tls_addrs[0];
    let imaps = server.imap_tls_addrs[0];
    let (seen, greeting) = implicit_tls(pop3s, &client);
    assert_eq!(seen, leaf_der(&certs.cert_a));
    assert!(greeting.starts_with("+OK"), "{greeting}");

    certs.install_b();
    let source = tern::config::Source::File(path.clone());
    let report = server.reload(&config, &source).unwrap();
    assert!(report.applied.is_empty() && report.restart_needed.is_empty());
    let (seen, greeting) = implicit_tls(pop3s, &client);
    assert_eq!(seen, leaf_der(&certs.cert_b), "POP3S: {greeting}");
    let (seen, greeting) = implicit_tls(imaps, &client);
    assert_eq!(seen, leaf_der(&certs.cert_b), "IMAPS: {greeting}");
    assert!(greeting.starts_with("* OK"), "{greeting}");

    // A key that does not match the certificate: refused, B stays.
    std::fs::copy(&certs.key_a, key).unwrap();
    let err = server.reload(&config, &source).unwrap_err().to_string();
    assert!(err.contains("[tls]"), "{err}");
    let (seen, _) = implicit_tls(imaps, &client);
    assert_eq!(seen, leaf_der(&certs.cert_b));
    server.shutdown();
}

#[test]
fn sigterm_mid_session_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let (_, config) = config_file(dir.path(), "");
    let (mut server, smtp, logs) = spawn_tern_logged(&config);

    // One message acknowledged before the signal.
    let (mut first, _) = RawClient::connect(smtp).unwrap();
    first.cmd("EHLO term.test").unwrap();
    first.cmd("MAIL FROM:<s@example.org>").unwrap();
    first.cmd("RCPT TO:<before@example.net>").unwrap();
    first.cmd("DATA").unwrap();
    first
        .send(&data_frame(b"Subject: before\r\n\r\nbefore\r\n"))
        .unwrap();
    let before = first.read_reply().unwrap();
    assert_eq!(before.code, 250);
    // One session in the middle of DATA, one idle.
    let (mut busy, _) = RawClient::connect(smtp).unwrap();
    busy.cmd("EHLO term.test").unwrap();
    busy.cmd("MAIL FROM:<s@example.org>").unwrap();
    busy.cmd("RCPT TO:<during@example.net>").unwrap();
    assert_eq!(busy.cmd("DATA").unwrap().code, 354);
    busy.send(b"Subject: during\r\n\r\nfirst half\r\n").unwrap();
    let (mut idle, _) = RawClient::connect(smtp).unwrap();
    idle.cmd("EHLO term.test").unwrap();

    signal(&server, libc::SIGTERM);
    wait_log(&logs, "SIGTERM received", PROMPT).expect("SIGTERM logged");
    // The idle session is told and closed.
    assert_eq!(idle.read_reply().unwrap().code, 421);
    assert!(idle.is_closed());
    // No new connection is taken.
    assert!(wait_for(PROMPT, || RawClient::connect(smtp).is_err()));
    // The busy one finishes its message, which is acknowledged.
    busy.send(b"second half\r\n.\r\n").unwrap();
    let during = busy.read_reply().unwrap();
    assert_eq!(during.code, 250, "{}", during.text());
    let status = server.0.wait().unwrap();
    assert!(status.success(), "tern exits 0 on SIGTERM: {status}");

    let listed = queue_list_json(&config);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for reply in [&before, &during] {
        let id = queue_id_of(reply).unwrap();
        assert!(
            ids.contains(&id.as_str()),
            "{id} acknowledged but not in {ids:?}"
        );
    }
}
