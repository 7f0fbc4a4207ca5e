//! IMAP end to end over TCP: SMTP in for a local user, then IMAP out:
//! login, SELECT, FETCH (headers, body sections, \Seen as a side effect),
//! STORE, COPY/MOVE with UIDPLUS, EXPUNGE, APPEND, two sessions on one
//! mailbox seeing each other's flag changes and expunges, IDLE woken by a
//! new delivery, and UIDs, UIDVALIDITY and flags the same after a restart.
//! Spool compaction under IMAP: most messages deleted, the sparse segments
//! recycled, and the rest served byte-identical under the same UIDs, also
//! to IMAP and POP3 sessions opened before the move.
//!
//! Everything stays on 127.0.0.1; every read has a timeout.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::pop3::Pop3;
use common::sink::wait_for;
use common::{local_mail_config, send_to_alice, wait_filed, ALICE_PASSWORD};
use tern::runtime::{self, ServerHandle};

struct Imap {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tag: u32,
}

impl Imap {
    fn connect(addr: SocketAddr) -> Imap {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut imap = Imap {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            tag: 0,
        };
        let greeting = imap.line();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        imap
    }

    /// One response line; a literal `{n}` at its end is read and appended.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        while let Some(n) = literal_len(&line) {
            let mut data = vec![0u8; n];
            self.reader.read_exact(&mut data).unwrap();
            line.push_str(&String::from_utf8_lossy(&data));
            let mut rest = String::new();
            self.reader.read_line(&mut rest).unwrap();
            line.push_str(&rest);
        }
        line
    }

    fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).unwrap();
    }

    /// Runs a command; returns the untagged lines and the tagged status line.
    fn cmd(&mut self, command: &str) -> (Vec<String>, String) {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        self.send(&format!("{tag} {command}\r\n"));
        self.until_tagged(&tag)
    }

    fn until_tagged(&mut self, tag: &str) -> (Vec<String>, String) {
        let mut untagged = Vec::new();
        loop {
            let line = self.line();
            if line.starts_with(&format!("{tag} ")) {
                return (untagged, line);
            }
            untagged.push(line);
        }
    }

    fn ok(&mut self, command: &str) -> Vec<String> {
        let (untagged, status) = self.cmd(command);
        assert!(status.contains(" OK"), "{command}: {status} {untagged:?}");
        untagged
    }

    fn login(addr: SocketAddr) -> Imap {
        let mut imap = Imap::connect(addr);
        imap.ok(&format!("LOGIN alice@local.test \"{ALICE_PASSWORD}\""));
        imap
    }
}

fn literal_len(line: &str) -> Option<usize> {
    let body = line.trim_end_matches("\r\n");
    let open = body.rfind('{')?;
    body.strip_suffix('}')?[open + 1..]
        .trim_end_matches('+')
        .parse()
        .ok()
}

#[test]
fn mailbox_over_imap_with_two_sessions_idle_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = local_mail_config(dir.path());
    let server = runtime::start(&config).unwrap();
    let addr = server.imap_addrs[0];
    send(&server, "first");
    send(&server, "second");
    wait_filed(&server.spool, 2);

    let mut a = Imap::login(addr);
    let selected = a.ok("SELECT INBOX");
    assert!(
        selected.iter().any(|l| l.starts_with("* 2 EXISTS")),
        "{selected:?}"
    );
    let uidvalidity = selected
        .iter()
        .find_map(|l| l.split("[UIDVALIDITY ").nth(1))
        .and_then(|rest| rest.split(']').next())
        .unwrap()
        .to_string();
    let fetched = a.ok("FETCH 1 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)] ENVELOPE)");
    let text = fetched.join("");
    assert!(text.contains("Subject: first"), "{text}");
    assert!(!text.contains("\\Seen"), "{text}");
    let body = a.ok("FETCH 1 BODY[TEXT]").join("");
    assert!(
        body.contains("body of first") && body.contains("\\Seen"),
        "{body}"
    );

    // A second session sees the first one's flag change and expunge.
    let mut b = Imap::login(addr);
    b.ok("SELECT INBOX");
    a.ok("STORE 2 +FLAGS (\\Flagged)");
    let noop = b.ok("NOOP").join("");
    assert!(
        noop.contains("FLAGS (") && noop.contains("\\Flagged"),
        "{noop}"
    );
    let copied = a.ok("COPY 1 Trash");
    let _ = copied;
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)");
    a.ok("EXPUNGE");
    let noop = b.ok("NOOP").join("");
    assert!(noop.contains("* 1 EXPUNGE"), "{noop}");

    // IDLE wakes on a new delivery.
    b.tag += 1;
    let tag = format!("a{}", b.tag);
    b.send(&format!("{tag} IDLE\r\n"));
    assert!(b.line().starts_with("+ "));
    send(&server, "third");
    let mut woke = String::new();
    for _ in 0..5 {
        woke = b.line();
        if woke.contains("EXISTS") {
            break;
        }
    }
    assert!(woke.contains("* 2 EXISTS"), "{woke}");
    b.send("DONE\r\n");
    let (_, status) = b.until_tagged(&tag);
    assert!(status.contains(" OK"), "{status}");

    // APPEND to Drafts.
    let message = "Subject: draft\r\n\r\nwork in progress\r\n";
    a.tag += 1;
    let tag = format!("a{}", a.tag);
    a.send(&format!(
        "{tag} APPEND Drafts (\\Draft) {{{}}}\r\n",
        message.len()
    ));
    assert!(a.line().starts_with("+ "));
    a.send(&format!("{message}\r\n"));
    let (_, status) = a.until_tagged(&tag);
    assert!(status.contains("OK [APPENDUID "), "{status}");
    a.ok("LOGOUT");
    b.ok("LOGOUT");
    server.shutdown();

    // After a restart: same UIDVALIDITY, flags kept, the draft present.
    let server = runtime::start(&config).unwrap();
    let mut c = Imap::login(server.imap_addrs[0]);
    let selected = c.ok("SELECT INBOX");
    assert!(
        selected
            .iter()
            .any(|l| l.contains(&format!("[UIDVALIDITY {uidvalidity}]"))),
        "{selected:?}"
    );
    let flags = c.ok("FETCH 1:* (UID FLAGS)").join("");
    assert!(flags.contains("\\Flagged"), "{flags}");
    let status = c.ok("STATUS Drafts (MESSAGES)").join("");
    assert!(status.contains("MESSAGES 1"), "{status}");
    let trash = c.ok("STATUS Trash (MESSAGES)").join("");
    assert!(trash.contains("MESSAGES 1"), "{trash}");
    c.ok("LOGOUT");
    server.shutdown();
}

#[test]
fn bad_commands_and_wrong_passwords_get_clear_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = runtime::start(&local_mail_config(dir.path())).unwrap();
    let mut imap = Imap::connect(server.imap_addrs[0]);
    let (_, status) = imap.cmd("LOGIN alice wrong");
    assert!(status.contains(" NO"), "{status}");
    let (_, status) = imap.cmd("FROBNICATE");
    assert!(status.contains(" BAD"), "{status}");
    let (_, status) = imap.cmd("APPEND INBOX {4294967296}");
    assert!(
        status.contains(" NO") || status.contains(" BAD"),
        "{status}"
    );
    imap.ok(&format!("LOGIN alice \"{ALICE_PASSWORD}\""));
    imap.ok("LOGOUT");
    server.shutdown();
}

/// `UID FETCH` of `uids` with flags and the whole message, each answer
/// without its sequence number (which expunges change).
fn fetch_whole(imap: &mut Imap, uids: &[u32]) -> Vec<String> {
    let set: Vec<String> = uids.iter().map(u32::to_string).collect();
    let lines = imap.ok(&format!(
        "UID FETCH {} (UID FLAGS BODY.PEEK[])",
        set.join(",")
    ));
    let mut answers: Vec<String> = lines
        .iter()
        .filter_map(|l| l.split_once(" FETCH ").map(|(_, rest)| rest.to_owned()))
        .collect();
    answers.sort();
    assert_eq!(answers.len(), uids.len(), "{lines:?}");
    answers
}

fn segment_seqs(dir: &std::path::Path) -> Vec<u64> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let hex = name.strip_prefix("seg-")?.strip_suffix(".tsg")?.to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

#[test]
fn compaction_recycles_sparse_segments_and_clients_read_the_same_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = local_mail_config(dir.path());
    // One core, the smallest segments the message size allows, and a
    // compactor that looks often.
    config.server.workers = 1;
    config.smtp.max_message_size = 64 * 1024;
    config.spool.segment_size = 192 * 1024;
    config.spool.compact_interval = Duration::from_millis(100);
    let server = runtime::start(&config).unwrap();
    const COUNT: u32 = 80;
    for n in 1..=COUNT {
        let line = format!("line of message {n:03} ").repeat(4);
        let body = format!("{line}\r\n").repeat(100);
        send_to_alice(
            server.smtp_addrs[0],
            format!("Subject: compact {n}\r\n\r\n{body}").as_bytes(),
        );
    }
    wait_filed(&server.spool, COUNT as usize);
    let ids: Vec<_> = server.spool.queued().iter().map(|m| m.id).collect();
    let newest = ids.iter().map(|id| id.segment_seq()).max().unwrap();
    let mut sealed: Vec<u64> = ids
        .iter()
        .map(|id| id.segment_seq())
        .filter(|seq| *seq < newest)
        .collect();
    sealed.dedup();
    assert!(sealed.len() >= 2, "{sealed:?}");

    // A POP3 maildrop opened now lists the messages as they are (UID n is
    // message n) and keeps their old spool ids for the whole session.
    let kept: Vec<u32> = (1..=COUNT).filter(|uid| uid % 10 == 1).collect();
    let mut pop = Pop3::login(server.pop3_addrs[0]);
    let pop_before: Vec<String> = kept
        .iter()
        .map(|n| pop.multi(&format!("RETR {n}")).join("\n"))
        .collect();

    let mut a = Imap::login(server.imap_addrs[0]);
    let selected = a.ok("SELECT INBOX");
    let uidvalidity = selected
        .iter()
        .find(|l| l.contains("[UIDVALIDITY "))
        .unwrap()
        .clone();
    a.ok("UID STORE 11,31 +FLAGS.SILENT (\\Flagged $Keep)");
    let before = fetch_whole(&mut a, &kept);
    assert!(before.iter().all(|b| b.contains("Subject: compact")));
    let gone: Vec<String> = (1..=COUNT)
        .filter(|uid| !kept.contains(uid))
        .map(|uid| uid.to_string())
        .collect();
    a.ok(&format!(
        "UID STORE {} +FLAGS.SILENT (\\Deleted)",
        gone.join(",")
    ));
    a.ok("EXPUNGE");

    // The segments that held the deleted mail go away, though each still
    // held kept messages: those were moved. The releases of the deleted
    // messages are persisted meanwhile, so only the kept ones stay live.
    let spool_dir = config.spool.dir.clone();
    let settled = wait_for(Duration::from_secs(30), || {
        let files = segment_seqs(&spool_dir);
        sealed.iter().all(|seq| !files.contains(seq)) && server.spool.queued().len() == kept.len()
    });
    let left: Vec<_> = server.spool.queued().iter().map(|m| m.id).collect();
    assert!(
        settled,
        "segments {sealed:?} of {:?}, live {left:?}",
        segment_seqs(&spool_dir)
    );
    // Kept messages of the sealed segments now live in other records.
    assert!(left
        .iter()
        .all(|id| !ids.contains(id) || id.segment_seq() == newest));

    // The POP3 session reads through its old ids to the same bytes.
    let pop_after: Vec<String> = kept
        .iter()
        .map(|n| pop.multi(&format!("RETR {n}")).join("\n"))
        .collect();
    assert_eq!(pop_after, pop_before);
    assert!(pop.cmd("QUIT").starts_with("+OK"));

    // The session that selected before the move, and a new one, read the
    // same bytes, flags and UIDs.
    assert_eq!(fetch_whole(&mut a, &kept), before);
    a.ok("NOOP");
    assert_eq!(fetch_whole(&mut a, &kept), before);
    let mut b = Imap::login(server.imap_addrs[0]);
    assert!(b.ok("SELECT INBOX").contains(&uidvalidity));
    assert_eq!(fetch_whole(&mut b, &kept), before);
    a.ok("LOGOUT");
    b.ok("LOGOUT");
    server.shutdown();

    let server = runtime::start(&config).unwrap();
    let mut c = Imap::login(server.imap_addrs[0]);
    assert!(c.ok("SELECT INBOX").contains(&uidvalidity));
    assert_eq!(fetch_whole(&mut c, &kept), before);
    c.ok("LOGOUT");
    server.shutdown();
}

fn send(server: &ServerHandle, subject: &str) {
    send_to_alice(
        server.smtp_addrs[0],
        format!("Subject: {subject}\r\nFrom: Bob <bob@example.org>\r\n\r\nbody of {subject}\r\n")
            .as_bytes(),
    );
}
