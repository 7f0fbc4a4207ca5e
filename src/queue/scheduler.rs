//! The per-core delivery schedule: which spooled messages are due for a
//! delivery attempt now, which wait for a retry time, which are held
//! (`[relay] hold` for new mail, `tern queue hold` for chosen messages)
//! until an operator releases them, and which are being attempted.
//!
//! It only keeps queue ids and times. It must never read the spool, talk
//! to the network or read the clock itself (callers pass `now_ms`), so
//! every rule here is testable without either.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashSet, VecDeque};

use tokio::sync::Notify;

use crate::spool::{QueueId, RecipientState};

/// Delivery attempts one core runs at once. Each holds a message mapping
/// and at most one connection per destination, so this bounds memory
/// and file descriptors when a large queue is released at once.
pub const ATTEMPTS_IN_FLIGHT_MAX: usize = 1000;

/// The states a queued message can be in, as `tern_queue_messages` labels.
pub const QUEUE_STATES: [&str; 4] = ["held", "ready", "deferred", "active"];

fn gauge(state: &'static str, delta: f64) {
    metrics::gauge!("tern_queue_messages", "state" => state).increment(delta);
}

/// Which messages an operator's command is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Only(HashSet<QueueId>),
}

impl Selection {
    pub fn has(&self, id: &QueueId) -> bool {
        match self {
            Selection::All => true,
            Selection::Only(ids) => ids.contains(id),
        }
    }
}

/// What `take` found for a message an operator wants to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// It was waiting here and is now out of every queue.
    Taken,
    /// An attempt is under way right now; it stays where it is.
    Busy,
    /// This core does not schedule it.
    Unknown,
}

#[derive(Default)]
struct Queues {
    ready: VecDeque<QueueId>,
    /// (due time in ms since the epoch, message), earliest first.
    deferred: BinaryHeap<Reverse<(u64, QueueId)>>,
    held: BTreeSet<QueueId>,
    /// Held by `tern queue hold` (and kept in the hold list): stays held
    /// after any attempt under way, whatever `[relay] hold` says.
    pinned: HashSet<QueueId>,
    /// Flushed: the next attempt also tries recipients not yet due.
    forced: HashSet<QueueId>,
    hold: bool,
    active: HashSet<QueueId>,
}

impl Queues {
    /// Take `id` out of the ready and deferred queues; true if it was in one.
    fn unqueue(&mut self, id: &QueueId) -> bool {
        if let Some(at) = self.ready.iter().position(|r| r == id) {
            self.ready.remove(at);
            gauge("ready", -1.0);
            return true;
        }
        let before = self.deferred.len();
        self.deferred.retain(|Reverse((_, d))| d != id);
        if self.deferred.len() < before {
            gauge("deferred", -((before - self.deferred.len()) as f64));
            return true;
        }
        false
    }

    fn knows(&self, id: &QueueId) -> bool {
        self.held.contains(id)
            || self.active.contains(id)
            || self.ready.contains(id)
            || self.deferred.iter().any(|Reverse((_, d))| d == id)
    }
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

    /// `[relay] hold` changed (a configuration reload): only mail that
    /// arrives from now on is affected; held messages wait for a release.
    pub fn set_hold(&self, hold: bool) {
        self.queues.borrow_mut().hold = hold;
    }

    /// A message that has just become durable (or was recovered with
    /// recipients to try now): held under `[relay] hold` or when pinned,
    /// else ready.
    pub fn submit(&self, id: QueueId) {
        let mut q = self.queues.borrow_mut();
        if q.hold || q.pinned.contains(&id) {
            if q.held.insert(id) {
                gauge("held", 1.0);
            }
        } else {
            q.ready.push_back(id);
            gauge("ready", 1.0);
            self.wake.notify_one();
        }
    }

    /// Try `id` again at `due_ms`. `[relay] hold` only catches new mail: a
    /// released message keeps its retry schedule; a pinned one is held
    /// (its recipients keep their retry times in the spool).
    pub fn defer(&self, id: QueueId, due_ms: u64) {
        let mut q = self.queues.borrow_mut();
        if q.pinned.contains(&id) {
            if q.held.insert(id) {
                gauge("held", 1.0);
            }
            return;
        }
        q.deferred.push(Reverse((due_ms, id)));
        gauge("deferred", 1.0);
        self.wake.notify_one();
    }

    /// Schedule a message from its recipients' states: any pending one
    /// goes now (or is held), else the earliest deferred one sets the
    /// time; a message with neither needs no delivery. True if scheduled.
    pub fn resume(&self, id: QueueId, states: &[RecipientState]) -> bool {
        let pending = states.iter().any(|s| matches!(s, RecipientState::Pending));
        let next_retry = states
            .iter()
            .filter_map(|s| match s {
                RecipientState::Deferred { until_ms, .. } => Some(*until_ms),
                _ => None,
            })
            .min();
        match (pending, next_retry) {
            (true, _) => self.submit(id),
            (false, Some(until_ms)) => self.defer(id, until_ms),
            (false, None) => return false,
        }
        true
    }

    /// Pin the selected messages this core schedules (`tern queue hold`):
    /// waiting ones move to held now, one being attempted is held when
    /// its attempt ends. Returns those this core knows.
    pub fn hold(&self, selection: &Selection) -> Vec<QueueId> {
        let mut q = self.queues.borrow_mut();
        let mut known: Vec<QueueId> = q.held.iter().copied().collect();
        known.extend(q.active.iter().copied());
        known.extend(q.ready.iter().copied());
        known.extend(q.deferred.iter().map(|Reverse((_, id))| *id));
        known.retain(|id| selection.has(id));
        for id in &known {
            q.pinned.insert(*id);
            if q.unqueue(id) && q.held.insert(*id) {
                gauge("held", 1.0);
            }
        }
        known
    }

    /// Pin messages recovered at start from the hold list, before they
    /// are scheduled.
    pub fn pin(&self, ids: impl IntoIterator<Item = QueueId>) {
        self.queues.borrow_mut().pinned.extend(ids);
    }

    /// Let the selected held messages go (their pins too, so one being
    /// attempted is not held again); returns them.
    pub fn release(&self, selection: &Selection) -> Vec<QueueId> {
        let mut q = self.queues.borrow_mut();
        let released: Vec<QueueId> = q
            .held
            .iter()
            .copied()
            .filter(|id| selection.has(id))
            .collect();
        for id in &released {
            q.held.remove(id);
            q.pinned.remove(id);
        }
        let unpinned: Vec<QueueId> = q
            .active
            .iter()
            .copied()
            .filter(|id| selection.has(id) && q.pinned.contains(id))
            .collect();
        for id in &unpinned {
            q.pinned.remove(id);
        }
        gauge("held", -(released.len() as f64));
        gauge("ready", released.len() as f64);
        q.ready.extend(released.iter().copied());
        self.wake.notify_one();
        released.into_iter().chain(unpinned).collect()
    }

    /// The selected waiting messages become due now, their recipients not
    /// yet due included (`tern queue flush`); held ones stay held.
    /// Returns them.
    pub fn flush(&self, selection: &Selection) -> Vec<QueueId> {
        let mut q = self.queues.borrow_mut();
        let mut moved = Vec::new();
        let deferred = std::mem::take(&mut q.deferred);
        for Reverse((due, id)) in deferred.into_sorted_vec().into_iter().rev() {
            if selection.has(&id) {
                moved.push(id);
            } else {
                q.deferred.push(Reverse((due, id)));
            }
        }
        gauge("deferred", -(moved.len() as f64));
        gauge("ready", moved.len() as f64);
        let already_ready: Vec<QueueId> = q
            .ready
            .iter()
            .copied()
            .filter(|id| selection.has(id))
            .collect();
        q.forced.extend(moved.iter().chain(&already_ready));
        q.ready.extend(moved.iter().copied());
        self.wake.notify_one();
        moved.into_iter().chain(already_ready).collect()
    }

    /// Whether the attempt about to start for `id` was flushed (and so
    /// tries every recipient still to deliver); asking clears it.
    pub fn take_forced(&self, id: &QueueId) -> bool {
        self.queues.borrow_mut().forced.remove(id)
    }

    /// Take a waiting message out of every queue so that an operator can
    /// finish it (`tern queue delete|bounce`); a message being attempted
    /// is left alone. Put it back with `resume`, or `forget` it.
    pub fn take(&self, id: &QueueId) -> Taken {
        let mut q = self.queues.borrow_mut();
        if q.active.contains(id) {
            return Taken::Busy;
        }
        if q.held.remove(id) {
            gauge("held", -1.0);
            return Taken::Taken;
        }
        if q.unqueue(id) {
            return Taken::Taken;
        }
        Taken::Unknown
    }

    /// A message taken out for good: no pin or flush mark stays behind.
    pub fn forget(&self, id: &QueueId) {
        let mut q = self.queues.borrow_mut();
        q.pinned.remove(id);
        q.forced.remove(id);
    }

    /// Whether this core schedules `id` (waiting, held or being attempted).
    pub fn knows(&self, id: &QueueId) -> bool {
        self.queues.borrow().knows(id)
    }

    /// The next message to attempt at `now_ms`, counted as active until
    /// `finished`; None when nothing is due or enough attempts run.
    pub fn next_due(&self, now_ms: u64) -> Option<QueueId> {
        let mut q = self.queues.borrow_mut();
        if q.active.len() >= ATTEMPTS_IN_FLIGHT_MAX {
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
        q.active.insert(id);
        gauge("ready", -1.0);
        gauge("active", 1.0);
        Some(id)
    }

    /// The attempt for `id` started by `next_due` is over (its message was
    /// deferred, finished, or left for local delivery).
    pub fn finished(&self, id: &QueueId) {
        let mut q = self.queues.borrow_mut();
        if q.active.remove(id) {
            gauge("active", -1.0);
        }
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
        self.queues.borrow().active.len()
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
        s.finished(&id(1));
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
        assert_eq!(s.release(&Selection::All).len(), 2);
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
        assert_eq!(s.flush(&Selection::All).len(), 2);
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
        s.finished(&id(1));
        assert!(s.next_due(0).is_some());
    }

    fn only(ids: &[u64]) -> Selection {
        Selection::Only(ids.iter().map(|n| id(*n)).collect())
    }

    #[test]
    fn flush_by_id_forces_only_the_chosen_message() {
        let s = Scheduler::new(false);
        s.defer(id(1), 5_000);
        s.defer(id(2), 9_000);
        assert_eq!(s.flush(&only(&[2])).len(), 1);
        assert_eq!(s.next_due(0), Some(id(2)));
        assert!(s.take_forced(&id(2)));
        assert!(!s.take_forced(&id(2)), "asking clears the mark");
        assert_eq!(s.next_due(0), None);
        assert_eq!(s.flush(&only(&[7])).len(), 0);
    }

    #[test]
    fn operator_hold_pins_a_message_across_attempts_until_released() {
        let s = Scheduler::new(false);
        s.submit(id(1));
        s.submit(id(2));
        s.defer(id(3), 100);
        assert_eq!(s.next_due(0), Some(id(1)));
        // id(1) is being attempted, id(2) waits, id(3) is deferred.
        assert_eq!(s.hold(&only(&[1, 2, 3, 9])).len(), 3);
        assert_eq!(s.next_due(u64::MAX), None);
        // The attempt under way ends with a retry: the message is held.
        s.defer(id(1), 50);
        s.finished(&id(1));
        assert_eq!(s.next_due(u64::MAX), None);
        // A flush does not override a hold.
        assert_eq!(s.flush(&Selection::All).len(), 0);
        assert_eq!(s.release(&only(&[2])).len(), 1);
        assert_eq!(s.next_due(0), Some(id(2)));
        assert_eq!(s.release(&Selection::All).len(), 2);
        assert_eq!(s.next_due(0), Some(id(1)));
        assert_eq!(s.next_due(0), Some(id(3)));
    }

    #[test]
    fn pinned_recovered_messages_start_held() {
        let s = Scheduler::new(false);
        s.pin([id(1)]);
        assert!(s.resume(id(1), &[RecipientState::Pending]));
        assert!(s.resume(id(2), &[RecipientState::Pending]));
        assert!(!s.resume(id(3), &[RecipientState::Delivered]));
        assert_eq!(s.next_due(0), Some(id(2)));
        assert_eq!(s.next_due(0), None);
        assert!(s.knows(&id(1)));
        assert!(!s.knows(&id(3)));
    }

    #[test]
    fn take_leaves_an_attempt_under_way_alone() {
        let s = Scheduler::new(true);
        s.submit(id(1));
        s.pin([id(2)]);
        s.defer(id(2), 10);
        s.set_hold(false);
        s.submit(id(3));
        assert_eq!(s.next_due(0), Some(id(3)));
        assert_eq!(s.take(&id(3)), Taken::Busy);
        assert_eq!(s.take(&id(1)), Taken::Taken);
        assert_eq!(s.take(&id(2)), Taken::Taken);
        assert_eq!(s.take(&id(2)), Taken::Unknown);
        s.forget(&id(2));
        s.defer(id(2), 10);
        assert_eq!(s.next_due(10), Some(id(2)), "forgotten: no longer pinned");
    }
}
