//! SMTP replies: a reply code, an optional enhanced status code (RFC 3463)
//! and one or more text lines, serialised to the wire form of RFC 5321 4.2.
//!
//! This module only formats replies. It must never decide which reply a
//! command gets (that is the session's job) and must never emit a CR or LF
//! inside a text line, whatever text it is given.

use std::borrow::Cow;

/// An enhanced mail system status code `class.subject.detail` (RFC 3463 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedStatus {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedStatus {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }
}

/// One SMTP reply. The greeting and the replies to EHLO/HELO carry no
/// enhanced status code (RFC 2034 3 exempts them, and EHLO keyword lines
/// must stay parseable as keywords); every other reply carries one on each
/// of its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    status: Option<EnhancedStatus>,
    first: Cow<'static, str>,
    more: Vec<Cow<'static, str>>,
}

/// The `class` label values of the reply metrics, in order.
pub const REPLY_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// The metric label for a reply code's class (RFC 5321 4.2.1): anything
/// outside 2xx-4xx counts as 5xx. Shared by the server and the client so
/// both count replies the same way.
pub fn class_label(code: u16) -> &'static str {
    match code / 100 {
        2 => REPLY_CLASSES[0],
        3 => REPLY_CLASSES[1],
        4 => REPLY_CLASSES[2],
        _ => REPLY_CLASSES[3],
    }
}

impl Reply {
    /// A single-line reply with an enhanced status code.
    pub fn new(code: u16, status: EnhancedStatus, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            status: Some(status),
            first: text.into(),
            more: Vec::new(),
        }
    }

    /// A reply without an enhanced status code (greeting, EHLO, HELO only).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            status: None,
            first: text.into(),
            more: Vec::new(),
        }
    }

    /// Adds a further line, making the reply multi-line (RFC 5321 4.2.1).
    pub fn with_line(mut self, text: impl Into<Cow<'static, str>>) -> Self {
        self.more.push(text.into());
        self
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    pub fn status(&self) -> Option<EnhancedStatus> {
        self.status
    }

    /// The text lines, first to last, as given.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.first.as_ref()).chain(self.more.iter().map(|line| line.as_ref()))
    }

    /// Appends the wire form to `out`: `code-text` for every line but the
    /// last, `code text` for the last, each ending in CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.more.len();
        for (index, line) in self.lines().enumerate() {
            push_decimal(out, u64::from(self.code));
            out.push(if index == last { b' ' } else { b'-' });
            if let Some(status) = self.status {
                push_decimal(out, u64::from(status.class));
                out.push(b'.');
                push_decimal(out, u64::from(status.subject));
                out.push(b'.');
                push_decimal(out, u64::from(status.detail));
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            push_text(out, line);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_to(&mut out);
        out
    }
}

/// The refusal of a connection a limit turned away before any session
/// (`[limits]`): `421 4.7.0 <host> <reason>`, after which the server
/// closes (RFC 5321 3.1 allows 421 in place of the greeting).
pub fn connection_refused(hostname: &str, reason: &str) -> Vec<u8> {
    Reply::new(
        421,
        EnhancedStatus::new(4, 7, 0),
        format!("{hostname} {reason}"),
    )
    .to_bytes()
}

/// Copies text, replacing control characters (CR and LF above all) with
/// `?` so that no caller can split a reply or inject a line.
fn push_text(out: &mut Vec<u8>, text: &str) {
    for &byte in text.as_bytes() {
        out.push(if byte < 0x20 || byte == 0x7f {
            b'?'
        } else {
            byte
        });
    }
}

fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        // `value % 10` is below 10, so the cast cannot truncate.
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_enhanced_code() {
        let reply = Reply::new(250, EnhancedStatus::new(2, 1, 0), "Ok");
        assert_eq!(reply.to_bytes(), b"250 2.1.0 Ok\r\n");
        assert_eq!(reply.code(), 250);
        assert_eq!(reply.status(), Some(EnhancedStatus::new(2, 1, 0)));
    }

    #[test]
    fn multi_line_carries_enhanced_code_on_every_line() {
        let reply = Reply::new(214, EnhancedStatus::new(2, 0, 0), "one")
            .with_line("two")
            .with_line("three");
        assert_eq!(
            reply.to_bytes(),
            b"214-2.0.0 one\r\n214-2.0.0 two\r\n214 2.0.0 three\r\n"
        );
    }

    #[test]
    fn plain_reply_has_no_enhanced_code() {
        let reply = Reply::plain(250, "mx.example").with_line("PIPELINING");
        assert_eq!(reply.to_bytes(), b"250-mx.example\r\n250 PIPELINING\r\n");
        assert_eq!(reply.status(), None);
    }

    #[test]
    fn control_characters_in_text_cannot_split_a_reply() {
        let reply = Reply::new(
            250,
            EnhancedStatus::new(2, 0, 0),
            String::from("id\r\n250 fake"),
        );
        assert_eq!(reply.to_bytes(), b"250 2.0.0 id??250 fake\r\n");
    }

    #[test]
    fn empty_text_leaves_no_trailing_space() {
        let reply = Reply::new(250, EnhancedStatus::new(2, 0, 0), "");
        assert_eq!(reply.to_bytes(), b"250 2.0.0\r\n");
    }

    #[test]
    fn large_numbers_are_written_in_full() {
        let mut out = Vec::new();
        push_decimal(&mut out, u64::MAX);
        assert_eq!(out, u64::MAX.to_string().as_bytes());
        out.clear();
        push_decimal(&mut out, 0);
        assert_eq!(out, b"0");
    }
}
