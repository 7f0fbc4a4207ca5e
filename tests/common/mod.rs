//! Helpers shared by the integration tests: a config on ephemeral loopback
//! ports and a private spool, a test CA made at test time, and a plain
//! blocking SMTP client for the raw-socket cases. Never reaches beyond
//! 127.0.0.1; every read has a timeout so no test can hang.
#![allow(dead_code)] // each test binary uses its own subset of these helpers

pub mod dns_zone;
pub mod pop3;
pub mod sink;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tern::config::{Config, IoMode};

/// A small config: one SMTP listener on an ephemeral loopback port, no
/// submission, POP3 or IMAP listener, no metrics endpoint, small segments, spool in `dir`,
/// and mail held (never relayed: no DNS query may leave the machine).
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.workers = 2;
    c.server.io = IoMode::Epoll;
    c.server.hostname = "tern.test".into();
    c.server.shutdown_timeout = Duration::from_secs(5);
    c.smtp.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.smtp.submission = vec![];
    c.smtp.max_message_size = 256 * 1024;
    c.smtp.max_recipients = 100;
    c.spool.dir = dir.join("spool");
    c.spool.segment_size = 1024 * 1024;
    c.metrics.listen = None;
    c.relay.hold = true;
    c.users.file = dir.join("users.toml");
    c.pop3.listen = vec![];
    c.imap.listen = vec![];
    c
}

/// `test_config(dir)` with `extra` (TOML, e.g. a `[relay]` table) merged
/// over it, written to `dir/tern.toml` and loaded back the way `tern -c`
/// loads it, so the in-process server and the CLI see one config. Returns
/// the config and the file; panics naming the key a bad `extra` breaks.
pub fn config_file(dir: &Path, extra: &str) -> (Config, std::path::PathBuf) {
    let mut merged = toml::Table::try_from(test_config(dir)).expect("config serialises");
    let extra: toml::Table = extra.parse().expect("extra config is TOML");
    merge_tables(&mut merged, extra);
    let path = dir.join("tern.toml");
    std::fs::write(&path, toml::to_string(&merged).unwrap()).unwrap();
    match Config::load(Some(&path)) {
        Ok((config, _source)) => (config, path),
        Err(e) => panic!("test config rejected: {e}"),
    }
}

/// Tables merge key by key; any other value in `over` replaces.
fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(over_inner)) => {
                merge_tables(inner, over_inner)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The real `tern` binary, killed when the test ends, even by a failed
/// assertion, so no test leaves a server running.
pub struct ServerProcess(pub Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `tern -c config` and wait for its "tern accepting" log line;
/// return the process and its first SMTP address.
pub fn spawn_tern(config: &Path) -> (ServerProcess, SocketAddr) {
    let (child, addr, _logs) = spawn_tern_logged(config);
    (child, addr)
}

/// Like `spawn_tern`, with every later log line of the server on a
/// channel (stderr is drained to the end even when nobody listens, so the
/// server never blocks on a full pipe).
pub fn spawn_tern_logged(
    config: &Path,
) -> (ServerProcess, SocketAddr, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tern starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let child = ServerProcess(child);
    let (tx, rx) = std::sync::mpsc::channel();
    let (log_tx, log_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("tern accepting") {
                let start = line.find("smtp=[").expect("smtp addresses logged") + 6;
                let end = start + line[start..].find(']').expect("address list closed");
                let addr: SocketAddr = line[start..end]
                    .split(',')
                    .next()
                    .and_then(|a| a.trim().parse().ok())
                    .expect("an SMTP address");
                let _ = tx.send(addr);
                sent = true;
            } else if sent {
                let _ = log_tx.send(line);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("tern reported its listening address");
    (child, addr, log_rx)
}

/// The first log line containing `needle` within `within` (lines before
/// it are dropped); None when none came.
pub fn wait_log(
    logs: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    within: Duration,
) -> Option<String> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        match logs.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Send `signal` (libc::SIGTERM, SIGHUP...) to a spawned server.
pub fn signal(server: &ServerProcess, signal: i32) {
    let pid = server.0.id() as i32;
    // SAFETY: kill(2) on the pid of a child this test spawned and has not
    // reaped yet (ServerProcess waits for it only when dropped).
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

/// `tern ARGS -c config`: (exit success, stdout, stderr).
pub fn tern_cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .expect("tern runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A CA and a `localhost` leaf certificate signed by it, written as PEM
/// files into `dir`. Returns (ca_pem, cert_path, key_path).
pub fn make_test_ca(dir: &Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    make_test_ca_for(dir, &["localhost"])
}

/// Like `make_test_ca`, with a leaf certificate for `names` (the first is
/// also its common name).
pub fn make_test_ca_for(
    dir: &Path,
    names: &[&str],
) -> (String, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tern test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut leaf_params = CertificateParams::new(sans).unwrap();
    leaf_params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("localhost"),
    );
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    (ca.pem(), cert_path, key_path)
}

/// One SMTP reply: code and the text of every line.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A line-oriented SMTP client over a blocking socket with timeouts.
pub struct RawClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawClient {
    /// Connect and read the greeting.
    pub fn connect(addr: SocketAddr) -> std::io::Result<(RawClient, Reply)> {
        RawClient::over(TcpStream::connect_timeout(&addr, Duration::from_secs(5))?)
    }

    /// Connect from `source` (an address of this machine, e.g. 127.0.0.2)
    /// and read the greeting.
    pub fn connect_from(
        source: std::net::IpAddr,
        addr: SocketAddr,
    ) -> std::io::Result<(RawClient, Reply)> {
        RawClient::over(tcp_from(source, addr)?)
    }

    fn over(stream: TcpStream) -> std::io::Result<(RawClient, Reply)> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let writer = stream.try_clone()?;
        let mut client = RawClient {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = client.read_reply()?;
        Ok((client, greeting))
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    pub fn read_reply(&mut self) -> std::io::Result<Reply> {
        read_reply_from(&mut self.reader)
    }

    /// Send one command line (CRLF added) and read its reply.
    pub fn cmd(&mut self, line: &str) -> std::io::Result<Reply> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// True when the server closed the connection (read gives EOF).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }
}

/// Read one (possibly multi-line) SMTP reply from any buffered stream
/// (a plain socket, or a TLS stream in the submission tests).
pub fn read_reply_from(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed while reading a reply",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.len() < 3 || !line.is_char_boundary(3) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("malformed reply line {line:?}"),
            ));
        }
        let code: u16 = line[..3].parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad code {line:?}"),
            )
        })?;
        let last = line.as_bytes().get(3) != Some(&b'-');
        lines.push(line);
        if last {
            return Ok(Reply { code, lines });
        }
    }
}

/// A TCP connection to `addr` from the local address `source` (any
/// 127.0.0.0/8 address works on Linux loopback), with a 5 s connect timeout.
pub fn tcp_from(source: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// Dot-stuff `body` and frame it for DATA (terminator included).
pub fn data_frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Extract the queue id from `250 2.0.0 Ok: queued as ID`.
pub fn queue_id_of(reply: &Reply) -> Option<String> {
    let text = reply.lines.last()?;
    text.rsplit(' ').next().map(str::to_string)
}

/// `tern queue list --json -c config`, parsed (the offline view of the spool).
pub fn queue_list_json(config: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["queue", "list", "--json", "-c"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The password of `alice`, the user `local_mail_config` creates.
pub const ALICE_PASSWORD: &str = "correct horse";

/// `test_config` delivering mail for `local.test` to its one user,
/// alice@local.test, with POP3 and IMAP on ephemeral ports; relay on.
pub fn local_mail_config(dir: &Path) -> Config {
    let mut c = test_config(dir);
    c.relay.hold = false;
    c.relay.local_domains = vec!["local.test".into()];
    c.pop3.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.imap.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let mut users = tern::users::Users::new();
    users
        .add(
            "alice",
            ALICE_PASSWORD.as_bytes(),
            &["alice@local.test".to_string()],
        )
        .unwrap();
    users.save(&c.users.file).unwrap();
    c
}

/// One message from bob@example.org to alice@local.test over SMTP.
pub fn send_to_alice(smtp: SocketAddr, message: &[u8]) {
    let (mut c, _) = RawClient::connect(smtp).unwrap();
    c.cmd("EHLO client.test").unwrap();
    assert_eq!(c.cmd("MAIL FROM:<bob@example.org>").unwrap().code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@local.test>").unwrap().code, 250);
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.send(&data_frame(message)).unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    c.cmd("QUIT").unwrap();
}

/// Waits (10 s at most) until `count` messages sit in mailboxes.
pub fn wait_filed(spool: &tern::spool::Spool, count: usize) {
    let filed = || {
        spool
            .queued()
            .iter()
            .filter(|m| m.states == [tern::spool::RecipientState::InMailbox])
            .count()
    };
    assert!(
        sink::wait_for(Duration::from_secs(10), || filed() >= count),
        "{} of {count} messages filed",
        filed()
    );
}
