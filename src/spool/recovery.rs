//! Start-up recovery and the offline read-only scan: walks every segment's
//! records in seq order through its mapping, stops at the first invalid
//! record, applies recipient updates (highest update sequence wins) and
//! yields the messages that are not final.
//!
//! Recovery (read-write) wipes invalid tails and quarantines files that
//! are not segments; the read-only scan must never modify, rename or
//! create anything, and tolerates a server writing at the same time.
//! Neither may panic on any file content.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::id::{QueueId, MAX_SEGMENT_SEQ, MAX_SEGMENT_SIZE};
use super::index::LiveMessage;
use super::record::{
    decode_record, Record, RecordError, SegmentLife, UpdateRecord, HEADER_LEN, RECORD_ALIGN,
};
use super::segment::{io_error, quarantine, sync_dir, Header, Segment, SpoolFile, FIRST_RECORD};
use super::SpoolError;

/// What recovery hands to the spool.
pub(crate) struct Recovered {
    pub(crate) segments: Vec<Arc<Segment>>,
    pub(crate) live: Vec<(QueueId, LiveMessage)>,
    pub(crate) next_seq: u64,
    pub(crate) next_update_seq: u64,
    pub(crate) bytes_used: u64,
}

struct Listing {
    /// Segment files, in seq order.
    segments: Vec<(u64, PathBuf)>,
    temps: Vec<PathBuf>,
    /// Highest seq named by any spool file (segments, temps, quarantined).
    max_seq: u64,
}

fn list(dir: &Path) -> Result<Listing, SpoolError> {
    let mut listing = Listing {
        segments: Vec::new(),
        temps: Vec::new(),
        max_seq: 0,
    };
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(kind) = name.to_str().and_then(SpoolFile::classify) else {
            continue;
        };
        listing.max_seq = listing.max_seq.max(kind.seq());
        match kind {
            SpoolFile::Segment(seq) => listing.segments.push((seq, entry.path())),
            SpoolFile::Temp(_) => listing.temps.push(entry.path()),
            SpoolFile::Quarantined(_) => {}
        }
    }
    listing.segments.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(listing)
}

/// A file size and seq a segment can have: room for the segment header and
/// a record header, whole aligned records, offsets and seq that fit a
/// queue id.
fn plausible(seq: u64, len: u64) -> bool {
    len >= FIRST_RECORD + HEADER_LEN as u64
        && len % RECORD_ALIGN == 0
        && len <= MAX_SEGMENT_SIZE
        && seq <= MAX_SEGMENT_SEQ
}

/// The file does not start with a sound tern segment header.
fn foreign(segment: &Segment) -> bool {
    segment.header() == Header::Foreign
}

enum Found {
    Message {
        offset: u64,
        recipients: usize,
        received_at_ms: u64,
        dead: bool,
        len: u64,
    },
    Update(UpdateRecord),
}

struct Tail {
    offset: u64,
    error: RecordError,
}

/// Walks the records of one segment. Records are chained by length, so
/// the first invalid one ends the segment: nothing after it is trusted.
fn scan(bytes: &[u8], life: SegmentLife) -> (Vec<Found>, Option<Tail>) {
    let mut found = Vec::new();
    let mut offset = FIRST_RECORD;
    loop {
        let rest = usize::try_from(offset)
            .ok()
            .and_then(|at| bytes.get(at..))
            .unwrap_or(&[]);
        if rest.len() < HEADER_LEN {
            return (found, None);
        }
        match decode_record(rest, life) {
            Ok(decoded) => {
                found.push(match decoded.record {
                    Record::Message(m) => Found::Message {
                        offset,
                        recipients: m.envelope.recipients.len(),
                        received_at_ms: m.envelope.received_at_ms,
                        dead: m.dead,
                        len: decoded.len,
                    },
                    Record::RecipientUpdate(update) => Found::Update(update),
                });
                offset += decoded.len;
            }
            Err(RecordError::Empty) => return (found, None),
            Err(error) => return (found, Some(Tail { offset, error })),
        }
    }
}

/// Scans `segments` (seq order), wiping invalid tails when `writable`, and
/// returns every message not marked dead with its updates applied, plus
/// the highest update sequence seen.
fn collect(
    segments: &[Arc<Segment>],
    writable: bool,
) -> Result<(HashMap<QueueId, LiveMessage>, u64), SpoolError> {
    let mut messages = HashMap::new();
    let mut updates = Vec::new();
    for segment in segments {
        // Without a header of this seq (blank, or caught mid-recycle) a
        // segment holds no records of its current life.
        let Some(life) = segment.life() else {
            continue;
        };
        let (found, tail) = scan(segment.bytes(), life);
        if let Some(tail) = tail {
            let discarded = segment.len() - tail.offset;
            if writable {
                let wiped = segment.wipe_from(tail.offset)?;
                segment.sync()?;
                tracing::warn!(
                    segment = %segment.path().display(),
                    offset = tail.offset,
                    bytes_discarded = discarded,
                    bytes_zeroed = wiped,
                    reason = %tail.error,
                    "discarded the invalid tail of a spool segment"
                );
            } else {
                tracing::debug!(segment = %segment.path().display(), offset = tail.offset, reason = %tail.error, "scan stops at an invalid record");
            }
        }
        for item in found {
            match item {
                Found::Message {
                    offset,
                    recipients,
                    received_at_ms,
                    dead,
                    len,
                } => {
                    if let (false, Some(id)) = (dead, QueueId::new(segment.seq(), offset)) {
                        let message =
                            LiveMessage::new(Arc::clone(segment), recipients, received_at_ms, len);
                        messages.insert(id, message);
                    }
                }
                Found::Update(update) => updates.push((Arc::clone(segment), update)),
            }
        }
    }
    let mut max_update_seq = 0;
    for (segment, update) in updates {
        max_update_seq = max_update_seq.max(update.update_seq);
        if let Some(message) = messages.get_mut(&update.message) {
            let changes: Vec<_> = update
                .changes
                .into_iter()
                .map(|(i, state)| (i as usize, state))
                .collect();
            message.apply(update.update_seq, &changes);
            message.hold(&segment);
        }
    }
    Ok((messages, max_update_seq))
}

/// Read-write recovery of the spool directory at start.
pub(crate) fn recover(dir: &Path) -> Result<Recovered, SpoolError> {
    let listing = list(dir)?;
    let mut dir_changed = false;
    for temp in &listing.temps {
        tracing::info!(file = %temp.display(), "removing a segment whose preparation was interrupted");
        fs::remove_file(temp).map_err(io_error(temp))?;
        dir_changed = true;
    }
    let mut segments = Vec::new();
    let mut bytes_used = 0;
    for (seq, path) in listing.segments {
        let len = fs::metadata(&path).map_err(io_error(&path))?.len();
        let segment = if plausible(seq, len) {
            Some(Segment::open(path.clone(), seq, true).map_err(io_error(&path))?)
        } else {
            None
        };
        match segment {
            Some(segment) if !foreign(&segment) => {
                bytes_used += segment.len();
                segments.push(Arc::new(segment));
            }
            _ => {
                let bad = quarantine(&path).map_err(io_error(&path))?;
                tracing::warn!(file = %path.display(), moved_to = %bad.display(), len, "not a usable spool segment; set aside");
                dir_changed = true;
            }
        }
    }
    if dir_changed {
        sync_dir(dir).map_err(io_error(dir))?;
    }
    let (messages, max_update_seq) = collect(&segments, true)?;
    let mut live = Vec::new();
    let mut to_sync: Vec<Arc<Segment>> = Vec::new();
    for (id, message) in messages {
        if message.is_final() {
            // Its final update is durable but the dead mark was not; finish
            // the job so the update records stop being needed.
            message.segment.mark_dead(id.offset())?;
            if !to_sync.iter().any(|s| Arc::ptr_eq(s, &message.segment)) {
                to_sync.push(Arc::clone(&message.segment));
            }
        } else {
            live.push((id, message));
        }
    }
    for segment in &to_sync {
        segment.sync()?;
    }
    tracing::info!(dir = %dir.display(), segments = segments.len(), queued = live.len(), "spool recovered");
    Ok(Recovered {
        segments,
        live,
        next_seq: listing.max_seq + 1,
        next_update_seq: max_update_seq + 1,
        bytes_used,
    })
}

/// A live message found by the read-only scan, with what is needed to
/// reach its bytes.
pub(crate) struct Scanned {
    pub(crate) id: QueueId,
    pub(crate) message: LiveMessage,
}

/// Read-only scan for offline tools. Files that vanish or change under it
/// (a running server recycles segments) end their part of the scan.
pub(crate) fn scan_readonly(dir: &Path) -> Result<Vec<Scanned>, SpoolError> {
    let listing = list(dir)?;
    let mut segments = Vec::new();
    for (seq, path) in listing.segments {
        let len = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_error(&path)(err)),
        };
        if !plausible(seq, len) {
            tracing::warn!(file = %path.display(), len, "not a usable spool segment; skipped");
            continue;
        }
        match Segment::open(path.clone(), seq, false) {
            Ok(segment) if foreign(&segment) => {
                tracing::warn!(file = %path.display(), "not a tern spool segment; skipped");
            }
            Ok(segment) => segments.push(Arc::new(segment)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_error(&path)(err)),
        }
    }
    let (messages, _) = collect(&segments, false)?;
    Ok(messages
        .into_iter()
        .filter(|(_, message)| !message.is_final())
        .map(|(id, message)| Scanned { id, message })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_sizes() {
        assert!(plausible(1, 65536));
        assert!(!plausible(1, 0));
        assert!(!plausible(1, FIRST_RECORD + HEADER_LEN as u64 - 8));
        assert!(plausible(1, FIRST_RECORD + HEADER_LEN as u64));
        assert!(!plausible(1, 65537));
        assert!(!plausible(MAX_SEGMENT_SEQ + 1, 65536));
        assert!(!plausible(1, MAX_SEGMENT_SIZE + 8));
    }

    #[test]
    fn scan_of_zeros_and_noise_finds_nothing_and_never_panics() {
        let life = SegmentLife { seq: 1, salt: 2 };
        let (found, tail) = scan(&[0u8; 4096], life);
        assert!(found.is_empty() && tail.is_none());
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let (found, tail) = scan(&noise, life);
        assert!(found.is_empty());
        assert_eq!(tail.map(|t| t.offset), Some(FIRST_RECORD));
        let (found, tail) = scan(&[1u8; 40], life);
        assert!(found.is_empty() && tail.is_none());
    }
}
