//! Tests of the spool as a whole: durability across reopen, torn tails,
//! group commit, recipient updates, rollover, recycling and limits.
//!
//! They drive the public API and touch the spool directory only with plain
//! file I/O; waits on the background preparer are bounded polls.

use crate::test_util::eventually;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::record::tests::sample_envelope;
use super::segment::segment_path;
use super::*;

const SEGMENT: u64 = 64 * 1024;

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        segment_size: SEGMENT,
        max_size: 0,
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tsg"))
        .collect();
    names.sort();
    names
}

async fn append(writer: &mut SpoolWriter, recipients: usize, body: &[u8]) -> QueueId {
    let (id, commit) = writer.append(&sample_envelope(recipients), body).unwrap();
    commit.await.unwrap();
    id
}

#[tokio::test]
async fn committed_message_survives_reopen_with_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let body = data(5000, 1);
    let id = {
        let spool = Spool::open(config(dir.path())).unwrap();
        let mut writer = spool.writer(0).unwrap();
        let id = append(&mut writer, 2, &body).await;
        let view = spool.read(&id).unwrap();
        assert_eq!(view.data(), &body[..]);
        assert_eq!(view.states, vec![RecipientState::Pending; 2]);
        spool.close();
        id
    };
    let spool = Spool::open(config(dir.path())).unwrap();
    let queued = spool.queued();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].id, id);
    assert_eq!(queued[0].envelope, sample_envelope(2));
    assert_eq!(queued[0].size, body.len() as u64);
    let parsed: QueueId = id.to_string().parse().unwrap();
    assert_eq!(spool.read(&parsed).unwrap().data(), &body[..]);
}

#[tokio::test]
async fn message_is_not_queued_before_it_is_durable_and_unknown_ids_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let mut writer = spool.writer(0).unwrap();
    let missing = QueueId::new(999, 8).unwrap();
    assert!(matches!(spool.read(&missing), Err(SpoolError::NotFound(_))));
    assert!(matches!(
        writer.update_recipients(&missing, &[(0, RecipientState::Delivered)]),
        Err(SpoolError::NotFound(_))
    ));
    let id = append(&mut writer, 1, b"x").await;
    let out_of_range = writer.update_recipients(&id, &[(1, RecipientState::Delivered)]);
    assert!(matches!(out_of_range, Err(SpoolError::NotFound(_))));
}

#[tokio::test]
async fn torn_tail_is_discarded_and_zeroed_keeping_earlier_records() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second, torn) = {
        let spool = Spool::open(config(dir.path())).unwrap();
        let mut writer = spool.writer(0).unwrap();
        let first = append(&mut writer, 1, &data(300, 1)).await;
        let second = append(&mut writer, 1, &data(300, 2)).await;
        let torn = append(&mut writer, 1, &data(3000, 3)).await;
        spool.close();
        (first, second, torn)
    };
    assert_eq!(torn.segment_seq(), first.segment_seq());
    let path = segment_path(dir.path(), torn.segment_seq());
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0xA5; 100], torn.offset() + 1000)
        .unwrap();
    drop(file);

    let spool = Spool::open(config(dir.path())).unwrap();
    let ids: Vec<QueueId> = spool.queued().iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![first, second]);
    assert_eq!(spool.read(&second).unwrap().data(), &data(300, 2)[..]);
    assert!(matches!(spool.read(&torn), Err(SpoolError::NotFound(_))));
    let bytes = fs::read(&path).unwrap();
    assert!(
        bytes[torn.offset() as usize..].iter().all(|&b| b == 0),
        "tail not zeroed"
    );
}

#[tokio::test]
async fn truncated_segment_file_is_set_aside_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let spool = Spool::open(config(dir.path())).unwrap();
        let mut writer = spool.writer(0).unwrap();
        let id = append(&mut writer, 1, &data(100, 1)).await;
        spool.close();
        id
    };
    let path = segment_path(dir.path(), id.segment_seq());
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(100).unwrap();
    drop(file);
    let spool = Spool::open(config(dir.path())).unwrap();
    assert!(spool.queued().is_empty());
    assert!(!path.exists());
    let mut bad = path.into_os_string();
    bad.push(".bad");
    assert!(Path::new(&bad).exists());
}

#[tokio::test]
async fn group_commit_syncs_less_than_once_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let mut writer = spool.writer(0).unwrap();
    let before = spool.sync_count();
    let body = data(200, 7);
    let mut commits = Vec::new();
    for _ in 0..300 {
        commits.push(writer.append(&sample_envelope(1), &body).unwrap());
    }
    for (_, commit) in commits {
        commit.await.unwrap();
    }
    let syncs = spool.sync_count() - before;
    assert!((1..300).contains(&syncs), "{syncs} syncs for 300 appends");
    assert_eq!(spool.queued().len(), 300);
}

#[tokio::test]
async fn recipient_updates_survive_reopen_and_the_latest_wins() {
    let dir = tempfile::tempdir().unwrap();
    let deferred = RecipientState::Deferred {
        until_ms: 42,
        attempts: 1,
        last_error: "451 4.7.1 later".into(),
    };
    let (id, done) = {
        let spool = Spool::open(config(dir.path())).unwrap();
        let mut writer = spool.writer(0).unwrap();
        let mut other_core = spool.writer(1).unwrap();
        let id = append(&mut writer, 3, b"three recipients").await;
        let done = append(&mut writer, 1, b"one recipient").await;
        writer
            .update_recipients(&id, &[(0, deferred.clone()), (1, deferred.clone())])
            .unwrap()
            .await
            .unwrap();
        other_core
            .update_recipients(&id, &[(0, RecipientState::Delivered)])
            .unwrap()
            .await
            .unwrap();
        writer
            .update_recipients(&done, &[(0, RecipientState::Delivered)])
            .unwrap()
            .await
            .unwrap();
        assert_eq!(
            spool.queued().len(),
            1,
            "a final message leaves the queue at once"
        );
        assert_eq!(
            spool.read(&id).unwrap().states,
            vec![
                RecipientState::Delivered,
                deferred.clone(),
                RecipientState::Pending
            ]
        );
        spool.close();
        (id, done)
    };
    let spool = Spool::open(config(dir.path())).unwrap();
    let queued = spool.queued();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].id, id);
    assert_eq!(
        queued[0].states,
        vec![RecipientState::Delivered, deferred, RecipientState::Pending]
    );
    assert!(matches!(spool.read(&done), Err(SpoolError::NotFound(_))));

    let mut writer = spool.writer(0).unwrap();
    let bounced = RecipientState::Bounced {
        reason: "550 5.1.1 no such user".into(),
    };
    writer
        .update_recipients(&id, &[(1, RecipientState::Delivered), (2, bounced)])
        .unwrap()
        .await
        .unwrap();
    assert!(spool.queued().is_empty());
    drop(writer);
    spool.close();
    drop(spool);
    let spool = Spool::open(config(dir.path())).unwrap();
    assert!(spool.queued().is_empty(), "all-final message came back");
}

#[tokio::test]
async fn segments_roll_over_and_are_recycled_without_resurrecting_stale_records() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let mut writer = spool.writer(0).unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(append(&mut writer, 1, &data(10_000, i)).await);
    }
    let first_seq = ids[0].segment_seq();
    let last_seq = ids[19].segment_seq();
    assert!(
        last_seq >= first_seq + 2,
        "20 x 10 KB must span three 64 KiB segments"
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(spool.read(id).unwrap().data(), &data(10_000, i as u8)[..]);
        writer
            .update_recipients(id, &[(0, RecipientState::Delivered)])
            .unwrap()
            .await
            .unwrap();
    }
    assert!(spool.queued().is_empty());
    let first_path = segment_path(dir.path(), first_seq);
    assert!(
        eventually(|| !first_path.exists()),
        "sealed segment was not recycled"
    );

    // Keep appending: recycled files are reused and the count stays bounded.
    let mut live = Vec::new();
    for round in 0..5u8 {
        for i in 0..20u8 {
            let id = append(&mut writer, 1, &data(10_000, round ^ i)).await;
            writer
                .update_recipients(&id, &[(0, RecipientState::Delivered)])
                .unwrap()
                .await
                .unwrap();
        }
        assert!(
            eventually(|| segment_files(dir.path()).len() <= 8),
            "segments: {:?}",
            segment_files(dir.path())
        );
    }
    live.push(append(&mut writer, 1, b"still queued").await);
    drop(writer);
    spool.close();
    drop(spool);
    let spool = Spool::open(config(dir.path())).unwrap();
    let queued: Vec<QueueId> = spool.queued().iter().map(|m| m.id).collect();
    assert_eq!(queued, live, "stale records of recycled segments came back");
}

#[tokio::test]
async fn full_spool_refuses_then_accepts_once_space_frees() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolConfig {
        max_size: 3 * SEGMENT,
        ..config(dir.path())
    })
    .unwrap();
    let mut writer = spool.writer(0).unwrap();
    let body = data(10_000, 9);
    let mut ids = Vec::new();
    let full = loop {
        assert!(ids.len() < 100, "spool never filled");
        match writer.append(&sample_envelope(1), &body) {
            Ok((id, commit)) => {
                commit.await.unwrap();
                ids.push(id);
            }
            Err(err) => break err,
        }
    };
    assert!(
        matches!(full, SpoolError::Full { limit, .. } if limit == 3 * SEGMENT),
        "{full:?}"
    );
    for id in &ids {
        writer
            .update_recipients(id, &[(0, RecipientState::Delivered)])
            .unwrap()
            .await
            .unwrap();
    }
    let accepted = eventually(|| match writer.append(&sample_envelope(1), &body) {
        Ok(_) => true,
        Err(SpoolError::Full { .. }) => false,
        Err(other) => panic!("{other}"),
    });
    assert!(accepted, "space never freed");
}

#[tokio::test]
async fn record_larger_than_a_segment_is_too_large_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let mut writer = spool.writer(0).unwrap();
    let err = writer
        .append(&sample_envelope(1), &data(SEGMENT as usize, 0))
        .unwrap_err();
    assert!(
        matches!(
            err,
            SpoolError::TooLarge {
                segment_size: SEGMENT,
                ..
            }
        ),
        "{err:?}"
    );
    append(&mut writer, 1, b"small").await;
}

#[tokio::test]
async fn garbage_files_in_the_spool_dir_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let noise: Vec<u8> = (0..SEGMENT as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    fs::write(dir.path().join("seg-0000000000000005.tsg"), &noise[..100]).unwrap();
    fs::write(dir.path().join("seg-0000000000000006.tsg"), &noise).unwrap();
    fs::write(dir.path().join("seg-0000000000000007.tsg"), b"").unwrap();
    fs::write(dir.path().join("seg-0000000000000009.tmp"), &noise[..64]).unwrap();
    fs::write(dir.path().join("seg-zzzz.tsg"), &noise[..64]).unwrap();
    assert!(Spool::scan_readonly(dir.path()).unwrap().is_empty());

    let spool = Spool::open(config(dir.path())).unwrap();
    assert!(spool.queued().is_empty());
    for quarantined in [
        "seg-0000000000000005.tsg.bad",
        "seg-0000000000000006.tsg.bad",
        "seg-0000000000000007.tsg.bad",
    ] {
        assert!(dir.path().join(quarantined).exists(), "{quarantined}");
    }
    assert!(!dir.path().join("seg-0000000000000009.tmp").exists());
    assert!(dir.path().join("notes.txt").exists());
    let mut writer = spool.writer(0).unwrap();
    let id = append(&mut writer, 1, b"after garbage").await;
    assert!(id.segment_seq() > 9, "seq reused: {id:?}");
}

#[tokio::test]
async fn readonly_scan_lists_messages_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let mut writer = spool.writer(0).unwrap();
    let kept = append(&mut writer, 2, b"kept message").await;
    let done = append(&mut writer, 1, b"done message").await;
    writer
        .update_recipients(&kept, &[(1, RecipientState::Delivered)])
        .unwrap()
        .await
        .unwrap();
    writer
        .update_recipients(&done, &[(0, RecipientState::Delivered)])
        .unwrap()
        .await
        .unwrap();
    let before: Vec<(String, Vec<u8>)> = segment_files(dir.path())
        .into_iter()
        .map(|name| {
            let bytes = fs::read(dir.path().join(&name)).unwrap();
            (name, bytes)
        })
        .collect();

    let scanned = Spool::scan_readonly(dir.path()).unwrap();
    assert_eq!(scanned.len(), 1);
    assert_eq!(scanned[0].id, kept);
    assert_eq!(scanned[0].data(), b"kept message");
    assert_eq!(
        scanned[0].states,
        vec![RecipientState::Pending, RecipientState::Delivered]
    );
    let json = serde_json::to_value(&scanned).unwrap();
    assert_eq!(json[0]["id"], kept.to_string());
    assert_eq!(json[0]["envelope"]["sender"], "alice@example.org");
    assert_eq!(json[0]["states"][1]["state"], "delivered");
    assert_eq!(json[0]["size"], 12);

    for (name, bytes) in before {
        assert_eq!(
            fs::read(dir.path().join(&name)).unwrap(),
            bytes,
            "{name} changed"
        );
    }
}

#[tokio::test]
async fn second_open_of_the_same_dir_is_refused_until_close() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    assert!(matches!(
        Spool::open(config(dir.path())),
        Err(SpoolError::Io { .. })
    ));
    spool.close();
    let spool = Spool::open(config(dir.path())).unwrap();
    let mut writer = spool.writer(0).unwrap();
    spool.close();
    assert!(matches!(
        writer.append(&sample_envelope(1), b"late"),
        Err(SpoolError::SyncStopped)
    ));
}

#[test]
fn invalid_sizes_are_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (segment_size, max_size) in [(0, 0), (1000, 0), (SEGMENT, SEGMENT)] {
        let err = Spool::open(SpoolConfig {
            dir: dir.path().to_path_buf(),
            segment_size,
            max_size,
        })
        .unwrap_err();
        assert!(err.to_string().contains("[spool]"), "{err}");
    }
    let spool: Arc<Spool> = Spool::open(config(dir.path())).unwrap();
    assert!(spool.queued().is_empty());
}

#[tokio::test]
async fn segment_caught_mid_recycle_is_reused_not_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    // A file whose name and header disagree on the seq: recycling wrote
    // the header of one life, the rename that goes with it was lost.
    drop(super::segment::Segment::create(dir.path(), 4, SEGMENT).unwrap());
    fs::rename(segment_path(dir.path(), 4), segment_path(dir.path(), 5)).unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    assert!(spool.queued().is_empty());
    assert!(!dir.path().join("seg-0000000000000005.tsg.bad").exists());
    let mut writer = spool.writer(0).unwrap();
    let id = append(&mut writer, 1, b"fresh").await;
    assert!(id.segment_seq() > 5);
    assert!(
        eventually(|| !segment_path(dir.path(), 5).exists()),
        "stale segment was not recycled"
    );
}

#[tokio::test]
async fn a_finished_message_is_marked_dead_without_a_sync_of_its_own_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let mut writer = spool.writer(0).unwrap();
    let id = append(&mut writer, 1, b"one recipient").await;
    let before = spool.sync_count();
    writer
        .update_recipients(&id, &[(0, RecipientState::Delivered)])
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        spool.sync_count() - before,
        1,
        "the final update's sync only"
    );
    let path = segment_path(dir.path(), id.segment_seq());
    let status_at = id.offset() + super::record::STATUS_OFFSET;
    let mut status = [0u8; 1];
    fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut status, status_at)
        .unwrap();
    assert_eq!(status[0], super::record::STATUS_DEAD, "marked at once");
    // The next batch syncs the same segment and so covers the mark.
    append(&mut writer, 1, b"the next message").await;
    assert_eq!(spool.sync_count() - before, 2);
    spool.close();
}

#[tokio::test]
async fn an_idle_writer_makes_a_dead_mark_durable_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let mut writer = spool.writer(0).unwrap();
    let id = append(&mut writer, 1, b"one recipient").await;
    writer
        .update_recipients(&id, &[(0, RecipientState::Delivered)])
        .unwrap()
        .await
        .unwrap();
    let after_update = spool.sync_count();
    assert!(
        eventually(|| spool.sync_count() == after_update + 1),
        "the mark never got a sync of its own"
    );
    spool.close();
}

#[tokio::test]
async fn a_final_message_whose_dead_mark_was_lost_stays_final_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (id, kept) = {
        let spool = Spool::open(config(dir.path())).unwrap();
        let mut writer = spool.writer(0).unwrap();
        let id = append(&mut writer, 2, b"two recipients").await;
        let kept = append(&mut writer, 1, b"still queued").await;
        writer
            .update_recipients(
                &id,
                &[
                    (0, RecipientState::Delivered),
                    (
                        1,
                        RecipientState::Bounced {
                            reason: "550 5.1.1 no".into(),
                        },
                    ),
                ],
            )
            .unwrap()
            .await
            .unwrap();
        spool.close();
        (id, kept)
    };
    // A crash before the mark reached the disk: the record still says live.
    let path = segment_path(dir.path(), id.segment_seq());
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut live = [0u8; 1];
    fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut live, kept.offset() + super::record::STATUS_OFFSET)
        .unwrap();
    file.write_all_at(&live, id.offset() + super::record::STATUS_OFFSET)
        .unwrap();
    drop(file);
    let spool = Spool::open(config(dir.path())).unwrap();
    let ids: Vec<QueueId> = spool.queued().iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![kept], "the final updates keep it finished");
    assert!(matches!(spool.read(&id), Err(SpoolError::NotFound(_))));
}

#[tokio::test]
async fn message_without_recipients_is_final_at_once_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(config(dir.path())).unwrap();
        let mut writer = spool.writer(0).unwrap();
        append(&mut writer, 0, b"nobody").await;
        assert!(spool.queued().is_empty());
        spool.close();
    }
    let spool = Spool::open(config(dir.path())).unwrap();
    assert!(spool.queued().is_empty());
}

#[test]
fn spool_is_shareable_across_core_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Spool>();
    send_sync::<MessageView>();
    send::<SpoolWriter>();
    send::<Commit>();
}

/// Fills segments through `writer` until the first one is sealed: returns
/// the ids appended, in order (the first ones sit in a sealed segment).
async fn fill_one_segment(writer: &mut SpoolWriter, body: &[u8]) -> Vec<QueueId> {
    let mut ids = vec![append(writer, 1, body).await];
    while ids.last().unwrap().segment_seq() == ids[0].segment_seq() {
        ids.push(append(writer, 1, body).await);
    }
    ids
}

async fn set_states(writer: &mut SpoolWriter, ids: &[QueueId], state: RecipientState) {
    for id in ids {
        writer
            .update_recipients(id, &[(0, state.clone())])
            .unwrap()
            .await
            .unwrap();
    }
}

fn limits(below: f64) -> CompactionLimits {
    CompactionLimits {
        below,
        max_bytes: SEGMENT,
        max_messages: 1000,
    }
}

#[tokio::test]
async fn a_copy_carries_bytes_envelope_and_states_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let body = data(3000, 7);
    let (original, copy) = {
        let spool = Spool::open(config(dir.path())).unwrap();
        let mut writer = spool.writer(0).unwrap();
        let (original, commit) = writer.append(&sample_envelope(3), &body).unwrap();
        commit.await.unwrap();
        let states = [
            (0, RecipientState::InMailbox),
            (1, RecipientState::Delivered),
            (2, RecipientState::Pending),
        ];
        writer
            .update_recipients(&original, &states)
            .unwrap()
            .await
            .unwrap();
        // A recipient still to deliver: the message must not move.
        let view = spool.read(&original).unwrap();
        assert!(matches!(
            writer.append_copy(&view),
            Err(SpoolError::StillQueued(_))
        ));
        let bounced = RecipientState::Bounced {
            reason: "550 no".into(),
        };
        writer
            .update_recipients(&original, &[(2, bounced)])
            .unwrap()
            .await
            .unwrap();
        let view = spool.read(&original).unwrap();
        let mut compactor = spool.compaction_writer().unwrap();
        let (copy, commit) = compactor.append_copy(&view).unwrap();
        commit.await.unwrap();
        assert_ne!(copy.segment_seq(), original.segment_seq());
        let copied = spool.read(&copy).unwrap();
        assert_eq!(copied.data(), &body[..]);
        assert_eq!(copied.envelope, view.envelope);
        assert_eq!(copied.states, view.states);
        spool.close();
        (original, copy)
    };
    let spool = Spool::open(config(dir.path())).unwrap();
    let before = spool.read(&original).unwrap();
    let after = spool.read(&copy).unwrap();
    assert_eq!(after.data(), &body[..]);
    assert_eq!(after.states, before.states);
    assert_eq!(after.states[0], RecipientState::InMailbox);
    assert_eq!(after.states[1], RecipientState::Delivered);
}

#[tokio::test]
async fn a_torn_copy_is_absent_after_a_crash_never_pending() {
    let dir = tempfile::tempdir().unwrap();
    let body = data(2000, 3);
    let copy = {
        let spool = Spool::open(config(dir.path())).unwrap();
        let mut writer = spool.writer(0).unwrap();
        let original = append(&mut writer, 1, &body).await;
        set_states(&mut writer, &[original], RecipientState::InMailbox).await;
        let mut compactor = spool.compaction_writer().unwrap();
        let (copy, commit) = compactor
            .append_copy(&spool.read(&original).unwrap())
            .unwrap();
        commit.await.unwrap();
        spool.close();
        copy
    };
    // The state update sits right before the copy's MESSAGE record; as if
    // only the MESSAGE had reached the disk, zero the update's header.
    let path = segment_path(dir.path(), copy.segment_seq());
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0u8; 24], segment::FIRST_RECORD)
        .unwrap();
    drop(file);
    let spool = Spool::open(config(dir.path())).unwrap();
    assert!(matches!(spool.read(&copy), Err(SpoolError::NotFound(_))));
    let queued = spool.queued();
    assert_eq!(queued.len(), 1, "only the original: {queued:?}");
    assert_eq!(queued[0].states, [RecipientState::InMailbox]);
}

#[tokio::test]
async fn moving_every_holder_frees_a_sparse_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let mut writer = spool.writer(0).unwrap();
    let body = data(4000, 9);
    let ids = fill_one_segment(&mut writer, &body).await;
    let sealed = ids[0].segment_seq();
    let first: Vec<QueueId> = ids
        .iter()
        .copied()
        .filter(|id| id.segment_seq() == sealed)
        .collect();
    assert!(first.len() > 8, "{} messages per segment", first.len());
    // Every message goes to a mailbox; most are then released.
    set_states(&mut writer, &ids, RecipientState::InMailbox).await;
    let (kept, gone) = first.split_at(2);
    set_states(&mut writer, gone, RecipientState::Delivered).await;
    // Still appended to: the active segment is never planned.
    let plan = spool.plan_compaction(&limits(0.25), &Default::default());
    assert!(!plan.segments.contains(&ids.last().unwrap().segment_seq()));
    assert!(plan.segments.contains(&sealed), "{plan:?}");
    for id in kept {
        assert!(plan.messages.contains(id), "{plan:?}");
    }
    assert!(spool
        .plan_compaction(&limits(0.0), &Default::default())
        .segments
        .is_empty());

    let reader = spool.read(&kept[0]).unwrap();
    let mut compactor = spool.compaction_writer().unwrap();
    let mut moved = Vec::new();
    for id in &plan.messages {
        let (copy, commit) = compactor.append_copy(&spool.read(id).unwrap()).unwrap();
        commit.await.unwrap();
        moved.push((*id, copy));
    }
    spool.record_moves(&moved);
    for (id, _) in &moved {
        compactor
            .update_recipients(id, &[(0, RecipientState::Delivered)])
            .unwrap()
            .await
            .unwrap();
    }
    // A reader holding the old id follows the move; one holding a view
    // keeps the old bytes (and segment) until it lets go.
    let followed = spool.read_moved(&kept[0]).unwrap();
    assert_eq!(followed.data(), &body[..]);
    assert_ne!(followed.id, kept[0]);
    assert_eq!(reader.data(), &body[..]);
    let old_file = segment_path(dir.path(), sealed);
    assert!(old_file.exists(), "held by the reader's view");
    drop(reader);
    assert!(eventually(|| !old_file.exists()), "sparse segment recycled");
    assert_eq!(spool.moves_remembered(), moved.len());
    for (_, copy) in &moved {
        compactor
            .update_recipients(copy, &[(0, RecipientState::Delivered)])
            .unwrap()
            .await
            .unwrap();
    }
    spool.prune_moves();
    assert_eq!(spool.moves_remembered(), 0);
    assert!(matches!(
        spool.read_moved(&kept[0]),
        Err(SpoolError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_segment_holding_a_queued_message_is_not_planned() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let mut writer = spool.writer(0).unwrap();
    let ids = fill_one_segment(&mut writer, &data(4000, 1)).await;
    let sealed = ids[0].segment_seq();
    let first: Vec<QueueId> = ids
        .iter()
        .copied()
        .filter(|id| id.segment_seq() == sealed)
        .collect();
    // One message waits for relay (deferred), one sits in a mailbox.
    let deferred = RecipientState::Deferred {
        until_ms: u64::MAX,
        attempts: 1,
        last_error: "451".into(),
    };
    set_states(&mut writer, &first[..1], deferred).await;
    set_states(&mut writer, &first[1..2], RecipientState::InMailbox).await;
    set_states(&mut writer, &first[2..], RecipientState::Delivered).await;
    let plan = spool.plan_compaction(&limits(0.25), &Default::default());
    assert!(!plan.segments.contains(&sealed), "{plan:?}");
    assert!(!plan.messages.contains(&first[0]));
    assert!(!plan.messages.contains(&first[1]));
}
