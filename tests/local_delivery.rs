//! Local delivery end to end over TCP: SMTP in for a user of a local
//! domain, the message filed in the user's INBOX (the spool keeps the
//! record), then read and deleted over POP3. Deletions happen only at
//! QUIT, a session cut before QUIT deletes nothing, UIDLs survive a
//! restart, and a deleted message lets its spool record go. Mail for
//! postmaster is always accepted (RFC 5321 4.5.1) and reaches the
//! `[relay] postmaster` user, waiting in the queue until there is one. A
//! user reached by several recipients of one message gets one copy.
//!
//! Everything stays on 127.0.0.1; every read has a timeout.

mod common;

use std::time::Duration;

use common::pop3::Pop3;
use common::sink::wait_for;
use common::{data_frame, local_mail_config, send_to_alice, wait_filed, RawClient, ALICE_PASSWORD};
use tern::config::Source;
use tern::runtime::{self, ServerHandle};
use tern::spool::RecipientState;

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
fn postmaster_mail_is_always_accepted_and_waits_for_the_named_user() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = local_mail_config(dir.path());
    config.relay.first_retry = Duration::from_secs(1);
    config.relay.max_retry = Duration::from_secs(1);
    let mut server = runtime::start(&config).unwrap();
    let smtp = server.smtp_addrs[0];
    // RFC 5321 4.5.1: the domainless form and postmaster at a local
    // domain, in any case, even though the default [relay] postmaster
    // ("postmaster") is no user here.
    for recipient in ["<Postmaster>", "<POSTMASTER@Local.Test>"] {
        let (mut c, _) = RawClient::connect(smtp).unwrap();
        c.cmd("EHLO client.test").unwrap();
        assert_eq!(c.cmd("MAIL FROM:<bob@example.org>").unwrap().code, 250);
        let reply = c.cmd("RCPT TO:<nobody@local.test>").unwrap();
        assert!(reply.text().starts_with("550 5.1.1 "), "{reply:?}");
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
    // Nobody to file it for: it waits, deferred, saying what to set.
    let waiting = || {
        server
            .spool
            .queued()
            .iter()
            .filter(|m| {
                matches!(&m.states[..], [RecipientState::Deferred { last_error, .. }]
                    if last_error.contains("[relay] postmaster"))
            })
            .count()
    };
    assert!(wait_for(Duration::from_secs(10), || waiting() == 2));

    // alice named by a reload: the next retry files both into her INBOX.
    config.relay.postmaster = "alice".into();
    let report = server.reload(&config, &Source::Embedded).unwrap();
    assert_eq!(report.applied, ["[relay] postmaster"]);
    wait_filed(&server.spool, 2);
    let mut pop = Pop3::login(server.pop3_addrs[0]);
    assert!(pop.cmd("STAT").starts_with("+OK 2 "));
    let mut subjects: Vec<String> = (1..=2)
        .flat_map(|n| pop.multi(&format!("TOP {n} 0")))
        .filter(|line| line.starts_with("Subject: "))
        .collect();
    // Filed by whichever core retried first.
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "Subject: to <POSTMASTER@Local.Test>",
            "Subject: to <Postmaster>"
        ]
    );
    pop.cmd("QUIT");
    server.shutdown();
}

#[test]
fn a_user_reached_by_several_recipients_gets_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = local_mail_config(dir.path());
    config.relay.postmaster = "alice".into();
    let server = runtime::start(&config).unwrap();
    let (mut c, _) = RawClient::connect(server.smtp_addrs[0]).unwrap();
    c.cmd("EHLO client.test").unwrap();
    assert_eq!(c.cmd("MAIL FROM:<bob@example.org>").unwrap().code, 250);
    for recipient in ["<alice@local.test>", "<Postmaster>", "<ALICE@local.test>"] {
        assert_eq!(c.cmd(&format!("RCPT TO:{recipient}")).unwrap().code, 250);
    }
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.send(&data_frame(b"Subject: once\r\n\r\nhello\r\n"))
        .unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    c.cmd("QUIT").unwrap();

    let states = || server.spool.queued().first().map(|m| m.states.clone());
    assert!(wait_for(Duration::from_secs(10), || {
        states()
            == Some(vec![
                RecipientState::InMailbox,
                RecipientState::Delivered,
                RecipientState::Delivered,
            ])
    }));
    let mut pop = Pop3::login(server.pop3_addrs[0]);
    assert!(pop.cmd("STAT").starts_with("+OK 1 "));
    // Deleting the one copy lets the record go: nothing else refers to it.
    assert!(pop.cmd("DELE 1").starts_with("+OK"));
    assert!(pop.cmd("QUIT").starts_with("+OK"));
    assert!(wait_for(Duration::from_secs(10), || server
        .spool
        .queued()
        .is_empty()));
    server.shutdown();
}

fn send(server: &ServerHandle, subject: &str) {
    send_to_alice(
        server.smtp_addrs[0],
        format!("Subject: {subject}\r\n\r\n.dot line\r\nbody of {subject}\r\n").as_bytes(),
    );
}
