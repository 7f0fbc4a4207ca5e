//! Queue IDs: the compact, unique-forever name of one spooled message,
//! derived from where its record lives (segment sequence number, byte
//! offset), so that looking a message up by ID is O(1).
//!
//! This module only names locations; it must never touch files or decide
//! whether the location still holds a live message.

use std::fmt;
use std::str::FromStr;

/// Record offsets are 8-byte aligned, so the low 3 bits carry no
/// information and are not stored.
const OFFSET_SHIFT: u32 = 3;
/// Bits of the ID that hold `offset >> 3`: offsets below 2 GiB.
const OFFSET_BITS: u32 = 28;
/// Bits of the ID that hold the segment sequence number.
const SEQ_BITS: u32 = 64 - OFFSET_BITS;
/// Largest segment sequence number an ID can name.
pub const MAX_SEGMENT_SEQ: u64 = (1 << SEQ_BITS) - 1;
/// Largest segment size whose every record offset fits in an ID.
pub const MAX_SEGMENT_SIZE: u64 = 1 << (OFFSET_BITS + OFFSET_SHIFT);
/// Length of the rendered ID: 16 uppercase hex digits.
const RENDERED_LEN: usize = 16;

/// Names one message record: rendered as 16 uppercase hex digits.
/// Ordering is by segment, then offset (append order within a segment).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId {
    seq: u64,
    offset: u64,
}

impl QueueId {
    /// The ID of the record at `offset` in segment `seq`, if both fit.
    pub fn new(seq: u64, offset: u64) -> Option<QueueId> {
        let aligned = offset % (1 << OFFSET_SHIFT) == 0;
        if seq <= MAX_SEGMENT_SEQ && offset < MAX_SEGMENT_SIZE && aligned {
            Some(QueueId { seq, offset })
        } else {
            None
        }
    }

    /// Sequence number of the segment that holds the record.
    pub fn segment_seq(&self) -> u64 {
        self.seq
    }

    /// Byte offset of the record inside its segment.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn packed(&self) -> u64 {
        (self.seq << OFFSET_BITS) | (self.offset >> OFFSET_SHIFT)
    }

    fn unpacked(packed: u64) -> QueueId {
        QueueId {
            seq: packed >> OFFSET_BITS,
            offset: (packed & ((1 << OFFSET_BITS) - 1)) << OFFSET_SHIFT,
        }
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.packed())
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueId({self} seg={} off={})", self.seq, self.offset)
    }
}

/// A string that is not 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a queue id (16 hex digits expected): {0:?}")]
pub struct QueueIdParseError(pub String);

impl FromStr for QueueId {
    type Err = QueueIdParseError;

    fn from_str(s: &str) -> Result<QueueId, QueueIdParseError> {
        let well_formed = s.len() == RENDERED_LEN && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !well_formed {
            return Err(QueueIdParseError(s.to_owned()));
        }
        u64::from_str_radix(s, 16)
            .map(QueueId::unpacked)
            .map_err(|_| QueueIdParseError(s.to_owned()))
    }
}

impl serde::Serialize for QueueId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sixteen_uppercase_hex_and_parses_back() {
        let id = QueueId::new(0x1234_5678, 64 * 1024 * 1024 - 8).unwrap();
        let text = id.to_string();
        assert_eq!(text.len(), 16);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()));
        assert_eq!(text.parse::<QueueId>().unwrap(), id);
        assert_eq!(text.to_lowercase().parse::<QueueId>().unwrap(), id);
    }

    #[test]
    fn distinct_locations_give_distinct_ids() {
        let a = QueueId::new(1, 8).unwrap();
        let b = QueueId::new(1, 16).unwrap();
        let c = QueueId::new(2, 8).unwrap();
        assert_ne!(a.to_string(), b.to_string());
        assert_ne!(a.to_string(), c.to_string());
        assert!(a < b && b < c);
    }

    #[test]
    fn rejects_locations_that_do_not_fit() {
        assert!(QueueId::new(MAX_SEGMENT_SEQ + 1, 0).is_none());
        assert!(QueueId::new(1, MAX_SEGMENT_SIZE).is_none());
        assert!(QueueId::new(1, 12).is_none());
        assert!(QueueId::new(MAX_SEGMENT_SEQ, MAX_SEGMENT_SIZE - 8).is_some());
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "123",
            "00000000000000000",
            "000000000000000G",
            "+00000000000000F",
            "ÄÄÄÄÄÄÄÄ",
        ] {
            assert!(bad.parse::<QueueId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serializes_as_its_text() {
        let id = QueueId::new(3, 40).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{id}\""));
    }
}
