//! Tests of the whole mailbox index through its public API: persistence
//! across reopen, recovery, release timing, concurrency, RFC 3501 folder
//! rules and typed refusals.
//!
//! These tests must never reach into private state to prove a point the
//! public API or the files on disk can show.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::names::journal_file;
use super::record::{decode_record, Op, FILE_MAGIC};
use super::*;
use crate::spool::QueueId;

type Released = Arc<Mutex<Vec<(QueueId, u32)>>>;

fn open(dir: &Path) -> (Arc<MailboxStore>, Released) {
    let released: Released = Arc::default();
    let sink = Arc::clone(&released);
    let store = MailboxStore::open(
        dir,
        Box::new(move |id, rcpt| sink.lock().unwrap().push((id, rcpt))),
    )
    .unwrap();
    (store, released)
}

fn message(n: u64) -> NewMessage {
    NewMessage {
        id: QueueId::new(7, n * 8).unwrap(),
        rcpt: 0,
        size: 100 + n,
        internal_date_ms: 1_790_000_000_000 + n,
        prefix: b"Return-Path: <a@example.org>\r\n".to_vec(),
    }
}

fn flags(names: &[&str]) -> Flags {
    let mut flags = Flags::default();
    for name in names {
        flags.insert_name(name).unwrap();
    }
    flags
}

async fn deliver(user: &UserMailboxes, folder: &str, n: u64) -> Uid {
    let (uid, durable) = user.deliver(folder, message(n), Flags::default()).unwrap();
    durable.await.unwrap();
    uid
}

fn uids(user: &UserMailboxes, folder: &str) -> Vec<Uid> {
    user.snapshot(folder)
        .unwrap()
        .messages
        .iter()
        .map(|m| m.uid)
        .collect()
}

fn journal_path(dir: &Path, user: &str) -> PathBuf {
    dir.join(journal_file(user))
}

#[tokio::test]
async fn a_new_user_has_the_default_folders() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let user = store.user("alice@localhost").unwrap();
    let folders = user.folders();
    let names: Vec<_> = folders.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["Drafts", "INBOX", "Junk", "Sent", "Trash"]);
    assert!(folders.iter().all(|f| f.subscribed && !f.has_children));
    let special: Vec<_> = folders.iter().map(|f| f.special_use).collect();
    assert_eq!(
        special,
        [
            Some(SpecialUse::Drafts),
            None,
            Some(SpecialUse::Junk),
            Some(SpecialUse::Sent),
            Some(SpecialUse::Trash)
        ]
    );
    assert!(Arc::ptr_eq(&user, &store.user("alice@localhost").unwrap()));
    let validities: std::collections::BTreeSet<u32> = names
        .iter()
        .map(|n| user.status(n).unwrap().uidvalidity)
        .collect();
    assert_eq!(validities.len(), 5, "every folder has its own UIDVALIDITY");
}

#[tokio::test]
async fn uids_stay_monotonic_and_uidvalidity_stable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let validity;
    {
        let (store, _) = open(dir.path());
        let user = store.user("bob").unwrap();
        assert_eq!(deliver(&user, "INBOX", 1).await, 1);
        assert_eq!(deliver(&user, "inbox", 2).await, 2);
        assert_eq!(deliver(&user, "INBOX", 3).await, 3);
        user.store_flags("INBOX", &[3], FlagOp::Add, &flags(&["\\Deleted"]))
            .unwrap()
            .1
            .await
            .unwrap();
        let (gone, durable) = user.expunge("INBOX", None).unwrap();
        durable.await.unwrap();
        assert_eq!(gone, [3]);
        validity = user.status("INBOX").unwrap().uidvalidity;
    }
    let (store, _) = open(dir.path());
    let user = store.user("bob").unwrap();
    let status = user.status("INBOX").unwrap();
    assert_eq!(status.uidvalidity, validity);
    assert_eq!(status.uidnext, 4);
    assert_eq!(deliver(&user, "INBOX", 4).await, 4, "UID 3 is never reused");
    assert_eq!(uids(&user, "INBOX"), [1, 2, 4]);
}

#[tokio::test]
async fn a_recreated_folder_never_gets_an_old_uidvalidity() {
    let dir = tempfile::tempdir().unwrap();
    let first;
    {
        let (store, _) = open(dir.path());
        let user = store.user("u").unwrap();
        user.create("Lists").unwrap().await.unwrap();
        first = user.status("Lists").unwrap().uidvalidity;
        user.delete("Lists").unwrap().await.unwrap();
        user.create("Lists").unwrap().await.unwrap();
        assert!(user.status("Lists").unwrap().uidvalidity > first);
        user.delete("Lists").unwrap().await.unwrap();
    }
    let (store, _) = open(dir.path());
    let user = store.user("u").unwrap();
    user.create("Lists").unwrap().await.unwrap();
    assert!(user.status("Lists").unwrap().uidvalidity > first + 1);
}

#[tokio::test]
async fn flags_expunges_copies_moves_and_renames_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    {
        let (store, _) = open(dir.path());
        let user = store.user("carol").unwrap();
        for n in 1..=4 {
            deliver(&user, "INBOX", n).await;
        }
        let (after, durable) = user
            .store_flags(
                "INBOX",
                &[1, 2, 9],
                FlagOp::Add,
                &flags(&["\\Seen", "$Work"]),
            )
            .unwrap();
        durable.await.unwrap();
        assert_eq!(after.len(), 2, "UID 9 does not exist and is skipped");
        assert_eq!(after[0].1, flags(&["\\Seen", "$work"]));
        user.create("Archive/2026").unwrap().await.unwrap();
        let (pairs, durable) = user.copy("INBOX", &[2, 1], "Archive/2026").unwrap();
        durable.await.unwrap();
        assert_eq!(pairs, [(1, 1), (2, 2)]);
        let (pairs, durable) = user.move_("INBOX", &[3], "Trash").unwrap();
        durable.await.unwrap();
        assert_eq!(pairs, [(3, 1)]);
        user.store_flags("INBOX", &[4], FlagOp::Replace, &flags(&["\\Deleted"]))
            .unwrap()
            .1
            .await
            .unwrap();
        user.expunge("INBOX", None).unwrap().1.await.unwrap();
        user.rename("Archive", "Old/Archive")
            .unwrap()
            .await
            .unwrap();
        user.unsubscribe("Junk").unwrap().await.unwrap();
        user.subscribe("Nowhere").unwrap().await.unwrap();
        before = (
            user.folders(),
            user.subscriptions(),
            user.snapshot("INBOX").unwrap().messages,
            user.snapshot("Old/Archive/2026").unwrap().messages,
            user.snapshot("Trash").unwrap().messages,
        );
    }
    let (store, _) = open(dir.path());
    let user = store.user("carol").unwrap();
    let after = (
        user.folders(),
        user.subscriptions(),
        user.snapshot("INBOX").unwrap().messages,
        user.snapshot("Old/Archive/2026").unwrap().messages,
        user.snapshot("Trash").unwrap().messages,
    );
    assert_eq!(after, before);
    assert_eq!(uids(&user, "INBOX"), [1, 2]);
    let copied = user.message("Old/Archive/2026", 1).unwrap();
    assert_eq!(copied.id, message(1).id);
    assert_eq!(copied.flags, flags(&["\\Seen", "$Work"]));
    assert_eq!(&*copied.prefix, message(1).prefix.as_slice());
    assert!(user.subscriptions().contains(&"Nowhere".to_owned()));
    assert!(!user.folders().iter().any(|f| f.name == "Archive"));
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_what_came_before_survives() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        let user = store.user("dave").unwrap();
        deliver(&user, "INBOX", 1).await;
        deliver(&user, "INBOX", 2).await;
    }
    let path = journal_path(dir.path(), "dave");
    let whole = fs::metadata(&path).unwrap().len();
    let mut bytes = fs::read(&path).unwrap();
    // A record whose write was cut short: a length promising more bytes
    // than follow, and some of them.
    bytes.extend_from_slice(&200u32.to_le_bytes());
    bytes.extend_from_slice(&[0xAB; 30]);
    fs::write(&path, &bytes).unwrap();

    let (store, _) = open(dir.path());
    let user = store.user("dave").unwrap();
    assert_eq!(uids(&user, "INBOX"), [1, 2]);
    assert_eq!(fs::metadata(&path).unwrap().len(), whole);
    assert_eq!(deliver(&user, "INBOX", 3).await, 3);
    drop((user, store));
    let (store, _) = open(dir.path());
    assert_eq!(uids(&store.user("dave").unwrap(), "INBOX"), [1, 2, 3]);
}

#[tokio::test]
async fn a_foreign_journal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(journal_path(dir.path(), "eve"), b"not a journal at all").unwrap();
    let (store, _) = open(dir.path());
    assert!(matches!(
        store.user("eve"),
        Err(MailboxError::Corrupt { .. })
    ));
}

/// The last record of a journal file, decoded.
fn last_record(path: &Path) -> Vec<Op> {
    let bytes = fs::read(path).unwrap();
    let mut rest = &bytes[FILE_MAGIC.len()..];
    let mut last = Vec::new();
    while let Some((ops, len)) = decode_record(rest).unwrap() {
        last = ops;
        rest = &rest[len..];
    }
    last
}

#[tokio::test]
async fn release_comes_once_at_the_last_reference_after_durability() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_path(dir.path(), "fay");
    type Seen = Vec<(QueueId, u32, Vec<Op>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sink = Arc::clone(&seen);
    let on_disk = path.clone();
    let store = MailboxStore::open(
        dir.path(),
        Box::new(move |id, rcpt| {
            sink.lock().unwrap().push((id, rcpt, last_record(&on_disk)));
        }),
    )
    .unwrap();
    let user = store.user("fay").unwrap();
    deliver(&user, "INBOX", 1).await;
    user.copy("INBOX", &[1], "Trash").unwrap().1.await.unwrap();
    user.store_flags("INBOX", &[1], FlagOp::Add, &flags(&["\\Deleted"]))
        .unwrap()
        .1
        .await
        .unwrap();
    user.expunge("INBOX", None).unwrap().1.await.unwrap();
    assert!(seen.lock().unwrap().is_empty(), "Trash still holds it");
    assert!(user.holds(message(1).id, 0));

    user.store_flags("Trash", &[1], FlagOp::Add, &flags(&["\\Deleted"]))
        .unwrap()
        .1
        .await
        .unwrap();
    let (gone, durable) = user.expunge("Trash", Some(&[1, 5])).unwrap();
    assert_eq!(gone, [1]);
    assert!(!user.holds(message(1).id, 0));
    durable.await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (id, rcpt, record) = &seen[0];
    assert_eq!((*id, *rcpt), (message(1).id, 0));
    assert!(
        record.iter().any(|op| matches!(op, Op::Expunge { .. })),
        "the expunge was on disk when the release came: {record:?}"
    );
}

#[tokio::test]
async fn deleting_a_folder_releases_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (store, released) = open(dir.path());
    let user = store.user("gil").unwrap();
    deliver(&user, "Junk", 1).await;
    deliver(&user, "Junk", 2).await;
    user.delete("Junk").unwrap().await.unwrap();
    let mut got = released.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, [(message(1).id, 0), (message(2).id, 0)]);
}

#[test]
fn two_threads_deliver_and_expunge_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, released) = open(dir.path());
    let user = store.user("hal").unwrap();
    const COUNT: u64 = 300;
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    };
    let delivering = {
        let user = Arc::clone(&user);
        std::thread::spawn(move || {
            let rt = runtime();
            for n in 1..=COUNT {
                let (_, durable) = user.deliver("INBOX", message(n), Flags::default()).unwrap();
                if n % 10 == 0 {
                    rt.block_on(durable).unwrap();
                }
            }
        })
    };
    let expunging = {
        let user = Arc::clone(&user);
        std::thread::spawn(move || {
            let rt = runtime();
            let deleted = flags(&["\\Deleted"]);
            for _ in 0..200 {
                let all = uids(&user, "INBOX");
                // The expunge's Durable covers this change too.
                let (_, _flagged) = user
                    .store_flags("INBOX", &all, FlagOp::Add, &deleted)
                    .unwrap();
                let (_, durable) = user.expunge("INBOX", Some(&all)).unwrap();
                rt.block_on(durable).unwrap();
            }
        })
    };
    delivering.join().unwrap();
    expunging.join().unwrap();
    let left = uids(&user, "INBOX");
    let status = user.status("INBOX").unwrap();
    assert_eq!(status.uidnext, COUNT as u32 + 1);
    let gone = released.lock().unwrap().len();
    assert_eq!(left.len() + gone, COUNT as usize);
    drop((user, store));
    let (store, _) = open(dir.path());
    let user = store.user("hal").unwrap();
    assert_eq!(uids(&user, "INBOX"), left);
    assert_eq!(user.status("INBOX").unwrap().uidnext, COUNT as u32 + 1);
}

#[tokio::test]
async fn renaming_inbox_moves_its_messages_and_leaves_it_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (store, released) = open(dir.path());
    let user = store.user("ida").unwrap();
    deliver(&user, "INBOX", 1).await;
    deliver(&user, "INBOX", 2).await;
    user.create("INBOX/Kids").unwrap().await.unwrap();
    let inbox = user.status("INBOX").unwrap();
    user.rename("inbox", "Old/Mail").unwrap().await.unwrap();
    let old = user.status("Old/Mail").unwrap();
    assert_eq!(uids(&user, "Old/Mail"), [1, 2]);
    assert_eq!(old.uidnext, 3);
    assert_ne!(old.uidvalidity, inbox.uidvalidity);
    let now = user.status("INBOX").unwrap();
    assert_eq!(
        (now.messages, now.uidnext, now.uidvalidity),
        (0, 3, inbox.uidvalidity)
    );
    assert!(user.status("INBOX/Kids").is_ok());
    assert!(user.status("Old").is_ok());
    assert!(released.lock().unwrap().is_empty());
    assert_eq!(deliver(&user, "INBOX", 3).await, 3);
    drop((user, store));
    let (store, _) = open(dir.path());
    let user = store.user("ida").unwrap();
    assert_eq!(uids(&user, "Old/Mail"), [1, 2]);
    assert_eq!(uids(&user, "INBOX"), [3]);
}

#[tokio::test]
async fn rename_moves_inferiors_and_creates_superiors() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let user = store.user("jo").unwrap();
    user.create("a/b/c/").unwrap().await.unwrap();
    deliver(&user, "a/b", 1).await;
    let validity = user.status("a/b").unwrap().uidvalidity;
    user.rename("a", "x/y").unwrap().await.unwrap();
    let names: Vec<_> = user.folders().into_iter().map(|f| f.name).collect();
    for name in ["x", "x/y", "x/y/b", "x/y/b/c"] {
        assert!(names.contains(&name.to_owned()), "{name} in {names:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with("a")));
    assert_eq!(user.status("x/y/b").unwrap().uidvalidity, validity);
    assert_eq!(uids(&user, "x/y/b"), [1]);
    assert!(user
        .folders()
        .iter()
        .any(|f| f.name == "x/y" && f.has_children));
    assert!(matches!(
        user.rename("x/y", "x/y/b/z"),
        Err(MailboxError::RenameIntoItself { .. })
    ));
    assert!(matches!(
        user.rename("x/y/b", "Sent"),
        Err(MailboxError::FolderExists(_))
    ));
    assert!(matches!(
        user.rename("nope", "other"),
        Err(MailboxError::NoSuchFolder(_))
    ));
}

#[tokio::test]
async fn bad_requests_are_refused_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    assert!(matches!(
        store.user(""),
        Err(MailboxError::InvalidUserName { .. })
    ));
    let user = store.user("kim").unwrap();
    for bad in ["", "a//b", "/x", "we*rd", "tab\there"] {
        assert!(
            matches!(
                user.create(bad),
                Err(MailboxError::InvalidFolderName { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        user.delete("INBOX"),
        Err(MailboxError::CannotDeleteInbox)
    ));
    assert!(matches!(
        user.delete("Nope"),
        Err(MailboxError::NoSuchFolder(_))
    ));
    assert!(matches!(
        user.create("inbox"),
        Err(MailboxError::FolderExists(_))
    ));
    user.create("P/C").unwrap().await.unwrap();
    assert!(matches!(
        user.delete("P"),
        Err(MailboxError::HasChildren(_))
    ));
    assert!(matches!(
        user.deliver("Nope", message(1), Flags::default()),
        Err(MailboxError::NoSuchFolder(_))
    ));
    deliver(&user, "INBOX", 1).await;
    assert!(matches!(
        user.deliver("Sent", message(1), Flags::default()),
        Err(MailboxError::AlreadyHeld { .. })
    ));
    let short = NewMessage {
        size: 3,
        ..message(2)
    };
    assert!(matches!(
        user.deliver("INBOX", short, Flags::default()),
        Err(MailboxError::SizeBelowPrefix { .. })
    ));
    let long = NewMessage {
        prefix: vec![b'x'; PREFIX_MAX + 1],
        size: u64::MAX,
        ..message(2)
    };
    assert!(matches!(
        user.deliver("INBOX", long, Flags::default()),
        Err(MailboxError::PrefixTooLong { .. })
    ));
    assert_eq!(uids(&user, "INBOX"), [1], "refusals change nothing");
}

#[tokio::test]
async fn keyword_and_folder_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let user = store.user("lee").unwrap();
    deliver(&user, "INBOX", 1).await;
    let many: Vec<String> = (0..KEYWORDS_MAX).map(|i| format!("k{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    user.store_flags("INBOX", &[1], FlagOp::Add, &flags(&many))
        .unwrap()
        .1
        .await
        .unwrap();
    assert!(matches!(
        user.store_flags("INBOX", &[1], FlagOp::Add, &flags(&["one-more"])),
        Err(MailboxError::TooManyKeywords { .. })
    ));
    let (after, _) = user
        .store_flags("INBOX", &[1], FlagOp::Replace, &flags(&["\\Flagged", "K3"]))
        .unwrap();
    assert_eq!(after, [(1, flags(&["\\Flagged", "k3"]))]);
    let (after, _) = user
        .store_flags("INBOX", &[1], FlagOp::Remove, &flags(&["k3", "unknown"]))
        .unwrap();
    assert_eq!(after, [(1, flags(&["\\Flagged"]))]);
    assert_eq!(user.snapshot("INBOX").unwrap().keywords.len(), KEYWORDS_MAX);

    let existing = user.folders().len();
    for i in existing..FOLDERS_MAX {
        drop(user.create(&format!("f{i}")).unwrap());
    }
    assert!(matches!(
        user.create("overflow"),
        Err(MailboxError::TooManyFolders { .. })
    ));
}

#[tokio::test]
async fn a_grown_journal_is_compacted_and_reopens_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_path(dir.path(), "max");
    let before;
    {
        let (store, _) = open(dir.path());
        let user = store.user("max").unwrap();
        for n in 1..=100 {
            deliver(&user, "INBOX", n).await;
        }
        let all = uids(&user, "INBOX");
        let seen = flags(&["\\Seen"]);
        for round in 0..200 {
            let op = if round % 2 == 0 {
                FlagOp::Add
            } else {
                FlagOp::Remove
            };
            user.store_flags("INBOX", &all, op, &seen)
                .unwrap()
                .1
                .await
                .unwrap();
        }
        before = user.snapshot("INBOX").unwrap().messages;
        // 200 rounds of 100 flag changes wrote far more than 64 KiB; a
        // compaction keeps the file near the size of the live state.
        assert!(fs::metadata(&path).unwrap().len() < 64 << 10);
    }
    let (store, _) = open(dir.path());
    let user = store.user("max").unwrap();
    assert_eq!(user.snapshot("INBOX").unwrap().messages, before);
    assert_eq!(deliver(&user, "INBOX", 101).await, 101);
}

#[tokio::test]
async fn changes_bump_and_no_op_requests_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let user = store.user("ned").unwrap();
    let mut changes = user.changes();
    let start = *changes.borrow_and_update();
    deliver(&user, "INBOX", 1).await;
    assert!(changes.has_changed().unwrap());
    assert!(*changes.borrow_and_update() > start);
    let version = user.snapshot("INBOX").unwrap().version;
    user.subscribe("INBOX").unwrap().await.unwrap();
    user.expunge("INBOX", None).unwrap().1.await.unwrap();
    user.copy("INBOX", &[42], "Trash").unwrap().1.await.unwrap();
    assert!(
        !changes.has_changed().unwrap(),
        "no-op requests change nothing"
    );
    assert_eq!(user.snapshot("INBOX").unwrap().version, version);
}

#[tokio::test]
async fn a_stopped_store_refuses_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let user = store.user("oz").unwrap();
    drop(store);
    assert!(matches!(
        user.deliver("INBOX", message(1), Flags::default()),
        Err(MailboxError::Stopped)
    ));
    assert_eq!(user.status("INBOX").unwrap().messages, 0);
}

#[tokio::test]
async fn a_failed_journal_write_fails_the_change_and_refuses_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (store, released) = open(dir.path());
    let user = store.user("pat").unwrap();
    for n in 1..=100 {
        deliver(&user, "INBOX", n).await;
    }
    // Appends still reach the open (now unlinked) file, but the first
    // compaction cannot create its temporary file.
    fs::remove_dir_all(dir.path()).unwrap();
    let all = uids(&user, "INBOX");
    let seen = flags(&["\\Seen"]);
    let mut failure = None;
    for round in 0..200 {
        let op = if round % 2 == 0 {
            FlagOp::Add
        } else {
            FlagOp::Remove
        };
        if let Err(err) = user.store_flags("INBOX", &all, op, &seen).unwrap().1.await {
            failure = Some(err);
            break;
        }
    }
    assert!(matches!(failure, Some(MailboxError::JournalFailed { .. })));
    assert!(matches!(
        user.expunge("INBOX", None),
        Err(MailboxError::JournalFailed { .. })
    ));
    assert!(matches!(
        user.delete("Junk"),
        Err(MailboxError::JournalFailed { .. })
    ));
    assert!(released.lock().unwrap().is_empty());
    assert_eq!(
        user.status("INBOX").unwrap().messages,
        100,
        "reads still answer"
    );
}

/// Sessions on every core share the store and user handles, and await
/// `Durable`s on any executor.
const _: fn() = || {
    fn shared_across_threads<T: Send + Sync>() {}
    fn sent_across_threads<T: Send>() {}
    shared_across_threads::<MailboxStore>();
    shared_across_threads::<UserMailboxes>();
    sent_across_threads::<Durable>();
};

#[tokio::test]
async fn retarget_moves_every_reference_keeping_uids_flags_and_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let old = message(1).id;
    let other = message(2).id;
    let new = QueueId::new(90, 32).unwrap();
    let before_inbox;
    let before_archive;
    {
        let (store, released) = open(dir.path());
        let user = store.user("alice").unwrap();
        deliver(&user, INBOX, 1).await;
        deliver(&user, INBOX, 2).await;
        user.create("Archive").unwrap().await.unwrap();
        // COPY: two references to one record.
        let (_, durable) = user.copy(INBOX, &[1], "Archive").unwrap();
        durable.await.unwrap();
        let (_, durable) = user
            .store_flags(INBOX, &[1], FlagOp::Add, &flags(&["\\Seen", "$Work"]))
            .unwrap();
        durable.await.unwrap();
        before_inbox = user.snapshot(INBOX).unwrap();
        before_archive = user.snapshot("Archive").unwrap();
        let version = before_inbox.version;

        let (moved, durable) = user.retarget(&[(old, new)]).unwrap();
        durable.await.unwrap();
        assert_eq!(moved, vec![(old, 0)]);
        assert!(!user.holds(old, 0));
        assert!(user.holds(new, 0));
        assert!(user.holds(other, 0));
        assert!(user.snapshot(INBOX).unwrap().version > version);
        assert_eq!(
            last_record(&journal_path(dir.path(), "alice")),
            vec![Op::Retarget {
                moves: vec![(old, new)]
            }]
        );
        // Moving references releases nothing.
        assert!(released.lock().unwrap().is_empty());
        // Nothing held: no journal record, nothing reported.
        let (none, durable) = user
            .retarget(&[(QueueId::new(5, 8).unwrap(), QueueId::new(91, 32).unwrap())])
            .unwrap();
        durable.await.unwrap();
        assert!(none.is_empty());
        assert_eq!(
            last_record(&journal_path(dir.path(), "alice")),
            vec![Op::Retarget {
                moves: vec![(old, new)]
            }]
        );
    }
    let (store, released) = open(dir.path());
    let user = store.user("alice").unwrap();
    for (before, folder) in [(&before_inbox, INBOX), (&before_archive, "Archive")] {
        let after = user.snapshot(folder).unwrap();
        assert_eq!(after.uidvalidity, before.uidvalidity);
        assert_eq!(after.uidnext, before.uidnext);
        assert_eq!(after.messages.len(), before.messages.len());
        for (a, b) in after.messages.iter().zip(&before.messages) {
            let expected = if b.id == old { new } else { b.id };
            assert_eq!(a.id, expected);
            assert_eq!(
                (
                    a.uid,
                    a.rcpt,
                    a.size,
                    a.internal_date_ms,
                    &a.flags,
                    &a.prefix
                ),
                (
                    b.uid,
                    b.rcpt,
                    b.size,
                    b.internal_date_ms,
                    &b.flags,
                    &b.prefix
                )
            );
        }
    }
    // The last reference to the copy goes: the copy is released, once.
    user.delete("Archive").unwrap().await.unwrap();
    assert!(released.lock().unwrap().is_empty());
    let (_, durable) = user
        .store_flags(INBOX, &[1], FlagOp::Add, &flags(&["\\Deleted"]))
        .unwrap();
    durable.await.unwrap();
    let (_, durable) = user.expunge(INBOX, None).unwrap();
    durable.await.unwrap();
    assert_eq!(*released.lock().unwrap(), vec![(new, 0)]);
}
