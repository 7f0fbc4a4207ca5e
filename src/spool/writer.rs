//! `SpoolWriter`: one core's (or the compactor's) append path. Records
//! are written with pwrite at the active segment's append offset on the
//! caller's thread; the writer's sync thread makes them durable in
//! batches.
//!
//! This module must never report a record durable itself (only the sync
//! thread does), and never leave the writer unusable after an I/O error:
//! a failed segment is abandoned and the next append takes a fresh one.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use super::id::QueueId;
use super::index::LiveMessage;
use super::pool::{take_segment, Purpose};
use super::record::{
    encode_message_head, encode_update, seal_record, PayloadTooLong, SegmentLife, UpdateRecord,
    HEADER_LEN,
};
use super::segment::{Segment, FIRST_RECORD};
use super::state::RecipientState;
use super::store::{MessageView, Shared};
use super::sync::{Commit, Durable, SyncJob, SyncMsg};
use super::SpoolError;
use crate::envelope::Envelope;

struct Active {
    segment: Arc<Segment>,
    life: SegmentLife,
    /// Where the next record goes.
    offset: u64,
}

/// Appends for one core (or the compactor). Single-threaded by design:
/// each owner has its own.
pub struct SpoolWriter {
    shared: Arc<Shared>,
    /// Who appends through this writer, for logs: "core 0", "compactor".
    owner: String,
    active: Option<Active>,
    sync: Sender<SyncMsg>,
    /// Reused encoding buffer (header and envelope, or a whole update).
    buf: Vec<u8>,
}

impl SpoolWriter {
    pub(crate) fn new(shared: Arc<Shared>, owner: String, sync: Sender<SyncMsg>) -> SpoolWriter {
        SpoolWriter {
            shared,
            owner,
            active: None,
            sync,
            buf: Vec::new(),
        }
    }

    /// Writes the message record; returns its id and a future that
    /// resolves once the record is durable (or with the error that
    /// prevented it). The message is queued (visible to `queued`, `read`
    /// and `update_recipients`) only once it is durable.
    pub fn append(
        &mut self,
        envelope: &Envelope,
        data: &[u8],
    ) -> Result<(QueueId, Commit), SpoolError> {
        self.check_open()?;
        let len = encode_message_head(&mut self.buf, envelope, data.len()).map_err(|too_long| {
            SpoolError::TooLarge {
                len: too_long.0 + HEADER_LEN as u64,
                segment_size: self.shared.config.segment_size,
            }
        })?;
        let (segment, life, offset) = self.reserve(len, Purpose::Message)?;
        let id = QueueId::new(segment.seq(), offset).ok_or_else(|| self.exhausted(&segment))?;
        seal_record(&mut self.buf, life, data);
        segment.write_at(&self.buf, offset)?;
        segment.write_at(data, offset + self.buf.len() as u64)?;
        let message = LiveMessage::new(
            Arc::clone(&segment),
            envelope.recipients.len(),
            envelope.received_at_ms,
            len,
        );
        let commit = self.submit(segment, Durable::Message { id, message })?;
        Ok((id, commit))
    }

    /// Writes a copy of `original` as a new message record carrying the
    /// same recipient states (compaction, see `spool::compact`). Returns
    /// the copy's id and a future that resolves once it is durable; the
    /// copy is live from then on, the original untouched.
    ///
    /// Only a message nothing remains to be delivered for can be copied
    /// (every recipient in a mailbox or final): a copy of a queued
    /// message would be delivered twice. The states go into a
    /// RECIPIENT_UPDATE placed just before the MESSAGE record in the same
    /// reservation; the chain of records passes through the update to
    /// reach the message, so after a crash the copy is either absent or
    /// present with its states, never pending.
    pub fn append_copy(&mut self, original: &MessageView) -> Result<(QueueId, Commit), SpoolError> {
        self.check_open()?;
        if original
            .states
            .iter()
            .any(|s| matches!(s, RecipientState::Pending | RecipientState::Deferred { .. }))
        {
            return Err(SpoolError::StillQueued(original.id.to_string()));
        }
        let segment_size = self.shared.config.segment_size;
        let too_large = |too_long: PayloadTooLong| SpoolError::TooLarge {
            len: too_long.0 + HEADER_LEN as u64,
            segment_size,
        };
        let data = original.data();
        let message_len = encode_message_head(&mut self.buf, &original.envelope, data.len())
            .map_err(too_large)?;
        let changes: Vec<(usize, RecipientState)> = original
            .states
            .iter()
            .cloned()
            .enumerate()
            .filter(|(_, state)| *state != RecipientState::Pending)
            .collect();
        let mut record = UpdateRecord {
            update_seq: self.shared.next_update_seq.fetch_add(1, Ordering::Relaxed),
            // Replaced below once the copy's place is known; the encoded
            // length does not depend on the id.
            message: original.id,
            changes: changes
                .iter()
                .map(|(index, state)| (u32::try_from(*index).unwrap_or(u32::MAX), state.clone()))
                .collect(),
        };
        let mut update = Vec::new();
        let update_len = encode_update(&mut update, &record).map_err(too_large)?;
        // Compaction frees more than it copies (a planned segment's holders
        // take at most half of it), so under `[spool] max_size` it may use
        // the segment held back for updates: a spool full of segments that
        // mailbox records pin must still be able to compact itself.
        let (segment, life, offset) =
            self.reserve(update_len + message_len, Purpose::RecipientUpdate)?;
        let at = offset + update_len;
        let id = QueueId::new(segment.seq(), at).ok_or_else(|| self.exhausted(&segment))?;
        record.message = id;
        encode_update(&mut update, &record).map_err(too_large)?;
        seal_record(&mut update, life, &[]);
        seal_record(&mut self.buf, life, data);
        segment.write_at(&update, offset)?;
        segment.write_at(&self.buf, at)?;
        segment.write_at(data, at + self.buf.len() as u64)?;
        let mut message = LiveMessage::new(
            Arc::clone(&segment),
            original.envelope.recipients.len(),
            original.envelope.received_at_ms,
            message_len,
        );
        message.apply(record.update_seq, &changes);
        message.hold(&segment);
        let commit = self.submit(segment, Durable::Message { id, message })?;
        Ok((id, commit))
    }

    /// Persists new recipient states (the future completes when durable).
    /// A message whose recipients are all final becomes final: it leaves
    /// the queue and releases its segments. `NotFound` for an id that is
    /// not a live message or a recipient index it does not have.
    pub fn update_recipients(
        &mut self,
        id: &QueueId,
        updates: &[(usize, RecipientState)],
    ) -> Result<Commit, SpoolError> {
        self.check_open()?;
        let count = self
            .shared
            .index
            .recipient_count(id)
            .ok_or_else(|| SpoolError::NotFound(id.to_string()))?;
        let mut changes = Vec::with_capacity(updates.len());
        for (index, state) in updates {
            let in_range = u32::try_from(*index).ok().filter(|_| *index < count);
            let Some(index32) = in_range else {
                return Err(SpoolError::NotFound(format!(
                    "{id} (recipient {index} of {count})"
                )));
            };
            changes.push((index32, state.clone()));
        }
        if changes.is_empty() {
            return Ok(Commit::ready(Ok(())));
        }
        let update_seq = self.shared.next_update_seq.fetch_add(1, Ordering::Relaxed);
        let record = UpdateRecord {
            update_seq,
            message: *id,
            changes,
        };
        let len =
            encode_update(&mut self.buf, &record).map_err(|too_long| SpoolError::TooLarge {
                len: too_long.0 + HEADER_LEN as u64,
                segment_size: self.shared.config.segment_size,
            })?;
        let (segment, life, offset) = self.reserve(len, Purpose::RecipientUpdate)?;
        seal_record(&mut self.buf, life, &[]);
        segment.write_at(&self.buf, offset)?;
        let changes = updates.to_vec();
        self.submit(
            segment,
            Durable::Update {
                id: *id,
                update_seq,
                changes,
            },
        )
    }

    fn check_open(&self) -> Result<(), SpoolError> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(SpoolError::SyncStopped)
        } else {
            Ok(())
        }
    }

    /// Reserves `len` bytes in the active segment, rolling over to a fresh
    /// one when it is full or has failed. Returns the segment and offset.
    fn reserve(
        &mut self,
        len: u64,
        purpose: Purpose,
    ) -> Result<(Arc<Segment>, SegmentLife, u64), SpoolError> {
        let segment_size = self.shared.config.segment_size;
        if len > segment_size - FIRST_RECORD {
            return Err(SpoolError::TooLarge { len, segment_size });
        }
        let fits = |active: &Active| {
            !active.segment.failed() && active.offset + len <= active.segment.len()
        };
        let active = match self.active.take() {
            Some(active) if fits(&active) => active,
            sealed => {
                if let Some(old) = sealed {
                    self.shared.stop_appending(old.segment.seq());
                    tracing::debug!(
                        writer = %self.owner,
                        seq = old.segment.seq(),
                        "spool segment sealed"
                    );
                    drop(old);
                    self.shared.pool.wake();
                }
                let segment = take_segment(&self.shared, purpose)?;
                tracing::debug!(
                    writer = %self.owner,
                    seq = segment.seq(),
                    "spool segment active"
                );
                let life = segment.life().ok_or_else(|| self.unprepared(&segment))?;
                Active {
                    segment,
                    life,
                    offset: FIRST_RECORD,
                }
            }
        };
        let at = active.offset;
        let (segment, life) = (Arc::clone(&active.segment), active.life);
        self.active = Some(Active {
            offset: at + len,
            ..active
        });
        Ok((segment, life, at))
    }

    /// A segment from the pool always has a header of its seq; one without
    /// is reported rather than written to.
    fn unprepared(&self, segment: &Segment) -> SpoolError {
        let source = std::io::Error::other("prepared segment has no valid header");
        SpoolError::Io {
            path: segment.path().to_path_buf(),
            source,
        }
    }

    fn exhausted(&self, segment: &Segment) -> SpoolError {
        let source = std::io::Error::other("segment sequence numbers exhausted");
        SpoolError::Io {
            path: segment.path().to_path_buf(),
            source,
        }
    }

    fn submit(&self, segment: Arc<Segment>, then: Durable) -> Result<Commit, SpoolError> {
        let (waiter, commit) = Commit::pair();
        let job = SyncJob {
            segment,
            queued_at: Instant::now(),
            waiter,
            then,
        };
        self.sync
            .send(SyncMsg::Job(job))
            .map_err(|_| SpoolError::SyncStopped)?;
        Ok(commit)
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        // Queued commits still complete: the thread drains before exiting.
        let _ = self.sync.send(SyncMsg::Stop);
        if let Some(active) = self.active.take() {
            self.shared.stop_appending(active.segment.seq());
            self.shared.pool.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::tests::sample_envelope;
    use super::super::{Spool, SpoolConfig};
    use super::*;

    #[tokio::test]
    async fn a_failed_segment_is_abandoned_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig {
            dir: dir.path().to_path_buf(),
            segment_size: 64 * 1024,
            max_size: 0,
        };
        let spool = Spool::open(config).unwrap();
        let mut writer = spool.writer(0).unwrap();
        let (first, commit) = writer.append(&sample_envelope(1), b"one").unwrap();
        commit.await.unwrap();
        let active = writer
            .active
            .as_ref()
            .map(|a| Arc::clone(&a.segment))
            .unwrap();
        active.fail();
        let (second, commit) = writer.append(&sample_envelope(1), b"two").unwrap();
        commit.await.unwrap();
        assert_ne!(first.segment_seq(), second.segment_seq());
        assert_eq!(spool.read(&first).unwrap().data(), b"one");
        assert_eq!(spool.read(&second).unwrap().data(), b"two");
    }
}
