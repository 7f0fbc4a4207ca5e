//! The spool's half of compaction: finding sealed segments that a few
//! long-lived mailbox records keep alive, and remembering where moved
//! messages went so that readers holding an old queue id still find the
//! bytes. The copy itself is `SpoolWriter::append_copy`; the pass that
//! copies, points the mailboxes at the copies and releases the originals
//! (and the argument for why a crash at any point loses nothing) is
//! `runtime::compaction`.
//!
//! A segment stays in use while any live message holds it: by its
//! MESSAGE record, or by one of its RECIPIENT_UPDATE records. Moving
//! every holder of a segment frees it; the preparer then recycles it.
//!
//! This module must never plan to move a message that still has a
//! recipient to deliver (pending or deferred): its copy would be
//! delivered again. It never writes to a segment.

use std::collections::{HashMap, HashSet};

use super::index::Holding;
use super::{MessageView, QueueId, Spool, SpoolError};

/// What one compaction pass should move.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionPlan {
    /// Seqs of the segments the pass frees, fewest live bytes first.
    pub segments: Vec<u64>,
    /// Every message holding one of those segments, each once.
    pub messages: Vec<QueueId>,
    /// Bytes of MESSAGE records to copy.
    pub bytes: u64,
}

/// How much a pass may take on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionLimits {
    /// A sealed segment is compacted when the records holding it take
    /// less than this fraction of its size (`[spool] compact_below`).
    pub below: f64,
    /// Most bytes of records one pass copies.
    pub max_bytes: u64,
    /// Most messages one pass moves (bounds the mailbox journal records
    /// a pass writes).
    pub max_messages: usize,
}

/// Who holds one sealed segment.
struct Tally {
    /// Indexes into the holdings.
    holders: Vec<usize>,
    bytes: u64,
    movable: bool,
}

/// Chooses the segments to free from the live messages `holdings` and
/// the `sealed` segments (seq, size): those whose holders are all
/// movable (and not in `skip`) and take less than `limits.below` of the
/// segment, cheapest first, within the pass limits.
fn plan(
    holdings: &[Holding],
    sealed: &HashMap<u64, u64>,
    skip: &HashSet<QueueId>,
    limits: &CompactionLimits,
) -> CompactionPlan {
    if sealed.is_empty() {
        return CompactionPlan::default();
    }
    let mut tallies: HashMap<u64, Tally> = HashMap::new();
    for (index, holding) in holdings.iter().enumerate() {
        let can_move = holding.movable && !skip.contains(&holding.id);
        let mut seqs: Vec<u64> = std::iter::once(holding.segment)
            .chain(holding.update_segments.iter().copied())
            .filter(|seq| sealed.contains_key(seq))
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        for seq in seqs {
            let tally = tallies.entry(seq).or_insert(Tally {
                holders: Vec::new(),
                bytes: 0,
                movable: true,
            });
            tally.holders.push(index);
            tally.bytes += holding.record_len;
            tally.movable &= can_move;
        }
    }
    let mut candidates: Vec<(u64, Tally)> = tallies
        .into_iter()
        .filter(|(seq, tally)| {
            let size = sealed.get(seq).copied().unwrap_or(0);
            tally.movable && (tally.bytes as f64) < limits.below * size as f64
        })
        .collect();
    candidates.sort_unstable_by_key(|(seq, tally)| (tally.bytes, *seq));
    let mut out = CompactionPlan::default();
    let mut chosen: HashSet<usize> = HashSet::new();
    for (seq, tally) in candidates {
        let new: Vec<usize> = tally
            .holders
            .iter()
            .copied()
            .filter(|index| !chosen.contains(index))
            .collect();
        let bytes: u64 = new.iter().map(|&index| holdings[index].record_len).sum();
        let within = out.bytes + bytes <= limits.max_bytes
            && out.messages.len() + new.len() <= limits.max_messages;
        if !within {
            continue;
        }
        out.segments.push(seq);
        out.bytes += bytes;
        for index in new {
            chosen.insert(index);
            out.messages.push(holdings[index].id);
        }
    }
    out
}

impl Spool {
    /// The segments a compaction pass should free now, and the messages
    /// to move for that. `skip` names messages that must stay where they
    /// are (an earlier pass could not move them).
    pub fn plan_compaction(
        &self,
        limits: &CompactionLimits,
        skip: &HashSet<QueueId>,
    ) -> CompactionPlan {
        let shared = self.shared();
        let sealed: HashMap<u64, u64> = shared.sealed_segments().into_iter().collect();
        plan(&shared.index.holdings(), &sealed, skip, limits)
    }

    /// Whether `id` names a live message.
    pub fn is_live(&self, id: &QueueId) -> bool {
        self.shared().index.contains(id)
    }

    /// Notes that compaction moved each `(from, to)`: readers asking for
    /// `from` get `to` once `from` is gone. Earlier moves that led to a
    /// `from` now lead to its `to`, so every lookup is one step.
    pub fn record_moves(&self, moved: &[(QueueId, QueueId)]) {
        if moved.is_empty() {
            return;
        }
        let next: HashMap<QueueId, QueueId> = moved.iter().copied().collect();
        let mut moves = lock(&self.shared().moves);
        for target in moves.values_mut() {
            if let Some(to) = next.get(target) {
                *target = *to;
            }
        }
        moves.extend(next);
    }

    /// Forgets moves whose copy is gone too: no reader can be served by
    /// them any more.
    pub fn prune_moves(&self) {
        let shared = self.shared();
        lock(&shared.moves).retain(|_, to| shared.index.contains(to));
    }

    /// Moves still remembered.
    pub fn moves_remembered(&self) -> usize {
        lock(&self.shared().moves).len()
    }

    /// Reads `id` like [`Spool::read`] or, once compaction moved it, its
    /// copy (same bytes, the view then carries the copy's id). For mailbox
    /// readers, whose snapshots may hold ids older than the latest move.
    pub fn read_moved(&self, id: &QueueId) -> Result<MessageView, SpoolError> {
        match self.read(id) {
            Err(SpoolError::NotFound(_)) => {
                let moved = lock(&self.shared().moves).get(id).copied();
                match moved {
                    Some(to) => self.read(&to),
                    None => Err(SpoolError::NotFound(id.to_string())),
                }
            }
            other => other,
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The table is consistent between statements.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64, offset: u64) -> QueueId {
        QueueId::new(seq, offset).unwrap()
    }

    fn holding(id: QueueId, updates: &[u64], movable: bool, len: u64) -> Holding {
        Holding {
            id,
            segment: id.segment_seq(),
            update_segments: updates.to_vec(),
            movable,
            record_len: len,
        }
    }

    fn limits() -> CompactionLimits {
        CompactionLimits {
            below: 0.25,
            max_bytes: 1000,
            max_messages: 100,
        }
    }

    #[test]
    fn sparse_sealed_segments_of_mailbox_messages_are_planned_cheapest_first() {
        let holdings = vec![
            // Segment 1: 200 of 1000 bytes, all in mailboxes.
            holding(id(1, 32), &[], true, 120),
            holding(id(1, 160), &[3], true, 80),
            // Segment 2: 100 bytes, but it holds a message still queued.
            holding(id(2, 32), &[2], false, 60),
            holding(id(2, 96), &[], true, 40),
            // Segment 3: 10 bytes of its own plus the update of (1,160).
            holding(id(3, 32), &[], true, 10),
            // Segment 4: dense.
            holding(id(4, 32), &[], true, 600),
            // Segment 5: sparse but still appended to (not sealed).
            holding(id(5, 32), &[], true, 8),
        ];
        let sealed: HashMap<u64, u64> = [(1, 1000), (2, 1000), (3, 1000), (4, 1000)].into();
        let plan = plan(&holdings, &sealed, &HashSet::new(), &limits());
        assert_eq!(plan.segments, vec![3, 1]);
        assert_eq!(plan.messages, vec![id(1, 160), id(3, 32), id(1, 32)]);
        assert_eq!(plan.bytes, 210);
    }

    #[test]
    fn skipped_messages_and_pass_limits_hold_segments_back() {
        let holdings = vec![
            holding(id(1, 32), &[], true, 100),
            holding(id(2, 32), &[], true, 150),
            holding(id(3, 32), &[], true, 50),
        ];
        let sealed: HashMap<u64, u64> = [(1, 1000), (2, 1000), (3, 1000)].into();
        let skip: HashSet<QueueId> = [id(3, 32)].into();
        let small = CompactionLimits {
            max_bytes: 200,
            ..limits()
        };
        let plan = plan(&holdings, &sealed, &skip, &small);
        assert_eq!(plan.segments, vec![1]);
        let one = CompactionLimits {
            max_messages: 1,
            ..limits()
        };
        assert_eq!(plan_of(&holdings, &sealed, &one).messages.len(), 1);
        let off = CompactionLimits {
            below: 0.0,
            ..limits()
        };
        assert!(plan_of(&holdings, &sealed, &off).segments.is_empty());
    }

    fn plan_of(
        holdings: &[Holding],
        sealed: &HashMap<u64, u64>,
        limits: &CompactionLimits,
    ) -> CompactionPlan {
        plan(holdings, sealed, &HashSet::new(), limits)
    }
}
