//! xtext encoding (RFC 3461 4) for the `ENVID=` and `ORCPT=` parameters the
//! client sends.
//!
//! Encoding only. It must never let a byte outside `!`..`~`, or a `+` or
//! `=`, through unencoded: those bytes would break or inject into the
//! command line.

use std::fmt::Write;

/// Encodes `value`: printable ASCII except `+` and `=` as is, every other
/// byte (controls, space, non-ASCII UTF-8 bytes) as `+XX` in upper-case hex.
pub fn encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for &byte in value.as_bytes() {
        if (b'!'..=b'~').contains(&byte) && byte != b'+' && byte != b'=' {
            encoded.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(encoded, "+{byte:02X}");
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_unchanged() {
        assert_eq!(encode("rfc822;user@example.org"), "rfc822;user@example.org");
        assert_eq!(encode(""), "");
    }

    #[test]
    fn plus_equals_space_and_controls_encoded() {
        assert_eq!(encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(encode("\r\n\x7f"), "+0D+0A+7F");
    }

    #[test]
    fn non_ascii_bytes_encoded_one_by_one() {
        assert_eq!(encode("rfc822;ü@x"), "rfc822;+C3+BC@x");
    }
}
