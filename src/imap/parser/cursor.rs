//! A cursor over one buffered IMAP command with the lexical rules of
//! RFC 3501 9 (atoms, quoted strings, literals, numbers, astrings,
//! nstrings). Literals sit inline in the buffer as `{n}` or `{n+}`, CRLF,
//! then `n` bytes of data, exactly as the reader framed them.
//!
//! The cursor never reads past its buffer and never panics. When the buffer
//! is a prefix that ends where a literal's data should start, reaching that
//! literal yields [`ParseError::Incomplete`], which is how the reader checks
//! a command before asking the client for the literal.

use std::borrow::Cow;

/// Why parsing stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ParseError {
    /// The buffer is a prefix and ends at a literal's data: fine so far.
    Incomplete,
    /// The command is malformed; the text names what was wrong.
    Bad(String),
}

pub(super) type ParseResult<T> = Result<T, ParseError>;

pub(super) fn bad<T>(text: impl Into<String>) -> ParseResult<T> {
    Err(ParseError::Bad(text.into()))
}

/// Longest decimal number accepted where RFC 3501 says `number` (32 bits).
const NUMBER_DIGITS_MAX: usize = 10;

/// RFC 3501 9 ATOM-CHAR: any CHAR except atom-specials.
pub(crate) fn is_atom_char(b: u8) -> bool {
    matches!(b, 0x21..=0x7e) && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

/// RFC 3501 9 ASTRING-CHAR: ATOM-CHAR or `]`.
pub(crate) fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

/// RFC 3501 9 list-char: ATOM-CHAR, list-wildcards or `]`.
fn is_list_char(b: u8) -> bool {
    is_astring_char(b) || b == b'%' || b == b'*'
}

pub(super) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The buffer ends where the data of its last literal will start.
    prefix: bool,
}

impl<'a> Cursor<'a> {
    /// A cursor over a complete command.
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Cursor {
            buf,
            pos: 0,
            prefix: false,
        }
    }

    /// A cursor over a command received up to a literal announcement.
    pub(super) fn prefix(buf: &'a [u8]) -> Self {
        Cursor {
            buf,
            pos: 0,
            prefix: true,
        }
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// The unread rest of the buffer.
    pub(super) fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// Consumes `b` if it is next.
    pub(super) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Consumes `word` if it is next, ignoring ASCII case.
    pub(super) fn eat_word(&mut self, word: &str) -> bool {
        let rest = self.rest();
        match rest.get(..word.len()) {
            Some(head) if head.eq_ignore_ascii_case(word.as_bytes()) => {
                self.pos += word.len();
                true
            }
            _ => false,
        }
    }

    pub(super) fn expect(&mut self, b: u8, what: &str) -> ParseResult<()> {
        if self.eat(b) {
            Ok(())
        } else {
            bad(what)
        }
    }

    /// One space before an argument of `command`.
    pub(super) fn space(&mut self, command: &str) -> ParseResult<()> {
        match self.peek() {
            Some(b' ') => {
                self.pos += 1;
                Ok(())
            }
            None => bad(format!("Missing argument to {command}")),
            Some(_) => bad(format!("Expected space in {command}")),
        }
    }

    /// The end of the command after `command`'s last argument.
    pub(super) fn end(&self, command: &str) -> ParseResult<()> {
        if self.at_end() {
            Ok(())
        } else {
            bad(format!("Unexpected characters after {command} arguments"))
        }
    }

    pub(super) fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a [u8] {
        let rest = self.rest();
        let len = rest.iter().take_while(|&&b| pred(b)).count();
        self.pos += len;
        rest.get(..len).unwrap_or_default()
    }

    /// 1*ATOM-CHAR.
    pub(super) fn atom(&mut self, what: &str) -> ParseResult<&'a [u8]> {
        let atom = self.take_while(is_atom_char);
        if atom.is_empty() {
            bad(format!("Expected {what}"))
        } else {
            Ok(atom)
        }
    }

    /// An atom upper-cased, for keywords and capability names.
    pub(super) fn keyword(&mut self, what: &str) -> ParseResult<String> {
        Ok(String::from_utf8_lossy(self.atom(what)?).to_ascii_uppercase())
    }

    /// RFC 3501 `number`: 1*DIGIT fitting 32 bits.
    pub(super) fn number(&mut self, what: &str) -> ParseResult<u32> {
        let digits = self.take_while(|b| b.is_ascii_digit());
        if digits.is_empty() || digits.len() > NUMBER_DIGITS_MAX {
            return bad(format!("Expected number for {what}"));
        }
        digits
            .iter()
            .try_fold(0u32, |n, &d| {
                n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
            })
            .map_or_else(|| bad(format!("Number too large for {what}")), Ok)
    }

    /// RFC 3501 `nz-number`.
    pub(super) fn nz_number(&mut self, what: &str) -> ParseResult<u32> {
        match self.number(what)? {
            0 => bad(format!("Zero is not allowed for {what}")),
            n => Ok(n),
        }
    }

    /// A 63-bit number (RFC 9051 `number64`), for sizes in SEARCH.
    pub(super) fn number64(&mut self, what: &str) -> ParseResult<u64> {
        let digits = self.take_while(|b| b.is_ascii_digit());
        if digits.is_empty() {
            return bad(format!("Expected number for {what}"));
        }
        digits
            .iter()
            .try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .filter(|&n| n <= i64::MAX as u64)
            .map_or_else(|| bad(format!("Number too large for {what}")), Ok)
    }

    /// `string`: quoted or literal.
    pub(super) fn string(&mut self, what: &str) -> ParseResult<Cow<'a, [u8]>> {
        match self.peek() {
            Some(b'"') => self.quoted(what).map(Cow::Owned),
            Some(b'{') => self.literal(what).map(Cow::Borrowed),
            _ => bad(format!("Expected string for {what}")),
        }
    }

    /// `astring`: 1*ASTRING-CHAR or string.
    pub(super) fn astring(&mut self, what: &str) -> ParseResult<Cow<'a, [u8]>> {
        match self.peek() {
            Some(b'"') | Some(b'{') => self.string(what),
            _ => {
                let atom = self.take_while(is_astring_char);
                if atom.is_empty() {
                    bad(format!("Expected {what}"))
                } else {
                    Ok(Cow::Borrowed(atom))
                }
            }
        }
    }

    /// `astring` that must be UTF-8.
    pub(super) fn astring_utf8(&mut self, what: &str) -> ParseResult<String> {
        String::from_utf8(self.astring(what)?.into_owned())
            .or_else(|_| bad(format!("{what} is not UTF-8")))
    }

    /// `nstring`: string or NIL.
    pub(super) fn nstring(&mut self, what: &str) -> ParseResult<Option<Cow<'a, [u8]>>> {
        if self.peek() != Some(b'"') && self.peek() != Some(b'{') {
            if self.eat_word("NIL") {
                return Ok(None);
            }
            return bad(format!("Expected string or NIL for {what}"));
        }
        self.string(what).map(Some)
    }

    /// `list-mailbox`: 1*list-char or string (LIST and LSUB patterns).
    pub(super) fn list_mailbox(&mut self, what: &str) -> ParseResult<Cow<'a, [u8]>> {
        match self.peek() {
            Some(b'"') | Some(b'{') => self.string(what),
            _ => {
                let pattern = self.take_while(is_list_char);
                if pattern.is_empty() {
                    bad(format!("Expected {what}"))
                } else {
                    Ok(Cow::Borrowed(pattern))
                }
            }
        }
    }

    /// `quoted` (RFC 3501 9; 8-bit text accepted as IMAP4rev2 allows).
    fn quoted(&mut self, what: &str) -> ParseResult<Vec<u8>> {
        self.expect(b'"', "Expected quoted string")?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\r') | Some(b'\n') | Some(0) => {
                    return bad(format!("Unterminated quoted string for {what}"));
                }
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            self.pos += 1;
                            out.push(c);
                        }
                        _ => return bad(format!("Invalid escape in quoted string for {what}")),
                    }
                }
                Some(c) => {
                    self.pos += 1;
                    out.push(c);
                }
            }
        }
    }

    /// `literal`: `{n}` or `{n+}` (RFC 7888), CRLF, n bytes.
    fn literal(&mut self, what: &str) -> ParseResult<&'a [u8]> {
        self.expect(b'{', "Expected literal")?;
        let digits = self.take_while(|b| b.is_ascii_digit());
        let size = digits
            .iter()
            .try_fold(0usize, |n, &d| {
                n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
            })
            .filter(|_| !digits.is_empty());
        let Some(size) = size else {
            return bad(format!("Invalid literal size for {what}"));
        };
        self.eat(b'+');
        if !self.eat(b'}') || !self.eat(b'\r') || !self.eat(b'\n') {
            return bad(format!("Malformed literal for {what}"));
        }
        if self.prefix && self.rest().is_empty() {
            return Err(ParseError::Incomplete);
        }
        let end = self.pos.saturating_add(size);
        match self.buf.get(self.pos..end) {
            Some(data) => {
                self.pos = end;
                Ok(data)
            }
            None => bad(format!("Literal for {what} is shorter than announced")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoms_stop_at_specials() {
        let mut c = Cursor::new(b"abc(def");
        assert_eq!(c.atom("x").unwrap(), b"abc");
        assert_eq!(c.peek(), Some(b'('));
        assert!(Cursor::new(b"]x").atom("x").is_err());
        assert_eq!(Cursor::new(b"a]b c").astring("x").unwrap().as_ref(), b"a]b");
    }

    #[test]
    fn quoted_strings_unescape_and_reject_bad_escapes() {
        let mut c = Cursor::new(br#""a\"b\\c" rest"#);
        assert_eq!(c.astring("x").unwrap().as_ref(), br#"a"b\c"#);
        assert!(Cursor::new(br#""a\nb""#).astring("x").is_err());
        assert!(Cursor::new(b"\"abc").astring("x").is_err());
        assert!(Cursor::new(b"\"a\r\nb\"").astring("x").is_err());
    }

    #[test]
    fn literals_read_inline_data_and_report_incomplete_prefixes() {
        let mut c = Cursor::new(b"{3}\r\na\r\nb");
        assert_eq!(c.astring("x").unwrap().as_ref(), b"a\r\n");
        assert_eq!(c.rest(), b"b");
        let mut c = Cursor::new(b"{3+}\r\nabc");
        assert_eq!(c.string("x").unwrap().as_ref(), b"abc");
        let mut c = Cursor::new(b"{0}\r\n");
        assert_eq!(c.string("x").unwrap().as_ref(), b"");
        assert_eq!(
            Cursor::prefix(b"{3}\r\n").string("x"),
            Err(ParseError::Incomplete)
        );
        assert_eq!(
            Cursor::prefix(b"{0}\r\n").string("x"),
            Err(ParseError::Incomplete)
        );
        assert!(Cursor::new(b"{3}\r\n").string("x").is_err());
        assert!(Cursor::new(b"{3}\r\nab").string("x").is_err());
        assert!(Cursor::new(b"{x}\r\nab").string("x").is_err());
        assert!(Cursor::new(b"{}\r\n").string("x").is_err());
        assert!(Cursor::new(b"{99999999999999999999999}\r\n")
            .string("x")
            .is_err());
    }

    #[test]
    fn numbers_are_bounded() {
        assert_eq!(Cursor::new(b"4294967295").number("x").unwrap(), u32::MAX);
        assert!(Cursor::new(b"4294967296").number("x").is_err());
        assert!(Cursor::new(b"0").nz_number("x").is_err());
        assert!(Cursor::new(b"x").number("x").is_err());
        assert_eq!(
            Cursor::new(b"9223372036854775807").number64("x").unwrap(),
            i64::MAX as u64
        );
        assert!(Cursor::new(b"9223372036854775808").number64("x").is_err());
    }

    #[test]
    fn nstring_and_words() {
        assert_eq!(Cursor::new(b"nil").nstring("x").unwrap(), None);
        assert!(Cursor::new(b"NILS").nstring("x").is_ok());
        assert!(Cursor::new(b"abc").nstring("x").is_err());
        let mut c = Cursor::new(b"Body.Peek[");
        assert!(c.eat_word("BODY.PEEK"));
        assert_eq!(c.peek(), Some(b'['));
    }
}
