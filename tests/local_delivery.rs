//! Local delivery end to end over TCP: SMTP in for a user of a local
//! domain, the message filed in the user's INBOX (the spool keeps the
//! record), then read and deleted over POP3. Deletions happen only at
//! QUIT, a session cut before QUIT deletes nothing, UIDLs survive a
//! restart, and a deleted message lets its spool record go. Mail for
//! postmaster reaches the `[relay] postmaster` user (RFC 5321 4.5.1).
//!
//! Everything stays on 127.0.0.1; every read has a timeout.

mod common;

use std::time::Duration;

use common::pop3::Pop3;
use common::sink::wait_for;
use common::{data_frame, local_mail_config, send_to_alice, wait_filed, RawClient, ALICE_PASSWORD};
use tern::config::Source;
use tern::runtime::{self, ServerHandle};

#[test]
fn mail_for_a_local_user_is_read_and_deleted_over_pop3() {
    let dir = tempfile::tempdir().unwrap();
    let config = local_mail_config(dir.path());
    let server = runtime::start(&config).unwrap();
    let pop3 = server.pop3_addrs[0];
    send(&server, "first");
    send(&server, "second");
    wait_filed(&server.spool, 2);

    let mut pop = Pop3::login(pop3);
    assert!(pop.cmd("STAT").starts_with("+OK 2 "));
    let uidls = pop.multi("UIDL");
    assert_eq!(uidls.len(), 2);
    let message = pop.multi("RETR 1");
    assert!(
        message[0].starts_with("Return-Path: <bob@example.org>"),
        "{message:?}"
    );
    assert!(
        message[1].starts_with("Received: from client.test"),
        "{message:?}"
    );
    assert!(
        message.contains(&"Subject: first".to_string()),
        "{message:?}"
    );
    assert!(message.contains(&".dot line".to_string()), "{message:?}");
    // A second session is refused while this one holds the maildrop.
    let mut other = Pop3::connect(pop3);
    assert!(other.cmd("USER alice").starts_with("+OK"));
    let in_use = other.cmd(&format!("PASS {ALICE_PASSWORD}"));
    assert!(in_use.starts_with("-ERR [IN-USE]"), "{in_use}");
    drop(other);

    // Cut before QUIT: nothing is deleted.
    assert!(pop.cmd("DELE 1").starts_with("+OK"));
    drop(pop);
    let mut pop = Pop3::login(pop3);
    assert!(pop.cmd("STAT").starts_with("+OK 2 "));
    assert!(pop.cmd("DELE 1").starts_with("+OK"));
    assert!(pop.cmd("QUIT").starts_with("+OK"));

    let mut pop = Pop3::login(pop3);
    assert!(pop.cmd("STAT").starts_with("+OK 1 "));
    assert_eq!(pop.multi("UIDL"), [uidls[1].replacen("2 ", "1 ", 1)]);
    assert!(pop.cmd("QUIT").starts_with("+OK"));
    // The deleted message's record is released: only one stays queued.
    assert!(wait_for(Duration::from_secs(10), || server
        .spool
        .queued()
        .len()
        == 1));
    server.shutdown();

    // After a restart the maildrop and its UIDLs are the same.
    let server = runtime::start(&config).unwrap();
    let mut pop = Pop3::login(server.pop3_addrs[0]);
    assert_eq!(pop.multi("UIDL"), [uidls[1].replacen("2 ", "1 ", 1)]);
    let message = pop.multi("TOP 1 0");
    assert!(
        message.contains(&"Subject: second".to_string()),
        "{message:?}"
    );
    assert!(
        !message.iter().any(|l| l.contains("body of")),
        "{message:?}"
    );
    pop.cmd("QUIT");
    server.shutdown();
}

#[test]
fn wrong_password_and_unknown_user_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = runtime::start(&local_mail_config(dir.path())).unwrap();
    let mut pop = Pop3::connect(server.pop3_addrs[0]);
    assert!(pop.cmd("USER alice").starts_with("+OK"));
    assert!(pop.cmd("PASS wrong").starts_with("-ERR [AUTH]"));
    assert!(pop.cmd("USER mallory").starts_with("+OK"));
    assert!(pop
        .cmd(&format!("PASS {ALICE_PASSWORD}"))
        .starts_with("-ERR [AUTH]"));
    server.shutdown();
}

#[test]
fn postmaster_mail_goes_to_the_named_user_until_a_reload_unsets_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = local_mail_config(dir.path());
    config.relay.postmaster = Some("alice".into());
    let mut server = runtime::start(&config).unwrap();
    let smtp = server.smtp_addrs[0];
    // RFC 5321 4.5.1: the domainless form and postmaster at a local
    // domain, in any case.
    for recipient in ["<Postmaster>", "<POSTMASTER@Local.Test>"] {
        let (mut c, _) = RawClient::connect(smtp).unwrap();
        c.cmd("EHLO client.test").unwrap();
        assert_eq!(c.cmd("MAIL FROM:<bob@example.org>").unwrap().code, 250);
        let reply = c.cmd(&format!("RCPT TO:{recipient}")).unwrap();
        assert_eq!(reply.code, 250, "{recipient}: {reply:?}");
        assert_eq!(c.cmd("DATA").unwrap().code, 354);
        c.send(&data_frame(
            format!("Subject: to {recipient}\r\n\r\nhello\r\n").as_bytes(),
        ))
        .unwrap();
        assert_eq!(c.read_reply().unwrap().code, 250);
        c.cmd("QUIT").unwrap();
    }
    wait_filed(&server.spool, 2);
    let mut pop = Pop3::login(server.pop3_addrs[0]);
    assert!(pop.cmd("STAT").starts_with("+OK 2 "));
    let first = pop.multi("TOP 1 0");
    assert!(
        first.contains(&"Subject: to <Postmaster>".to_string()),
        "{first:?}"
    );
    pop.cmd("QUIT");

    // Unset by a reload: refused at RCPT, so no bounce is ever owed.
    config.relay.postmaster = None;
    let report = server.reload(&config, &Source::Embedded).unwrap();
    assert_eq!(report.applied, ["[relay] postmaster"]);
    let (mut c, _) = RawClient::connect(smtp).unwrap();
    c.cmd("EHLO client.test").unwrap();
    assert_eq!(c.cmd("MAIL FROM:<bob@example.org>").unwrap().code, 250);
    for recipient in ["<Postmaster>", "<postmaster@local.test>"] {
        let reply = c.cmd(&format!("RCPT TO:{recipient}")).unwrap();
        assert_eq!(reply.code, 550, "{recipient}: {reply:?}");
        assert!(reply.lines[0].starts_with("550 5.1.1 "), "{reply:?}");
    }
    c.cmd("QUIT").unwrap();
    server.shutdown();
}

fn send(server: &ServerHandle, subject: &str) {
    send_to_alice(
        server.smtp_addrs[0],
        format!("Subject: {subject}\r\n\r\n.dot line\r\nbody of {subject}\r\n").as_bytes(),
    );
}
