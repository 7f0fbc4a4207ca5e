//! Tests of a compaction pass over a real spool, mailbox store and users
//! file: references rewritten, UIDs, flags and bytes unchanged, the old
//! segment recycled, queued mail left alone, races with expunges, and a
//! simulated kill -9 after each step (everything dropped, both stores
//! reopened from disk and reconciled the way `runtime::start` does).

use crate::test_util::eventually;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::*;
use crate::envelope::Recipient;
use crate::mailbox::{FlagOp, Flags, NewMessage, Uid, INBOX};
use crate::spool::record::tests::sample_envelope;
use crate::spool::SpoolConfig;
use crate::users::Users;

const SEGMENT: u64 = 64 * 1024;
const BODY_LEN: usize = 4000;
const ALICE: &str = "alice";
const BOB: &str = "bob";

/// A spool, a mailbox store whose releases go to a channel (as on core 0)
/// and a users file, all in one directory.
struct World {
    dir: PathBuf,
    spool: Arc<Spool>,
    mailboxes: Arc<MailboxStore>,
    users: UsersHandle,
    releases: UnboundedReceiver<(QueueId, u32)>,
    release_tx: UnboundedSender<(QueueId, u32)>,
    writer: SpoolWriter,
}

/// What a mailbox shows for one message, and the bytes it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    uid: Uid,
    rcpt: u32,
    flags: Flags,
    internal_date_ms: u64,
    bytes: Vec<u8>,
}

type Contents = BTreeMap<(String, String), Vec<Shown>>;

fn write_users(dir: &Path) -> PathBuf {
    let path = dir.join("users.toml");
    if !path.exists() {
        let mut users = Users::new();
        users
            .add(ALICE, b"pw-a", &["alice@local.test".to_string()])
            .unwrap();
        users
            .add(BOB, b"pw-b", &["bob@local.test".to_string()])
            .unwrap();
        users.save(&path).unwrap();
    }
    path
}

impl World {
    /// Opens (or reopens after a "crash") everything in `dir`, then does
    /// what start-up does: releases recipients no mailbox holds.
    async fn open(dir: &Path) -> World {
        let spool = Spool::open(SpoolConfig {
            dir: dir.join("spool"),
            segment_size: SEGMENT,
            max_size: 0,
        })
        .unwrap();
        let (release_tx, releases) = unbounded_channel();
        let sink = release_tx.clone();
        let mailboxes = MailboxStore::open(
            &dir.join("mailboxes"),
            Box::new(move |id, rcpt| {
                let _ = sink.send((id, rcpt));
            }),
        )
        .unwrap();
        let users = UsersHandle::open(&write_users(dir)).unwrap();
        let writer = spool.writer(0).unwrap();
        let mut world = World {
            dir: dir.to_path_buf(),
            spool,
            mailboxes,
            users,
            releases,
            release_tx,
            writer,
        };
        for message in world.spool.queued() {
            super::super::find_lost_releases(
                &message,
                &world.users,
                &world.mailboxes,
                &world.release_tx,
            );
        }
        world.apply_releases().await;
        world
    }

    /// What `persist_releases` does on core 0, for what is queued now.
    async fn apply_releases(&mut self) {
        while let Ok((id, rcpt)) = self.releases.try_recv() {
            let update = [(rcpt as usize, RecipientState::Delivered)];
            if let Ok(commit) = self.writer.update_recipients(&id, &update) {
                commit.await.unwrap();
            }
        }
    }

    fn compactor(&self) -> Compactor {
        Compactor::new(
            Arc::clone(&self.spool),
            Arc::clone(&self.mailboxes),
            self.users.clone(),
            0.25,
        )
        .unwrap()
    }

    /// Local delivery of one message to `users` (recipient i for user i).
    async fn deliver(&mut self, users: &[&str], body: &[u8]) -> QueueId {
        let mut envelope = sample_envelope(users.len());
        for (recipient, user) in envelope.recipients.iter_mut().zip(users) {
            *recipient = Recipient {
                address: format!("{user}@local.test"),
                ..recipient.clone()
            };
        }
        let (id, commit) = self.writer.append(&envelope, body).unwrap();
        commit.await.unwrap();
        for (rcpt, user) in users.iter().enumerate() {
            let prefix = format!("Return-Path: <x@example.org>\r\nReceived: for {user}\r\n");
            let message = NewMessage {
                id,
                rcpt: rcpt as u32,
                size: (prefix.len() + body.len()) as u64,
                internal_date_ms: 1_790_000_000_000 + rcpt as u64,
                prefix: prefix.into_bytes(),
            };
            let mailbox = self.mailboxes.user(user).unwrap();
            let (_, durable) = mailbox.deliver(INBOX, message, Flags::default()).unwrap();
            durable.await.unwrap();
            let update = [(rcpt, RecipientState::InMailbox)];
            self.writer
                .update_recipients(&id, &update)
                .unwrap()
                .await
                .unwrap();
        }
        id
    }

    /// Deletes these UIDs of `user`'s INBOX, as POP3 QUIT does.
    async fn expunge(&mut self, user: &str, uids: &[Uid]) {
        let mailbox = self.mailboxes.user(user).unwrap();
        let mut deleted = Flags::default();
        deleted.insert_name("\\Deleted").unwrap();
        let (_, durable) = mailbox
            .store_flags(INBOX, uids, FlagOp::Add, &deleted)
            .unwrap();
        durable.await.unwrap();
        let (_, durable) = mailbox.expunge(INBOX, Some(uids)).unwrap();
        durable.await.unwrap();
        self.apply_releases().await;
    }

    /// Every folder of both users, with the bytes each message serves.
    fn contents(&self) -> Contents {
        let mut out = Contents::new();
        for user in [ALICE, BOB] {
            let mailbox = self.mailboxes.user(user).unwrap();
            for folder in mailbox.folders() {
                let snapshot = mailbox.snapshot(&folder.name).unwrap();
                let shown = snapshot
                    .messages
                    .iter()
                    .map(|m| {
                        let view = self.spool.read(&m.id).unwrap_or_else(|e| {
                            panic!("{user} {} uid {}: {e}", folder.name, m.uid)
                        });
                        Shown {
                            uid: m.uid,
                            rcpt: m.rcpt,
                            flags: m.flags.clone(),
                            internal_date_ms: m.internal_date_ms,
                            bytes: [&m.prefix[..], view.data()].concat(),
                        }
                    })
                    .collect();
                out.insert((user.to_string(), folder.name.clone()), shown);
            }
        }
        out
    }

    /// No record stays `InMailbox` for a recipient its user does not hold,
    /// and every held reference names a live record.
    fn assert_no_leak(&self) {
        for message in self.spool.queued() {
            for (rcpt, state) in message.states.iter().enumerate() {
                if *state != RecipientState::InMailbox {
                    continue;
                }
                let address = &message.envelope.recipients[rcpt].address;
                let user = self.users.find_login(address).unwrap();
                let mailbox = self.mailboxes.user(user.name()).unwrap();
                assert!(
                    mailbox.holds(message.id, rcpt as u32),
                    "{} recipient {rcpt} kept for nobody",
                    message.id
                );
            }
        }
    }

    /// Kill -9 after the last awaited step: nothing more reaches the disk.
    async fn crash(self) -> World {
        let dir = self.dir.clone();
        drop(self.writer);
        self.spool.close();
        drop(self.mailboxes);
        drop(self.spool);
        World::open(&dir).await
    }
}

fn body(n: usize) -> Vec<u8> {
    let mut body = format!("Subject: message {n}\r\n\r\n").into_bytes();
    body.resize(BODY_LEN, b'a' + (n % 26) as u8);
    body.extend_from_slice(b"\r\n");
    body
}

fn segment_files(world: &World) -> Vec<u64> {
    let mut seqs: Vec<u64> = std::fs::read_dir(world.dir.join("spool"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let hex = name.strip_prefix("seg-")?.strip_suffix(".tsg")?.to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

/// Fills more than one segment with mail for alice (every fifth message
/// also for bob, recipient 1), copies a few of alice's into "Archive",
/// flags some, then deletes most. Returns the first segment, now sparse
/// and sealed, and the ids still in a mailbox.
async fn sparse_world(dir: &Path) -> (World, u64, Vec<QueueId>) {
    let mut world = World::open(dir).await;
    let mut ids = Vec::new();
    for n in 0..40 {
        let users: &[&str] = if n % 5 == 0 { &[ALICE, BOB] } else { &[ALICE] };
        ids.push(world.deliver(users, &body(n)).await);
    }
    let first = ids[0].segment_seq();
    assert!(ids.iter().any(|id| id.segment_seq() != first));
    let alice = world.mailboxes.user(ALICE).unwrap();
    alice.create("Archive").unwrap().await.unwrap();
    let (_, durable) = alice.copy(INBOX, &[1, 8], "Archive").unwrap();
    durable.await.unwrap();
    let mut flags = Flags::default();
    flags.insert_name("\\Flagged").unwrap();
    flags.insert_name("$Keep").unwrap();
    let (_, durable) = alice.store_flags(INBOX, &[8], FlagOp::Add, &flags).unwrap();
    durable.await.unwrap();
    // Alice keeps UIDs 1, 8 and 15 (the first segment holds 1 and 8 at
    // least); bob keeps his first message (alice's UID 1 too).
    let gone: Vec<Uid> = (1..=40).filter(|uid| ![1, 8, 15].contains(uid)).collect();
    world.expunge(ALICE, &gone).await;
    world.expunge(BOB, &[2, 3, 4, 5, 6, 7, 8]).await;
    let kept: Vec<QueueId> = [0, 7, 14].iter().map(|&i| ids[i]).collect();
    (world, first, kept)
}

#[tokio::test]
async fn a_pass_moves_references_keeps_what_clients_see_and_frees_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (world, first, kept) = sparse_world(dir.path()).await;
    let before = world.contents();
    assert_eq!(before[&(ALICE.into(), INBOX.into())].len(), 3);
    assert_eq!(before[&(ALICE.into(), "Archive".into())].len(), 2);
    assert_eq!(before[&(BOB.into(), INBOX.into())].len(), 1);
    // A POP3 maildrop opened now keeps the old ids.
    let maildrop = world
        .mailboxes
        .user(ALICE)
        .unwrap()
        .snapshot(INBOX)
        .unwrap();

    let mut compactor = world.compactor();
    let report = compactor.pass().await;
    assert!(report.segments >= 1, "{report:?}");
    assert!(report.moved >= 2, "{report:?}");
    assert_eq!(report.wasted, 0);
    assert_eq!(world.contents(), before, "clients see the same mailboxes");
    let alice = world.mailboxes.user(ALICE).unwrap();
    let bob = world.mailboxes.user(BOB).unwrap();
    for id in kept.iter().filter(|id| id.segment_seq() == first) {
        assert!(!world.spool.is_live(id), "{id} released");
        assert!(!alice.holds(*id, 0) && !bob.holds(*id, 1));
    }
    for meta in &maildrop.messages {
        let view = world.spool.read_moved(&meta.id).unwrap();
        let served = [&meta.prefix[..], view.data()].concat();
        let now = &before[&(ALICE.into(), INBOX.into())];
        assert!(now.iter().any(|s| s.uid == meta.uid && s.bytes == served));
    }
    world.assert_no_leak();
    assert!(
        eventually(|| !segment_files(&world).contains(&first)),
        "segment {first} recycled"
    );
    // Nothing left to do: a second pass plans nothing in that segment.
    assert_eq!(compactor.pass().await.moved, 0);
    drop(compactor);
    let world = world.crash().await;
    assert_eq!(world.contents(), before, "and after a restart");
    world.assert_no_leak();
}

#[tokio::test]
async fn a_segment_with_mail_still_queued_for_relay_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::open(dir.path()).await;
    let mut envelope = sample_envelope(1);
    envelope.recipients[0].address = "carol@remote.test".into();
    let (queued, commit) = world.writer.append(&envelope, &body(99)).unwrap();
    commit.await.unwrap();
    let mut ids = vec![queued];
    while ids.last().unwrap().segment_seq() == queued.segment_seq() {
        let n = ids.len();
        ids.push(world.deliver(&[ALICE], &body(n)).await);
    }
    let gone: Vec<Uid> = (2..ids.len() as Uid).collect();
    world.expunge(ALICE, &gone).await;
    let before = world.contents();
    let mut compactor = world.compactor();
    let report = compactor.pass().await;
    assert_eq!(report.moved, 0, "{report:?}");
    assert!(world.spool.is_live(&ids[1]));
    assert_eq!(
        world.spool.read(&queued).unwrap().states[0],
        RecipientState::Pending
    );
    assert!(segment_files(&world).contains(&queued.segment_seq()));
    assert_eq!(world.contents(), before);
}

#[tokio::test]
async fn an_expunge_racing_the_pass_is_released_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut world, first, kept) = sparse_world(dir.path()).await;
    let mut compactor = world.compactor();
    let plan = world.spool.plan_compaction(
        &CompactionLimits {
            below: 0.25,
            max_bytes: SEGMENT,
            max_messages: 100,
        },
        &HashSet::new(),
    );
    assert!(plan.segments.contains(&first));
    let copies = compactor.copy(&plan.messages).await;
    // Alice deletes UID 8 (INBOX) and its Archive copy before the retarget.
    let alice = world.mailboxes.user(ALICE).unwrap();
    alice.delete("Archive").unwrap().await.unwrap();
    world.expunge(ALICE, &[8]).await;
    let retargeted = compactor.retarget(&copies).await;
    let report = compactor.release(&copies, &retargeted).await;
    world.apply_releases().await;
    assert!(report.moved >= 1, "{report:?}");
    let raced = copies.iter().find(|c| c.from == kept[1]).unwrap();
    assert!(!world.spool.is_live(&raced.from));
    assert!(!world.spool.is_live(&raced.to), "unused copy released");
    world.assert_no_leak();
    let inbox = &world.contents()[&(ALICE.into(), INBOX.into())];
    assert_eq!(inbox.iter().map(|s| s.uid).collect::<Vec<_>>(), [1, 15]);
}

/// Runs the steps of one pass up to `steps` (1: copy, 2: retarget, with
/// `only_alice` just alice's journal), crashes, and checks that the
/// reopened world shows exactly what it showed before, leaks nothing,
/// and that a later pass still frees the segment.
async fn crash_after(steps: usize, only_alice: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (world, first, _) = sparse_world(dir.path()).await;
    let before = world.contents();
    let mut compactor = world.compactor();
    let limits = CompactionLimits {
        below: 0.25,
        max_bytes: SEGMENT,
        max_messages: 100,
    };
    let plan = world.spool.plan_compaction(&limits, &HashSet::new());
    assert!(plan.segments.contains(&first));
    let mut copies = compactor.copy(&plan.messages).await;
    assert!(!copies.is_empty());
    if steps >= 2 {
        if only_alice {
            for copied in &mut copies {
                copied.held.retain(|(_, user)| user == ALICE);
            }
        }
        let retargeted = compactor.retarget(&copies).await;
        assert!(!retargeted.moved.is_empty());
    }
    drop(compactor);
    let world = world.crash().await;
    assert_eq!(world.contents(), before, "after a crash at step {steps}");
    world.assert_no_leak();
    for copied in &copies {
        // Exactly one of original and copy survives per reference; the
        // unreferenced one was released at start.
        let live = [copied.from, copied.to].map(|id| world.spool.is_live(&id));
        assert!(live.iter().any(|l| *l), "{copied:?} lost");
    }
    let report = world.compactor().pass().await;
    assert_eq!(report.wasted, 0, "{report:?}");
    assert_eq!(world.contents(), before, "after the next pass");
    world.assert_no_leak();
    assert!(
        eventually(|| !segment_files(&world).contains(&first)),
        "segment {first} recycled in the end"
    );
}

#[tokio::test]
async fn a_crash_after_the_copy_keeps_the_originals() {
    crash_after(1, false).await;
}

#[tokio::test]
async fn a_crash_with_one_journal_of_two_updated_serves_each_message_once() {
    crash_after(2, true).await;
}

#[tokio::test]
async fn a_crash_after_the_retarget_releases_the_originals_at_start() {
    crash_after(2, false).await;
}
