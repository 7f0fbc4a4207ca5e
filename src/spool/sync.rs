//! Group commit: the per-writer sync thread and the `Commit` future.
//!
//! The thread blocks for one request, drains every request queued behind
//! it, issues ONE fdatasync per distinct segment, then completes all
//! waiters. Requests that arrive while it syncs form the next batch.
//!
//! This module must never complete a waiter with success before the
//! fdatasync covering its record returned success, and never make a
//! record visible to readers (the index) before that either.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::id::QueueId;
use super::index::LiveMessage;
use super::segment::Segment;
use super::state::RecipientState;
use super::store::Shared;
use super::SpoolError;

/// Resolves once a record is durable, or with the error that prevented it.
/// Works under any executor (plain tokio, tokio-uring).
#[must_use = "a record is only durable once its Commit resolves"]
#[derive(Debug)]
pub struct Commit {
    rx: oneshot::Receiver<Result<(), SpoolError>>,
}

impl Commit {
    pub(crate) fn pair() -> (oneshot::Sender<Result<(), SpoolError>>, Commit) {
        let (tx, rx) = oneshot::channel();
        (tx, Commit { rx })
    }

    /// A commit that is already resolved (nothing needed writing).
    pub(crate) fn ready(result: Result<(), SpoolError>) -> Commit {
        let (tx, commit) = Commit::pair();
        // The receiver is alive in `commit`, so the send cannot fail.
        let _ = tx.send(result);
        commit
    }
}

impl Future for Commit {
    type Output = Result<(), SpoolError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(SpoolError::SyncStopped)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What becomes true once a record is durable.
pub(crate) enum Durable {
    /// A MESSAGE record: the message becomes live (queued).
    Message { id: QueueId, message: LiveMessage },
    /// A RECIPIENT_UPDATE record for a live message.
    Update {
        id: QueueId,
        update_seq: u64,
        changes: Vec<(usize, RecipientState)>,
    },
}

pub(crate) struct SyncJob {
    /// The segment the record was written to.
    pub(crate) segment: Arc<Segment>,
    pub(crate) queued_at: Instant,
    pub(crate) waiter: oneshot::Sender<Result<(), SpoolError>>,
    pub(crate) then: Durable,
}

pub(crate) enum SyncMsg {
    Job(SyncJob),
    /// Finish what is queued, then exit.
    Stop,
}

/// A sync failure, kept so every waiter of the batch gets its own error.
#[derive(Clone)]
struct Failure {
    path: PathBuf,
    kind: io::ErrorKind,
    message: String,
}

impl Failure {
    fn of(error: &SpoolError, segment: &Segment) -> Failure {
        match error {
            SpoolError::Io { path, source } => Failure {
                path: path.clone(),
                kind: source.kind(),
                message: source.to_string(),
            },
            other => Failure {
                path: segment.path().to_path_buf(),
                kind: io::ErrorKind::Other,
                message: other.to_string(),
            },
        }
    }

    fn error(&self) -> SpoolError {
        SpoolError::Io {
            path: self.path.clone(),
            source: io::Error::new(self.kind, self.message.clone()),
        }
    }
}

/// A finished message's dead mark waits at most this long for a batch that
/// syncs its segment anyway before it gets an fdatasync of its own.
const DEAD_MARK_WAIT: Duration = Duration::from_millis(100);

/// Finished messages whose MESSAGE records are marked dead but perhaps not
/// yet durably: they keep their segments until a sync covers the mark.
///
/// Why carried over instead of synced at once: the final update that made
/// the message finished is already durable (recovery finds the message
/// final from it and marks it dead itself), so the mark only has to be
/// durable before the segments holding the update records are released.
/// Under load the next batch syncs the same active segment within a
/// millisecond or so, which saves an fdatasync per batch.
#[derive(Default)]
struct DeadMarks {
    waiting: Vec<(LiveMessage, Instant)>,
}

impl DeadMarks {
    /// When the oldest mark stops waiting for a batch to cover it.
    fn deadline(&self) -> Option<Instant> {
        self.waiting
            .iter()
            .map(|(_, at)| *at + DEAD_MARK_WAIT)
            .min()
    }

    /// Releases the messages whose segment `synced` made durable after
    /// their mark was written; then syncs the segments of marks that have
    /// waited `DEAD_MARK_WAIT` (all of them when `all`) and releases those.
    fn settle(&mut self, shared: &Shared, synced: &[u64], all: bool) {
        if self.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        let before = self.waiting.len();
        let mut failed = Vec::new();
        let mut own_syncs: Vec<(u64, bool)> = Vec::new();
        let mut still_waiting = Vec::new();
        for (message, marked_at) in self.waiting.drain(..) {
            let seq = message.segment.seq();
            if synced.contains(&seq) {
                // Dropping the message releases its segments.
                continue;
            }
            if !all && now < marked_at + DEAD_MARK_WAIT {
                still_waiting.push((message, marked_at));
                continue;
            }
            let ok = match own_syncs.iter().find(|(done, _)| *done == seq) {
                Some((_, ok)) => *ok,
                None => {
                    let ok = match sync_counted(shared, &message.segment) {
                        Ok(()) => true,
                        Err(err) => {
                            tracing::warn!(error = %err, "could not sync finished messages; their segments stay in use until restart");
                            false
                        }
                    };
                    own_syncs.push((seq, ok));
                    ok
                }
            };
            if !ok {
                failed.push(message);
            }
        }
        let released = before != still_waiting.len();
        self.waiting = still_waiting;
        if !failed.is_empty() {
            shared.pin(failed);
        }
        if released {
            shared.pool.wake();
        }
    }
}

/// Body of a writer's sync thread.
pub(crate) fn run(shared: Arc<Shared>, requests: Receiver<SyncMsg>) {
    let mut marks = DeadMarks::default();
    loop {
        let received = match marks.deadline() {
            None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(deadline) => {
                requests.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            }
        };
        let first = match received {
            Ok(SyncMsg::Job(job)) => job,
            Err(RecvTimeoutError::Timeout) => {
                marks.settle(&shared, &[], false);
                continue;
            }
            Ok(SyncMsg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = vec![first];
        let mut stop = false;
        while let Ok(msg) = requests.try_recv() {
            match msg {
                SyncMsg::Job(job) => batch.push(job),
                SyncMsg::Stop => {
                    stop = true;
                    break;
                }
            }
        }
        commit_batch(&shared, batch, &mut marks);
        if stop {
            break;
        }
    }
    marks.settle(&shared, &[], true);
}

fn sync_counted(shared: &Shared, segment: &Segment) -> Result<(), SpoolError> {
    shared.syncs.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("tern_spool_syncs_total").increment(1);
    segment.sync()
}

fn commit_batch(shared: &Shared, batch: Vec<SyncJob>, marks: &mut DeadMarks) {
    let mut outcomes: Vec<(u64, Result<(), Failure>)> = Vec::new();
    for job in &batch {
        let seq = job.segment.seq();
        if outcomes.iter().any(|(done, _)| *done == seq) {
            continue;
        }
        let waiters = batch.iter().filter(|j| j.segment.seq() == seq).count();
        metrics::histogram!("tern_spool_commit_batch_size").record(waiters as f64);
        let outcome = sync_counted(shared, &job.segment).map_err(|e| Failure::of(&e, &job.segment));
        outcomes.push((seq, outcome));
    }
    let synced: Vec<u64> = outcomes
        .iter()
        .filter(|(_, outcome)| outcome.is_ok())
        .map(|(seq, _)| *seq)
        .collect();
    // Marks written before these syncs are durable now.
    marks.settle(shared, &synced, false);
    let mut finished = Vec::new();
    let mut durable = Vec::new();
    for job in batch {
        let outcome = outcomes
            .iter()
            .find(|(seq, _)| *seq == job.segment.seq())
            .map(|(_, outcome)| outcome.clone())
            .unwrap_or(Ok(()));
        match outcome {
            Ok(()) => {
                match job.then {
                    // A message without recipients is done on arrival,
                    // as recovery would also find.
                    Durable::Message { id, message } if message.is_final() => {
                        finished.push((id, message));
                    }
                    Durable::Message { id, message } => shared.index.insert(id, message),
                    Durable::Update {
                        id,
                        update_seq,
                        changes,
                    } => {
                        if let Some(done) =
                            shared.index.apply(&id, update_seq, &changes, &job.segment)
                        {
                            finished.push((id, done));
                        }
                    }
                }
                durable.push((job.waiter, job.queued_at));
            }
            Err(failure) => {
                metrics::counter!("tern_spool_commit_errors_total").increment(1);
                if let Durable::Message { id, .. } = &job.then {
                    // The bytes may reach the disk despite the failed sync;
                    // marking the record dead keeps a restart from queuing a
                    // message whose client was told to try again. Best
                    // effort: the segment has already failed once.
                    let _ = job.segment.mark_dead(id.offset());
                }
                let _ = job.waiter.send(Err(failure.error()));
            }
        }
    }
    // Marked dead before their updaters hear back (the mark may not be
    // durable yet: see `DeadMarks`).
    mark_finished(shared, finished, marks);
    for (waiter, queued_at) in durable {
        metrics::histogram!("tern_spool_commit_seconds").record(queued_at.elapsed().as_secs_f64());
        // The waiter may have given up; the record is durable anyway.
        let _ = waiter.send(Ok(()));
    }
}

/// Marks the MESSAGE records of messages that just became final as dead;
/// they wait in `marks` until a sync makes that durable, and only then are
/// their segments released (their update records stop being needed once
/// recovery skips the message).
fn mark_finished(shared: &Shared, finished: Vec<(QueueId, LiveMessage)>, marks: &mut DeadMarks) {
    let now = Instant::now();
    let mut failed = Vec::new();
    for (id, message) in finished {
        match message.segment.mark_dead(id.offset()) {
            Ok(()) => marks.waiting.push((message, now)),
            Err(err) => {
                tracing::warn!(%id, error = %err, "could not mark finished message; its segments stay in use until restart");
                failed.push(message);
            }
        }
    }
    if !failed.is_empty() {
        shared.pin(failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_commit_resolves_with_its_result() {
        assert!(Commit::ready(Ok(())).await.is_ok());
        let err = Commit::ready(Err(SpoolError::SyncStopped))
            .await
            .unwrap_err();
        assert!(matches!(err, SpoolError::SyncStopped));
    }

    #[tokio::test]
    async fn dropped_sender_resolves_as_stopped() {
        let (tx, commit) = Commit::pair();
        drop(tx);
        assert!(matches!(commit.await, Err(SpoolError::SyncStopped)));
    }
}
