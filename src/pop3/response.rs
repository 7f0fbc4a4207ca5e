//! POP3 response encoding: status lines with RFC 2449 8 response codes,
//! multi-line responses with dot-stuffing (RFC 1939 3), and the TOP cut of
//! a message (RFC 1939 7).
//!
//! Writes into the caller's buffer only; must never emit a bare CR or LF
//! of its own making, and must never let message content end a multi-line
//! response early (every content line starting with "." is stuffed).

use memchr::memchr;

/// Extended response codes (RFC 2449 8, RFC 3206 4-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespCode {
    /// The maildrop is locked by another session (RFC 2449 8.1.2).
    InUse,
    /// A credential problem (RFC 3206 5).
    Auth,
    /// A temporary server problem (RFC 3206 4).
    SysTemp,
    /// A permanent server problem (RFC 3206 4).
    SysPerm,
}

impl RespCode {
    fn as_str(self) -> &'static str {
        match self {
            RespCode::InUse => "[IN-USE]",
            RespCode::Auth => "[AUTH]",
            RespCode::SysTemp => "[SYS/TEMP]",
            RespCode::SysPerm => "[SYS/PERM]",
        }
    }
}

/// `+OK text` (or a bare `+OK` for empty text).
pub fn write_ok(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"+OK");
    if !text.is_empty() {
        out.push(b' ');
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `-ERR [code] text`.
pub fn write_err(out: &mut Vec<u8>, code: Option<RespCode>, text: &str) {
    out.extend_from_slice(b"-ERR ");
    if let Some(code) = code {
        out.extend_from_slice(code.as_str().as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The refusal of a connection a limit turned away before any session
/// (`[limits]`): `-ERR [SYS/TEMP] <reason>` in place of the greeting (a
/// temporary condition, RFC 3206 4), after which the server closes.
pub fn connection_refused(reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_err(&mut out, Some(RespCode::SysTemp), reason);
    out
}

/// The `+ ` continuation of a SASL exchange with an empty challenge
/// (RFC 5034 4).
pub fn write_continuation(out: &mut Vec<u8>) {
    out.extend_from_slice(b"+ \r\n");
}

/// Lines of our own making (CAPA, LIST, UIDL) and the terminator. The
/// lines never start with "." (they are capability names and numbers).
pub fn write_lines<'a>(out: &mut Vec<u8>, lines: impl IntoIterator<Item = &'a str>) {
    for line in lines {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// Message content as a multi-line body, then the terminator. Every line
/// starting with "." gets one more (RFC 1939 3); line ends go out as CRLF
/// whether they came as CRLF or a bare LF, and a last line without a line
/// end gets one, so the terminator always starts a line.
pub fn write_dot_stuffed(out: &mut Vec<u8>, content: &[u8]) {
    let mut rest = content;
    while !rest.is_empty() {
        let (line, next) = match memchr(b'\n', rest) {
            Some(lf) => (&rest[..lf], &rest[lf + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        rest = next;
    }
    out.extend_from_slice(b".\r\n");
}

/// The part of `content` TOP serves: the header, the blank line after it,
/// and at most `body_lines` lines of the body (RFC 1939 7). A message
/// without a blank line is all header and is served whole.
pub fn top_part(content: &[u8], body_lines: u64) -> &[u8] {
    let mut pos = 0;
    let mut in_header = true;
    let mut remaining = body_lines;
    while pos < content.len() {
        if !in_header && remaining == 0 {
            break;
        }
        let line_end = memchr(b'\n', &content[pos..]).map_or(content.len(), |lf| pos + lf + 1);
        let line = &content[pos..line_end];
        if in_header {
            if line == b"\r\n" || line == b"\n" {
                in_header = false;
            }
        } else {
            remaining -= 1;
        }
        pos = line_end;
    }
    &content[..pos]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_dot_stuffed(&mut out, content);
        out
    }

    #[test]
    fn status_lines() {
        let mut out = Vec::new();
        write_ok(&mut out, "");
        write_ok(&mut out, "2 320");
        write_err(&mut out, None, "no such message");
        write_err(&mut out, Some(RespCode::InUse), "locked");
        write_err(&mut out, Some(RespCode::Auth), "a");
        write_err(&mut out, Some(RespCode::SysTemp), "b");
        write_err(&mut out, Some(RespCode::SysPerm), "c");
        write_continuation(&mut out);
        assert_eq!(
            out,
            b"+OK\r\n+OK 2 320\r\n-ERR no such message\r\n-ERR [IN-USE] locked\r\n\
              -ERR [AUTH] a\r\n-ERR [SYS/TEMP] b\r\n-ERR [SYS/PERM] c\r\n+ \r\n"
        );
    }

    #[test]
    fn own_lines_end_with_the_terminator() {
        let mut out = Vec::new();
        write_lines(&mut out, ["1 10", "2 20"]);
        assert_eq!(out, b"1 10\r\n2 20\r\n.\r\n");
        let mut out = Vec::new();
        write_lines(&mut out, []);
        assert_eq!(out, b".\r\n");
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(stuffed(b""), b".\r\n");
        assert_eq!(stuffed(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(
            stuffed(b".\r\n..x\r\nmid.dle\r\n.\r\n"),
            b"..\r\n...x\r\nmid.dle\r\n..\r\n.\r\n"
        );
        assert_eq!(stuffed(b".start"), b"..start\r\n.\r\n");
        assert_eq!(stuffed(b"bare\nlf\n.x"), b"bare\r\nlf\r\n..x\r\n.\r\n");
        assert_eq!(stuffed(b"\r\n\r\n"), b"\r\n\r\n.\r\n");
    }

    #[test]
    fn top_cuts() {
        let message = b"A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\nthree\r\n";
        assert_eq!(top_part(message, 0), b"A: 1\r\nB: 2\r\n\r\n");
        assert_eq!(top_part(message, 1), b"A: 1\r\nB: 2\r\n\r\none\r\n");
        assert_eq!(top_part(message, 3), &message[..]);
        assert_eq!(top_part(message, u64::MAX), &message[..]);
        assert_eq!(top_part(b"A: 1\r\nB: 2\r\n", 5), b"A: 1\r\nB: 2\r\n");
        assert_eq!(top_part(b"A: 1", 0), b"A: 1");
        assert_eq!(top_part(b"", 3), b"");
        assert_eq!(top_part(b"\r\nbody\r\n", 0), b"\r\n");
        assert_eq!(top_part(b"A: 1\r\n\r\nno end", 9), b"A: 1\r\n\r\nno end");
    }
}
