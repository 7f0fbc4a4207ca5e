//! Locates FETCH body sections (RFC 3501 6.4.5, RFC 9051 6.4.5) in a raw
//! RFC 5322 message: HEADER, HEADER.FIELDS[.NOT], TEXT, MIME and part
//! numbers through multipart bodies (RFC 2046 5.1) and encapsulated
//! message/rfc822 parts, plus `<origin.length>` partial ranges.
//!
//! It works on byte ranges of the message as stored, so sections are
//! served straight from the mapped spool without copying, except
//! HEADER.FIELDS, which selects lines. It decodes no transfer encoding,
//! never allocates in proportion to anything but the header it filters,
//! and never panics on any input.

use std::borrow::Cow;
use std::ops::Range;

use super::command::{Partial, Section, SectionText};

/// One MIME entity: its header (with the blank line ending it) and body,
/// as ranges of the whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entity {
    pub(super) header: Range<usize>,
    pub(super) body: Range<usize>,
    /// Content type when the header names none: message/rfc822 inside
    /// multipart/digest (RFC 2046 5.1.5), text/plain elsewhere.
    pub(super) digest_child: bool,
}

impl Entity {
    /// Splits `range` of `message` at the first empty line.
    pub(super) fn parse(message: &[u8], range: Range<usize>, digest_child: bool) -> Entity {
        let bytes = message.get(range.clone()).unwrap_or_default();
        let header_len = header_length(bytes);
        let body_start = range.start + header_len;
        Entity {
            header: range.start..body_start,
            body: body_start..range.end,
            digest_child,
        }
    }

    pub(super) fn content_type(&self, message: &[u8]) -> ContentType {
        let header = message.get(self.header.clone()).unwrap_or_default();
        match field_value(header, b"content-type") {
            Some(value) => ContentType::parse(&value),
            None if self.digest_child => ContentType::message_rfc822(),
            None => ContentType::default(),
        }
    }
}

/// Length of the header block at the start of `bytes`, including the
/// empty line that ends it; all of `bytes` if there is none.
fn header_length(bytes: &[u8]) -> usize {
    let mut line_start = 0;
    while line_start < bytes.len() {
        let rest = bytes.get(line_start..).unwrap_or_default();
        if rest.starts_with(b"\r\n") {
            return line_start + 2;
        }
        if rest.starts_with(b"\n") {
            return line_start + 1;
        }
        match memchr::memchr(b'\n', rest) {
            Some(end) => line_start += end + 1,
            None => return bytes.len(),
        }
    }
    bytes.len()
}

/// A parsed Content-Type (RFC 2045 5.1), or Content-Disposition (RFC 2183)
/// where `media_type` is the disposition and `subtype` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ContentType {
    /// Lower-cased type, e.g. `text`.
    pub(super) media_type: String,
    /// Lower-cased subtype, e.g. `plain`.
    pub(super) subtype: String,
    /// Parameters in order, values unquoted.
    pub(super) params: Vec<(String, Vec<u8>)>,
}

impl Default for ContentType {
    /// `text/plain; charset=us-ascii` (RFC 2045 5.2).
    fn default() -> Self {
        ContentType {
            media_type: "text".into(),
            subtype: "plain".into(),
            params: vec![("charset".into(), b"us-ascii".to_vec())],
        }
    }
}

impl ContentType {
    fn message_rfc822() -> Self {
        ContentType {
            media_type: "message".into(),
            subtype: "rfc822".into(),
            params: Vec::new(),
        }
    }

    pub(super) fn is_multipart(&self) -> bool {
        self.media_type == "multipart"
    }

    pub(super) fn is_rfc822(&self) -> bool {
        self.media_type == "message" && self.subtype == "rfc822"
    }

    fn boundary(&self) -> Option<&[u8]> {
        self.params
            .iter()
            .find(|(name, _)| name == "boundary")
            .map(|(_, value)| value.as_slice())
            .filter(|value| !value.is_empty())
    }

    /// Parses a Content-Type value; one without a valid `type/subtype`
    /// is text/plain (RFC 2045 5.2).
    fn parse(value: &[u8]) -> Self {
        let mut content_type = Self::parse_disposition(value);
        let media = std::mem::take(&mut content_type.media_type);
        match media.split_once('/') {
            Some((media_type, subtype)) if !media_type.is_empty() && !subtype.is_empty() => {
                content_type.media_type = media_type.trim().to_string();
                content_type.subtype = subtype.trim().to_string();
                content_type
            }
            _ => ContentType::default(),
        }
    }

    /// Parses `value; name=value; ...` keeping the first word whole.
    pub(super) fn parse_disposition(value: &[u8]) -> Self {
        let mut pieces = split_parameters(value).into_iter();
        let first = pieces.next().unwrap_or_default();
        let mut params = Vec::new();
        for parameter in pieces {
            let Some(eq) = parameter.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (name, raw) = parameter.split_at(eq);
            let name = String::from_utf8_lossy(name.trim_ascii()).to_ascii_lowercase();
            if !name.is_empty() {
                params.push((name, unquote(raw.get(1..).unwrap_or_default().trim_ascii())));
            }
        }
        ContentType {
            media_type: String::from_utf8_lossy(first.trim_ascii()).to_ascii_lowercase(),
            subtype: String::new(),
            params,
        }
    }
}

/// Splits a header value at `;` outside quoted strings.
fn split_parameters(value: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (index, &b) in value.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b';' if !quoted => {
                pieces.push(value.get(start..index).unwrap_or_default());
                start = index + 1;
            }
            _ => {}
        }
    }
    pieces.push(value.get(start..).unwrap_or_default());
    pieces
}

fn unquote(raw: &[u8]) -> Vec<u8> {
    let Some(inner) = raw.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\"")) else {
        return raw.to_vec();
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut escaped = false;
    for &b in inner {
        if b == b'\\' && !escaped {
            escaped = true;
        } else {
            out.push(b);
            escaped = false;
        }
    }
    out
}

/// The unfolded value of the first field called `name` in `header`.
pub(super) fn field_value(header: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    header_fields(header).find_map(|field| {
        let colon = field.iter().position(|&b| b == b':')?;
        let (field_name, rest) = field.split_at(colon);
        field_name.trim_ascii().eq_ignore_ascii_case(name).then(|| {
            rest.get(1..)
                .unwrap_or_default()
                .iter()
                .copied()
                .filter(|&b| b != b'\r' && b != b'\n')
                .collect()
        })
    })
}

/// The header fields of a header block, each with its continuation lines
/// and line ends; the empty line ending the block is not a field.
pub(crate) fn header_fields(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = header;
    std::iter::from_fn(move || {
        if rest.is_empty() || rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return None;
        }
        let mut end = 0;
        loop {
            end = match memchr::memchr(b'\n', rest.get(end..).unwrap_or_default()) {
                Some(i) => end + i + 1,
                None => rest.len(),
            };
            if !matches!(rest.get(end), Some(b' ' | b'\t')) {
                break;
            }
        }
        let (field, tail) = rest.split_at(end.min(rest.len()));
        rest = tail;
        Some(field)
    })
}

/// Quoted-printable content (RFC 2045 6.7): `=XX` escapes and soft line
/// breaks undone; a malformed escape is kept as it is (rule 6.7 (1),
/// robustness note).
pub(crate) fn decode_quoted_printable(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        if byte != b'=' {
            out.push(byte);
            continue;
        }
        if let Some(after) = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))
        {
            rest = after;
            continue;
        }
        let hex = |b: u8| char::from(b).to_digit(16);
        match rest {
            [high, low, after @ ..] => match (hex(*high), hex(*low)) {
                (Some(high), Some(low)) => {
                    // Two hex digits make at most 0xFF.
                    out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                    rest = after;
                }
                _ => out.push(b'='),
            },
            _ => out.push(b'='),
        }
    }
    out
}

/// The body parts of a multipart entity (RFC 2046 5.1.1): the bytes
/// between delimiter lines, the CRLF before each delimiter excluded.
pub(super) fn multipart_parts(
    message: &[u8],
    body: Range<usize>,
    boundary: &[u8],
) -> Vec<Range<usize>> {
    let bytes = message.get(body.clone()).unwrap_or_default();
    let mut parts = Vec::new();
    let mut current: Option<usize> = None;
    let mut line_start = 0;
    while line_start < bytes.len() {
        let rest = bytes.get(line_start..).unwrap_or_default();
        let line_end = memchr::memchr(b'\n', rest).map_or(bytes.len(), |i| line_start + i + 1);
        let delimiter = rest
            .strip_prefix(b"--")
            .and_then(|r| r.strip_prefix(boundary));
        if let Some(after) = delimiter {
            let closing = after.starts_with(b"--");
            let trailer = if closing { after.get(2..) } else { Some(after) };
            let line_tail = trailer
                .unwrap_or_default()
                .iter()
                .take_while(|&&b| b != b'\n')
                .all(|&b| b == b' ' || b == b'\t' || b == b'\r');
            if line_tail {
                if let Some(start) = current.take() {
                    let mut end = line_start.max(start);
                    if end > start && bytes.get(end - 1) == Some(&b'\n') {
                        end -= 1;
                        if end > start && bytes.get(end - 1) == Some(&b'\r') {
                            end -= 1;
                        }
                    }
                    parts.push(body.start + start..body.start + end);
                }
                if closing {
                    return parts;
                }
                current = Some(line_end);
            }
        }
        line_start = line_end;
    }
    if let Some(start) = current {
        parts.push(body.start + start..body.end);
    }
    parts
}

/// Follows a part path (RFC 3501 6.4.5) from the top-level message.
fn find_part(message: &[u8], path: &[u32]) -> Option<Entity> {
    let mut entity = Entity::parse(message, 0..message.len(), false);
    let mut top = true;
    for &number in path {
        let mut content_type = entity.content_type(message);
        if !top && content_type.is_rfc822() {
            entity = Entity::parse(message, entity.body.clone(), false);
            content_type = entity.content_type(message);
        }
        top = false;
        if content_type.is_multipart() {
            let boundary = content_type.boundary()?;
            let index = usize::try_from(number).ok()?.checked_sub(1)?;
            let range = multipart_parts(message, entity.body.clone(), boundary)
                .into_iter()
                .nth(index)?;
            entity = Entity::parse(message, range, content_type.subtype == "digest");
        } else if number != 1 {
            return None;
        }
    }
    Some(entity)
}

/// The bytes of `section` of `message`, or None if the section does not
/// exist (a part number beyond the parts, HEADER/TEXT of a part that is not
/// message/rfc822).
pub fn section<'a>(message: &'a [u8], section: &Section) -> Option<Cow<'a, [u8]>> {
    let entity = find_part(message, &section.part)?;
    let slice = |range: Range<usize>| message.get(range).map(Cow::Borrowed);
    let Some(text) = &section.text else {
        return if section.part.is_empty() {
            Some(Cow::Borrowed(message))
        } else {
            slice(entity.body)
        };
    };
    if matches!(text, SectionText::Mime) {
        return slice(entity.header);
    }
    // HEADER, HEADER.FIELDS and TEXT of a part apply to the message it
    // encapsulates.
    let target = if section.part.is_empty() {
        entity
    } else if entity.content_type(message).is_rfc822() {
        Entity::parse(message, entity.body, false)
    } else {
        return None;
    };
    match text {
        SectionText::Header => slice(target.header),
        SectionText::Text => slice(target.body),
        SectionText::HeaderFields(names) => Some(Cow::Owned(select_fields(
            message.get(target.header)?,
            names,
            true,
        ))),
        SectionText::HeaderFieldsNot(names) => Some(Cow::Owned(select_fields(
            message.get(target.header)?,
            names,
            false,
        ))),
        SectionText::Mime => None,
    }
}

/// The fields of `header` whose names are (or, with `keep` false, are not)
/// in `names`, then the empty line (RFC 3501 6.4.5).
fn select_fields(header: &[u8], names: &[String], keep: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for field in header_fields(header) {
        let name = field
            .iter()
            .position(|&b| b == b':')
            .and_then(|colon| field.get(..colon))
            .unwrap_or_default()
            .trim_ascii();
        let listed = names
            .iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name));
        if listed == keep {
            out.extend_from_slice(field);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The `<origin.length>` window of section data (RFC 3501 6.4.5): empty
/// when the origin is past the end, shortened at the end.
pub fn partial(data: &[u8], window: Partial) -> &[u8] {
    let start = usize::try_from(window.origin).map_or(data.len(), |o| o.min(data.len()));
    let length = usize::try_from(window.length).unwrap_or(usize::MAX);
    let end = start.saturating_add(length).min(data.len());
    data.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE: &[u8] = b"From: a@example.org\r\nSubject: hi\r\n there\r\n\r\nBody line\r\n";

    const NESTED: &[u8] = b"From: a@example.org\r\n\
Content-Type: multipart/mixed; boundary=\"outer b\"\r\n\
\r\n\
preamble\r\n\
--outer b\r\n\
Content-Type: text/plain\r\n\
\r\n\
part one\r\n\
--outer b\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
Subject: inner\r\n\
Content-Type: multipart/alternative; boundary=in\r\n\
\r\n\
--in\r\n\
\r\n\
inner plain\r\n\
--in\r\n\
Content-Type: text/html\r\n\
\r\n\
<p>inner</p>\r\n\
--in--\r\n\
\r\n\
--outer b \r\n\
Content-Type: multipart/digest; boundary=d\r\n\
\r\n\
--d\r\n\
\r\n\
Subject: digested\r\n\
\r\n\
digest body\r\n\
--d--\r\n\
--outer b--\r\n\
epilogue\r\n";

    fn get(message: &[u8], part: &[u32], text: Option<SectionText>) -> Option<String> {
        let section = Section {
            part: part.to_vec(),
            text,
        };
        super::section(message, &section).map(|b| String::from_utf8(b.into_owned()).unwrap())
    }

    #[test]
    fn top_level_sections() {
        assert_eq!(get(SIMPLE, &[], None).unwrap().as_bytes(), SIMPLE);
        assert_eq!(
            get(SIMPLE, &[], Some(SectionText::Header)).unwrap(),
            "From: a@example.org\r\nSubject: hi\r\n there\r\n\r\n"
        );
        assert_eq!(
            get(SIMPLE, &[], Some(SectionText::Text)).unwrap(),
            "Body line\r\n"
        );
        assert_eq!(get(SIMPLE, &[1], None).unwrap(), "Body line\r\n");
        assert_eq!(get(SIMPLE, &[2], None), None);
        assert_eq!(get(SIMPLE, &[1], Some(SectionText::Header)), None);
    }

    #[test]
    fn header_fields_select_and_exclude_with_continuations() {
        assert_eq!(
            get(
                SIMPLE,
                &[],
                Some(SectionText::HeaderFields(vec!["SUBJECT".into()]))
            )
            .unwrap(),
            "Subject: hi\r\n there\r\n\r\n"
        );
        assert_eq!(
            get(
                SIMPLE,
                &[],
                Some(SectionText::HeaderFieldsNot(vec!["subject".into()]))
            )
            .unwrap(),
            "From: a@example.org\r\n\r\n"
        );
        assert_eq!(
            get(
                SIMPLE,
                &[],
                Some(SectionText::HeaderFields(vec!["X-None".into()]))
            )
            .unwrap(),
            "\r\n"
        );
    }

    #[test]
    fn multipart_and_encapsulated_parts() {
        assert_eq!(get(NESTED, &[1], None).unwrap(), "part one");
        assert_eq!(
            get(NESTED, &[1], Some(SectionText::Mime)).unwrap(),
            "Content-Type: text/plain\r\n\r\n"
        );
        let encapsulated = get(NESTED, &[2], None).unwrap();
        assert!(encapsulated.starts_with("Subject: inner\r\n"));
        assert!(encapsulated.ends_with("--in--\r\n"));
        assert_eq!(
            get(NESTED, &[2], Some(SectionText::Header)).unwrap(),
            "Subject: inner\r\nContent-Type: multipart/alternative; boundary=in\r\n\r\n"
        );
        assert!(get(NESTED, &[2], Some(SectionText::Text))
            .unwrap()
            .starts_with("--in\r\n"));
        assert_eq!(
            get(
                NESTED,
                &[2],
                Some(SectionText::HeaderFields(vec!["subject".into()]))
            )
            .unwrap(),
            "Subject: inner\r\n\r\n"
        );
        assert_eq!(get(NESTED, &[2, 1], None).unwrap(), "inner plain");
        assert_eq!(get(NESTED, &[2, 2], None).unwrap(), "<p>inner</p>");
        assert_eq!(
            get(NESTED, &[2, 2], Some(SectionText::Mime)).unwrap(),
            "Content-Type: text/html\r\n\r\n"
        );
        assert_eq!(get(NESTED, &[2, 3], None), None);
        // multipart/digest: a part without Content-Type is message/rfc822.
        assert_eq!(
            get(NESTED, &[3, 1], Some(SectionText::Header)).unwrap(),
            "Subject: digested\r\n\r\n"
        );
        assert_eq!(get(NESTED, &[3, 1, 1], None).unwrap(), "digest body");
        assert_eq!(get(NESTED, &[4], None), None);
        assert_eq!(get(NESTED, &[1, 1], None).unwrap(), "part one");
        assert_eq!(get(NESTED, &[1, 2], None), None);
        assert_eq!(get(NESTED, &[1], Some(SectionText::Text)), None);
    }

    #[test]
    fn malformed_messages_do_not_break_location() {
        let no_close = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nonly\r\n";
        assert_eq!(get(no_close, &[1], None).unwrap(), "only\r\n");
        let no_boundary = b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nonly\r\n";
        assert_eq!(get(no_boundary, &[1], None), None);
        let header_only = b"Subject: x\r\n";
        assert_eq!(get(header_only, &[], Some(SectionText::Text)).unwrap(), "");
        assert_eq!(get(b"", &[], Some(SectionText::Header)).unwrap(), "");
        let lf_only = b"Subject: x\n\nbody\n";
        assert_eq!(
            get(lf_only, &[], Some(SectionText::Text)).unwrap(),
            "body\n"
        );
        // A line that merely starts with the boundary is not a delimiter.
        let lookalike =
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\na\r\n--xy\r\n--x--\r\n";
        assert_eq!(get(lookalike, &[1], None).unwrap(), "a\r\n--xy");
    }

    #[test]
    fn partial_windows_clamp() {
        let data = b"0123456789";
        let window = |origin, length| Partial { origin, length };
        assert_eq!(partial(data, window(2, 3)), b"234");
        assert_eq!(partial(data, window(8, 100)), b"89");
        assert_eq!(partial(data, window(10, 1)), b"");
        assert_eq!(partial(data, window(u32::MAX, u32::MAX)), b"");
    }
}
