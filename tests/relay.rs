//! The relay end to end, in process: tern (`runtime::start`) accepts mail
//! on loopback, resolves MX against an in-process DNS zone and delivers to
//! programmable sinks on 127.0.0.N, all on one port (`[relay] remote_port`).
//! DSNs go to the envelope sender's domain, statically routed to a sink of
//! their own, and are read back with mail-parser. The first tests check the
//! sink itself, so a failure below can be blamed on the right side.
//!
//! Nothing here leaves 127/8, and every wait has a deadline of a few
//! seconds beyond what the configured retry times need.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::dns_zone::{a, mx, soa, ZoneThread};
use common::sink::{wait_for, Received, Sink, SinkConfig, When};
use common::{config_file, data_frame, make_test_ca_for, queue_list_json, RawClient, Reply};
use hickory_server::proto::rr::Record;
use mail_parser::{MessageParser, MimeHeaders};
use tern::runtime::ServerHandle;

/// Deadline for mail that should leave at once (no retry involved).
const PROMPT: Duration = Duration::from_secs(5);
/// How long a test watches for something that must not happen.
const QUIET: Duration = Duration::from_millis(1500);
const SENDER: &str = "sender@senders.test";

fn loopback(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A zone "test." with `records` and a 1 s negative TTL.
fn zone(mut records: Vec<Record>) -> ZoneThread {
    records.insert(0, soa("test.", 1));
    ZoneThread::start("test.", records)
}

/// tern running in this process, shut down when dropped.
struct Tern {
    handle: Option<ServerHandle>,
    addr: SocketAddr,
    config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tern {
    /// Start tern with `relay_keys` (lines of the `[relay]` table) and
    /// `routes` (lines of `[relay.routes]`) over the test defaults: DNS at
    /// `dns`, MX port `remote_port`, 1 s first retry, DSNs for
    /// senders.test to `dsn_sink`.
    fn start(
        dns: SocketAddr,
        remote_port: u16,
        dsn_sink: &Sink,
        relay_keys: &str,
        routes: &str,
    ) -> Tern {
        let dir = tempfile::tempdir().unwrap();
        // test_config holds mail; relay tests release it unless the case
        // sets `hold` itself (TOML forbids the key twice).
        let hold = if relay_keys.contains("hold =") {
            ""
        } else {
            "hold = false\n"
        };
        let text = format!(
            "[relay]\n{hold}nameservers = [\"{dns}\"]\nremote_port = {remote_port}\n\
             first_retry = \"1s\"\nmax_retry = \"2s\"\nconnect_timeout = \"2s\"\n\
             connection_idle_timeout = \"2s\"\n{relay_keys}\n\
             [relay.routes]\n\"senders.test\" = \"{}\"\n{routes}\n",
            dsn_sink.addr
        );
        let (config, config_path) = config_file(dir.path(), &text);
        let handle = tern::runtime::start(&config).expect("tern starts");
        let addr = handle.smtp_addrs[0];
        Tern {
            handle: Some(handle),
            addr,
            config_path,
            _dir: dir,
        }
    }

    /// The state of `address` in `tern queue list --json` (offline read),
    /// or None when no queued message lists it.
    fn recipient_state(&self, address: &str) -> Option<String> {
        let listed = queue_list_json(&self.config_path);
        listed.as_array()?.iter().find_map(|m| {
            m["recipients"].as_array()?.iter().find_map(|r| {
                (r["address"].as_str()? == address)
                    .then(|| r["state"].as_str().map(String::from))?
            })
        })
    }

    /// Wait (bounded) until `address` shows `state`; return the last seen.
    fn wait_for_state(&self, address: &str, state: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.recipient_state(address);
            if seen.as_deref() == Some(state) || Instant::now() >= deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown();
        }
    }
}

/// A small message identified by `subject`.
fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: <{SENDER}>\r\nTo: <someone@example.test>\r\nSubject: {subject}\r\n\
         Message-ID: <{}@client.test>\r\n\r\nBody of {subject}.\r\n.leading dot line\r\n",
        subject.replace(' ', ".")
    )
    .into_bytes()
}

/// What tern answered to one submission.
struct Submission {
    rcpt: Vec<Reply>,
    /// The reply to the end of data; None when no recipient was accepted.
    data: Option<Reply>,
}

/// Submit one message over a fresh session; RCPT replies are collected,
/// DATA is sent only if one was accepted.
fn submit(addr: SocketAddr, from: &str, rcpts: &[&str], body: &[u8]) -> Submission {
    let (mut c, greeting) = RawClient::connect(addr).unwrap();
    assert_eq!(greeting.code, 220);
    assert_eq!(c.cmd("EHLO client.test").unwrap().code, 250);
    submit_on(&mut c, from, rcpts, body)
}

fn submit_on(c: &mut RawClient, from: &str, rcpts: &[&str], body: &[u8]) -> Submission {
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).unwrap().code, 250);
    let rcpt: Vec<Reply> = rcpts
        .iter()
        .map(|r| c.cmd(&format!("RCPT TO:<{r}>")).unwrap())
        .collect();
    if !rcpt.iter().any(|r| r.code == 250) {
        assert_eq!(c.cmd("RSET").unwrap().code, 250);
        return Submission { rcpt, data: None };
    }
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.send(&data_frame(body)).unwrap();
    let data = Some(c.read_reply().unwrap());
    Submission { rcpt, data }
}

/// Submit and insist on 250 for every recipient and the data.
/// `count` messages to `rcpt`, one after another on one connection.
fn submit_many(addr: SocketAddr, rcpt: &str, count: usize) {
    let (mut c, _) = RawClient::connect(addr).unwrap();
    c.cmd("EHLO client.test").unwrap();
    for i in 0..count {
        let s = submit_on(&mut c, SENDER, &[rcpt], &message(&format!("{rcpt} {i}")));
        assert_eq!(s.data.map(|r| r.code), Some(250));
    }
}

fn submit_ok(addr: SocketAddr, rcpts: &[&str], body: &[u8]) {
    let s = submit(addr, SENDER, rcpts, body);
    for reply in &s.rcpt {
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    let data = s.data.expect("data sent");
    assert_eq!(data.code, 250, "{data:?}");
}

/// The parts of a DSN the tests check.
#[derive(Debug)]
struct Dsn {
    /// The `report-type` of the top-level multipart/report.
    report_type: String,
    /// The message/delivery-status part as text.
    status: String,
    /// The third part (original headers or message) as text.
    original: String,
}

impl Dsn {
    /// Parse `received` as an RFC 3464 report; panics describing what is
    /// missing.
    fn parse(received: &Received) -> Dsn {
        let message = MessageParser::default()
            .parse(&received.data)
            .expect("the DSN parses as a message");
        let top = message.content_type().expect("the DSN has a Content-Type");
        assert_eq!(
            (top.ctype(), top.subtype()),
            ("multipart", Some("report")),
            "{}",
            String::from_utf8_lossy(&received.data)
        );
        let report_type = top.attribute("report-type").unwrap_or("").to_string();
        let part_text = |ctype: &str, subtypes: &[&str]| {
            message.parts.iter().find_map(|part| {
                let t = part.content_type()?;
                (t.ctype() == ctype && subtypes.contains(&t.subtype()?))
                    .then(|| String::from_utf8_lossy(part.contents()).into_owned())
            })
        };
        let status = part_text("message", &["delivery-status", "global-delivery-status"])
            .expect("a message/delivery-status part");
        let original = part_text("text", &["rfc822-headers"])
            .or_else(|| part_text("message", &["rfc822", "global"]))
            .expect("the original message or its headers attached");
        Dsn {
            report_type,
            status,
            original,
        }
    }

    /// The value of `field` in the delivery-status part (first match).
    fn field(&self, field: &str) -> Option<String> {
        self.status.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case(field)
                .then(|| value.trim().to_string())
        })
    }
}

/// Check the common shape of a failure DSN for `recipient` about the
/// message with `subject`; returns its Status.
fn check_failure_dsn(dsn_message: &Received, recipient: &str, subject: &str) -> String {
    assert_eq!(dsn_message.mail_from, "", "DSNs come from the null sender");
    assert_eq!(dsn_message.rcpt_to, [SENDER]);
    let dsn = Dsn::parse(dsn_message);
    assert_eq!(dsn.report_type, "delivery-status");
    let final_recipient = dsn.field("Final-Recipient").expect("Final-Recipient");
    assert!(
        final_recipient.to_ascii_lowercase().starts_with("rfc822;")
            && final_recipient.ends_with(recipient),
        "{final_recipient}"
    );
    assert_eq!(dsn.field("Action").as_deref(), Some("failed"), "{dsn:?}");
    assert!(
        dsn.original.contains(&format!("Subject: {subject}")),
        "original headers attached: {dsn:?}"
    );
    dsn.field("Status").expect("Status")
}

fn wait_seconds(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

// ---- the sink on its own -------------------------------------------------

#[test]
fn sink_records_pipelined_transactions_unstuffed_data_and_programmed_replies() {
    let sink = Sink::start(
        SinkConfig::default()
            .reply_times(When::Rcpt("Busy@x.test".into()), 451, "4.2.1 busy", 1)
            .reply(When::Rcpt("gone@x.test".into()), 550, "5.1.1 gone")
            .close_after(2),
    );
    let (mut c, greeting) = RawClient::connect(sink.addr).unwrap();
    assert_eq!(greeting.code, 220);
    let ehlo = c.cmd("EHLO probe").unwrap();
    assert!(ehlo.text().contains("PIPELINING"), "{ehlo:?}");
    assert!(!ehlo.text().contains("STARTTLS"), "{ehlo:?}");
    // One write: MAIL, three RCPTs, DATA.
    c.send(
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<busy@x.test>\r\nRCPT TO:<gone@x.test>\r\n\
          RCPT TO:<ok@x.test>\r\nDATA\r\n",
    )
    .unwrap();
    let codes: Vec<u16> = (0..5).map(|_| c.read_reply().unwrap().code).collect();
    assert_eq!(codes, [250, 451, 550, 250, 354]);
    c.send(&data_frame(b"Subject: one\r\n\r\n.dot\r\n"))
        .unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    // Lock-step this time, and the 451 rule is used up.
    assert_eq!(c.cmd("MAIL FROM:<>").unwrap().code, 250);
    assert_eq!(c.cmd("RCPT TO:<busy@x.test>").unwrap().code, 250);
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.send(&data_frame(b"Subject: two\r\n\r\nx\r\n")).unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    // Closed after two messages.
    assert!(c.is_closed());
    let got = sink.wait_for_messages(2, PROMPT);
    assert_eq!(got[0].rcpt_to, ["ok@x.test"]);
    assert_eq!(got[0].data, b"Subject: one\r\n\r\n.dot\r\n");
    assert!(got[0].pipelined);
    assert_eq!(got[1].mail_from, "");
    assert!(!got[1].pipelined);
    assert_eq!(got[1].header("subject").as_deref(), Some("two"));
    assert_eq!(sink.connections(), 1);
    assert_eq!(sink.messages_per_connection(), [2]);
    assert_eq!(sink.commands_like("RCPT", "busy@x.test").len(), 2);
}

#[test]
fn sink_takes_bdat_and_refuses_with_its_greeting() {
    let sink = Sink::start(SinkConfig::default().with_chunking());
    let (mut c, _) = RawClient::connect(sink.addr).unwrap();
    assert!(c.cmd("EHLO probe").unwrap().text().contains("CHUNKING"));
    c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nBDAT 5\r\nhello")
        .unwrap();
    let codes: Vec<u16> = (0..3).map(|_| c.read_reply().unwrap().code).collect();
    assert_eq!(codes, [250, 250, 250]);
    assert_eq!(c.cmd("BDAT 0 LAST").unwrap().code, 250);
    let got = sink.wait_for_messages(1, PROMPT);
    assert_eq!(got[0].data, b"hello");
    assert!(got[0].chunked && got[0].pipelined);

    let busy = Sink::start(SinkConfig::default().greet(421, "4.3.2 go away"));
    let (mut c, greeting) = RawClient::connect(busy.addr).unwrap();
    assert_eq!(greeting.code, 421);
    assert!(c.is_closed());
    let refusing = Sink::start(SinkConfig::default().greet(554, "5.3.2 no service"));
    let (mut c, greeting) = RawClient::connect(refusing.addr).unwrap();
    assert_eq!(greeting.code, 554);
    assert_eq!(c.cmd("EHLO probe").unwrap().code, 503);
    assert_eq!(c.cmd("QUIT").unwrap().code, 221);
}

/// Send `bytes` (if any) and read until `replies` complete replies arrived;
/// returns their codes.
async fn exchange<T: tern::runtime::transport::Transport>(
    stream: &mut T,
    bytes: &[u8],
    replies: usize,
) -> Vec<u16> {
    if !bytes.is_empty() {
        let (result, _) = stream.write_all(bytes.to_vec()).await;
        result.unwrap();
    }
    let mut text = String::new();
    let final_lines = |text: &str| -> Vec<u16> {
        text.split("\r\n")
            .filter(|line| line.as_bytes().get(3) == Some(&b' '))
            .filter_map(|line| line.get(..3)?.parse().ok())
            .collect()
    };
    while final_lines(&text).len() < replies {
        let read = stream.read(Vec::with_capacity(4096));
        let (result, buf) = tokio::time::timeout(PROMPT, read)
            .await
            .expect("reply in time");
        assert!(result.unwrap() > 0, "sink closed early after {text:?}");
        text.push_str(&String::from_utf8_lossy(&buf));
    }
    final_lines(&text)
}

#[test]
fn sink_speaks_starttls_with_a_test_ca() {
    use tern::runtime::outbound::{client_config, roots_from_pem, CertCheck, TlsClientStream};
    use tern::runtime::transport::TokioStream;
    let keys = tempfile::tempdir().unwrap();
    let (tls, ca) = tls_for(keys.path(), "sink", &["mx.secure.test"]);
    let sink = Sink::start(SinkConfig::default().with_starttls(tls));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(sink.addr).await.unwrap();
        let mut plain = TokioStream(tcp);
        assert_eq!(exchange(&mut plain, b"", 1).await, [220]);
        assert_eq!(exchange(&mut plain, b"EHLO probe\r\n", 1).await, [250]);
        assert_eq!(exchange(&mut plain, b"STARTTLS\r\n", 1).await, [220]);
        let roots = std::sync::Arc::new(roots_from_pem(&ca).unwrap());
        let config = client_config(CertCheck::Roots(roots));
        let mut secure = TlsClientStream::connect(plain, config, "mx.secure.test")
            .await
            .unwrap();
        let commands = b"EHLO probe\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n";
        assert_eq!(
            exchange(&mut secure, commands, 4).await,
            [250, 250, 250, 354]
        );
        let data = data_frame(b"Subject: secret\r\n\r\nx\r\n");
        assert_eq!(exchange(&mut secure, &data, 1).await, [250]);
    });
    let got = sink.wait_for_messages(1, PROMPT);
    assert!(got[0].tls && got[0].pipelined);
    assert_eq!(sink.commands_like("STARTTLS", "").len(), 1);
}

// ---- routing ---------------------------------------------------------------

#[test]
fn mail_goes_to_the_most_preferred_mx() {
    let primary = Sink::start(SinkConfig::default());
    let backup = Sink::start_on(
        SocketAddr::from((loopback(2), primary.port())),
        SinkConfig::default(),
    );
    let dns = zone(vec![
        mx("ordered.test.", 20, "backup.ordered.test."),
        mx("ordered.test.", 10, "primary.ordered.test."),
        a("primary.ordered.test.", loopback(1)),
        a("backup.ordered.test.", loopback(2)),
    ]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, primary.port(), &dsn, "", "");
    submit_ok(tern.addr, &["user@ordered.test"], &message("mx order"));
    let got = primary.wait_for_messages(1, PROMPT);
    assert_eq!(got[0].rcpt_to, ["user@ordered.test"]);
    assert_eq!(got[0].mail_from, SENDER);
    assert_eq!(backup.connections(), 0);
}

#[test]
fn refused_connection_falls_back_to_the_next_mx() {
    // Nothing listens on 127.0.0.2 at the sink's port.
    let backup = Sink::start(SinkConfig::default());
    let dns = zone(vec![
        mx("refusing.test.", 10, "down.refusing.test."),
        mx("refusing.test.", 20, "up.refusing.test."),
        a("down.refusing.test.", loopback(2)),
        a("up.refusing.test.", loopback(1)),
    ]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, backup.port(), &dsn, "", "");
    submit_ok(
        tern.addr,
        &["user@refusing.test"],
        &message("fallback refused"),
    );
    let got = backup.wait_for_messages(1, PROMPT);
    assert_eq!(got[0].rcpt_to, ["user@refusing.test"]);
}

#[test]
fn greeting_421_falls_back_to_the_next_mx() {
    let backup = Sink::start(SinkConfig::default());
    let busy = Sink::start_on(
        SocketAddr::from((loopback(3), backup.port())),
        SinkConfig::default().greet(421, "4.3.2 too busy"),
    );
    let dns = zone(vec![
        mx("busy.test.", 10, "mx1.busy.test."),
        mx("busy.test.", 20, "mx2.busy.test."),
        a("mx1.busy.test.", loopback(3)),
        a("mx2.busy.test.", loopback(1)),
    ]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, backup.port(), &dsn, "", "");
    submit_ok(tern.addr, &["user@busy.test"], &message("fallback 421"));
    let got = backup.wait_for_messages(1, PROMPT);
    assert_eq!(got[0].rcpt_to, ["user@busy.test"]);
    assert!(busy.connections() >= 1, "the preferred MX was tried first");
    assert_eq!(busy.message_count(), 0);
}

#[test]
fn domain_without_mx_gets_mail_at_its_own_address() {
    let sink = Sink::start(SinkConfig::default());
    let dns = zone(vec![a("implicit.test.", loopback(1))]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, sink.port(), &dsn, "", "");
    submit_ok(tern.addr, &["user@implicit.test"], &message("implicit mx"));
    let got = sink.wait_for_messages(1, PROMPT);
    assert_eq!(got[0].rcpt_to, ["user@implicit.test"]);
}

/// The first message to a null-MX domain is accepted (nothing is known at
/// RCPT yet) and bounces with 5.1.10; the RCPT started the lookup, so a
/// later RCPT to that domain is refused at once with `556 5.1.10`.
#[test]
fn null_mx_is_refused_at_rcpt_once_known_and_bounced_before() {
    let dns = zone(vec![mx("nullmx.test.", 0, ".")]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, 9, &dsn, "", "");
    // The first RCPT starts the lookup; if it was accepted, the message
    // must bounce with 5.1.10.
    let first = submit(
        tern.addr,
        SENDER,
        &["user@nullmx.test"],
        &message("null mx"),
    );
    match first.rcpt[0].code {
        556 => assert!(first.rcpt[0].text().contains("5.1.10"), "{:?}", first.rcpt),
        250 => {
            assert_eq!(first.data.as_ref().map(|r| r.code), Some(250));
            let got = dsn.wait_for_messages(1, PROMPT);
            let status = check_failure_dsn(&got[0], "user@nullmx.test", "null mx");
            assert_eq!(status, "5.1.10");
        }
        other => panic!("RCPT to a null MX domain got {other}: {:?}", first.rcpt),
    }
    // Once the answer is cached, RCPT itself is refused.
    let (mut c, _) = RawClient::connect(tern.addr).unwrap();
    c.cmd("EHLO client.test").unwrap();
    let deadline = Instant::now() + PROMPT;
    let refused = loop {
        assert_eq!(c.cmd(&format!("MAIL FROM:<{SENDER}>")).unwrap().code, 250);
        let reply = c.cmd("RCPT TO:<other@nullmx.test>").unwrap();
        assert_eq!(c.cmd("RSET").unwrap().code, 250);
        if reply.code != 250 || Instant::now() >= deadline {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(refused.code, 556, "{refused:?}");
    assert!(refused.text().contains("5.1.10"), "{refused:?}");
}

#[test]
fn nonexistent_domain_bounces_with_5_1_2() {
    let dns = zone(vec![a("www.exists.test.", loopback(1))]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, 9, &dsn, "", "");
    let s = submit(
        tern.addr,
        SENDER,
        &["user@missing.test"],
        &message("nxdomain"),
    );
    // A refusal at RCPT (answer already known) is as good as a bounce.
    if s.rcpt[0].code != 250 {
        assert!(s.rcpt[0].text().contains("5.1.2"), "{:?}", s.rcpt);
        return;
    }
    assert_eq!(s.data.as_ref().map(|r| r.code), Some(250));
    let got = dsn.wait_for_messages(1, PROMPT);
    let status = check_failure_dsn(&got[0], "user@missing.test", "nxdomain");
    assert_eq!(status, "5.1.2");
}

#[test]
fn dns_failure_defers_instead_of_bouncing() {
    // The test server refuses names outside its zone: a temporary failure.
    let dns = zone(vec![]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, 9, &dsn, "", "");
    submit_ok(tern.addr, &["user@outside.example"], &message("dns down"));
    assert_eq!(
        tern.wait_for_state("user@outside.example", "deferred", PROMPT)
            .as_deref(),
        Some("deferred")
    );
    std::thread::sleep(QUIET);
    assert_eq!(
        dsn.message_count(),
        0,
        "no bounce for a temporary DNS failure"
    );
}

// ---- retries, bounces, DSNs -------------------------------------------------

#[test]
fn temporary_failure_is_retried_then_delivered() {
    // One sink says 451 to the first RCPT, the other 452 to the first end
    // of data; each message must arrive on its second attempt.
    let at_rcpt =
        Sink::start(SinkConfig::default().reply_times(When::AnyRcpt, 451, "4.2.1 try later", 1));
    let at_data = Sink::start_on(
        SocketAddr::from((loopback(2), at_rcpt.port())),
        SinkConfig::default().reply_times(When::DataEnd, 452, "4.3.1 disk full for now", 1),
    );
    let dns = zone(vec![
        a("retry.test.", loopback(1)),
        a("retry-data.test.", loopback(2)),
    ]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, at_rcpt.port(), &dsn, "", "");
    let started = Instant::now();
    submit_ok(tern.addr, &["later@retry.test"], &message("retry rcpt"));
    submit_ok(
        tern.addr,
        &["again@retry-data.test"],
        &message("retry data"),
    );
    let got = at_rcpt.wait_for_messages(1, wait_seconds(10));
    assert_eq!(got[0].rcpt_to, ["later@retry.test"]);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "delivered after {:?}, before the 1 s first retry",
        started.elapsed()
    );
    assert_eq!(at_rcpt.commands_like("RCPT", "later@retry.test").len(), 2);
    let got = at_data.wait_for_messages(1, wait_seconds(10));
    assert_eq!(got[0].rcpt_to, ["again@retry-data.test"]);
    assert_eq!(at_data.commands_like("DATA", "").len(), 2);
    assert_eq!(dsn.message_count(), 0, "no DSN for delivered mail");
}

#[test]
fn expiry_bounces_with_one_dsn() {
    let sink = Sink::start(SinkConfig::default().reply(
        When::Rcpt("stuck@slow.test".into()),
        450,
        "4.2.0 mailbox busy",
    ));
    let dns = zone(vec![a("slow.test.", loopback(1))]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, sink.port(), &dsn, "lifetime = \"3s\"", "");
    submit_ok(tern.addr, &["stuck@slow.test"], &message("expiry probe"));
    assert_eq!(
        tern.wait_for_state("stuck@slow.test", "deferred", PROMPT)
            .as_deref(),
        Some("deferred")
    );
    let got = dsn.wait_for_messages(1, wait_seconds(12));
    let status = check_failure_dsn(&got[0], "stuck@slow.test", "expiry probe");
    assert!(
        status.starts_with("4."),
        "expiry keeps the 4xx status: {status}"
    );
    std::thread::sleep(QUIET);
    assert_eq!(dsn.message_count(), 1, "exactly one DSN");
    assert!(sink.commands_like("RCPT", "stuck@slow.test").len() >= 2);
    assert_eq!(sink.message_count(), 0);
}

#[test]
fn permanent_failure_bounces_once_and_never_to_the_null_sender() {
    let sink = Sink::start(SinkConfig::default().reply(
        When::Rcpt("gone@perm.test".into()),
        550,
        "5.1.1 no such user",
    ));
    let dns = zone(vec![a("perm.test.", loopback(1))]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, sink.port(), &dsn, "", "");
    // From the null sender: refused at the sink, and no DSN may follow.
    let s = submit(tern.addr, "", &["gone@perm.test"], &message("null sender"));
    assert_eq!(s.data.map(|r| r.code), Some(250));
    // From a real sender, with a second recipient that works.
    submit_ok(
        tern.addr,
        &["gone@perm.test", "ok@perm.test"],
        &message("perm failure"),
    );
    let delivered = sink.wait_for_messages(1, PROMPT);
    assert_eq!(delivered[0].rcpt_to, ["ok@perm.test"]);
    let got = dsn.wait_for_messages(1, PROMPT);
    let status = check_failure_dsn(&got[0], "gone@perm.test", "perm failure");
    assert!(status.starts_with("5."), "{status}");
    assert!(
        wait_for(PROMPT, || sink
            .commands_like("RCPT", "gone@perm.test")
            .len()
            >= 2),
        "both messages were tried"
    );
    std::thread::sleep(QUIET);
    assert_eq!(dsn.message_count(), 1, "one DSN, none for the null sender");
    assert_eq!(
        sink.commands_like("RCPT", "gone@perm.test").len(),
        2,
        "no retry after 5xx"
    );
}

// ---- the shape of delivery ---------------------------------------------------

#[test]
fn recipients_of_one_message_share_one_transaction() {
    let sink = Sink::start(SinkConfig::default());
    let dns = zone(vec![a("multi.test.", loopback(1))]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, sink.port(), &dsn, "", "");
    let body = message("three recipients");
    submit_ok(
        tern.addr,
        &["one@multi.test", "two@multi.test", "three@multi.test"],
        &body,
    );
    let got = sink.wait_for_messages(1, PROMPT);
    let mut rcpts = got[0].rcpt_to.clone();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["one@multi.test", "three@multi.test", "two@multi.test"]
    );
    assert!(
        got[0].data.ends_with(&body),
        "the client's bytes arrive intact"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sink.message_count(),
        1,
        "one transaction, not one per recipient"
    );
}

/// Outbound data starts with the `Received:` trace header tern adds.
#[test]
fn delivered_data_starts_with_a_received_header() {
    let sink = Sink::start(SinkConfig::default());
    let dns = zone(vec![a("traced.test.", loopback(1))]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, sink.port(), &dsn, "", "");
    let body = message("trace");
    submit_ok(tern.addr, &["user@traced.test"], &body);
    let got = sink.wait_for_messages(1, PROMPT);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.starts_with("Received: "), "{text}");
    let trace_end = text.find("\r\n\r\n").unwrap_or(0);
    assert!(
        text[..trace_end].contains("tern.test"),
        "the trace names this host: {text}"
    );
    assert!(
        got[0].data.ends_with(&body),
        "the client's bytes follow the trace"
    );
}

#[test]
fn pipelining_is_used_when_offered_and_only_then() {
    let fast = Sink::start(SinkConfig::default());
    let slow = Sink::start_on(
        SocketAddr::from((loopback(2), fast.port())),
        SinkConfig::default().without_pipelining(),
    );
    let dns = zone(vec![
        a("fast.test.", loopback(1)),
        a("slow.test.", loopback(2)),
    ]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, fast.port(), &dsn, "", "");
    submit_ok(
        tern.addr,
        &["a@fast.test", "b@fast.test"],
        &message("pipelined"),
    );
    submit_ok(
        tern.addr,
        &["a@slow.test", "b@slow.test"],
        &message("lock step"),
    );
    let got = fast.wait_for_messages(1, PROMPT);
    assert!(got[0].pipelined, "MAIL, RCPTs and DATA arrive in one read");
    let got = slow.wait_for_messages(1, PROMPT);
    assert!(!got[0].pipelined, "no pipelining without the extension");
}

#[test]
fn chunking_is_used_when_offered_with_the_same_bytes() {
    let sink = Sink::start(SinkConfig::default().with_chunking());
    let dns = zone(vec![a("chunks.test.", loopback(1))]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, sink.port(), &dsn, "", "");
    let body = message("chunked");
    submit_ok(tern.addr, &["user@chunks.test"], &body);
    let got = sink.wait_for_messages(1, PROMPT);
    assert!(got[0].chunked, "BDAT, not DATA, when CHUNKING is offered");
    assert!(
        got[0].data.ends_with(&body),
        "BDAT carries the bytes unstuffed"
    );
}

#[test]
fn connections_are_reused_within_the_per_destination_limit() {
    const MESSAGES: usize = 30;
    let sink = Sink::start(SinkConfig::default());
    let dns = zone(vec![a("reuse.test.", loopback(1))]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(
        dns.addr,
        sink.port(),
        &dsn,
        "max_connections_per_destination = 2",
        "",
    );
    submit_many(tern.addr, "user@reuse.test", MESSAGES);
    sink.wait_for_messages(MESSAGES, PROMPT);
    let per_connection = sink.messages_per_connection();
    assert!(
        sink.connections() <= 2,
        "{} connections for {MESSAGES} messages: {per_connection:?}",
        sink.connections()
    );
}

#[test]
fn a_connection_carries_at_most_max_messages_per_connection() {
    const MESSAGES: usize = 20;
    let sink = Sink::start(SinkConfig::default());
    let dns = zone(vec![a("capped.test.", loopback(1))]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(
        dns.addr,
        sink.port(),
        &dsn,
        "max_connections_per_destination = 1\nmax_messages_per_connection = 5",
        "",
    );
    submit_many(tern.addr, "user@capped.test", MESSAGES);
    sink.wait_for_messages(MESSAGES, PROMPT);
    let per_connection = sink.messages_per_connection();
    assert!(
        per_connection.iter().all(|&n| n <= 5) && per_connection.len() >= MESSAGES / 5,
        "{per_connection:?}"
    );
}

#[test]
fn a_peer_closing_a_pooled_connection_costs_no_message() {
    const MESSAGES: usize = 12;
    let sink = Sink::start(SinkConfig::default().close_after(3));
    let dns = zone(vec![a("closing.test.", loopback(1))]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, sink.port(), &dsn, "", "");
    let (mut c, _) = RawClient::connect(tern.addr).unwrap();
    c.cmd("EHLO client.test").unwrap();
    for i in 0..MESSAGES {
        let s = submit_on(
            &mut c,
            SENDER,
            &["user@closing.test"],
            &message(&format!("close {i}")),
        );
        assert_eq!(s.data.map(|r| r.code), Some(250));
    }
    // A dropped pooled connection may cost a retry (first_retry 1 s).
    let got = sink.wait_for_messages(MESSAGES, wait_seconds(15));
    assert_eq!(got.len(), MESSAGES);
    assert_eq!(dsn.message_count(), 0);
}

#[test]
fn held_mail_leaves_on_queue_release() {
    let sink = Sink::start(SinkConfig::default());
    let dns = zone(vec![a("held.test.", loopback(1))]);
    let dsn = Sink::start(SinkConfig::default());
    let tern = Tern::start(dns.addr, sink.port(), &dsn, "hold = true", "");
    submit_ok(tern.addr, &["user@held.test"], &message("held"));
    std::thread::sleep(QUIET);
    assert_eq!(sink.connections(), 0, "held mail does not leave");
    assert_eq!(
        tern.recipient_state("user@held.test").as_deref(),
        Some("pending")
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["queue", "release", "-c"])
        .arg(&tern.config_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("released 1 message"), "{stdout}");
    let got = sink.wait_for_messages(1, PROMPT);
    assert_eq!(got[0].rcpt_to, ["user@held.test"]);
}

// ---- STARTTLS -----------------------------------------------------------------

/// A server TLS config for a sink, with a certificate for `names` signed by
/// a fresh test CA whose PEM is written to `dir/<label>-ca.pem`.
fn tls_for(
    dir: &std::path::Path,
    label: &str,
    names: &[&str],
) -> (std::sync::Arc<rustls::ServerConfig>, PathBuf) {
    let sub = dir.join(label);
    std::fs::create_dir_all(&sub).unwrap();
    let (ca_pem, cert, key) = make_test_ca_for(&sub, names);
    let ca_path = dir.join(format!("{label}-ca.pem"));
    std::fs::write(&ca_path, ca_pem).unwrap();
    let config = tern::runtime::tls::load_server_config(&cert, &key).unwrap();
    (config, ca_path)
}

#[test]
fn verified_starttls_to_an_mx_and_a_named_route_with_a_test_ca() {
    let keys = tempfile::tempdir().unwrap();
    // tern checks the name it connected to: the MX host name, or the host
    // of a route (resolved by the system, so "localhost" works).
    let (tls, ca) = tls_for(keys.path(), "good", &["mx.secure.test", "localhost"]);
    let sink = Sink::start(SinkConfig::default().with_starttls(tls));
    let dns = zone(vec![
        mx("secure.test.", 10, "mx.secure.test."),
        a("mx.secure.test.", loopback(1)),
    ]);
    let dsn = Sink::start(SinkConfig::default());
    let relay = format!("tls = \"verify\"\ntls_ca_file = \"{}\"", ca.display());
    let route = format!(
        "\"routed.test\" = {{ to = \"localhost:{}\", tls = \"verify\" }}",
        sink.port()
    );
    let tern = Tern::start(dns.addr, sink.port(), &dsn, &relay, &route);
    submit_ok(tern.addr, &["user@secure.test"], &message("verified mx"));
    submit_ok(tern.addr, &["user@routed.test"], &message("verified route"));
    let got = sink.wait_for_messages(2, PROMPT);
    assert!(got.iter().all(|m| m.tls), "delivered inside TLS: {got:?}");
}

#[test]
fn verification_failure_defers_instead_of_sending_in_clear() {
    let keys = tempfile::tempdir().unwrap();
    // One sink's certificate comes from a CA tern does not trust; the
    // other's from the trusted CA, but for the domain, not the MX host.
    let (untrusted, _) = tls_for(keys.path(), "untrusted", &["mx.secure.test"]);
    let (misnamed, trusted_ca) = tls_for(keys.path(), "trusted", &["wrongname.test"]);
    let unknown_ca = Sink::start(SinkConfig::default().with_starttls(untrusted));
    let wrong_name = Sink::start_on(
        SocketAddr::from((loopback(2), unknown_ca.port())),
        SinkConfig::default().with_starttls(misnamed),
    );
    let dns = zone(vec![
        mx("secure.test.", 10, "mx.secure.test."),
        a("mx.secure.test.", loopback(1)),
        mx("wrongname.test.", 10, "mx.wrongname.test."),
        a("mx.wrongname.test.", loopback(2)),
    ]);
    let dsn = Sink::start(SinkConfig::default());
    let relay = format!(
        "tls = \"verify\"\ntls_ca_file = \"{}\"",
        trusted_ca.display()
    );
    let tern = Tern::start(dns.addr, unknown_ca.port(), &dsn, &relay, "");
    submit_ok(tern.addr, &["user@secure.test"], &message("unknown ca"));
    submit_ok(tern.addr, &["user@wrongname.test"], &message("wrong name"));
    for (sink, rcpt) in [
        (&unknown_ca, "user@secure.test"),
        (&wrong_name, "user@wrongname.test"),
    ] {
        assert_eq!(
            tern.wait_for_state(rcpt, "deferred", PROMPT).as_deref(),
            Some("deferred"),
            "{rcpt}"
        );
        assert!(
            !sink.commands_like("STARTTLS", "").is_empty(),
            "TLS was attempted for {rcpt}"
        );
        assert_eq!(sink.message_count(), 0, "{rcpt} never sent unverified");
        assert!(
            sink.commands_like("MAIL", "").is_empty(),
            "no transaction in clear for {rcpt}"
        );
    }
}

#[test]
fn required_and_opportunistic_tls_per_route() {
    let keys = tempfile::tempdir().unwrap();
    // A certificate no trust store knows: required and opportunistic take it.
    let (tls, _) = tls_for(keys.path(), "self", &["localhost"]);
    let plain = Sink::start(SinkConfig::default());
    let secure = Sink::start(SinkConfig::default().with_starttls(tls));
    let dns = zone(vec![]);
    let dsn = Sink::start(SinkConfig::default());
    let routes = format!(
        "\"req-plain.test\" = {{ to = \"{p}\", tls = \"required\" }}\n\
         \"req-tls.test\" = {{ to = \"{s}\", tls = \"required\" }}\n\
         \"opp-plain.test\" = {{ to = \"{p}\", tls = \"opportunistic\" }}\n\
         \"opp-tls.test\" = {{ to = \"{s}\", tls = \"opportunistic\" }}\n",
        p = plain.addr,
        s = secure.addr
    );
    let tern = Tern::start(dns.addr, 9, &dsn, "tls = \"off\"", &routes);
    submit_ok(tern.addr, &["user@req-tls.test"], &message("required tls"));
    submit_ok(
        tern.addr,
        &["user@opp-tls.test"],
        &message("opportunistic tls"),
    );
    submit_ok(
        tern.addr,
        &["user@opp-plain.test"],
        &message("opportunistic plain"),
    );
    submit_ok(
        tern.addr,
        &["user@req-plain.test"],
        &message("required plain"),
    );
    let got = secure.wait_for_messages(2, PROMPT);
    assert!(got.iter().all(|m| m.tls), "{got:?}");
    let got = plain.wait_for_messages(1, PROMPT);
    assert_eq!(got[0].rcpt_to, ["user@opp-plain.test"]);
    assert!(!got[0].tls);
    assert_eq!(
        tern.wait_for_state("user@req-plain.test", "deferred", PROMPT)
            .as_deref(),
        Some("deferred")
    );
    assert!(
        plain.commands_like("RCPT", "req-plain.test").is_empty(),
        "required TLS never falls back to clear"
    );
}
