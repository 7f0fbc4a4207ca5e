//! The journal's on-disk format: a file header, then records, each one a
//! transaction of operations applied all together.
//!
//! File header: 8 bytes, magic `TRNMBX01`. Record (little-endian):
//!
//! | bytes    | field                                            |
//! |----------|--------------------------------------------------|
//! | 0..4     | payload length                                   |
//! | 4..8     | CRC32C over bytes 0..4 and the payload           |
//! | 8..      | payload: operations, each a tag byte then fields |
//!
//! This module only encodes and decodes bytes. Decoding must never panic
//! or allocate more than its input justifies, whatever the bytes; it never
//! does I/O and never judges whether operations make sense together.

use std::sync::Arc;

use super::flags::SystemFlags;
use super::state::StoredMessage;
use super::Uid;
use crate::spool::QueueId;

pub(crate) const FILE_MAGIC: [u8; 8] = *b"TRNMBX01";
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// Largest record payload. Live changes are refused above it before they
/// touch memory; snapshots split into records well below it.
pub(crate) const RECORD_PAYLOAD_MAX: usize = 64 << 20;

const TAG_USER_STATE: u8 = 1;
const TAG_CREATE_FOLDER: u8 = 2;
const TAG_DELETE_FOLDER: u8 = 3;
const TAG_RENAME_FOLDER: u8 = 4;
const TAG_SUBSCRIBE: u8 = 5;
const TAG_DEFINE_KEYWORD: u8 = 6;
const TAG_APPEND: u8 = 7;
const TAG_SET_FLAGS: u8 = 8;
const TAG_EXPUNGE: u8 = 9;
const TAG_COPY: u8 = 10;
const TAG_RETARGET: u8 = 11;

/// One change to a user's mailboxes. Folders are named by a numeric id
/// that stays the same across renames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Counters that outlive deleted folders (written by snapshots).
    UserState {
        last_uidvalidity: u32,
    },
    CreateFolder {
        id: u32,
        uidvalidity: u32,
        uidnext: Uid,
        name: String,
    },
    DeleteFolder {
        id: u32,
    },
    RenameFolder {
        id: u32,
        name: String,
    },
    Subscribe {
        name: String,
        subscribed: bool,
    },
    DefineKeyword {
        index: u8,
        name: String,
    },
    Append {
        folder: u32,
        uid: Uid,
        message: StoredMessage,
    },
    /// New flags (system bits, keyword bits) per UID.
    SetFlags {
        folder: u32,
        changes: Vec<(Uid, SystemFlags, u64)>,
    },
    Expunge {
        folder: u32,
        uids: Vec<Uid>,
    },
    /// The messages at `from` UIDs get copies at `to` UIDs.
    Copy {
        from: u32,
        to: u32,
        pairs: Vec<(Uid, Uid)>,
    },
    /// Spool compaction moved these records (old id, new id): every
    /// message of every folder referring to an old id refers to the new
    /// one, with the same recipient index, UID, flags and everything else.
    Retarget {
        moves: Vec<(QueueId, QueueId)>,
    },
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("truncated frame header: {have} of 8 bytes")]
    TruncatedHeader { have: usize },
    #[error("payload of {len} bytes runs past the {available} bytes left")]
    PastEnd { len: usize, available: usize },
    #[error("payload length {0} exceeds the record limit")]
    TooLong(usize),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

/// Appends one record holding `ops`. Fails (writing nothing) when the
/// payload would exceed [`RECORD_PAYLOAD_MAX`].
pub(crate) fn encode_record(ops: &[Op], out: &mut Vec<u8>) -> Result<(), usize> {
    let mut payload = Vec::new();
    for op in ops {
        encode_op(op, &mut payload);
    }
    if payload.len() > RECORD_PAYLOAD_MAX {
        return Err(payload.len());
    }
    frame(&payload, out);
    Ok(())
}

/// Bytes of operations a snapshot puts in one record before starting the
/// next, keeping every record far below [`RECORD_PAYLOAD_MAX`].
const SNAPSHOT_RECORD_TARGET: usize = 1 << 20;

fn frame(payload: &[u8], out: &mut Vec<u8>) {
    // Callers keep payloads below RECORD_PAYLOAD_MAX, so the length fits.
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Encodes a snapshot (operations that rebuild a state from nothing) as
/// records of about [`SNAPSHOT_RECORD_TARGET`] bytes each. A snapshot is
/// only ever read whole (it is renamed into place after an fsync), so
/// splitting it loses no atomicity.
pub(crate) fn encode_snapshot(ops: &[Op], out: &mut Vec<u8>) {
    let mut payload = Vec::new();
    for op in ops {
        encode_op(op, &mut payload);
        if payload.len() >= SNAPSHOT_RECORD_TARGET {
            frame(&payload, out);
            payload.clear();
        }
    }
    if !payload.is_empty() {
        frame(&payload, out);
    }
}

/// Splits the record at the start of `bytes` into its operations and its
/// total length. `Ok(None)` means `bytes` is empty: the clean end.
pub(crate) fn decode_record(bytes: &[u8]) -> Result<Option<(Vec<Op>, usize)>, RecordError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let header = bytes
        .get(..FRAME_HEADER_LEN)
        .ok_or(RecordError::TruncatedHeader { have: bytes.len() })?;
    let mut take = Take::new(header);
    let len_bytes: [u8; 4] = take.array()?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let stored = take.u32()?;
    if len > RECORD_PAYLOAD_MAX {
        return Err(RecordError::TooLong(len));
    }
    let available = bytes.len().saturating_sub(FRAME_HEADER_LEN);
    let payload = bytes
        .get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len)
        .ok_or(RecordError::PastEnd { len, available })?;
    let computed = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload);
    if computed != stored {
        return Err(RecordError::BadCrc { stored, computed });
    }
    let mut take = Take::new(payload);
    let mut ops = Vec::new();
    while take.remaining() > 0 {
        ops.push(decode_op(&mut take)?);
    }
    Ok(Some((ops, FRAME_HEADER_LEN + len)))
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A u32 length, then the bytes. Every caller's bytes are bounded far
/// below 4 GiB (names, prefixes), and the record limit rejects the rest.
fn put_bytes(out: &mut Vec<u8>, v: &[u8]) {
    put_u32(out, u32::try_from(v.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(v);
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    put_u32(out, u32::try_from(n).unwrap_or(u32::MAX));
}

fn encode_op(op: &Op, out: &mut Vec<u8>) {
    match op {
        Op::UserState { last_uidvalidity } => {
            out.push(TAG_USER_STATE);
            put_u32(out, *last_uidvalidity);
        }
        Op::CreateFolder {
            id,
            uidvalidity,
            uidnext,
            name,
        } => {
            out.push(TAG_CREATE_FOLDER);
            put_u32(out, *id);
            put_u32(out, *uidvalidity);
            put_u32(out, *uidnext);
            put_bytes(out, name.as_bytes());
        }
        Op::DeleteFolder { id } => {
            out.push(TAG_DELETE_FOLDER);
            put_u32(out, *id);
        }
        Op::RenameFolder { id, name } => {
            out.push(TAG_RENAME_FOLDER);
            put_u32(out, *id);
            put_bytes(out, name.as_bytes());
        }
        Op::Subscribe { name, subscribed } => {
            out.push(TAG_SUBSCRIBE);
            out.push(u8::from(*subscribed));
            put_bytes(out, name.as_bytes());
        }
        Op::DefineKeyword { index, name } => {
            out.push(TAG_DEFINE_KEYWORD);
            out.push(*index);
            put_bytes(out, name.as_bytes());
        }
        Op::Append {
            folder,
            uid,
            message,
        } => {
            out.push(TAG_APPEND);
            put_u32(out, *folder);
            put_u32(out, *uid);
            put_queue_id(out, &message.id);
            put_u32(out, message.rcpt);
            put_u64(out, message.size);
            put_u64(out, message.internal_date_ms);
            out.push(message.system.bits());
            put_u64(out, message.keywords);
            put_bytes(out, &message.prefix);
        }
        Op::SetFlags { folder, changes } => {
            out.push(TAG_SET_FLAGS);
            put_u32(out, *folder);
            put_count(out, changes.len());
            for (uid, system, keywords) in changes {
                put_u32(out, *uid);
                out.push(system.bits());
                put_u64(out, *keywords);
            }
        }
        Op::Expunge { folder, uids } => {
            out.push(TAG_EXPUNGE);
            put_u32(out, *folder);
            put_count(out, uids.len());
            for uid in uids {
                put_u32(out, *uid);
            }
        }
        Op::Copy { from, to, pairs } => {
            out.push(TAG_COPY);
            put_u32(out, *from);
            put_u32(out, *to);
            put_count(out, pairs.len());
            for (source, copy) in pairs {
                put_u32(out, *source);
                put_u32(out, *copy);
            }
        }
        Op::Retarget { moves } => {
            out.push(TAG_RETARGET);
            put_count(out, moves.len());
            for (from, to) in moves {
                put_queue_id(out, from);
                put_queue_id(out, to);
            }
        }
    }
}

fn put_queue_id(out: &mut Vec<u8>, id: &QueueId) {
    put_u64(out, id.segment_seq());
    put_u64(out, id.offset());
}

/// Reads primitives from a byte slice, failing instead of running past it.
struct Take<'a> {
    bytes: &'a [u8],
}

impl<'a> Take<'a> {
    fn new(bytes: &'a [u8]) -> Take<'a> {
        Take { bytes }
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if n > self.bytes.len() {
            return Err(RecordError::Malformed("field runs past payload"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        self.array::<1>().map(|[b]| b)
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        self.array().map(u64::from_le_bytes)
    }

    fn bool(&mut self) -> Result<bool, RecordError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(RecordError::Malformed("boolean out of range")),
        }
    }

    fn byte_string(&mut self) -> Result<&'a [u8], RecordError> {
        let len = self.u32()? as usize;
        self.bytes(len)
    }

    fn string(&mut self) -> Result<String, RecordError> {
        std::str::from_utf8(self.byte_string()?)
            .map(str::to_owned)
            .map_err(|_| RecordError::Malformed("name is not UTF-8"))
    }

    fn queue_id(&mut self) -> Result<QueueId, RecordError> {
        let seq = self.u64()?;
        let offset = self.u64()?;
        QueueId::new(seq, offset).ok_or(RecordError::Malformed("queue id out of range"))
    }

    fn system(&mut self) -> Result<SystemFlags, RecordError> {
        SystemFlags::from_bits(self.u8()?).ok_or(RecordError::Malformed("unknown system flag"))
    }

    /// A count of items of at least `item_len` bytes each, checked
    /// against what is left so a forged count cannot over-allocate.
    fn count(&mut self, item_len: usize) -> Result<usize, RecordError> {
        let count = self.u32()? as usize;
        if count.saturating_mul(item_len) > self.remaining() {
            return Err(RecordError::Malformed("count runs past payload"));
        }
        Ok(count)
    }
}

fn decode_op(take: &mut Take<'_>) -> Result<Op, RecordError> {
    Ok(match take.u8()? {
        TAG_USER_STATE => Op::UserState {
            last_uidvalidity: take.u32()?,
        },
        TAG_CREATE_FOLDER => Op::CreateFolder {
            id: take.u32()?,
            uidvalidity: take.u32()?,
            uidnext: take.u32()?,
            name: take.string()?,
        },
        TAG_DELETE_FOLDER => Op::DeleteFolder { id: take.u32()? },
        TAG_RENAME_FOLDER => Op::RenameFolder {
            id: take.u32()?,
            name: take.string()?,
        },
        TAG_SUBSCRIBE => {
            let subscribed = take.bool()?;
            Op::Subscribe {
                name: take.string()?,
                subscribed,
            }
        }
        TAG_DEFINE_KEYWORD => Op::DefineKeyword {
            index: take.u8()?,
            name: take.string()?,
        },
        TAG_APPEND => {
            let folder = take.u32()?;
            let uid = take.u32()?;
            let id = take.queue_id()?;
            let message = StoredMessage {
                id,
                rcpt: take.u32()?,
                size: take.u64()?,
                internal_date_ms: take.u64()?,
                system: take.system()?,
                keywords: take.u64()?,
                prefix: Arc::from(take.byte_string()?),
            };
            Op::Append {
                folder,
                uid,
                message,
            }
        }
        TAG_SET_FLAGS => {
            let folder = take.u32()?;
            let count = take.count(13)?;
            let mut changes = Vec::with_capacity(count);
            for _ in 0..count {
                changes.push((take.u32()?, take.system()?, take.u64()?));
            }
            Op::SetFlags { folder, changes }
        }
        TAG_EXPUNGE => {
            let folder = take.u32()?;
            let count = take.count(4)?;
            let mut uids = Vec::with_capacity(count);
            for _ in 0..count {
                uids.push(take.u32()?);
            }
            Op::Expunge { folder, uids }
        }
        TAG_COPY => {
            let from = take.u32()?;
            let to = take.u32()?;
            let count = take.count(8)?;
            let mut pairs = Vec::with_capacity(count);
            for _ in 0..count {
                pairs.push((take.u32()?, take.u32()?));
            }
            Op::Copy { from, to, pairs }
        }
        TAG_RETARGET => {
            let count = take.count(32)?;
            let mut moves = Vec::with_capacity(count);
            for _ in 0..count {
                moves.push((take.queue_id()?, take.queue_id()?));
            }
            Op::Retarget { moves }
        }
        _ => return Err(RecordError::Malformed("unknown operation tag")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_op() -> Vec<Op> {
        vec![
            Op::UserState {
                last_uidvalidity: 77,
            },
            Op::CreateFolder {
                id: 3,
                uidvalidity: 1_700_000_000,
                uidnext: 9,
                name: "Ärger/x".into(),
            },
            Op::DeleteFolder { id: 4 },
            Op::RenameFolder {
                id: 3,
                name: "b".into(),
            },
            Op::Subscribe {
                name: "gone".into(),
                subscribed: true,
            },
            Op::DefineKeyword {
                index: 63,
                name: "$Junk".into(),
            },
            Op::Append {
                folder: 3,
                uid: 8,
                message: StoredMessage {
                    id: QueueId::new(12, 4096).unwrap(),
                    rcpt: 2,
                    size: 1234,
                    internal_date_ms: 1_790_000_000_000,
                    system: SystemFlags::SEEN,
                    keywords: 1 << 63,
                    prefix: Arc::from(&b"Return-Path: <a@b>\r\n"[..]),
                },
            },
            Op::SetFlags {
                folder: 3,
                changes: vec![(8, SystemFlags::DELETED, 0), (9, SystemFlags::empty(), 5)],
            },
            Op::Expunge {
                folder: 3,
                uids: vec![1, 8],
            },
            Op::Copy {
                from: 3,
                to: 1,
                pairs: vec![(8, 1)],
            },
            Op::Retarget {
                moves: vec![(
                    QueueId::new(12, 4096).unwrap(),
                    QueueId::new(40, 32).unwrap(),
                )],
            },
        ]
    }

    #[test]
    fn every_operation_round_trips() {
        let ops = every_op();
        let mut bytes = Vec::new();
        encode_record(&ops, &mut bytes).unwrap();
        let (decoded, len) = decode_record(&bytes).unwrap().unwrap();
        assert_eq!(decoded, ops);
        assert_eq!(len, bytes.len());
        assert!(decode_record(&[]).unwrap().is_none());
    }

    #[test]
    fn every_truncation_and_bit_flip_is_rejected() {
        let mut bytes = Vec::new();
        encode_record(&every_op(), &mut bytes).unwrap();
        for cut in 1..bytes.len() {
            assert!(decode_record(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(decode_record(&flipped).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn checksummed_garbage_is_malformed_not_a_panic() {
        for payload in [
            &[0xFFu8][..],
            &[TAG_EXPUNGE, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF],
            &[TAG_SUBSCRIBE, 2],
        ] {
            let len = (payload.len() as u32).to_le_bytes();
            let crc = crc32c::crc32c_append(crc32c::crc32c(&len), payload);
            let mut bytes = len.to_vec();
            bytes.extend_from_slice(&crc.to_le_bytes());
            bytes.extend_from_slice(payload);
            assert!(matches!(
                decode_record(&bytes),
                Err(RecordError::Malformed(_))
            ));
        }
    }

    #[test]
    fn oversized_lengths_are_refused() {
        let mut bytes = ((RECORD_PAYLOAD_MAX + 1) as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 4]);
        assert!(matches!(
            decode_record(&bytes),
            Err(RecordError::TooLong(_))
        ));
    }
}
