//! The per-core delivery schedule: which spooled messages are due for a
//! delivery attempt now, which wait for a retry time, and which are held
//! (`[relay] hold`) until an operator releases them.
//!
//! It only keeps queue ids and times. It must never read the spool, talk
//! to the network or read the clock itself (callers pass `now_ms`), so
//! every rule here is testable without either.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use tokio::sync::Notify;

use crate::spool::QueueId;

/// Delivery attempts one core runs at once. Each holds a message mapping
/// and at most one connection per destination, so this bounds memory
/// and file descriptors when a large queue is released at once.
pub const ATTEMPTS_IN_FLIGHT_MAX: usize = 1000;

/// The states a queued message can be in, as `tern_queue_messages` labels.
pub const QUEUE_STATES: [&str; 4] = ["held", "ready", "deferred", "active"];

fn gauge(state: &'static str, delta: f64) {
    metrics::gauge!("tern_queue_messages", "state" => state).increment(delta);
}

#[derive(Default)]
struct Queues {
    ready: VecDeque<QueueId>,
    /// (due time in ms since the epoch, message), earliest first.
    deferred: BinaryHeap<Reverse<(u64, QueueId)>>,
    held: Vec<QueueId>,
    hold: bool,
    active: usize,
}

/// One core's schedule. Not `Sync`: it lives on its core.
pub struct Scheduler {
    queues: RefCell<Queues>,
    /// Wakes the dispatcher: new work, a finished attempt, a release.
    wake: Notify,
}

impl Scheduler {
    pub fn new(hold: bool) -> Scheduler {
        Scheduler {
            queues: RefCell::new(Queues {
                hold,
                ..Queues::default()
            }),
            wake: Notify::new(),
        }
    }

    /// A message that has just become durable (or was recovered with
    /// recipients to try now): held under `[relay] hold`, else ready.
    pub fn submit(&self, id: QueueId) {
        let mut q = self.queues.borrow_mut();
        if q.hold {
            q.held.push(id);
            gauge("held", 1.0);
        } else {
            q.ready.push_back(id);
            gauge("ready", 1.0);
            self.wake.notify_one();
        }
    }

    /// Try `id` again at `due_ms`. Hold only catches new mail: a released
    /// message keeps its retry schedule.
    pub fn defer(&self, id: QueueId, due_ms: u64) {
        let mut q = self.queues.borrow_mut();
        q.deferred.push(Reverse((due_ms, id)));
        gauge("deferred", 1.0);
        self.wake.notify_one();
    }

    /// Every held message becomes ready; returns how many.
    pub fn release(&self) -> usize {
        let mut q = self.queues.borrow_mut();
        let held = std::mem::take(&mut q.held);
        let count = held.len();
        gauge("held", -(count as f64));
        gauge("ready", count as f64);
        q.ready.extend(held);
        self.wake.notify_one();
        count
    }

    /// Every deferred message becomes due now (`tern queue flush`).
    pub fn flush(&self) -> usize {
        let mut q = self.queues.borrow_mut();
        let deferred = std::mem::take(&mut q.deferred);
        let count = deferred.len();
        gauge("deferred", -(count as f64));
        gauge("ready", count as f64);
        q.ready.extend(
            deferred
                .into_sorted_vec()
                .into_iter()
                .rev()
                .map(|Reverse((_, id))| id),
        );
        self.wake.notify_one();
        count
    }

    /// The next message to attempt at `now_ms`, counted as active until
    /// `finished`; None when nothing is due or enough attempts run.
    pub fn next_due(&self, now_ms: u64) -> Option<QueueId> {
        let mut q = self.queues.borrow_mut();
        if q.active >= ATTEMPTS_IN_FLIGHT_MAX {
            return None;
        }
        while let Some(Reverse((due, _))) = q.deferred.peek() {
            if *due > now_ms {
                break;
            }
            if let Some(Reverse((_, id))) = q.deferred.pop() {
                q.ready.push_back(id);
                gauge("deferred", -1.0);
                gauge("ready", 1.0);
            }
        }
        let id = q.ready.pop_front()?;
        q.active += 1;
        gauge("ready", -1.0);
        gauge("active", 1.0);
        Some(id)
    }

    /// An attempt started by `next_due` is over (its message was deferred,
    /// finished, or left for local delivery).
    pub fn finished(&self) {
        let mut q = self.queues.borrow_mut();
        q.active = q.active.saturating_sub(1);
        gauge("active", -1.0);
        self.wake.notify_one();
    }

    /// When the earliest deferred message is due.
    pub fn next_retry_ms(&self) -> Option<u64> {
        self.queues
            .borrow()
            .deferred
            .peek()
            .map(|Reverse((due, _))| *due)
    }

    /// Attempts under way.
    pub fn active(&self) -> usize {
        self.queues.borrow().active
    }

    /// Resolves after any change that may make work due.
    pub async fn changed(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> QueueId {
        QueueId::new(1, 64 * n).unwrap()
    }

    #[test]
    fn submitted_messages_come_out_in_order_and_count_as_active() {
        let s = Scheduler::new(false);
        s.submit(id(1));
        s.submit(id(2));
        assert_eq!(s.next_due(0), Some(id(1)));
        assert_eq!(s.next_due(0), Some(id(2)));
        assert_eq!(s.next_due(0), None);
        assert_eq!(s.active(), 2);
        s.finished();
        assert_eq!(s.active(), 1);
    }

    #[test]
    fn deferred_messages_wait_for_their_time() {
        let s = Scheduler::new(false);
        s.defer(id(1), 2_000);
        s.defer(id(2), 1_000);
        assert_eq!(s.next_retry_ms(), Some(1_000));
        assert_eq!(s.next_due(999), None);
        assert_eq!(s.next_due(1_000), Some(id(2)));
        assert_eq!(s.next_due(1_500), None);
        assert_eq!(s.next_due(2_500), Some(id(1)));
        assert_eq!(s.next_retry_ms(), None);
    }

    #[test]
    fn hold_keeps_everything_until_release() {
        let s = Scheduler::new(true);
        s.submit(id(1));
        s.submit(id(2));
        assert_eq!(s.next_due(u64::MAX), None);
        assert_eq!(s.release(), 2);
        assert_eq!(s.next_due(0), Some(id(1)));
        assert_eq!(s.next_due(0), Some(id(2)));
        // A released message that failed keeps its schedule.
        s.defer(id(1), 10);
        assert_eq!(s.next_due(10), Some(id(1)));
        // Hold stays on for mail that arrives after the release.
        s.submit(id(3));
        assert_eq!(s.next_due(0), None);
    }

    #[test]
    fn flush_makes_every_deferred_message_due() {
        let s = Scheduler::new(false);
        s.defer(id(1), 5_000);
        s.defer(id(2), 9_000);
        assert_eq!(s.flush(), 2);
        assert_eq!(s.next_due(0), Some(id(1)));
        assert_eq!(s.next_due(0), Some(id(2)));
    }

    #[test]
    fn attempts_in_flight_are_capped() {
        let s = Scheduler::new(false);
        for n in 0..=ATTEMPTS_IN_FLIGHT_MAX as u64 {
            s.submit(id(n + 1));
        }
        for _ in 0..ATTEMPTS_IN_FLIGHT_MAX {
            assert!(s.next_due(0).is_some());
        }
        assert_eq!(s.next_due(0), None);
        s.finished();
        assert!(s.next_due(0).is_some());
    }
}
