//! Every `tern queue` verb through the CLI against a live server (a real
//! `tern` process): list, show, summary, flush by ID, by domain and all,
//! hold and release by ID, by domain and all (a hold survives a restart),
//! delete (no DSN; refused while the message is being delivered) and
//! bounce (a DSN arrives).
//!
//! Mail leaves through static routes to sinks on 127.0.0.1, so no DNS
//! query is made; every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::sink::{wait_for, Sink, SinkConfig, When};
use common::{
    config_file, data_frame, queue_id_of, queue_list_json, signal, spawn_tern, tern_cli, RawClient,
    ServerProcess,
};

const SENDER: &str = "sender@senders.test";
/// Deadline for mail that should leave at once.
const PROMPT: Duration = Duration::from_secs(10);
/// How long the test watches for something that must not happen.
const QUIET: Duration = Duration::from_millis(1500);

/// Submit one message to `rcpts`; returns its queue ID.
fn submit(addr: SocketAddr, rcpts: &[&str], subject: &str) -> String {
    let (mut c, _) = RawClient::connect(addr).unwrap();
    c.cmd("EHLO admin.test").unwrap();
    assert_eq!(c.cmd(&format!("MAIL FROM:<{SENDER}>")).unwrap().code, 250);
    for rcpt in rcpts {
        let reply = c.cmd(&format!("RCPT TO:<{rcpt}>")).unwrap();
        assert_eq!(reply.code, 250, "{rcpt}: {}", reply.text());
    }
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    let body = format!(
        "From: <{SENDER}>\r\nTo: <{}>\r\nSubject: {subject}\r\n\r\nBody of {subject}.\r\n",
        rcpts[0]
    );
    c.send(&data_frame(body.as_bytes())).unwrap();
    let reply = c.read_reply().unwrap();
    assert_eq!(reply.code, 250, "{}", reply.text());
    let _ = c.cmd("QUIT");
    queue_id_of(&reply).expect("a queue id in the 250 reply")
}

/// The message `id` in `queue list --json`, if listed.
fn listed(config: &Path, id: &str) -> Option<serde_json::Value> {
    queue_list_json(config)
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
}

/// `tern queue ARGS` that must succeed; returns its stdout.
fn queue_ok(config: &Path, args: &[&str]) -> String {
    let mut all = vec!["queue"];
    all.extend_from_slice(args);
    let (ok, out, err) = tern_cli(config, &all);
    assert!(ok, "tern queue {args:?} failed: {out}{err}");
    out
}

/// `tern queue ARGS` that must fail; returns its stderr.
fn queue_err(config: &Path, args: &[&str]) -> String {
    let mut all = vec!["queue"];
    all.extend_from_slice(args);
    let (ok, out, err) = tern_cli(config, &all);
    assert!(!ok, "tern queue {args:?} should have failed: {out}");
    err
}

/// `tern queue ARGS` until it prints `expected` (an attempt that has just
/// written its outcome may still be finishing on its core).
fn queue_until(config: &Path, args: &[&str], expected: &str) {
    let last = std::cell::RefCell::new(String::new());
    let done = wait_for(PROMPT, || {
        *last.borrow_mut() = queue_ok(config, args).trim().to_string();
        *last.borrow() == expected
    });
    assert!(done, "tern queue {args:?}: {}", last.borrow());
}

/// Routes for every test domain, `[relay]` keys, and hold on or off.
fn write_config(
    dir: &Path,
    hold: bool,
    sink: &Sink,
    tempfail: &Sink,
    slow: &Sink,
    dsn: &Sink,
) -> std::path::PathBuf {
    let text = format!(
        "[relay]\nhold = {hold}\nfirst_retry = \"1h\"\nmax_retry = \"2h\"\n\
         connect_timeout = \"2s\"\nconnection_idle_timeout = \"1s\"\n\
         [relay.routes]\n\"a.test\" = \"[127.0.0.1]:{}\"\n\"b.test\" = \"[127.0.0.1]:{}\"\n\
         \"c.test\" = \"[127.0.0.1]:{}\"\n\"e.test\" = \"[127.0.0.1]:{}\"\n\
         \"senders.test\" = \"[127.0.0.1]:{}\"\n",
        sink.port(),
        sink.port(),
        tempfail.port(),
        slow.port(),
        dsn.port()
    );
    config_file(dir, &text).1
}

fn stop(server: ServerProcess) {
    let mut server = server;
    signal(&server, libc::SIGTERM);
    let status = server.0.wait().unwrap();
    assert!(status.success(), "tern exits 0 on SIGTERM: {status}");
}

#[test]
fn every_queue_verb_against_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkConfig::default());
    let tempfail = Sink::start(SinkConfig::default().reply(When::AnyRcpt, 451, "4.3.0 try later"));
    let slow = Sink::start(SinkConfig::default().slow_data_end(Duration::from_secs(4)));
    let dsn = Sink::start(SinkConfig::default());
    let config = write_config(dir.path(), true, &sink, &tempfail, &slow, &dsn);
    let (server, smtp) = spawn_tern(&config);

    // Held by `[relay] hold`: five messages wait.
    let m1 = submit(smtp, &["u@a.test"], "one");
    let m2 = submit(smtp, &["v@b.test"], "two");
    let m3 = submit(smtp, &["w@a.test"], "three");
    let m4 = submit(smtp, &["x@b.test", "y@a.test"], "four");
    let m5 = submit(smtp, &["z@a.test"], "five");
    assert_eq!(queue_list_json(&config).as_array().unwrap().len(), 5);

    // list --domain and the text form.
    let text = queue_ok(&config, &["list", "--domain", "b.test"]);
    assert!(
        text.contains(&m2) && text.contains(&m4) && !text.contains(&m1),
        "{text}"
    );

    // summary: recipients by domain, the busiest first.
    let shape: serde_json::Value =
        serde_json::from_str(&queue_ok(&config, &["summary", "--json"])).unwrap();
    assert_eq!(shape["total"]["total"], 6);
    assert_eq!(shape["domains"][0]["domain"], "a.test");
    assert_eq!(shape["domains"][0]["total"], 4);
    assert_eq!(
        shape["domains"][0]["by_age"][0], 4,
        "all younger than 5 min"
    );
    assert_eq!(shape["domains"][1]["domain"], "b.test");
    assert_eq!(shape["domains"][1]["total"], 2);
    let table = queue_ok(&config, &["summary"]);
    assert!(
        table.contains("TOTAL") && table.contains("b.test"),
        "{table}"
    );

    // show: envelope, recipient state, headers and body; --json parses the headers.
    let shown = queue_ok(&config, &["show", &m4]);
    assert!(shown.contains(&format!("*** ENVELOPE {m4} ***")), "{shown}");
    assert!(shown.contains("recipient: x@b.test (pending)"), "{shown}");
    assert!(
        shown.contains("Subject: four") && shown.contains("Body of four."),
        "{shown}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&queue_ok(&config, &["show", "--json", &m4])).unwrap();
    let headers = shown["headers"].as_array().unwrap();
    assert!(
        headers.iter().any(|h| h[0] == "Subject" && h[1] == "four"),
        "{shown}"
    );
    assert_eq!(shown["recipients"][1]["address"], "y@a.test");
    let err = queue_err(&config, &["show", "0000000000000001"]);
    assert!(err.contains("no queued message"), "{err}");

    // hold ID pins a message: it stays held through release --domain and
    // a restart with `[relay] hold` off.
    assert_eq!(queue_ok(&config, &["hold", &m1]).trim(), "held 1 message");
    assert_eq!(listed(&config, &m1).unwrap()["held"], true);
    assert_eq!(
        queue_ok(&config, &["release", "--domain", "b.test"]).trim(),
        "released 2 messages"
    );
    let got = sink.wait_for_messages(2, PROMPT);
    let mut rcpts: Vec<String> = got.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["v@b.test", "x@b.test", "y@a.test"]);
    assert_eq!(
        queue_ok(&config, &["release", &m3]).trim(),
        "released 1 message"
    );
    sink.wait_for_messages(3, PROMPT);
    // An unknown ID is named; a malformed one is refused before the socket.
    let err = queue_err(&config, &["release", "00000000DEADBEE8"]);
    assert!(
        err.contains("no message 00000000DEADBEE8 in the queue"),
        "{err}"
    );
    let err = queue_err(&config, &["delete", "nonsense"]);
    assert!(err.contains("not a queue ID"), "{err}");
    stop(server);

    let config = write_config(dir.path(), false, &sink, &tempfail, &slow, &dsn);
    let (server, smtp) = spawn_tern(&config);
    // m5 was held by `[relay] hold` only: it leaves now; m1 stays held.
    let got = sink.wait_for_messages(4, PROMPT);
    assert_eq!(got[3].rcpt_to, ["z@a.test"]);
    std::thread::sleep(QUIET);
    assert_eq!(sink.message_count(), 4, "the held message stays");
    assert_eq!(listed(&config, &m1).unwrap()["held"], true);
    assert!(listed(&config, &m5).is_none());

    // bounce: the recipient is returned with a DSN, as an expiry would.
    assert_eq!(
        queue_ok(&config, &["bounce", &m1]).trim(),
        "bounced 1 message"
    );
    let notices = dsn.wait_for_messages(1, PROMPT);
    assert_eq!(notices[0].mail_from, "");
    assert_eq!(notices[0].rcpt_to, [SENDER]);
    let report = String::from_utf8_lossy(&notices[0].data).into_owned();
    assert!(
        report.contains("Status: 5.0.0") && report.contains("u@a.test"),
        "{report}"
    );
    assert!(listed(&config, &m1).is_none(), "bounced: final, not listed");
    let err = queue_err(&config, &["bounce", &m1]);
    assert!(err.contains("no message"), "{err}");

    // flush: a deferred message is retried before its time (1 h away),
    // by ID, by domain and all at once.
    let deferred = submit(smtp, &["d@c.test"], "deferred");
    let attempts = || tempfail.commands_like("RCPT", "d@c.test").len();
    assert!(wait_for(PROMPT, || attempts() == 1));
    assert!(wait_for(PROMPT, || {
        listed(&config, &deferred).is_some_and(|m| m["recipients"][0]["state"] == "deferred")
    }));
    queue_until(&config, &["flush", &deferred], "flushed 1 message");
    assert!(wait_for(PROMPT, || attempts() == 2));
    assert!(wait_for(PROMPT, || {
        listed(&config, &deferred).is_some_and(|m| {
            m["recipients"][0]["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("attempts 2"))
        })
    }));
    queue_until(
        &config,
        &["flush", "--domain", "c.test"],
        "flushed 1 message",
    );
    assert!(wait_for(PROMPT, || attempts() == 3));
    assert!(wait_for(PROMPT, || {
        listed(&config, &deferred).is_some_and(|m| {
            m["recipients"][0]["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("attempts 3"))
        })
    }));
    queue_until(&config, &["flush"], "flushed 1 message");
    assert!(wait_for(PROMPT, || attempts() == 4));
    let shown = queue_ok(&config, &["show", &deferred]);
    assert!(
        shown.contains("last error:") && shown.contains("451"),
        "{shown}"
    );

    // hold --domain and delete --domain: final without a DSN.
    assert!(wait_for(PROMPT, || {
        listed(&config, &deferred).is_some_and(|m| {
            m["recipients"][0]["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("attempts 4"))
        })
    }));
    queue_until(&config, &["hold", "--domain", "c.test"], "held 1 message");
    assert_eq!(
        queue_ok(&config, &["delete", "--domain", "c.test"]).trim(),
        "deleted 1 message"
    );
    assert!(listed(&config, &deferred).is_none());
    std::thread::sleep(QUIET);
    assert_eq!(dsn.message_count(), 1, "delete sends no DSN");
    assert_eq!(attempts(), 4, "a deleted message is not tried again");

    // delete while the message is being delivered: refused, and the
    // delivery completes.
    let busy = submit(smtp, &["slow@e.test"], "slow");
    assert!(wait_for(PROMPT, || !slow
        .commands_like("RCPT", "slow@e.test")
        .is_empty()));
    let err = queue_err(&config, &["delete", &busy]);
    assert!(err.contains("being delivered right now"), "{err}");
    slow.wait_for_messages(1, PROMPT);
    assert!(wait_for(PROMPT, || listed(&config, &busy).is_none()));

    // hold and release without a target: every queued message.
    let first = submit(smtp, &["h1@c.test"], "hold all one");
    let second = submit(smtp, &["h2@c.test"], "hold all two");
    for id in [&first, &second] {
        assert!(wait_for(PROMPT, || {
            listed(&config, id).is_some_and(|m| m["recipients"][0]["state"] == "deferred")
        }));
    }
    queue_until(&config, &["hold"], "held 2 messages");
    assert_eq!(queue_ok(&config, &["flush"]).trim(), "flushed 0 messages");
    let tries = tempfail.commands_like("RCPT", "@c.test").len();
    assert_eq!(
        queue_ok(&config, &["release"]).trim(),
        "released 2 messages"
    );
    std::thread::sleep(QUIET);
    assert_eq!(
        tempfail.commands_like("RCPT", "@c.test").len(),
        tries,
        "released messages keep their retry time (1 h away)"
    );
    queue_until(
        &config,
        &["delete", "--domain", "c.test"],
        "deleted 2 messages",
    );
    assert!(queue_list_json(&config).as_array().unwrap().is_empty());
    stop(server);
}

#[test]
fn admin_verbs_need_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (_, config) = config_file(dir.path(), "");
    std::fs::create_dir_all(dir.path().join("spool")).unwrap();
    let err = queue_err(&config, &["flush"]);
    assert!(err.contains("cannot reach the running server"), "{err}");
    let err = queue_err(&config, &["delete"]);
    assert!(err.contains("required"), "{err}");
    // The offline verbs work without one.
    let shape: serde_json::Value =
        serde_json::from_str(&queue_ok(&config, &["summary", "--json"])).unwrap();
    assert_eq!(shape["total"]["total"], 0);
}
