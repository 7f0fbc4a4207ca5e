//! Spool compaction: moves the few long-lived mailbox records that keep a
//! sealed segment alive into a segment of the compactor's own, so the old
//! segment can be recycled. Runs on its own thread (`tern-compact`), one
//! bounded pass every `[spool] compact_interval`, never two at once, and
//! never on a core's event loop.
//!
//! A pass, for the messages `Spool::plan_compaction` picks (every
//! recipient `InMailbox` or final, nothing left to deliver):
//!
//! 1. copy: each message X is appended again as X' carrying X's recipient
//!    states (`SpoolWriter::append_copy`), and the pass waits until every
//!    copy is durable;
//! 2. retarget: in the mailbox of each user holding X (the user of each
//!    `InMailbox` recipient's address, as local delivery and the start-up
//!    check find it), every reference (X, r) becomes (X', r) in one
//!    journal record per user; UIDs, flags, internal dates, sizes and the
//!    Return-Path/Received prefix stay, and X' holds X's bytes, so clients
//!    see the same message. The pass waits until those records are
//!    durable;
//! 3. release: each recipient r whose reference moved is marked
//!    `Delivered` on X; each `InMailbox` recipient whose reference did not
//!    move (expunged meanwhile) is marked `Delivered` on X'. X becomes
//!    final and its segment is recycled once nothing else holds it.
//!
//! Why a kill -9 between any two steps loses nothing, serves nothing
//! twice and leaks nothing. The invariant kept throughout: a recipient is
//! `InMailbox` on disk in every record a durable mailbox reference names.
//! X' is durable with `InMailbox` recipients (step 1) before any journal
//! names it (step 2), and X stays `InMailbox` until the journals no longer
//! name it (step 3 after step 2). The start-up rule that already exists
//! for expunges (`find_lost_releases`: a recipient `InMailbox` that its
//! user's mailbox does not hold is released) then cleans up whatever a
//! crash leaves half done:
//!
//! - during step 1: a copy whose update or message record is not whole is
//!   not in the chain of records (the update comes first, see
//!   `append_copy`), so it is absent, or present with its states;
//! - after step 1: X' is `InMailbox` but unreferenced, so it is released
//!   at start; X is untouched;
//! - during step 2: each user's references moved all at once or not at
//!   all, so each (user, recipient) names exactly one of X and X' and the
//!   other is released at start; no folder lists the message twice;
//! - after step 2 or during step 3: X is `InMailbox` but unreferenced and
//!   is released at start.
//!
//! A change racing with a pass is safe too: an expunge of X before the
//! retarget releases (X, r) the usual way and the retarget then does not
//! move it, so the pass releases (X', r) itself; an expunge after the
//! retarget releases (X', r) the usual way. Retargeting moves references
//! without releasing, so exactly one party releases each recipient. A
//! journal write that fails leaves memory and disk in doubt: both records
//! are kept and the next start decides. Sessions holding the old id (a
//! POP3 maildrop, an IMAP view) read through `Spool::read_moved`, which
//! follows the move once X is gone; a `MessageView` already taken keeps
//! X's segment mapped.
//!
//! This module must never move a message with a recipient left to
//! deliver, never release a recipient before the references that name it
//! moved durably, and never block accept or delivery.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::mailbox::MailboxStore;
use crate::spool::{
    Commit, CompactionLimits, QueueId, RecipientState, Spool, SpoolError, SpoolWriter,
};
use crate::users::UsersHandle;

/// Most messages one pass moves: bounds the journal record each user
/// gets (32 bytes a move) and the pass's time.
const PASS_MESSAGES_MAX: usize = 10_000;

/// `[spool]` compaction settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionSettings {
    /// `compact_below`: 0 turns compaction off.
    pub below: f64,
    /// `compact_interval`.
    pub interval: Duration,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Segments the plan meant to free.
    pub segments: usize,
    /// Messages whose references moved to their copy.
    pub moved: usize,
    /// Message bytes copied for those.
    pub bytes: u64,
    /// Copies made but released unused (every reference was expunged
    /// meanwhile, or the user's journal failed).
    pub wasted: usize,
}

/// One durable copy, before its references move.
#[derive(Debug, Clone)]
pub struct Copied {
    pub from: QueueId,
    pub to: QueueId,
    /// Message bytes.
    pub size: u64,
    /// Recipients held by a mailbox when copied, with their user.
    pub held: Vec<(u32, String)>,
}

/// Which references the retarget step moved.
#[derive(Debug, Clone, Default)]
pub struct Retargeted {
    /// (old id, recipient) no journal names any more.
    pub moved: HashSet<(QueueId, u32)>,
    /// (old id, recipient) whose journal write failed: memory names the
    /// copy, the disk may name either. Both records stay until restart.
    pub in_doubt: HashSet<(QueueId, u32)>,
}

/// The compactor: its own spool writer and the stores it reconciles.
pub struct Compactor {
    spool: Arc<Spool>,
    writer: SpoolWriter,
    mailboxes: Arc<MailboxStore>,
    users: UsersHandle,
    below: f64,
    /// Messages a pass could not move entirely (a recipient whose user
    /// is unknown or did not hold it): left alone while they live.
    skip: HashSet<QueueId>,
}

impl Compactor {
    pub fn new(
        spool: Arc<Spool>,
        mailboxes: Arc<MailboxStore>,
        users: UsersHandle,
        below: f64,
    ) -> Result<Compactor, SpoolError> {
        let writer = spool.compaction_writer()?;
        Ok(Compactor {
            spool,
            writer,
            mailboxes,
            users,
            below,
            skip: HashSet::new(),
        })
    }

    /// One bounded pass: plan, copy, retarget, release.
    pub async fn pass(&mut self) -> PassReport {
        self.spool.prune_moves();
        let spool = Arc::clone(&self.spool);
        self.skip.retain(|id| spool.is_live(id));
        let segment_size = self.spool.segment_size();
        let limits = CompactionLimits {
            below: self.below,
            // One segment of copies per pass at most.
            max_bytes: segment_size,
            max_messages: PASS_MESSAGES_MAX,
        };
        let plan = self.spool.plan_compaction(&limits, &self.skip);
        if plan.messages.is_empty() {
            return PassReport::default();
        }
        debug!(
            segments = plan.segments.len(),
            messages = plan.messages.len(),
            bytes = plan.bytes,
            "spool compaction pass"
        );
        let copies = self.copy(&plan.messages).await;
        let retargeted = self.retarget(&copies).await;
        let mut report = self.release(&copies, &retargeted).await;
        report.segments = plan.segments.len();
        if report.moved > 0 {
            metrics::counter!("tern_spool_compactions_total").increment(1);
            metrics::counter!("tern_spool_compacted_records_total").increment(report.moved as u64);
            metrics::counter!("tern_spool_compacted_bytes_total").increment(report.bytes);
        }
        report
    }

    /// Step 1: durable copies of `ids`, with the users holding them.
    pub async fn copy(&mut self, ids: &[QueueId]) -> Vec<Copied> {
        let mut pending: Vec<(Copied, Commit)> = Vec::new();
        for id in ids {
            let view = match self.spool.read(id) {
                Ok(view) => view,
                // Released by its last mailbox meanwhile: nothing to move.
                Err(SpoolError::NotFound(_)) => continue,
                Err(e) => {
                    warn!(queue_id = %id, error = %e, "compaction cannot read the message; it stays");
                    self.skip.insert(*id);
                    continue;
                }
            };
            let mut held = Vec::new();
            let mut unknown = false;
            for (index, state) in view.states.iter().enumerate() {
                if *state != RecipientState::InMailbox {
                    continue;
                }
                let user = view
                    .envelope
                    .recipients
                    .get(index)
                    .and_then(|r| self.users.find_login(&r.address));
                match (user, u32::try_from(index)) {
                    (Some(user), Ok(rcpt)) => held.push((rcpt, user.name().to_owned())),
                    _ => unknown = true,
                }
            }
            if unknown || held.is_empty() {
                // Start-up releases what no known user holds; until then
                // the message stays where it is.
                self.skip.insert(*id);
                continue;
            }
            match self.writer.append_copy(&view) {
                Ok((to, commit)) => pending.push((
                    Copied {
                        from: *id,
                        to,
                        size: view.size,
                        held,
                    },
                    commit,
                )),
                Err(SpoolError::TooLarge { .. } | SpoolError::StillQueued(_)) => {
                    self.skip.insert(*id);
                }
                Err(e) => {
                    // Full or failing spool: the next pass tries again.
                    warn!(queue_id = %id, error = %e, "compaction cannot copy; pass cut short");
                    break;
                }
            }
        }
        let mut copies = Vec::with_capacity(pending.len());
        for (copied, commit) in pending {
            match commit.await {
                Ok(()) => copies.push(copied),
                Err(e) => {
                    warn!(queue_id = %copied.from, error = %e, "compaction copy not durable; the message stays")
                }
            }
        }
        copies
    }

    /// Step 2: every holding user's references to the originals name the
    /// copies, one durable journal record per user.
    pub async fn retarget(&self, copies: &[Copied]) -> Retargeted {
        let mut by_user: HashMap<&str, Vec<(QueueId, QueueId)>> = HashMap::new();
        for copied in copies {
            for (_, user) in &copied.held {
                let moves = by_user.entry(user.as_str()).or_default();
                if !moves.iter().any(|(from, _)| *from == copied.from) {
                    moves.push((copied.from, copied.to));
                }
            }
        }
        let mut out = Retargeted::default();
        let mut pending = Vec::new();
        for (user, moves) in by_user {
            let changed = self
                .mailboxes
                .user(user)
                .and_then(|mailbox| mailbox.retarget(&moves));
            match changed {
                Ok((held, durable)) => pending.push((user, held, durable)),
                // Nothing changed: the originals stay referenced.
                Err(e) => warn!(user, error = %e, "compaction cannot update the mailbox"),
            }
        }
        for (user, held, durable) in pending {
            match durable.await {
                Ok(()) => out.moved.extend(held),
                Err(e) => {
                    warn!(user, error = %e, "compaction's mailbox update not durable; both copies kept until restart");
                    out.in_doubt.extend(held);
                }
            }
        }
        out
    }

    /// Step 3: the recipients nobody references any more are delivered:
    /// on the original where the reference moved, on the copy where it
    /// did not.
    pub async fn release(&mut self, copies: &[Copied], retargeted: &Retargeted) -> PassReport {
        let mut report = PassReport::default();
        let moved_ids: Vec<(QueueId, QueueId)> = copies
            .iter()
            .filter(|c| {
                c.held
                    .iter()
                    .any(|(rcpt, _)| retargeted.moved.contains(&(c.from, *rcpt)))
            })
            .map(|c| (c.from, c.to))
            .collect();
        // Before the originals go, so a reader holding an old id follows.
        self.spool.record_moves(&moved_ids);
        let mut commits = Vec::new();
        for copied in copies {
            let mut on_original = Vec::new();
            let mut on_copy = Vec::new();
            for (rcpt, _) in &copied.held {
                let key = (copied.from, *rcpt);
                if retargeted.moved.contains(&key) {
                    on_original.push((*rcpt as usize, RecipientState::Delivered));
                } else if !retargeted.in_doubt.contains(&key) {
                    on_copy.push((*rcpt as usize, RecipientState::Delivered));
                }
            }
            if on_original.is_empty() {
                report.wasted += 1;
            } else {
                report.moved += 1;
                report.bytes += copied.size;
            }
            for (id, updates) in [(copied.from, on_original), (copied.to, on_copy)] {
                if updates.is_empty() {
                    continue;
                }
                match self.writer.update_recipients(&id, &updates) {
                    Ok(commit) => commits.push((id, commit)),
                    Err(e) => {
                        warn!(queue_id = %id, error = %e, "compaction release not written; the next start releases it")
                    }
                }
            }
        }
        for (id, commit) in commits {
            if let Err(e) = commit.await {
                warn!(queue_id = %id, error = %e, "compaction release not durable; the next start releases it");
            }
        }
        // An original still live is held by someone the pass could not
        // move (a recipient whose address now leads to another user, a
        // journal in doubt): leave it be rather than copy it every pass.
        for copied in copies {
            if self.spool.is_live(&copied.from) {
                self.skip.insert(copied.from);
            }
        }
        report
    }
}

/// Starts the compactor thread; None when `[spool] compact_below` is 0.
/// It stops when `shutdown` turns true, after the pass under way.
pub fn spawn(
    spool: Arc<Spool>,
    mailboxes: Arc<MailboxStore>,
    users: UsersHandle,
    settings: CompactionSettings,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<Option<JoinHandle<()>>> {
    if settings.below <= 0.0 {
        return Ok(None);
    }
    std::thread::Builder::new()
        .name("tern-compact".into())
        .spawn(move || run(spool, mailboxes, users, settings, shutdown))
        .map(Some)
}

fn run(
    spool: Arc<Spool>,
    mailboxes: Arc<MailboxStore>,
    users: UsersHandle,
    settings: CompactionSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            warn!(error = %e, "spool compaction disabled: cannot build its runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let mut compactor = match Compactor::new(spool, mailboxes, users, settings.below) {
            Ok(compactor) => compactor,
            Err(e) => {
                warn!(error = %e, "spool compaction disabled: no spool writer");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(settings.interval) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                    continue;
                }
            }
            let report = compactor.pass().await;
            if report.segments > 0 {
                info!(
                    segments = report.segments,
                    moved = report.moved,
                    bytes = report.bytes,
                    wasted = report.wasted,
                    "spool compaction pass done"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests;
