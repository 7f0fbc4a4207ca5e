//! Reads SMTP replies (RFC 5321 4.2) sent by a remote server: single- and
//! multi-line, with the enhanced status code of RFC 2034/3463 when present.
//!
//! This module only splits and checks reply lines. It must never decide
//! what a reply means for the session, must never hold more than one reply
//! plus the bytes of one read, and must never panic on any bytes: every
//! input is untrusted.

use memchr::memchr;

/// Longest reply line, CRLF included (RFC 5321 4.5.3.1.5).
pub const REPLY_LINE_MAX: usize = 512;
/// Most lines accepted in one multi-line reply. RFC 5321 sets no limit;
/// 100 is far above any real EHLO reply and bounds memory.
pub const REPLY_LINES_MAX: usize = 100;

/// One SMTP reply as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedReply {
    pub code: u16,
    /// `class.subject.detail` of the first line (RFC 2034), when its class
    /// agrees with the reply code.
    pub enhanced: Option<(u8, u16, u16)>,
    /// The text of every line, enhanced code removed, joined with `\n`;
    /// other control characters are replaced by spaces.
    pub text: String,
}

impl ReceivedReply {
    /// A reply made up by this side (for recipients that never got one from
    /// the peer); the text says so.
    pub fn local(code: u16, enhanced: (u8, u16, u16), text: &str) -> Self {
        Self {
            code,
            enhanced: Some(enhanced),
            text: format!("local: {text}"),
        }
    }

    /// First digit of the code: 2, 3, 4 or 5.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// The text lines, first to last.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split('\n')
    }
}

/// Why the bytes from the peer are not a valid reply. Every one ends the
/// connection: the reply stream can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line longer than {REPLY_LINE_MAX} octets")]
    LineTooLong,
    #[error("reply with more than {REPLY_LINES_MAX} lines")]
    TooManyLines,
    #[error("reply line without a valid code: {0:?}")]
    BadCode(String),
    #[error("reply line with code {found} inside a reply with code {expected}")]
    CodeChanged { expected: u16, found: u16 },
}

/// Incremental reply reader: bytes go in with [`ReplyReader::push`],
/// complete replies come out of [`ReplyReader::next_reply`]. Each byte is
/// scanned once, so byte-at-a-time input costs the same as one big read.
#[derive(Debug, Default)]
pub struct ReplyReader {
    buf: Vec<u8>,
    /// Start of the unparsed bytes in `buf`.
    start: usize,
    /// Bytes of `buf` from `start` known to hold no LF.
    scanned: usize,
    /// Lines of the reply being read (all continuation lines so far).
    code: Option<u16>,
    enhanced: Option<(u8, u16, u16)>,
    text: String,
    lines: usize,
}

impl ReplyReader {
    /// Appends bytes read from the peer.
    pub fn push(&mut self, input: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(input);
    }

    /// Drops everything buffered, e.g. bytes that arrived in clear after
    /// the `220` to STARTTLS (RFC 3207 4.2 forbids using them).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The next complete reply, `Ok(None)` when more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<ReceivedReply>, ReplyError> {
        loop {
            let pending = self.buf.get(self.start..).unwrap_or_default();
            let unscanned = pending.get(self.scanned..).unwrap_or_default();
            let Some(lf) = memchr(b'\n', unscanned) else {
                // Even with its LF still to come this line cannot fit.
                if pending.len() >= REPLY_LINE_MAX {
                    return Err(ReplyError::LineTooLong);
                }
                self.scanned = pending.len();
                return Ok(None);
            };
            let line_len = self.scanned + lf + 1;
            if line_len > REPLY_LINE_MAX {
                return Err(ReplyError::LineTooLong);
            }
            let line = pending.get(..line_len - 1).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let parsed = parse_line(line)?;
            self.start += line_len;
            self.scanned = 0;
            if let Some(reply) = self.add_line(parsed)? {
                return Ok(Some(reply));
            }
        }
    }

    fn add_line(&mut self, line: Line) -> Result<Option<ReceivedReply>, ReplyError> {
        self.lines += 1;
        if self.lines > REPLY_LINES_MAX {
            return Err(ReplyError::TooManyLines);
        }
        match self.code {
            None => {
                self.code = Some(line.code);
                self.enhanced = line.enhanced;
            }
            Some(expected) if expected != line.code => {
                return Err(ReplyError::CodeChanged {
                    expected,
                    found: line.code,
                });
            }
            Some(_) => self.text.push('\n'),
        }
        self.text.push_str(&line.text);
        if !line.last {
            return Ok(None);
        }
        let reply = ReceivedReply {
            code: line.code,
            enhanced: self.enhanced.take(),
            text: std::mem::take(&mut self.text),
        };
        self.code = None;
        self.lines = 0;
        Ok(Some(reply))
    }
}

/// One reply line, split.
struct Line {
    code: u16,
    last: bool,
    enhanced: Option<(u8, u16, u16)>,
    text: String,
}

fn parse_line(line: &[u8]) -> Result<Line, ReplyError> {
    let bad = || ReplyError::BadCode(String::from_utf8_lossy(line).chars().take(64).collect());
    let (digits, rest) = line.split_at_checked(3).ok_or_else(bad)?;
    let mut code: u16 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return Err(bad());
        }
        code = code * 10 + u16::from(digit - b'0');
    }
    if !(200..=599).contains(&code) {
        return Err(bad());
    }
    // "250" alone is a last line with no text (RFC 5321 4.2.1 makes text optional).
    let (last, text) = match rest.split_first() {
        None => (true, &[][..]),
        Some((b' ', text)) => (true, text),
        Some((b'-', text)) => (false, text),
        Some(_) => return Err(bad()),
    };
    let text = sanitize(text);
    let (enhanced, text) = match split_enhanced(&text) {
        Some((status, after)) if u16::from(status.0) == code / 100 => (Some(status), after),
        _ => (None, text.as_str()),
    };
    Ok(Line {
        code,
        last,
        enhanced,
        text: text.to_owned(),
    })
}

/// Reply text as a string without control characters (they could break
/// log lines or a bounce built from the text).
fn sanitize(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `class.subject.detail` at the start of `text` followed by a space or the
/// end (RFC 3463 2: class 2/4/5, subject and detail of 1 to 3 digits).
fn split_enhanced(text: &str) -> Option<((u8, u16, u16), &str)> {
    let (status, rest) = match text.split_once(' ') {
        Some((status, rest)) => (status, rest),
        None => (text, ""),
    };
    let mut parts = status.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    if parts.next().is_some() || class.len() != 1 {
        return None;
    }
    let class: u8 = number(class)?.try_into().ok()?;
    if !matches!(class, 2 | 4 | 5) {
        return None;
    }
    Some(((class, number(subject)?, number(detail)?), rest))
}

fn number(digits: &str) -> Option<u16> {
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8]) -> Result<Vec<ReceivedReply>, ReplyError> {
        let mut reader = ReplyReader::default();
        reader.push(input);
        let mut replies = Vec::new();
        while let Some(reply) = reader.next_reply()? {
            replies.push(reply);
        }
        Ok(replies)
    }

    #[test]
    fn single_line_with_enhanced_code() {
        let replies = read_all(b"250 2.1.0 Sender ok\r\n").unwrap();
        assert_eq!(
            replies,
            vec![ReceivedReply {
                code: 250,
                enhanced: Some((2, 1, 0)),
                text: "Sender ok".into()
            }]
        );
    }

    #[test]
    fn multi_line_reply_joins_lines() {
        let replies = read_all(b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n").unwrap();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].code, 250);
        assert_eq!(replies[0].enhanced, None);
        assert_eq!(
            replies[0].lines().collect::<Vec<_>>(),
            ["mx.example", "PIPELINING", "SIZE 1000"]
        );
    }

    #[test]
    fn enhanced_code_of_other_class_is_text() {
        let replies = read_all(b"550 2.1.0 odd\r\n").unwrap();
        assert_eq!(replies[0].enhanced, None);
        assert_eq!(replies[0].text, "2.1.0 odd");
    }

    #[test]
    fn bare_lf_and_bare_code_accepted() {
        let replies = read_all(b"220 hi\n250\r\n").unwrap();
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0].text, "hi");
        assert_eq!(replies[1].code, 250);
        assert_eq!(replies[1].text, "");
    }

    #[test]
    fn incomplete_reply_waits() {
        let mut reader = ReplyReader::default();
        reader.push(b"250-a\r\n250 b");
        assert_eq!(reader.next_reply(), Ok(None));
        reader.push(b"\r\n");
        assert_eq!(reader.next_reply().unwrap().unwrap().text, "a\nb");
        assert_eq!(reader.next_reply(), Ok(None));
    }

    #[test]
    fn malformed_lines_are_errors() {
        for input in [
            &b"25 x\r\n"[..],
            b"abc x\r\n",
            b"199 x\r\n",
            b"600 x\r\n",
            b"250x\r\n",
            b"\r\n",
            b"\xff\xfe\xfd\r\n",
        ] {
            assert!(
                matches!(read_all(input), Err(ReplyError::BadCode(_))),
                "{input:?}"
            );
        }
    }

    #[test]
    fn code_change_inside_reply_is_error() {
        assert_eq!(
            read_all(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::CodeChanged {
                expected: 250,
                found: 251
            })
        );
    }

    #[test]
    fn line_length_limit_counts_crlf() {
        let mut ok = b"250 ".to_vec();
        ok.resize(REPLY_LINE_MAX - 2, b'a');
        ok.extend_from_slice(b"\r\n");
        assert_eq!(read_all(&ok).unwrap().len(), 1);
        let mut long = b"250 ".to_vec();
        long.resize(REPLY_LINE_MAX - 1, b'a');
        long.extend_from_slice(b"\r\n");
        assert_eq!(read_all(&long), Err(ReplyError::LineTooLong));
        // Detected before the LF arrives.
        let mut reader = ReplyReader::default();
        reader.push(&[b'2'; REPLY_LINE_MAX]);
        assert_eq!(reader.next_reply(), Err(ReplyError::LineTooLong));
    }

    #[test]
    fn line_count_limit() {
        let mut input = b"250-x\r\n".repeat(REPLY_LINES_MAX - 1);
        input.extend_from_slice(b"250 x\r\n");
        assert_eq!(read_all(&input).unwrap().len(), 1);
        let mut input = b"250-x\r\n".repeat(REPLY_LINES_MAX);
        input.extend_from_slice(b"250 x\r\n");
        assert_eq!(read_all(&input), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn control_characters_become_spaces() {
        let replies = read_all(b"550 5.1.1 a\rb\x00c\r\n").unwrap();
        assert_eq!(replies[0].text, "a b c");
    }

    #[test]
    fn byte_at_a_time_equals_all_at_once() {
        let input = b"220 hi\r\n250-a\r\n250 2.0.0 b\r\n421 4.4.2 bye\n";
        let whole = read_all(input).unwrap();
        let mut reader = ReplyReader::default();
        let mut pieces = Vec::new();
        for byte in input {
            reader.push(std::slice::from_ref(byte));
            while let Some(reply) = reader.next_reply().unwrap() {
                pieces.push(reply);
            }
        }
        assert_eq!(whole, pieces);
        assert_eq!(whole.len(), 3);
    }
}
