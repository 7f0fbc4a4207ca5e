//! Modified UTF-7 for mailbox names (RFC 3501 5.1.3): decoding what a client
//! sends into UTF-8 and encoding UTF-8 names back for responses.
//!
//! Decoding is strict where laxness would make two wire names mean one
//! mailbox (encoded printable ASCII, non-zero padding bits, broken UTF-16);
//! it must never panic or allocate beyond a small multiple of its input.

/// Why a mailbox name could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Utf7Error {
    #[error("unterminated &...- sequence in mailbox name")]
    Unterminated,
    #[error("invalid modified BASE64 in mailbox name")]
    InvalidBase64,
    #[error("invalid UTF-16 in modified UTF-7 mailbox name")]
    InvalidUtf16,
    #[error("printable ASCII must not be encoded in a mailbox name")]
    EncodedAscii,
    #[error("invalid UTF-8 in mailbox name")]
    InvalidUtf8,
    #[error("control character in mailbox name")]
    Control,
}

/// Modified BASE64 (RFC 3501 5.1.3: RFC 2152 with `,` for `/`).
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn sextet(b: u8) -> Option<u32> {
    match b {
        b'A'..=b'Z' => Some(u32::from(b - b'A')),
        b'a'..=b'z' => Some(u32::from(b - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(b - b'0') + 52),
        b'+' => Some(62),
        b',' => Some(63),
        _ => None,
    }
}

/// Decodes a mailbox name from the wire. A name holding 8-bit bytes is taken
/// as UTF-8 as IMAP4rev2 sends it (RFC 9051 5.1); otherwise it is modified
/// UTF-7.
pub fn decode_mailbox(raw: &[u8]) -> Result<String, Utf7Error> {
    if raw.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(Utf7Error::Control);
    }
    if !raw.is_ascii() {
        return String::from_utf8(raw.to_vec()).map_err(|_| Utf7Error::InvalidUtf8);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'&' {
            out.push(char::from(b));
            continue;
        }
        let end = rest
            .iter()
            .position(|&c| c == b'-')
            .ok_or(Utf7Error::Unterminated)?;
        let (encoded, after) = rest.split_at(end);
        rest = after.get(1..).unwrap_or_default();
        if encoded.is_empty() {
            out.push('&');
        } else {
            decode_shifted(encoded, &mut out)?;
        }
    }
    Ok(out)
}

/// Decodes the modified BASE64 between `&` and `-` as UTF-16BE.
fn decode_shifted(encoded: &[u8], out: &mut String) -> Result<(), Utf7Error> {
    let mut units = Vec::with_capacity(encoded.len() * 6 / 16);
    let mut bits: u32 = 0;
    let mut bit_count = 0u32;
    for &b in encoded {
        bits = (bits << 6) | sextet(b).ok_or(Utf7Error::InvalidBase64)?;
        bit_count += 6;
        if bit_count >= 16 {
            bit_count -= 16;
            units.push(((bits >> bit_count) & 0xffff) as u16);
        }
        bits &= (1 << bit_count) - 1;
    }
    // Leftover bits are padding: fewer than 6 and all zero (RFC 2152).
    if bit_count >= 6 || bits != 0 || units.is_empty() {
        return Err(Utf7Error::InvalidBase64);
    }
    for decoded in char::decode_utf16(units) {
        let c = decoded.map_err(|_| Utf7Error::InvalidUtf16)?;
        if (' '..='~').contains(&c) {
            return Err(Utf7Error::EncodedAscii);
        }
        out.push(c);
    }
    Ok(())
}

/// Encodes a UTF-8 mailbox name in modified UTF-7.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush_shifted(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush_shifted(&mut pending, &mut out);
    out
}

fn flush_shifted(units: &mut Vec<u16>, out: &mut String) {
    if units.is_empty() {
        return;
    }
    out.push('&');
    let mut bits: u32 = 0;
    let mut bit_count = 0u32;
    for unit in units.drain(..) {
        bits = (bits << 16) | u32::from(unit);
        bit_count += 16;
        while bit_count >= 6 {
            bit_count -= 6;
            out.push(char::from(ALPHABET[((bits >> bit_count) & 0x3f) as usize]));
        }
        bits &= (1 << bit_count) - 1;
    }
    if bit_count > 0 {
        out.push(char::from(
            ALPHABET[((bits << (6 - bit_count)) & 0x3f) as usize],
        ));
    }
    out.push('-');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_3501_examples_decode_and_encode() {
        let wire = b"~peter/mail/&U,BTFw-/&ZeVnLIqe-";
        let name = decode_mailbox(wire).unwrap();
        assert_eq!(
            name,
            "~peter/mail/\u{53f0}\u{5317}/\u{65e5}\u{672c}\u{8a9e}"
        );
        assert_eq!(encode(&name).as_bytes(), wire);
    }

    #[test]
    fn ampersand_round_trips() {
        assert_eq!(decode_mailbox(b"A&-B").unwrap(), "A&B");
        assert_eq!(encode("A&B"), "A&-B");
        assert_eq!(encode("&"), "&-");
    }

    #[test]
    fn round_trips_assorted_names() {
        for name in [
            "INBOX",
            "Entwürfe",
            "Корзина",
            "送信済み",
            "emoji 😀 box",
            "mixed&ü&😀",
            "ü",
            "üü",
            "üüü",
            "",
        ] {
            let wire = encode(name);
            assert!(wire.is_ascii(), "{wire}");
            assert_eq!(decode_mailbox(wire.as_bytes()).unwrap(), name, "{wire}");
        }
    }

    #[test]
    fn rejects_malformed_encodings() {
        assert_eq!(decode_mailbox(b"a&AGE"), Err(Utf7Error::Unterminated));
        assert_eq!(decode_mailbox(b"a&A!E-"), Err(Utf7Error::InvalidBase64));
        // "a" (0x0061) encoded: printable ASCII must be sent as itself.
        assert_eq!(decode_mailbox(b"&AGE-"), Err(Utf7Error::EncodedAscii));
        // Non-zero padding bits after U+00FC.
        assert_eq!(decode_mailbox(b"&AP1-"), Err(Utf7Error::InvalidBase64));
        // A lone high surrogate (D800).
        assert_eq!(decode_mailbox(b"&2AA-"), Err(Utf7Error::InvalidUtf16));
        assert_eq!(decode_mailbox(b"a\r\nb"), Err(Utf7Error::Control));
        assert_eq!(decode_mailbox(b"\xff"), Err(Utf7Error::InvalidUtf8));
    }

    #[test]
    fn accepts_utf8_names_from_imap4rev2_clients() {
        assert_eq!(decode_mailbox("Entwürfe".as_bytes()).unwrap(), "Entwürfe");
    }
}
