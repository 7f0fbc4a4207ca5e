//! FETCH BINARY content (RFC 3516 4): a body part with its
//! Content-Transfer-Encoding (RFC 2045 6) undone: identity encodings
//! as stored, base64 and quoted-printable decoded.
//!
//! It decodes one part at a time into a buffer no larger than the part,
//! never guesses at an encoding it does not know (the caller answers
//! `[UNKNOWN-CTE]`), and never panics on any input.

use crate::imap::mime::decode_quoted_printable;
use std::borrow::Cow;

use crate::base64;
use crate::imap::command::{Section, SectionText};
use crate::imap::mime;

/// Why a part's content cannot be given decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum BinaryError {
    /// RFC 3516 4.3: an encoding the server does not know, or content
    /// that does not decode under its stated encoding.
    #[error("unknown or invalid content transfer encoding")]
    UnknownCte,
}

/// The decoded content of `part` of `message` (the whole message, as
/// stored, for an empty path); None when the part does not exist.
pub(super) fn content<'a>(
    message: &'a [u8],
    part: &[u32],
) -> Result<Option<Cow<'a, [u8]>>, BinaryError> {
    let body = Section {
        part: part.to_vec(),
        text: None,
    };
    let Some(data) = mime::section(message, &body) else {
        return Ok(None);
    };
    if part.is_empty() {
        return Ok(Some(data));
    }
    let header = Section {
        part: part.to_vec(),
        text: Some(SectionText::Mime),
    };
    let encoding = mime::section(message, &header)
        .and_then(|header| mime::field_value(&header, b"content-transfer-encoding"))
        .map(|value| value.trim_ascii().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_slice() {
        b"" | b"7bit" | b"8bit" | b"binary" => Ok(Some(data)),
        b"base64" => decode_base64(&data).map(|d| Some(Cow::Owned(d))),
        b"quoted-printable" => Ok(Some(Cow::Owned(decode_quoted_printable(&data)))),
        _ => Err(BinaryError::UnknownCte),
    }
}

/// Base64 content (RFC 2045 6.8): line breaks and other whitespace are
/// ignored, the rest must be canonical.
fn decode_base64(data: &[u8]) -> Result<Vec<u8>, BinaryError> {
    let packed: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::decode(&packed).ok_or(BinaryError::UnknownCte)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"Subject: parts\r\n\
Content-Type: multipart/mixed; boundary=x\r\n\
\r\n\
--x\r\n\
Content-Type: text/plain\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
caf=C3=A9 =\r\nau lait =ZZ\r\n\
--x\r\n\
Content-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
AAEC\r\n/w==\r\n\
--x\r\n\
Content-Transfer-Encoding: x-uuencode\r\n\
\r\n\
begin\r\n\
--x\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
not base64!\r\n\
--x--\r\n";

    #[test]
    fn parts_are_decoded_by_their_encoding() {
        let text = content(MESSAGE, &[1]).unwrap().unwrap();
        assert_eq!(&*text, "café au lait =ZZ".as_bytes());
        let bytes = content(MESSAGE, &[2]).unwrap().unwrap();
        assert_eq!(&*bytes, &[0, 1, 2, 0xff]);
        assert_eq!(content(MESSAGE, &[3]), Err(BinaryError::UnknownCte));
        assert_eq!(content(MESSAGE, &[4]), Err(BinaryError::UnknownCte));
        assert_eq!(content(MESSAGE, &[9]), Ok(None));
        assert_eq!(content(MESSAGE, &[]).unwrap().unwrap().len(), MESSAGE.len());
    }

    #[test]
    fn quoted_printable_keeps_malformed_escapes() {
        assert_eq!(decode_quoted_printable(b"a=3Db=\nc=4"), b"a=bc=4");
        assert_eq!(decode_quoted_printable(b"="), b"=");
    }
}
