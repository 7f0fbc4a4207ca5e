//! Local delivery across kill -9: clients send to a local user while tern
//! files the messages into the user's mailbox; tern is killed with
//! SIGKILL mid-stream, restarted on the same spool and mailboxes, and every
//! acknowledged message must end up in the INBOX exactly once (a message
//! durable but not yet acknowledged may be there too). And spool
//! compaction across kill -9: tern is killed again and again while it moves
//! kept messages out of sparse segments; in the end every kept message is
//! there once, with its UID, flags and bytes, and the segments are freed.
//!
//! Bounded: a few hundred small messages, deadlines of seconds; 127.0.0.1 only.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sink::wait_for;
use common::{data_frame, local_mail_config, send_to_alice, spawn_tern, wait_filed, RawClient};
use tern::mailbox::{FlagOp, Flags, INBOX};
use tern::runtime::ServerHandle;

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

/// Alice's INBOX as a client sees it: UID, flags, served bytes.
fn inbox(server: &ServerHandle) -> Vec<(u32, Flags, Vec<u8>)> {
    let mailbox = server.mailboxes.user("alice").unwrap();
    mailbox
        .snapshot(INBOX)
        .unwrap()
        .messages
        .iter()
        .map(|m| {
            let view = server.spool.read(&m.id).unwrap();
            (
                m.uid,
                m.flags.clone(),
                [&m.prefix[..], view.data()].concat(),
            )
        })
        .collect()
}

fn segment_seqs(dir: &std::path::Path) -> HashSet<u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let hex = name.strip_prefix("seg-")?.strip_suffix(".tsg")?.to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .collect()
}

#[test]
fn compaction_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = local_mail_config(dir.path());
    config.server.workers = 1;
    config.pop3.listen = vec![];
    config.imap.listen = vec![];
    config.smtp.max_message_size = 64 * 1024;
    config.spool.segment_size = 192 * 1024;
    config.spool.compact_interval = Duration::from_millis(50);
    // Mail arrives and most of it is deleted with compaction off.
    let mut quiet = config.clone();
    quiet.spool.compact_below = 0.0;
    let server = tern::runtime::start(&quiet).unwrap();
    const COUNT: u32 = 60;
    for n in 1..=COUNT {
        let body = format!("line {n:03} of the kept or deleted mail\r\n").repeat(200);
        send_to_alice(
            server.smtp_addrs[0],
            format!("Subject: {n}\r\n\r\n{body}").as_bytes(),
        );
    }
    wait_filed(&server.spool, COUNT as usize);
    let old_segments: HashSet<u64> = server
        .spool
        .queued()
        .iter()
        .map(|m| m.id.segment_seq())
        .collect();
    let kept: Vec<u32> = (1..=COUNT).filter(|uid| uid % 10 == 3).collect();
    let gone: Vec<u32> = (1..=COUNT).filter(|uid| !kept.contains(uid)).collect();
    let mailbox = server.mailboxes.user("alice").unwrap();
    let block_on = |durable: tern::mailbox::Durable| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(durable)
            .unwrap()
    };
    let mut deleted = Flags::default();
    deleted.insert_name("\\Deleted").unwrap();
    block_on(
        mailbox
            .store_flags(INBOX, &gone, FlagOp::Add, &deleted)
            .unwrap()
            .1,
    );
    let mut flagged = Flags::default();
    flagged.insert_name("\\Flagged").unwrap();
    flagged.insert_name("$Kept").unwrap();
    block_on(
        mailbox
            .store_flags(INBOX, &kept[..2], FlagOp::Add, &flagged)
            .unwrap()
            .1,
    );
    block_on(mailbox.expunge(INBOX, None).unwrap().1);
    drop(mailbox);
    let before = inbox(&server);
    assert_eq!(before.len(), kept.len());
    server.shutdown();

    // The real server compacts every 50 ms; it is killed at several
    // points of its first passes, each run going on from the last.
    let path = dir.path().join("tern.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    for delay_ms in [0, 40, 60, 80, 120, 200] {
        let (mut server, _) = spawn_tern(&path);
        std::thread::sleep(Duration::from_millis(delay_ms));
        server.0.kill().unwrap(); // SIGKILL
        server.0.wait().unwrap();
    }

    // Restarted for good: nothing lost, nothing twice, segments freed.
    let server = tern::runtime::start(&config).unwrap();
    assert_eq!(inbox(&server), before, "after the kills");
    let spool_dir = config.spool.dir.clone();
    let settled = wait_for(Duration::from_secs(30), || {
        segment_seqs(&spool_dir).is_disjoint(&old_segments)
            && server.spool.queued().len() == kept.len()
    });
    assert!(
        settled,
        "old segments {old_segments:?}, now {:?}, {} live",
        segment_seqs(&spool_dir),
        server.spool.queued().len()
    );
    assert_eq!(inbox(&server), before, "after compaction");
    server.shutdown();
}
