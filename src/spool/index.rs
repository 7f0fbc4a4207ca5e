//! The in-memory table of live messages: where each message record lives,
//! each recipient's current state, and which segments the message keeps
//! alive. Holding an `Arc<Segment>` is what keeps a segment from being
//! recycled, so dropping an entry releases its segments.
//!
//! This module only tracks durable facts handed to it; it must never do
//! I/O, and an entry must only be added or changed after the record it
//! describes is durable.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::id::QueueId;
use super::segment::Segment;
use super::state::RecipientState;

/// Shards of the table: writers on different cores rarely meet on a lock.
const SHARDS: usize = 16;

/// One live (not yet final) message.
pub(crate) struct LiveMessage {
    /// The segment holding the MESSAGE record.
    pub(crate) segment: Arc<Segment>,
    /// Current state of each recipient and the update sequence that set it
    /// (0 for the implicit `Pending` of the append).
    pub(crate) states: Vec<(RecipientState, u64)>,
    /// Segments holding this message's update records; recovery needs
    /// them for as long as the MESSAGE record is live.
    pub(crate) update_segments: Vec<Arc<Segment>>,
    /// Bytes the MESSAGE record occupies (aligned): what moving it costs.
    pub(crate) record_len: u64,
    /// When the message was accepted (the envelope's), for the queue's age.
    pub(crate) received_at_ms: u64,
}

impl LiveMessage {
    pub(crate) fn new(
        segment: Arc<Segment>,
        recipients: usize,
        received_at_ms: u64,
        record_len: u64,
    ) -> LiveMessage {
        LiveMessage {
            segment,
            states: vec![(RecipientState::Pending, 0); recipients],
            update_segments: Vec::new(),
            record_len,
            received_at_ms,
        }
    }

    /// Applies the changes of update `update_seq` where they are newer than
    /// what is known; out-of-range indexes are ignored.
    pub(crate) fn apply(&mut self, update_seq: u64, changes: &[(usize, RecipientState)]) {
        for (index, state) in changes {
            if let Some(slot) = self.states.get_mut(*index) {
                if update_seq > slot.1 {
                    *slot = (state.clone(), update_seq);
                }
            }
        }
    }

    /// Keeps `segment` (holding one of this message's updates) alive.
    pub(crate) fn hold(&mut self, segment: &Arc<Segment>) {
        if !self
            .update_segments
            .iter()
            .any(|held| Arc::ptr_eq(held, segment))
        {
            self.update_segments.push(Arc::clone(segment));
        }
    }

    pub(crate) fn is_final(&self) -> bool {
        self.states.iter().all(|(state, _)| state.is_final())
    }

    /// Nothing is left to deliver (see [`Holding::movable`]).
    pub(crate) fn movable(&self) -> bool {
        self.states
            .iter()
            .all(|(state, _)| *state == RecipientState::InMailbox || state.is_final())
    }

    pub(crate) fn current_states(&self) -> Vec<RecipientState> {
        self.states.iter().map(|(state, _)| state.clone()).collect()
    }
}

/// Which segments one live message keeps alive, whether it may move and
/// the size of its MESSAGE record: what compaction plans with.
pub(crate) struct Holding {
    pub(crate) id: QueueId,
    /// Seq of the segment holding the MESSAGE record.
    pub(crate) segment: u64,
    /// Seqs of the segments holding its update records.
    pub(crate) update_segments: Vec<u64>,
    /// Nothing is left to deliver: every recipient is in a mailbox or
    /// final. Only such a message may be copied elsewhere.
    pub(crate) movable: bool,
    pub(crate) record_len: u64,
}

/// What a reader needs to find a live message's bytes.
pub(crate) struct Located {
    pub(crate) segment: Arc<Segment>,
    pub(crate) states: Vec<RecipientState>,
}

pub(crate) struct Index {
    shards: Vec<Mutex<HashMap<QueueId, LiveMessage>>>,
    hasher: RandomState,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the table consistent
    // (every mutation is a single insert, remove or field store).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Index {
    pub(crate) fn new() -> Index {
        Index {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, id: &QueueId) -> MutexGuard<'_, HashMap<QueueId, LiveMessage>> {
        let at = (self.hasher.hash_one(id) as usize) % SHARDS;
        // `at` < SHARDS == shards.len().
        lock(&self.shards[at])
    }

    pub(crate) fn insert(&self, id: QueueId, message: LiveMessage) {
        self.shard(&id).insert(id, message);
        metrics::gauge!("tern_spool_messages").increment(1.0);
    }

    pub(crate) fn recipient_count(&self, id: &QueueId) -> Option<usize> {
        self.shard(id).get(id).map(|m| m.states.len())
    }

    pub(crate) fn locate(&self, id: &QueueId) -> Option<Located> {
        self.shard(id).get(id).map(|m| Located {
            segment: Arc::clone(&m.segment),
            states: m.current_states(),
        })
    }

    /// Applies a durable update held in `segment`. Returns the message when
    /// this made every recipient final: it has left the table and the
    /// caller finishes it (marks the record dead, then drops it).
    pub(crate) fn apply(
        &self,
        id: &QueueId,
        update_seq: u64,
        changes: &[(usize, RecipientState)],
        segment: &Arc<Segment>,
    ) -> Option<LiveMessage> {
        let mut shard = self.shard(id);
        let message = shard.get_mut(id)?;
        message.apply(update_seq, changes);
        message.hold(segment);
        if !message.is_final() {
            return None;
        }
        let done = shard.remove(id);
        metrics::gauge!("tern_spool_messages").decrement(1.0);
        done
    }

    /// Every live message: (id, location and states).
    pub(crate) fn snapshot(&self) -> Vec<(QueueId, Located)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for (id, m) in lock(shard).iter() {
                out.push((
                    *id,
                    Located {
                        segment: Arc::clone(&m.segment),
                        states: m.current_states(),
                    },
                ));
            }
        }
        out
    }

    /// Arrival time of the oldest message that still has a recipient to
    /// deliver (mailbox copies are not queued), if any.
    pub(crate) fn oldest_queued_ms(&self) -> Option<u64> {
        self.shards
            .iter()
            .filter_map(|shard| {
                lock(shard)
                    .values()
                    .filter(|m| !m.movable())
                    .map(|m| m.received_at_ms)
                    .min()
            })
            .min()
    }

    /// Every live message with the segments it holds.
    pub(crate) fn holdings(&self) -> Vec<Holding> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for (id, m) in lock(shard).iter() {
                out.push(Holding {
                    id: *id,
                    segment: m.segment.seq(),
                    update_segments: m.update_segments.iter().map(|s| s.seq()).collect(),
                    movable: m.movable(),
                    record_len: m.record_len,
                });
            }
        }
        out
    }

    pub(crate) fn contains(&self, id: &QueueId) -> bool {
        self.shard(id).contains_key(id)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(dir: &std::path::Path, seq: u64) -> Arc<Segment> {
        Arc::new(Segment::create(dir, seq, 4096).unwrap())
    }

    #[test]
    fn latest_update_wins_whatever_the_arrival_order() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path(), 1);
        let mut message = LiveMessage::new(Arc::clone(&seg), 2, 0, 64);
        let deferred = RecipientState::Deferred {
            until_ms: 9,
            attempts: 1,
            last_error: "451".into(),
        };
        message.apply(5, &[(0, RecipientState::Delivered)]);
        message.apply(
            3,
            &[
                (0, deferred.clone()),
                (1, deferred.clone()),
                (7, RecipientState::Delivered),
            ],
        );
        assert_eq!(
            message.current_states(),
            vec![RecipientState::Delivered, deferred]
        );
        assert!(!message.is_final());
    }

    #[test]
    fn oldest_queued_skips_messages_only_mailboxes_hold() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path(), 1);
        let index = Index::new();
        assert_eq!(index.oldest_queued_ms(), None);
        let filed = QueueId::new(1, 0).unwrap();
        let waiting = QueueId::new(1, 64).unwrap();
        let newest = QueueId::new(1, 128).unwrap();
        index.insert(filed, LiveMessage::new(Arc::clone(&seg), 1, 1_000, 64));
        index.insert(waiting, LiveMessage::new(Arc::clone(&seg), 2, 2_000, 64));
        index.insert(newest, LiveMessage::new(Arc::clone(&seg), 1, 3_000, 64));
        assert_eq!(index.oldest_queued_ms(), Some(1_000));
        index.apply(&filed, 1, &[(0, RecipientState::InMailbox)], &seg);
        assert_eq!(
            index.oldest_queued_ms(),
            Some(2_000),
            "a filed message is not queued"
        );
        index.apply(&waiting, 1, &[(0, RecipientState::Delivered)], &seg);
        assert_eq!(
            index.oldest_queued_ms(),
            Some(2_000),
            "one recipient left is enough to count"
        );
        index.apply(&waiting, 2, &[(1, RecipientState::Delivered)], &seg);
        assert_eq!(index.oldest_queued_ms(), Some(3_000));
    }

    #[test]
    fn final_message_leaves_the_table_and_holds_update_segments_until_then() {
        let dir = tempfile::tempdir().unwrap();
        let home = segment(dir.path(), 1);
        let other = segment(dir.path(), 2);
        let index = Index::new();
        let id = QueueId::new(1, 0).unwrap();
        index.insert(id, LiveMessage::new(Arc::clone(&home), 2, 0, 64));
        assert_eq!(Arc::strong_count(&home), 2);
        assert!(index
            .apply(&id, 1, &[(0, RecipientState::Delivered)], &other)
            .is_none());
        assert!(index
            .apply(&id, 2, &[(0, RecipientState::Delivered)], &other)
            .is_none());
        assert_eq!(
            Arc::strong_count(&other),
            2,
            "held once however many updates"
        );
        let done = index
            .apply(
                &id,
                3,
                &[(1, RecipientState::Bounced { reason: "x".into() })],
                &home,
            )
            .unwrap();
        assert_eq!(index.len(), 0);
        assert!(index.locate(&id).is_none());
        drop(done);
        assert_eq!(Arc::strong_count(&home), 1);
        assert_eq!(Arc::strong_count(&other), 1);
    }

    #[test]
    fn only_a_message_with_nothing_left_to_deliver_is_movable() {
        let dir = tempfile::tempdir().unwrap();
        let mut message = LiveMessage::new(segment(dir.path(), 1), 3, 0, 64);
        assert!(!message.movable());
        let bounced = RecipientState::Bounced { reason: "x".into() };
        message.apply(1, &[(0, RecipientState::InMailbox), (1, bounced)]);
        let deferred = RecipientState::Deferred {
            until_ms: 1,
            attempts: 1,
            last_error: "451".into(),
        };
        message.apply(2, &[(2, deferred)]);
        assert!(!message.movable());
        message.apply(3, &[(2, RecipientState::Delivered)]);
        assert!(message.movable());
    }

    #[test]
    fn unknown_message_is_not_updated() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path(), 1);
        let index = Index::new();
        let id = QueueId::new(1, 8).unwrap();
        assert!(index
            .apply(&id, 1, &[(0, RecipientState::Delivered)], &seg)
            .is_none());
        assert_eq!(index.recipient_count(&id), None);
        assert_eq!(Arc::strong_count(&seg), 1);
    }
}
