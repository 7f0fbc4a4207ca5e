//! The SASL pieces POP3 AUTH needs (RFC 5034): base64 decoding of client
//! responses (RFC 4648 4) and the PLAIN mechanism's message (RFC 4616 2).
//!
//! Pure functions over one response line: they must never panic, never
//! allocate beyond the size of their input, and never check a password
//! (that is the backend's job).

/// Longest SASL response line we read, CRLF included: PLAIN's three fields
/// of up to 255 octets each (RFC 4616 2) with two NULs, in base64, fit.
pub const SASL_RESPONSE_MAX: usize = 1024;

/// Why a client response was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("invalid base64")]
    BadBase64,
    #[error("malformed PLAIN message")]
    MalformedPlain,
}

/// The fields of a PLAIN message (RFC 4616 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    /// The identity to act as; empty when the client asks for its own.
    pub authzid: String,
    /// The identity whose password this is.
    pub authcid: String,
    pub password: String,
}

/// Decode padded base64 (RFC 4648 4). The empty string decodes to nothing;
/// a lone `=` is the RFC 5034 4 spelling of an empty initial response and
/// is handled by the session, not here.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, SaslError> {
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return Err(SaslError::BadBase64);
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.chunks_exact(4);
    let last_quad = quads.len().saturating_sub(1);
    for (i, quad) in quads.enumerate() {
        let padding = quad.iter().rev().take_while(|&&b| b == b'=').count();
        if padding > 2 || (padding > 0 && i != last_quad) {
            return Err(SaslError::BadBase64);
        }
        let mut acc: u32 = 0;
        for &b in &quad[..4 - padding] {
            acc = (acc << 6) | u32::from(sextet(b).ok_or(SaslError::BadBase64)?);
        }
        acc <<= 6 * padding as u32;
        let [_, b0, b1, b2] = acc.to_be_bytes();
        let decoded = [b0, b1, b2];
        let kept = 3 - padding;
        // RFC 4648 3.5: the bits a padded quad drops must be zero, so
        // every input has exactly one accepted spelling.
        if decoded[kept..].iter().any(|&b| b != 0) {
            return Err(SaslError::BadBase64);
        }
        out.extend_from_slice(&decoded[..kept]);
    }
    Ok(out)
}

fn sextet(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Split a decoded PLAIN message `[authzid] NUL authcid NUL passwd`
/// (RFC 4616 2); all three must be UTF-8, authcid and passwd non-empty.
pub fn parse_plain(message: &[u8]) -> Result<PlainCredentials, SaslError> {
    let mut fields = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::MalformedPlain);
    };
    let text = |field: &[u8]| {
        std::str::from_utf8(field)
            .map(str::to_owned)
            .map_err(|_| SaslError::MalformedPlain)
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::MalformedPlain);
    }
    Ok(PlainCredentials {
        authzid: text(authzid)?,
        authcid: text(authcid)?,
        password: text(password)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_values() {
        assert_eq!(decode_base64(""), Ok(Vec::new()));
        assert_eq!(decode_base64("Zg=="), Ok(b"f".to_vec()));
        assert_eq!(decode_base64("Zm8="), Ok(b"fo".to_vec()));
        assert_eq!(decode_base64("Zm9v"), Ok(b"foo".to_vec()));
        assert_eq!(decode_base64("Zm9vYmFy"), Ok(b"foobar".to_vec()));
        assert_eq!(decode_base64("+/+/"), Ok(vec![0xfb, 0xff, 0xbf]));
        assert_eq!(
            decode_base64("AGFsaWNlAHNlY3JldA=="),
            Ok(b"\0alice\0secret".to_vec())
        );
    }

    #[test]
    fn base64_refusals() {
        for bad in [
            "Zg", "Zg=", "Z===", "====", "Zg==Zm9v", "Zm9v!", "Zm 9", "Zh==", "Zm9=",
        ] {
            assert_eq!(decode_base64(bad), Err(SaslError::BadBase64), "{bad}");
        }
    }

    #[test]
    fn plain_fields() {
        assert_eq!(
            parse_plain(b"\0alice\0secret"),
            Ok(PlainCredentials {
                authzid: String::new(),
                authcid: "alice".into(),
                password: "secret".into(),
            })
        );
        assert_eq!(
            parse_plain(b"bob\0alice\0pass word").map(|c| c.authzid),
            Ok("bob".into())
        );
    }

    #[test]
    fn plain_refusals() {
        for bad in [
            &b"alice\0secret"[..],
            b"\0alice\0secret\0",
            b"\0\0secret",
            b"\0alice\0",
            b"",
            b"\0al\xffice\0secret",
        ] {
            assert_eq!(parse_plain(bad), Err(SaslError::MalformedPlain));
        }
    }
}
