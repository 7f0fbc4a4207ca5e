//! Local delivery across kill -9: clients send to a local user while tern
//! files the messages into the user's mailbox; tern is killed with
//! SIGKILL mid-stream, restarted on the same spool and mailboxes, and every
//! acknowledged message must end up in the INBOX exactly once (a message
//! durable but not yet acknowledged may be there too).
//!
//! Bounded: a few hundred small messages, deadlines of seconds; 127.0.0.1 only.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sink::wait_for;
use common::{data_frame, local_mail_config, spawn_tern, RawClient};
use tern::mailbox::INBOX;

const CLIENTS: usize = 4;
/// Kill after this many acknowledgements.
const KILL_AFTER: usize = 150;
/// Each client stops after this many messages even if the kill is late.
const PER_CLIENT_MAX: usize = 200;

/// Sends until the server goes away; returns the Message-IDs acknowledged.
fn client(addr: std::net::SocketAddr, n: usize, acked: Arc<AtomicUsize>) -> Vec<String> {
    let mut ids = Vec::new();
    let Ok((mut c, _)) = RawClient::connect(addr) else {
        return ids;
    };
    if c.cmd("EHLO crash.test").is_err() {
        return ids;
    }
    for seq in 0..PER_CLIENT_MAX {
        let id = format!("<{n}.{seq}@mailbox-crash.test>");
        let sent = (|| -> std::io::Result<u16> {
            c.cmd("MAIL FROM:<bob@example.org>")?;
            c.cmd("RCPT TO:<alice@local.test>")?;
            c.cmd("DATA")?;
            c.send(&data_frame(
                format!("Message-ID: {id}\r\nSubject: crash\r\n\r\nbody\r\n").as_bytes(),
            ))?;
            Ok(c.read_reply()?.code)
        })();
        match sent {
            Ok(250) => {
                ids.push(id);
                acked.fetch_add(1, Ordering::SeqCst);
            }
            _ => break,
        }
    }
    ids
}

#[test]
fn filed_mail_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = local_mail_config(dir.path());
    config.pop3.listen = vec![];
    config.imap.listen = vec![];
    let path = dir.path().join("tern.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let (mut server, smtp) = spawn_tern(&path);

    let acked = Arc::new(AtomicUsize::new(0));
    let all_ids = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let acked = Arc::clone(&acked);
            let all_ids = Arc::clone(&all_ids);
            std::thread::spawn(move || {
                let ids = client(smtp, n, acked);
                all_ids.lock().unwrap().extend(ids);
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::SeqCst) < KILL_AFTER && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    server.0.kill().unwrap(); // SIGKILL
    server.0.wait().unwrap();
    for t in threads {
        t.join().unwrap();
    }
    let acked: HashSet<String> = all_ids.lock().unwrap().iter().cloned().collect();
    assert!(
        acked.len() >= KILL_AFTER,
        "only {} acknowledged",
        acked.len()
    );

    // Restart in process on the same spool and mailboxes.
    let server = tern::runtime::start(&config).unwrap();
    let inbox_ids = || -> Vec<String> {
        let mailbox = server.mailboxes.user("alice").unwrap();
        mailbox
            .snapshot(INBOX)
            .unwrap()
            .messages
            .iter()
            .filter_map(|m| {
                let view = server.spool.read(&m.id).ok()?;
                let text = String::from_utf8_lossy(view.data()).into_owned();
                let line = text.lines().find(|l| l.starts_with("Message-ID: "))?;
                Some(line.trim_start_matches("Message-ID: ").to_string())
            })
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(20), || {
            let filed: HashSet<String> = inbox_ids().into_iter().collect();
            acked.is_subset(&filed)
        }),
        "acknowledged messages missing from the INBOX"
    );
    let ids = inbox_ids();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a message was filed twice");
    assert!(
        ids.len() <= acked.len() + CLIENTS,
        "{} filed for {} acknowledged",
        ids.len(),
        acked.len()
    );
    println!(
        "mailbox crash: {} acknowledged, {} filed after restart",
        acked.len(),
        ids.len()
    );
    server.shutdown();
}
