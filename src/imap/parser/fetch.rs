//! Parser for the FETCH attribute argument (RFC 3501 6.4.5 and 9
//! `fetch-att`, RFC 3516 BINARY): macros, simple attributes, and
//! `BODY[section]<partial>` with every section form.
//!
//! It expands the ALL/FAST/FULL macros (RFC 3501 6.4.5) and knows nothing
//! of messages; it must never panic on any input.

use super::cursor::{bad, Cursor, ParseResult};
use crate::imap::command::{FetchAttribute, Partial, Section, SectionText};

/// Most part numbers in one section path. RFC 3501 sets no limit; MIME
/// nesting deeper than this is not something a client can expect to fetch.
const SECTION_PART_DEPTH_MAX: usize = 64;

/// The attribute argument of FETCH: a macro, one attribute, or a
/// parenthesised list.
pub(super) fn fetch_attributes(c: &mut Cursor<'_>) -> ParseResult<Vec<FetchAttribute>> {
    if c.eat(b'(') {
        let mut attributes = Vec::new();
        loop {
            attributes.push(attribute(c)?);
            if c.eat(b')') {
                return Ok(attributes);
            }
            if !c.eat(b' ') {
                return bad("Missing ) in FETCH attribute list");
            }
        }
    }
    for (name, expansion) in [
        ("ALL", &MACRO_ALL[..]),
        ("FAST", &MACRO_ALL[..3]),
        ("FULL", &MACRO_FULL[..]),
    ] {
        let mut probe = Cursor::new(c.rest());
        if probe.eat_word(name) && !probe.peek().is_some_and(is_name_char) {
            c.eat_word(name);
            return Ok(expansion.to_vec());
        }
    }
    Ok(vec![attribute(c)?])
}

/// ALL; its first three are FAST (RFC 3501 6.4.5).
const MACRO_ALL: [FetchAttribute; 4] = [
    FetchAttribute::Flags,
    FetchAttribute::InternalDate,
    FetchAttribute::Rfc822Size,
    FetchAttribute::Envelope,
];
const MACRO_FULL: [FetchAttribute; 5] = [
    FetchAttribute::Flags,
    FetchAttribute::InternalDate,
    FetchAttribute::Rfc822Size,
    FetchAttribute::Envelope,
    FetchAttribute::Body,
];

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.'
}

fn attribute(c: &mut Cursor<'_>) -> ParseResult<FetchAttribute> {
    let name = c.take_while(is_name_char).to_ascii_uppercase();
    let has_section = c.peek() == Some(b'[');
    let attribute = match (name.as_slice(), has_section) {
        (b"ENVELOPE", false) => FetchAttribute::Envelope,
        (b"FLAGS", false) => FetchAttribute::Flags,
        (b"INTERNALDATE", false) => FetchAttribute::InternalDate,
        (b"RFC822", false) => FetchAttribute::Rfc822,
        (b"RFC822.HEADER", false) => FetchAttribute::Rfc822Header,
        (b"RFC822.SIZE", false) => FetchAttribute::Rfc822Size,
        (b"RFC822.TEXT", false) => FetchAttribute::Rfc822Text,
        (b"BODY", false) => FetchAttribute::Body,
        (b"BODYSTRUCTURE", false) => FetchAttribute::BodyStructure,
        (b"UID", false) => FetchAttribute::Uid,
        (b"BODY", true) | (b"BODY.PEEK", true) => FetchAttribute::BodySection {
            peek: name.len() > 4,
            section: section(c)?,
            partial: partial(c)?,
        },
        (b"BINARY", true) | (b"BINARY.PEEK", true) => FetchAttribute::Binary {
            peek: name.len() > 6,
            part: binary_section(c)?,
            partial: partial(c)?,
        },
        (b"BINARY.SIZE", true) => FetchAttribute::BinarySize {
            part: binary_section(c)?,
        },
        (b"BODY.PEEK" | b"BINARY" | b"BINARY.PEEK" | b"BINARY.SIZE", false) => {
            return bad(format!(
                "Missing [section] after FETCH attribute {}",
                String::from_utf8_lossy(&name)
            ));
        }
        (b"", _) => return bad("Expected FETCH attribute"),
        _ => {
            return bad(format!(
                "Unknown FETCH attribute {}",
                String::from_utf8_lossy(&name)
            ))
        }
    };
    Ok(attribute)
}

/// `section-part`: nz-number *("." nz-number). Stops before a `.` that is
/// not followed by a digit (the section text follows it).
fn part_path(c: &mut Cursor<'_>) -> ParseResult<Vec<u32>> {
    let mut part = Vec::new();
    while c.peek().is_some_and(|b| b.is_ascii_digit()) {
        if part.len() == SECTION_PART_DEPTH_MAX {
            return bad(format!(
                "Section part has more than {SECTION_PART_DEPTH_MAX} levels"
            ));
        }
        part.push(c.nz_number("section part")?);
        let rest = c.rest();
        if rest.first() == Some(&b'.') && rest.get(1).is_some_and(|b| b.is_ascii_digit()) {
            c.eat(b'.');
        }
    }
    Ok(part)
}

/// `section`: `[` [section-spec] `]`.
fn section(c: &mut Cursor<'_>) -> ParseResult<Section> {
    c.expect(b'[', "Expected [ before section")?;
    let part = part_path(c)?;
    if c.eat(b']') {
        return Ok(Section { part, text: None });
    }
    if !part.is_empty() {
        c.expect(b'.', "Invalid section part")?;
    }
    let text = if c.eat_word("HEADER.FIELDS.NOT") {
        SectionText::HeaderFieldsNot(header_list(c)?)
    } else if c.eat_word("HEADER.FIELDS") {
        SectionText::HeaderFields(header_list(c)?)
    } else if c.eat_word("HEADER") {
        SectionText::Header
    } else if c.eat_word("TEXT") {
        SectionText::Text
    } else if !part.is_empty() && c.eat_word("MIME") {
        SectionText::Mime
    } else {
        return bad("Invalid section in FETCH");
    };
    c.expect(b']', "Missing ] after section")?;
    Ok(Section {
        part,
        text: Some(text),
    })
}

/// `header-list`: SP "(" header-fld-name *(SP header-fld-name) ")".
fn header_list(c: &mut Cursor<'_>) -> ParseResult<Vec<String>> {
    c.expect(b' ', "Expected space before header list")?;
    c.expect(b'(', "Expected ( before header list")?;
    let mut names = Vec::new();
    loop {
        let name = c.astring_utf8("header field name")?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return bad("Invalid header field name");
        }
        names.push(name);
        if c.eat(b')') {
            return Ok(names);
        }
        if !c.eat(b' ') {
            return bad("Missing ) in header list");
        }
    }
}

/// `section-binary`: `[` [section-part] `]` (RFC 3516 4.2).
fn binary_section(c: &mut Cursor<'_>) -> ParseResult<Vec<u32>> {
    c.expect(b'[', "Expected [ before binary section")?;
    let part = part_path(c)?;
    c.expect(b']', "Missing ] after binary section")?;
    Ok(part)
}

/// `<origin.length>`, if present.
fn partial(c: &mut Cursor<'_>) -> ParseResult<Option<Partial>> {
    if !c.eat(b'<') {
        return Ok(None);
    }
    let origin = c.number("partial origin")?;
    c.expect(b'.', "Expected . in partial range")?;
    let length = c.nz_number("partial length")?;
    c.expect(b'>', "Missing > after partial range")?;
    Ok(Some(Partial { origin, length }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ParseResult<Vec<FetchAttribute>> {
        let mut c = Cursor::new(text.as_bytes());
        let attributes = fetch_attributes(&mut c)?;
        c.end("FETCH")?;
        Ok(attributes)
    }

    fn one(text: &str) -> FetchAttribute {
        let mut all = parse(text).unwrap();
        assert_eq!(all.len(), 1, "{text}");
        all.remove(0)
    }

    fn body(peek: bool, part: &[u32], text: Option<SectionText>) -> FetchAttribute {
        FetchAttribute::BodySection {
            peek,
            section: Section {
                part: part.to_vec(),
                text,
            },
            partial: None,
        }
    }

    #[test]
    fn macros_expand() {
        assert_eq!(parse("ALL").unwrap(), MACRO_ALL.to_vec());
        assert_eq!(parse("fast").unwrap(), MACRO_ALL[..3].to_vec());
        assert_eq!(parse("FULL").unwrap(), MACRO_FULL.to_vec());
        assert!(parse("(ALL)").is_err());
        assert!(parse("ALLX").is_err());
    }

    #[test]
    fn simple_attributes_parse_in_lists() {
        let all = parse(
            "(ENVELOPE FLAGS INTERNALDATE RFC822 RFC822.HEADER RFC822.SIZE RFC822.TEXT BODY BODYSTRUCTURE UID)",
        )
        .unwrap();
        use FetchAttribute::*;
        assert_eq!(
            all,
            vec![
                Envelope,
                Flags,
                InternalDate,
                Rfc822,
                Rfc822Header,
                Rfc822Size,
                Rfc822Text,
                Body,
                BodyStructure,
                Uid
            ]
        );
        assert_eq!(one("uid"), Uid);
    }

    #[test]
    fn every_section_form_parses() {
        assert_eq!(one("BODY[]"), body(false, &[], None));
        assert_eq!(one("BODY.PEEK[]"), body(true, &[], None));
        assert_eq!(
            one("BODY[HEADER]"),
            body(false, &[], Some(SectionText::Header))
        );
        assert_eq!(one("BODY[TEXT]"), body(false, &[], Some(SectionText::Text)));
        assert_eq!(
            one("BODY.PEEK[HEADER.FIELDS (From \"Subject\" {2}\r\nTo)]"),
            body(
                true,
                &[],
                Some(SectionText::HeaderFields(vec![
                    "From".into(),
                    "Subject".into(),
                    "To".into()
                ]))
            )
        );
        assert_eq!(
            one("BODY[header.fields.not (Received)]"),
            body(
                false,
                &[],
                Some(SectionText::HeaderFieldsNot(vec!["Received".into()]))
            )
        );
        assert_eq!(one("BODY[1]"), body(false, &[1], None));
        assert_eq!(one("BODY[1.2.3]"), body(false, &[1, 2, 3], None));
        assert_eq!(
            one("BODY[1.2.MIME]"),
            body(false, &[1, 2], Some(SectionText::Mime))
        );
        assert_eq!(
            one("BODY[4.2.HEADER]"),
            body(false, &[4, 2], Some(SectionText::Header))
        );
        assert_eq!(
            one("BODY[3.TEXT]"),
            body(false, &[3], Some(SectionText::Text))
        );
        assert_eq!(
            one("BODY[2.HEADER.FIELDS (Date)]"),
            body(
                false,
                &[2],
                Some(SectionText::HeaderFields(vec!["Date".into()]))
            )
        );
    }

    #[test]
    fn partials_and_binary_parse() {
        assert_eq!(
            one("BODY[]<0.2048>"),
            FetchAttribute::BodySection {
                peek: false,
                section: Section::default(),
                partial: Some(Partial {
                    origin: 0,
                    length: 2048
                })
            }
        );
        assert_eq!(
            one("BINARY.PEEK[1.2]<10.5>"),
            FetchAttribute::Binary {
                peek: true,
                part: vec![1, 2],
                partial: Some(Partial {
                    origin: 10,
                    length: 5
                })
            }
        );
        assert_eq!(
            one("BINARY[]"),
            FetchAttribute::Binary {
                peek: false,
                part: vec![],
                partial: None
            }
        );
        assert_eq!(
            one("BINARY.SIZE[3]"),
            FetchAttribute::BinarySize { part: vec![3] }
        );
    }

    #[test]
    fn malformed_attributes_are_rejected_with_reasons() {
        let cases = [
            ("(FLAGS UID", "Missing ) in FETCH attribute list"),
            ("FOO", "Unknown FETCH attribute FOO"),
            ("()", "Expected FETCH attribute"),
            ("BODY[MIME]", "Invalid section in FETCH"),
            ("BODY[0]", "Zero is not allowed for section part"),
            ("BODY[1.]", "Invalid section in FETCH"),
            ("BODY[HEADER", "Missing ] after section"),
            ("BODY[HEADER.FIELDS ()]", "Expected header field name"),
            ("BODY[HEADER.FIELDS (From]", "Missing ) in header list"),
            ("BODY[HEADER.FIELDS]", "Expected space before header list"),
            ("BODY[]<1>", "Expected . in partial range"),
            ("BODY[]<1.0>", "Zero is not allowed for partial length"),
            (
                "BODY.PEEK",
                "Missing [section] after FETCH attribute BODY.PEEK",
            ),
            ("BINARY[1.TEXT]", "Missing ] after binary section"),
            ("ENVELOPE[]", "Unknown FETCH attribute ENVELOPE"),
            ("BODY[TEXT]<0.1", "Missing > after partial range"),
        ];
        for (text, reason) in cases {
            assert_eq!(
                parse(text),
                Err(super::super::cursor::ParseError::Bad(reason.into())),
                "{text}"
            );
        }
        let deep = format!("BODY[{}]", vec!["1"; SECTION_PART_DEPTH_MAX + 1].join("."));
        assert!(parse(&deep).is_err());
    }
}
