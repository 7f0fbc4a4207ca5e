//! Group commit for every user of a store: the `Durable` future, the
//! pending writes of a user, and the one background thread that drains
//! dirty users, writes and syncs each dirty journal once per batch, then
//! resolves the waiters and reports released messages.
//!
//! This module must never resolve a `Durable` with success, nor report a
//! release, before the fdatasync covering its record returned success.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::oneshot;

use super::state::Released;
use super::store::UserMailboxes;
use super::MailboxError;
use crate::spool::QueueId;

/// Called once per (message, recipient) whose last mailbox reference is
/// gone for good; runs on the commit thread, so it must be quick.
pub type ReleaseFn = dyn Fn(QueueId, u32) + Send + Sync;

/// Resolves once the change that returned it (and every change before
/// it in the same mailbox) is durable, or with the error that prevented
/// it. Works under any executor.
#[must_use = "a change is only durable once its Durable resolves"]
#[derive(Debug)]
pub struct Durable {
    rx: oneshot::Receiver<Result<(), MailboxError>>,
}

impl Durable {
    pub(crate) fn pair() -> (oneshot::Sender<Result<(), MailboxError>>, Durable) {
        let (tx, rx) = oneshot::channel();
        (tx, Durable { rx })
    }

    /// Already resolved with `error`: for a change refused before it
    /// reached the journal, where the caller's API wants a `Durable`.
    pub fn failed(error: MailboxError) -> Durable {
        let (tx, durable) = Durable::pair();
        // The receiver is alive in `durable`, so the send cannot fail.
        let _ = tx.send(Err(error));
        durable
    }

    /// Already resolved: nothing was waiting to be written.
    pub(crate) fn ready() -> Durable {
        let (tx, durable) = Durable::pair();
        // The receiver is alive in `durable`, so the send cannot fail.
        let _ = tx.send(Ok(()));
        durable
    }
}

impl Future for Durable {
    type Output = Result<(), MailboxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(MailboxError::Stopped)),
            Poll::Pending => Poll::Pending,
        }
    }
}

pub(crate) struct Waiter {
    tx: oneshot::Sender<Result<(), MailboxError>>,
    queued_at: Instant,
}

impl Waiter {
    pub(crate) fn new() -> (Waiter, Durable) {
        let (tx, durable) = Durable::pair();
        let waiter = Waiter {
            tx,
            queued_at: Instant::now(),
        };
        (waiter, durable)
    }

    pub(crate) fn resolve(self, result: Result<(), MailboxError>) {
        if result.is_ok() {
            metrics::histogram!("tern_mailbox_commit_seconds")
                .record(self.queued_at.elapsed().as_secs_f64());
        }
        // The waiter may have gone away; the change is durable anyway.
        let _ = self.tx.send(result);
    }
}

/// What a user's changes left to write since the last batch.
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) bytes: Vec<u8>,
    pub(crate) waiters: Vec<Waiter>,
    pub(crate) releases: Vec<Released>,
}

impl Pending {
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.waiters.is_empty() && self.releases.is_empty()
    }
}

/// One user's batch, written (or not) by [`UserMailboxes::flush`].
pub(crate) struct Flushed {
    pub(crate) waiters: Vec<Waiter>,
    pub(crate) releases: Vec<Released>,
    pub(crate) written: Result<(), MailboxError>,
    pub(crate) user: String,
}

pub(crate) enum CommitMsg {
    Dirty(Arc<UserMailboxes>),
    /// Finish what is queued, then exit.
    Stop,
}

/// What users hold to hand changes to the commit thread.
#[derive(Clone)]
pub(crate) struct CommitHandle {
    sender: Sender<CommitMsg>,
    /// Set by the thread before its last pass; users check it under their
    /// lock before queueing, so no change is queued that nobody writes.
    closed: Arc<AtomicBool>,
}

impl CommitHandle {
    pub(crate) fn new(sender: Sender<CommitMsg>) -> CommitHandle {
        CommitHandle {
            sender,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Tells the thread `user` has pending work; false if it is gone.
    pub(crate) fn notify(&self, user: Arc<UserMailboxes>) -> bool {
        self.sender.send(CommitMsg::Dirty(user)).is_ok()
    }

    pub(crate) fn stop(&self) {
        // The thread may already be gone; then there is nothing to stop.
        let _ = self.sender.send(CommitMsg::Stop);
    }
}

pub(crate) type Users = Arc<Mutex<HashMap<String, Arc<UserMailboxes>>>>;

/// Body of the store's commit thread.
pub(crate) fn run(
    requests: Receiver<CommitMsg>,
    handle: CommitHandle,
    users: Users,
    on_release: Arc<ReleaseFn>,
) {
    loop {
        let first = match requests.recv() {
            Ok(CommitMsg::Dirty(user)) => user,
            Ok(CommitMsg::Stop) | Err(_) => break,
        };
        let mut batch = vec![first];
        let mut stop = false;
        while let Ok(msg) = requests.try_recv() {
            match msg {
                CommitMsg::Dirty(user) => {
                    if !batch.iter().any(|known| Arc::ptr_eq(known, &user)) {
                        batch.push(user);
                    }
                }
                CommitMsg::Stop => {
                    stop = true;
                    break;
                }
            }
        }
        commit_batch(&batch, &*on_release);
        if stop {
            break;
        }
    }
    handle.closed.store(true, Ordering::SeqCst);
    // Last pass: whatever was queued before `closed` was seen.
    let everyone: Vec<_> = users
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .cloned()
        .collect();
    commit_batch(&everyone, &*on_release);
}

fn commit_batch(users: &[Arc<UserMailboxes>], on_release: &ReleaseFn) {
    let flushed: Vec<Flushed> = users.iter().filter_map(|user| user.flush()).collect();
    if flushed.is_empty() {
        return;
    }
    metrics::histogram!("tern_mailbox_commit_batch_journals").record(flushed.len() as f64);
    for batch in flushed {
        match batch.written {
            Ok(()) => {
                // Releases first: once a change's Durable resolves, the
                // messages it freed have been handed back.
                for (id, rcpt) in batch.releases {
                    metrics::counter!("tern_mailbox_releases_total").increment(1);
                    on_release(id, rcpt);
                }
                for waiter in batch.waiters {
                    waiter.resolve(Ok(()));
                }
            }
            Err(error) => {
                metrics::counter!("tern_mailbox_commit_errors_total").increment(1);
                tracing::error!(user = %batch.user, %error, "mailbox journal write failed; the user's changes are refused until restart");
                for waiter in batch.waiters {
                    waiter.resolve(Err(MailboxError::JournalFailed {
                        user: batch.user.clone(),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_resolves_and_a_dropped_sender_means_stopped() {
        assert!(Durable::ready().await.is_ok());
        let (tx, durable) = Durable::pair();
        drop(tx);
        assert!(matches!(durable.await, Err(MailboxError::Stopped)));
    }

    #[tokio::test]
    async fn a_waiter_hands_over_its_result() {
        let (waiter, durable) = Waiter::new();
        waiter.resolve(Err(MailboxError::CannotDeleteInbox));
        assert!(matches!(
            durable.await,
            Err(MailboxError::CannotDeleteInbox)
        ));
        assert!(Pending::default().is_empty());
    }
}
