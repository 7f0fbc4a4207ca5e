//! Little-endian, length-prefixed primitives for the hand-written record
//! encoding: an appending writer and a bounds-checked cursor.
//!
//! This module knows no record layout. The cursor must never panic or
//! allocate more than the input holds, whatever bytes it is given.

use super::record::RecordError;

/// Appends primitives to a byte buffer.
pub(crate) struct Put<'a>(pub(crate) &'a mut Vec<u8>);

impl Put<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// A u32 length then the bytes. Callers bound their strings well below
    /// 4 GiB (a record never exceeds a segment); longer ones are cut at a
    /// char boundary rather than wrapping the length.
    pub(crate) fn str(&mut self, v: &str) {
        let mut end = v.len().min(u32::MAX as usize);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        let cut = v.get(..end).unwrap_or("");
        // `end` fits in u32 by construction above.
        self.u32(cut.len() as u32);
        self.0.extend_from_slice(cut.as_bytes());
    }

    pub(crate) fn opt_str(&mut self, v: Option<&str>) {
        match v {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }

    pub(crate) fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(n) => {
                self.u8(1);
                self.u64(n);
            }
        }
    }
}

/// Reads primitives from a byte slice, failing instead of running past it.
pub(crate) struct Take<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Take<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Take<'a> {
        Take { bytes, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(RecordError::Malformed("length overflow"))?;
        let out = self
            .bytes
            .get(self.pos..end)
            .ok_or(RecordError::Malformed("field runs past payload"))?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = self.bytes.get(self.pos..).unwrap_or(&[]);
        self.pos = self.bytes.len();
        out
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, RecordError> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, RecordError> {
        self.array().map(u64::from_le_bytes)
    }

    pub(crate) fn bool(&mut self) -> Result<bool, RecordError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(RecordError::Malformed("boolean out of range")),
        }
    }

    pub(crate) fn str(&mut self) -> Result<String, RecordError> {
        let len = self.u32()? as usize;
        let raw = self.bytes(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| RecordError::Malformed("string is not UTF-8"))
    }

    pub(crate) fn opt_str(&mut self) -> Result<Option<String>, RecordError> {
        if self.bool()? {
            self.str().map(Some)
        } else {
            Ok(None)
        }
    }

    pub(crate) fn opt_u64(&mut self) -> Result<Option<u64>, RecordError> {
        if self.bool()? {
            self.u64().map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_round_trip() {
        let mut buf = Vec::new();
        let mut put = Put(&mut buf);
        put.u8(7);
        put.u32(0xDEAD_BEEF);
        put.u64(u64::MAX - 1);
        put.bool(true);
        put.str("héllo");
        put.opt_str(None);
        put.opt_str(Some(""));
        put.opt_u64(Some(42));
        put.opt_u64(None);
        let mut take = Take::new(&buf);
        assert_eq!(take.u8().unwrap(), 7);
        assert_eq!(take.u32().unwrap(), 0xDEAD_BEEF);
        assert_eq!(take.u64().unwrap(), u64::MAX - 1);
        assert!(take.bool().unwrap());
        assert_eq!(take.str().unwrap(), "héllo");
        assert_eq!(take.opt_str().unwrap(), None);
        assert_eq!(take.opt_str().unwrap(), Some(String::new()));
        assert_eq!(take.opt_u64().unwrap(), Some(42));
        assert_eq!(take.opt_u64().unwrap(), None);
        assert_eq!(take.remaining(), 0);
    }

    #[test]
    fn reads_past_the_end_fail() {
        let mut take = Take::new(&[1, 2, 3]);
        assert!(take.u32().is_err());
        let mut take = Take::new(&[0xFF, 0xFF, 0xFF, 0xFF, b'a']);
        assert!(take.str().is_err());
        assert!(Take::new(&[2]).bool().is_err());
        assert!(Take::new(&[1, 0, 0, 0, 0xFF]).str().is_err());
    }
}
