//! Standard BASE64 decoding (RFC 4648 4), shared by every SASL exchange
//! (SMTP AUTH, POP3 AUTH, IMAP AUTHENTICATE) and IMAP's BINARY decoding.
//!
//! Strict: padding required, no whitespace, zero pad bits, so one text
//! has one encoding. Must never panic on any input, and never allocate
//! beyond the size of its input.

/// Decodes `text`, or None if it is not canonical BASE64.
pub fn decode(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let quads = text.chunks_exact(4);
    let last_index = quads.len().saturating_sub(1);
    for (index, quad) in quads.enumerate() {
        let padding = quad.iter().rev().take_while(|&&b| b == b'=').count();
        if padding > 2 || (padding > 0 && index != last_index) {
            return None;
        }
        let mut bits: u32 = 0;
        for &b in &quad[..4 - padding] {
            bits = (bits << 6) | value(b)?;
        }
        bits <<= 6 * padding as u32;
        let bytes = bits.to_be_bytes();
        // bytes[0] is always zero: 24 bits sit in the low three bytes.
        let decoded = &bytes[1..4 - padding];
        let pad_mask: u32 = (1 << (8 * padding as u32)) - 1;
        if bits & pad_mask != 0 {
            return None;
        }
        out.extend_from_slice(decoded);
    }
    Some(out)
}

fn value(b: u8) -> Option<u32> {
    match b {
        b'A'..=b'Z' => Some(u32::from(b - b'A')),
        b'a'..=b'z' => Some(u32::from(b - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(b - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_rfc_4648_vectors() {
        for (text, plain) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert_eq!(decode(text.as_bytes()).unwrap(), plain.as_bytes());
        }
        assert_eq!(decode(b"AGFsaWNlAHNlY3JldA==").unwrap(), b"\0alice\0secret");
        assert_eq!(decode(b"+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
    }

    #[test]
    fn rejects_non_canonical_text() {
        for bad in [
            "Zg=", "Zg", "Z===", "====", "Zg==Zm9v", "Zh==", "Zm9=", "Zm 9v", "Zm9v\r\n", "Zm9*",
            "Zm9v!",
        ] {
            assert_eq!(decode(bad.as_bytes()), None, "{bad}");
        }
    }
}
