//! The on-disk record format of spool segments: a checksummed header and a
//! hand-encoded payload (MESSAGE or RECIPIENT_UPDATE), 8-byte aligned.
//!
//! Layout of the 24-byte header (little-endian):
//!
//! | bytes  | field                                               |
//! |--------|-----------------------------------------------------|
//! | 0..4   | magic `TRNR`                                        |
//! | 4      | format version (1)                                  |
//! | 5      | kind: 1 MESSAGE, 2 RECIPIENT_UPDATE                 |
//! | 6      | status: 0x00 live, 0xDE dead (MESSAGE only)         |
//! | 7      | reserved, 0                                         |
//! | 8..16  | sequence number of the segment written into         |
//! | 16..20 | payload length                                      |
//! | 20..24 | CRC32C seeded with the segment's salt, over bytes   |
//! |        | 0..6, 7..20 and the payload                         |
//!
//! The status byte is outside the CRC because it is the one byte ever
//! rewritten in place: a one-byte write cannot tear, and a MESSAGE record
//! marked dead stays a valid link in the chain of records while telling
//! recovery that every recipient reached a final state.
//!
//! Each life of a segment has a random salt (kept in the segment header)
//! that seeds every record CRC. A recycled segment still holds old bytes,
//! some of them message data a sender chose; without the salt such data
//! could be crafted to pass for a record of a later life.
//!
//! This module only encodes and decodes bytes. Decoding must never panic or
//! over-allocate on arbitrary input (it is a fuzz target) and never does I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::codec::{Put, Take};
use super::id::QueueId;
use super::state::RecipientState;
use crate::envelope::{BodyType, ClientInfo, DsnRet, Envelope, Notify, Recipient};

/// Size of a record header.
pub const HEADER_LEN: usize = 24;
/// Records start at multiples of this.
pub const RECORD_ALIGN: u64 = 8;
const MAGIC: [u8; 4] = *b"TRNR";
const VERSION: u8 = 1;
const KIND_MESSAGE: u8 = 1;
const KIND_RECIPIENT_UPDATE: u8 = 2;
/// Offset of the status byte within a record.
pub(crate) const STATUS_OFFSET: u64 = 6;
const STATUS_LIVE: u8 = 0x00;
/// Status of a MESSAGE record whose recipients are all final.
pub(crate) const STATUS_DEAD: u8 = 0xDE;

const STATE_PENDING: u8 = 0;
const STATE_DEFERRED: u8 = 1;
const STATE_DELIVERED: u8 = 2;
const STATE_BOUNCED: u8 = 3;
const STATE_IN_MAILBOX: u8 = 4;

const NOTIFY_EXPLICIT: u8 = 1;
const NOTIFY_SUCCESS: u8 = 2;
const NOTIFY_FAILURE: u8 = 4;
const NOTIFY_DELAY: u8 = 8;

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The header is all zero bytes: nothing was ever written here (the
    /// clean end of a segment's records).
    #[error("all-zero header: no record was written here")]
    Empty,
    #[error("truncated header: {have} of {need} bytes")]
    Truncated { need: usize, have: usize },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported record version {0}")]
    BadVersion(u8),
    #[error("unknown record kind {0}")]
    BadKind(u8),
    #[error("invalid record status {0:#04x}")]
    BadStatus(u8),
    /// The record was written in an earlier life of a recycled segment.
    #[error("record of segment {found} found in segment {expected}")]
    WrongSeq { expected: u64, found: u64 },
    #[error("payload of {len} bytes runs past the {available} bytes available")]
    LengthPastEnd { len: u64, available: u64 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

/// A record does not fit the format's u32 payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PayloadTooLong(pub(crate) u64);

/// One decoded record and the aligned number of bytes it occupies.
#[derive(Debug)]
pub struct DecodedRecord<'a> {
    pub record: Record<'a>,
    /// Header, payload and padding: where the next record starts.
    pub len: u64,
}

#[derive(Debug)]
pub enum Record<'a> {
    Message(MessageRecord<'a>),
    RecipientUpdate(UpdateRecord),
}

#[derive(Debug)]
pub struct MessageRecord<'a> {
    /// Every recipient reached a final state (status byte rewritten).
    pub dead: bool,
    pub envelope: Envelope,
    /// The message bytes, borrowed from the input.
    pub data: &'a [u8],
    /// Where `data` starts, relative to the record's first byte.
    pub data_offset: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub struct UpdateRecord {
    /// Spool-wide order of updates: for each recipient the highest wins.
    pub update_seq: u64,
    pub message: QueueId,
    /// (recipient index, new state) pairs.
    pub changes: Vec<(u32, RecipientState)>,
}

/// Identifies one life of a segment: records must carry `seq` and be
/// checksummed with `salt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLife {
    pub seq: u64,
    pub salt: u64,
}

/// Aligned size of a record with this payload length.
pub(crate) fn aligned_len(payload_len: u64) -> u64 {
    let raw = HEADER_LEN as u64 + payload_len;
    raw.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Decodes and fully validates (CRC included) the record at the start of
/// `bytes`, which must belong to segment life `life`.
pub fn decode_record(bytes: &[u8], life: SegmentLife) -> Result<DecodedRecord<'_>, RecordError> {
    decode(bytes, life, true)
}

/// Like [`decode_record`] but skips the CRC: only for records that were
/// verified when recovered or written by this process.
pub(crate) fn decode_verified(
    bytes: &[u8],
    life: SegmentLife,
) -> Result<DecodedRecord<'_>, RecordError> {
    decode(bytes, life, false)
}

fn decode(
    bytes: &[u8],
    life: SegmentLife,
    check_crc: bool,
) -> Result<DecodedRecord<'_>, RecordError> {
    let header = bytes.get(..HEADER_LEN).ok_or(RecordError::Truncated {
        need: HEADER_LEN,
        have: bytes.len(),
    })?;
    if header.iter().all(|&b| b == 0) {
        return Err(RecordError::Empty);
    }
    let mut take = Take::new(header);
    if take.bytes(4)? != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let version = take.u8()?;
    if version != VERSION {
        return Err(RecordError::BadVersion(version));
    }
    let kind = take.u8()?;
    if kind != KIND_MESSAGE && kind != KIND_RECIPIENT_UPDATE {
        return Err(RecordError::BadKind(kind));
    }
    let status = take.u8()?;
    let dead = match status {
        STATUS_LIVE => false,
        STATUS_DEAD if kind == KIND_MESSAGE => true,
        other => return Err(RecordError::BadStatus(other)),
    };
    if take.u8()? != 0 {
        return Err(RecordError::Malformed("reserved header byte is not zero"));
    }
    let found = take.u64()?;
    if found != life.seq {
        return Err(RecordError::WrongSeq {
            expected: life.seq,
            found,
        });
    }
    let payload_len = u64::from(take.u32()?);
    let stored = take.u32()?;
    let available = (bytes.len() - HEADER_LEN) as u64;
    if payload_len > available {
        return Err(RecordError::LengthPastEnd {
            len: payload_len,
            available,
        });
    }
    // payload_len <= available, which is a usize.
    let payload = bytes
        .get(HEADER_LEN..HEADER_LEN + payload_len as usize)
        .unwrap_or(&[]);
    if check_crc {
        let computed = checksum(life.salt, header, payload);
        if computed != stored {
            return Err(RecordError::BadCrc { stored, computed });
        }
    }
    let record = if kind == KIND_MESSAGE {
        Record::Message(decode_message(payload, dead)?)
    } else {
        Record::RecipientUpdate(decode_update(payload)?)
    };
    Ok(DecodedRecord {
        record,
        len: aligned_len(payload_len),
    })
}

/// CRC32C seeded with the salt, over the header without its status byte
/// and CRC field, then the payload.
fn checksum(salt: u64, header: &[u8], payload: &[u8]) -> u32 {
    let before_status = header.get(..6).unwrap_or(&[]);
    let after_status = header.get(7..20).unwrap_or(&[]);
    let crc = crc32c::crc32c(&salt.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, before_status);
    let crc = crc32c::crc32c_append(crc, after_status);
    crc32c::crc32c_append(crc, payload)
}

fn put_header(buf: &mut Vec<u8>, kind: u8, payload_len: u32) {
    let mut put = Put(buf);
    put.0.extend_from_slice(&MAGIC);
    put.u8(VERSION);
    put.u8(kind);
    put.u8(STATUS_LIVE);
    put.u8(0);
    put.u64(0);
    put.u32(payload_len);
    put.u32(0);
}

/// Completes a record encoded into `buf` (header first) for segment life
/// `life`: stores the seq and the CRC over the header, the rest of `buf`
/// and `tail` (bytes written right after `buf`).
pub(crate) fn seal_record(buf: &mut [u8], life: SegmentLife, tail: &[u8]) {
    if let Some(field) = buf.get_mut(8..16) {
        field.copy_from_slice(&life.seq.to_le_bytes());
    }
    let (header, payload) = buf.split_at_mut(HEADER_LEN.min(buf.len()));
    let crc = crc32c::crc32c_append(checksum(life.salt, header, payload), tail);
    if let Some(field) = header.get_mut(20..24) {
        field.copy_from_slice(&crc.to_le_bytes());
    }
}

/// Stores the payload length in the header at the start of `buf`.
fn set_payload_len(buf: &mut [u8], payload_len: u32) {
    if let Some(field) = buf.get_mut(16..20) {
        field.copy_from_slice(&payload_len.to_le_bytes());
    }
}

/// A record with a valid header and CRC around an arbitrary payload of
/// `kind`, so the fuzz target and the tests reach the payload decoders
/// behind the CRC check. Payloads over 4 GiB are cut to fit the length field.
pub fn seal_raw_record(kind: u8, life: SegmentLife, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(u32::MAX as usize)];
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    put_header(&mut buf, kind, payload.len() as u32);
    buf.extend_from_slice(payload);
    seal_record(&mut buf, life, &[]);
    buf
}

/// Encodes the head of a MESSAGE record (header and envelope) into `buf`
/// for message bytes of `data_len`, which are written right after it.
/// Returns the record's aligned length; [`seal_record`] completes it.
pub(crate) fn encode_message_head(
    buf: &mut Vec<u8>,
    envelope: &Envelope,
    data_len: usize,
) -> Result<u64, PayloadTooLong> {
    buf.clear();
    put_header(buf, KIND_MESSAGE, 0);
    buf.extend_from_slice(&[0; 4]);
    put_envelope(&mut Put(buf), envelope);
    let envelope_len = buf.len() - HEADER_LEN - 4;
    let payload_len = (buf.len() - HEADER_LEN) as u64 + data_len as u64;
    let (Ok(envelope_len), Ok(payload_len32)) =
        (u32::try_from(envelope_len), u32::try_from(payload_len))
    else {
        return Err(PayloadTooLong(payload_len));
    };
    if let Some(field) = buf.get_mut(HEADER_LEN..HEADER_LEN + 4) {
        field.copy_from_slice(&envelope_len.to_le_bytes());
    }
    set_payload_len(buf, payload_len32);
    Ok(aligned_len(payload_len))
}

/// Encodes a RECIPIENT_UPDATE record into `buf`; returns its aligned
/// length. [`seal_record`] (with an empty tail) completes it.
pub(crate) fn encode_update(
    buf: &mut Vec<u8>,
    update: &UpdateRecord,
) -> Result<u64, PayloadTooLong> {
    buf.clear();
    put_header(buf, KIND_RECIPIENT_UPDATE, 0);
    let mut put = Put(buf);
    put.u64(update.update_seq);
    put.u64(update.message.segment_seq());
    put.u64(update.message.offset());
    put.u32(u32::try_from(update.changes.len()).unwrap_or(u32::MAX));
    for (index, state) in update.changes.iter().take(u32::MAX as usize) {
        put.u32(*index);
        put_state(&mut put, state);
    }
    let payload_len = (buf.len() - HEADER_LEN) as u64;
    let payload_len32 = u32::try_from(payload_len).map_err(|_| PayloadTooLong(payload_len))?;
    set_payload_len(buf, payload_len32);
    Ok(aligned_len(payload_len))
}

fn put_envelope(put: &mut Put<'_>, envelope: &Envelope) {
    put.str(&envelope.sender);
    put.u8(match envelope.body {
        BodyType::SevenBit => 0,
        BodyType::EightBitMime => 1,
    });
    put.bool(envelope.smtputf8);
    put.u8(match envelope.ret {
        None => 0,
        Some(DsnRet::Full) => 1,
        Some(DsnRet::Headers) => 2,
    });
    put.opt_str(envelope.envid.as_deref());
    put.opt_u64(envelope.declared_size);
    put.u32(u32::try_from(envelope.recipients.len()).unwrap_or(u32::MAX));
    for recipient in envelope.recipients.iter().take(u32::MAX as usize) {
        put.str(&recipient.address);
        let n = recipient.notify;
        let bits = [
            (n.explicit, NOTIFY_EXPLICIT),
            (n.success, NOTIFY_SUCCESS),
            (n.failure, NOTIFY_FAILURE),
            (n.delay, NOTIFY_DELAY),
        ];
        put.u8(bits
            .iter()
            .filter(|(on, _)| *on)
            .fold(0, |acc, (_, bit)| acc | bit));
        put.opt_str(recipient.orcpt.as_deref());
    }
    match envelope.client.ip {
        IpAddr::V4(v4) => {
            put.u8(4);
            put.0.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            put.u8(6);
            put.0.extend_from_slice(&v6.octets());
        }
    }
    put.str(&envelope.client.helo);
    put.bool(envelope.client.esmtp);
    put.bool(envelope.client.tls);
    put.opt_str(envelope.client.auth.as_deref());
    put.u64(envelope.received_at_ms);
}

fn put_state(put: &mut Put<'_>, state: &RecipientState) {
    match state {
        RecipientState::Pending => put.u8(STATE_PENDING),
        RecipientState::Deferred {
            until_ms,
            attempts,
            last_error,
        } => {
            put.u8(STATE_DEFERRED);
            put.u64(*until_ms);
            put.u32(*attempts);
            put.str(last_error);
        }
        RecipientState::Delivered => put.u8(STATE_DELIVERED),
        RecipientState::Bounced { reason } => {
            put.u8(STATE_BOUNCED);
            put.str(reason);
        }
        RecipientState::InMailbox => put.u8(STATE_IN_MAILBOX),
    }
}

fn decode_message(payload: &[u8], dead: bool) -> Result<MessageRecord<'_>, RecordError> {
    let mut take = Take::new(payload);
    let envelope_len = take.u32()? as usize;
    let mut fields = Take::new(take.bytes(envelope_len)?);
    let envelope = take_envelope(&mut fields)?;
    if fields.remaining() != 0 {
        return Err(RecordError::Malformed("trailing bytes after envelope"));
    }
    let data_offset = (HEADER_LEN + 4 + envelope_len) as u64;
    Ok(MessageRecord {
        dead,
        envelope,
        data: take.rest(),
        data_offset,
    })
}

fn take_envelope(take: &mut Take<'_>) -> Result<Envelope, RecordError> {
    let sender = take.str()?;
    let body = match take.u8()? {
        0 => BodyType::SevenBit,
        1 => BodyType::EightBitMime,
        _ => return Err(RecordError::Malformed("unknown body type")),
    };
    let smtputf8 = take.bool()?;
    let ret = match take.u8()? {
        0 => None,
        1 => Some(DsnRet::Full),
        2 => Some(DsnRet::Headers),
        _ => return Err(RecordError::Malformed("unknown RET value")),
    };
    let envid = take.opt_str()?;
    let declared_size = take.opt_u64()?;
    let count = take.u32()?;
    // No capacity from the count: it is untrusted; pushes grow with the
    // bytes actually present.
    let mut recipients = Vec::new();
    for _ in 0..count {
        let address = take.str()?;
        let bits = take.u8()?;
        if bits & !(NOTIFY_EXPLICIT | NOTIFY_SUCCESS | NOTIFY_FAILURE | NOTIFY_DELAY) != 0 {
            return Err(RecordError::Malformed("unknown NOTIFY bits"));
        }
        let notify = Notify {
            explicit: bits & NOTIFY_EXPLICIT != 0,
            success: bits & NOTIFY_SUCCESS != 0,
            failure: bits & NOTIFY_FAILURE != 0,
            delay: bits & NOTIFY_DELAY != 0,
        };
        let orcpt = take.opt_str()?;
        recipients.push(Recipient {
            address,
            notify,
            orcpt,
        });
    }
    let ip = match take.u8()? {
        4 => {
            let mut octets = [0u8; 4];
            octets.copy_from_slice(take.bytes(4)?);
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(take.bytes(16)?);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return Err(RecordError::Malformed("unknown address family")),
    };
    let helo = take.str()?;
    let esmtp = take.bool()?;
    let tls = take.bool()?;
    let auth = take.opt_str()?;
    let received_at_ms = take.u64()?;
    Ok(Envelope {
        sender,
        body,
        smtputf8,
        ret,
        envid,
        declared_size,
        recipients,
        client: ClientInfo {
            ip,
            helo,
            esmtp,
            tls,
            auth,
        },
        received_at_ms,
    })
}

fn decode_update(payload: &[u8]) -> Result<UpdateRecord, RecordError> {
    let mut take = Take::new(payload);
    let update_seq = take.u64()?;
    let seq = take.u64()?;
    let offset = take.u64()?;
    let message =
        QueueId::new(seq, offset).ok_or(RecordError::Malformed("message location out of range"))?;
    let count = take.u32()?;
    let mut changes = Vec::new();
    for _ in 0..count {
        let index = take.u32()?;
        let state = match take.u8()? {
            STATE_PENDING => RecipientState::Pending,
            STATE_DEFERRED => RecipientState::Deferred {
                until_ms: take.u64()?,
                attempts: take.u32()?,
                last_error: take.str()?,
            },
            STATE_DELIVERED => RecipientState::Delivered,
            STATE_BOUNCED => RecipientState::Bounced {
                reason: take.str()?,
            },
            STATE_IN_MAILBOX => RecipientState::InMailbox,
            _ => return Err(RecordError::Malformed("unknown recipient state")),
        };
        changes.push((index, state));
    }
    if take.remaining() != 0 {
        return Err(RecordError::Malformed("trailing bytes after update"));
    }
    Ok(UpdateRecord {
        update_seq,
        message,
        changes,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn life(seq: u64) -> SegmentLife {
        SegmentLife {
            seq,
            salt: 0x5EED_0000 ^ seq,
        }
    }

    pub(crate) fn sample_envelope(recipients: usize) -> Envelope {
        Envelope {
            sender: "alice@example.org".into(),
            body: BodyType::EightBitMime,
            smtputf8: true,
            ret: Some(DsnRet::Headers),
            envid: Some("env-1".into()),
            declared_size: Some(1234),
            recipients: (0..recipients)
                .map(|i| Recipient {
                    address: format!("rcpt{i}@example.net"),
                    notify: Notify {
                        explicit: true,
                        success: i % 2 == 0,
                        failure: true,
                        delay: false,
                    },
                    orcpt: (i % 2 == 1).then(|| format!("rfc822;rcpt{i}@example.net")),
                })
                .collect(),
            client: ClientInfo {
                ip: "2001:db8::1".parse().unwrap(),
                helo: "mx.example.org".into(),
                esmtp: true,
                tls: false,
                auth: Some("alice".into()),
            },
            received_at_ms: 1_700_000_000_123,
        }
    }

    fn message_bytes(seq: u64, envelope: &Envelope, data: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        let len = encode_message_head(&mut buf, envelope, data.len()).unwrap();
        seal_record(&mut buf, life(seq), data);
        buf.extend_from_slice(data);
        buf.resize(len as usize, 0);
        buf
    }

    fn raw_record(kind: u8, seq: u64, payload: &[u8]) -> Vec<u8> {
        seal_raw_record(kind, life(seq), payload)
    }

    #[test]
    fn message_round_trip() {
        let envelope = sample_envelope(3);
        let data = b"Subject: hi\r\n\r\nbody\r\n";
        let bytes = message_bytes(7, &envelope, data);
        assert_eq!(bytes.len() % RECORD_ALIGN as usize, 0);
        let decoded = decode_record(&bytes, life(7)).unwrap();
        assert_eq!(decoded.len, bytes.len() as u64);
        let Record::Message(message) = decoded.record else {
            panic!("not a message")
        };
        assert_eq!(message.envelope, envelope);
        assert_eq!(message.data, data);
        assert!(!message.dead);
        let start = message.data_offset as usize;
        assert_eq!(&bytes[start..start + data.len()], data);
    }

    #[test]
    fn ipv4_client_and_empty_fields_round_trip() {
        let mut envelope = sample_envelope(0);
        envelope.client.ip = "192.0.2.9".parse().unwrap();
        envelope.sender.clear();
        envelope.ret = None;
        envelope.envid = None;
        envelope.declared_size = None;
        envelope.client.auth = None;
        let bytes = message_bytes(1, &envelope, b"");
        let Record::Message(message) = decode_record(&bytes, life(1)).unwrap().record else {
            panic!("not a message")
        };
        assert_eq!(message.envelope, envelope);
        assert!(message.data.is_empty());
    }

    #[test]
    fn update_round_trip() {
        let update = UpdateRecord {
            update_seq: 99,
            message: QueueId::new(5, 4096).unwrap(),
            changes: vec![
                (0, RecipientState::Delivered),
                (
                    1,
                    RecipientState::Deferred {
                        until_ms: 5,
                        attempts: 2,
                        last_error: "451 try later".into(),
                    },
                ),
                (
                    2,
                    RecipientState::Bounced {
                        reason: "550 no such user".into(),
                    },
                ),
                (3, RecipientState::Pending),
                (4, RecipientState::InMailbox),
            ],
        };
        let mut buf = Vec::new();
        let len = encode_update(&mut buf, &update).unwrap();
        seal_record(&mut buf, life(3), &[]);
        buf.resize(len as usize, 0);
        let decoded = decode_record(&buf, life(3)).unwrap();
        assert_eq!(decoded.len, len);
        let Record::RecipientUpdate(back) = decoded.record else {
            panic!("not an update")
        };
        assert_eq!(back, update);
    }

    #[test]
    fn dead_status_is_outside_the_crc() {
        let mut bytes = message_bytes(2, &sample_envelope(1), b"x");
        bytes[STATUS_OFFSET as usize] = STATUS_DEAD;
        let Record::Message(message) = decode_record(&bytes, life(2)).unwrap().record else {
            panic!("not a message")
        };
        assert!(message.dead);
        bytes[STATUS_OFFSET as usize] = 0x55;
        assert_eq!(
            decode_record(&bytes, life(2)).unwrap_err(),
            RecordError::BadStatus(0x55)
        );
    }

    #[test]
    fn rejects_truncated_header() {
        let bytes = message_bytes(1, &sample_envelope(1), b"data");
        let err = decode_record(&bytes[..HEADER_LEN - 1], life(1)).unwrap_err();
        assert_eq!(
            err,
            RecordError::Truncated {
                need: HEADER_LEN,
                have: HEADER_LEN - 1
            }
        );
        assert!(decode_record(&[], life(1)).is_err());
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        let mut bytes = message_bytes(1, &sample_envelope(1), b"data");
        bytes[0] ^= 0xFF;
        assert_eq!(
            decode_record(&bytes, life(1)).unwrap_err(),
            RecordError::BadMagic
        );
        let mut bytes = message_bytes(1, &sample_envelope(1), b"data");
        bytes[4] = 9;
        assert_eq!(
            decode_record(&bytes, life(1)).unwrap_err(),
            RecordError::BadVersion(9)
        );
    }

    #[test]
    fn rejects_bad_crc() {
        let data = b"data";
        let clean = message_bytes(1, &sample_envelope(1), data);
        let mut envelope_flip = clean.clone();
        envelope_flip[HEADER_LEN + 10] ^= 1;
        assert!(matches!(
            decode_record(&envelope_flip, life(1)),
            Err(RecordError::BadCrc { .. })
        ));
        let Record::Message(message) = decode_record(&clean, life(1)).unwrap().record else {
            panic!("not a message")
        };
        let mut data_flip = clean.clone();
        data_flip[message.data_offset as usize] ^= 0x80;
        assert!(matches!(
            decode_record(&data_flip, life(1)),
            Err(RecordError::BadCrc { .. })
        ));
        let mut crc_flip = clean;
        crc_flip[20] ^= 1;
        assert!(matches!(
            decode_record(&crc_flip, life(1)),
            Err(RecordError::BadCrc { .. })
        ));
    }

    #[test]
    fn rejects_a_record_of_another_segment_life() {
        let bytes = message_bytes(1, &sample_envelope(1), b"data");
        let other_salt = SegmentLife { seq: 1, salt: 7 };
        assert!(matches!(
            decode_record(&bytes, other_salt),
            Err(RecordError::BadCrc { .. })
        ));
    }

    #[test]
    fn rejects_wrong_seq() {
        let bytes = message_bytes(1, &sample_envelope(1), b"data");
        assert_eq!(
            decode_record(&bytes, life(2)).unwrap_err(),
            RecordError::WrongSeq {
                expected: 2,
                found: 1
            }
        );
    }

    #[test]
    fn rejects_length_past_end() {
        let bytes = message_bytes(1, &sample_envelope(1), b"some data");
        let cut = &bytes[..bytes.len() - 16];
        assert!(matches!(
            decode_record(cut, life(1)),
            Err(RecordError::LengthPastEnd { .. })
        ));
    }

    #[test]
    fn rejects_garbage_payload_with_valid_crc() {
        // A well-formed header whose CRC matches a payload that is not an
        // envelope or update: decoding must fail cleanly, not panic.
        let payload = [0xFFu8; 40];
        let message = raw_record(KIND_MESSAGE, 4, &payload);
        assert!(matches!(
            decode_record(&message, life(4)),
            Err(RecordError::Malformed(_))
        ));
        let update = raw_record(KIND_RECIPIENT_UPDATE, 4, &payload);
        assert!(matches!(
            decode_record(&update, life(4)),
            Err(RecordError::Malformed(_))
        ));
        let unknown_kind = raw_record(9, 4, &payload);
        assert_eq!(
            decode_record(&unknown_kind, life(4)).unwrap_err(),
            RecordError::BadKind(9)
        );
    }

    #[test]
    fn all_zero_header_is_empty() {
        assert_eq!(
            decode_record(&[0u8; 64], life(1)).unwrap_err(),
            RecordError::Empty
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep standing in for the fuzz target:
        // mutate every byte of a valid record and decode each variant.
        let bytes = message_bytes(1, &sample_envelope(2), b"hello world");
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut mutated = bytes.clone();
                mutated[i] ^= flip;
                let _ = decode_record(&mutated, life(1));
                let _ = decode_verified(&mutated, life(1));
                let _ = decode_verified(&mutated[..i], life(1));
            }
        }
        let mut state = 0x1234_5678_u32;
        for len in 0..512 {
            let noise: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect();
            let _ = decode_verified(&noise, life(1));
        }
    }
}
