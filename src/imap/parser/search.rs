//! Parser for SEARCH arguments (RFC 3501 6.4.4 and 9 `search`, RFC 9051
//! `search-return-opts`): the optional RETURN options and CHARSET, then
//! every RFC 3501 search key including nested parentheses, NOT and OR.
//!
//! Recursion is bounded by [`SEARCH_DEPTH_MAX`] so no input can exhaust
//! the stack; it must never panic on any input.

use super::cursor::{bad, Cursor, ParseResult};
use super::values::{date, sequence_set};
use crate::imap::command::{SearchCommand, SearchKey};

/// Deepest nesting of parentheses, NOT and OR in one search. RFC 3501 sets
/// no limit; this keeps recursion on hostile input far from the stack's end.
pub(super) const SEARCH_DEPTH_MAX: usize = 32;

/// Everything after `SEARCH `.
pub(super) fn search(c: &mut Cursor<'_>, uid: bool) -> ParseResult<SearchCommand> {
    let mut return_options = Vec::new();
    if c.eat_word("RETURN ") {
        c.expect(b'(', "Expected ( after SEARCH RETURN")?;
        if !c.eat(b')') {
            loop {
                return_options.push(c.keyword("SEARCH RETURN option")?);
                if c.eat(b')') {
                    break;
                }
                if !c.eat(b' ') {
                    return bad("Missing ) in SEARCH RETURN options");
                }
            }
        }
        c.space("SEARCH")?;
    }
    let mut charset = None;
    if c.eat_word("CHARSET ") {
        charset = Some(c.astring_utf8("SEARCH charset")?);
        c.space("SEARCH")?;
    }
    let mut criteria = vec![key(c, 0)?];
    while c.eat(b' ') {
        criteria.push(key(c, 0)?);
    }
    c.end("SEARCH")?;
    Ok(SearchCommand {
        uid,
        charset,
        return_options,
        criteria,
    })
}

fn text(c: &mut Cursor<'_>, name: &str) -> ParseResult<String> {
    c.space(name)?;
    c.astring_utf8(&format!("{name} string"))
}

fn key(c: &mut Cursor<'_>, depth: usize) -> ParseResult<SearchKey> {
    if depth >= SEARCH_DEPTH_MAX {
        return bad(format!("SEARCH nested deeper than {SEARCH_DEPTH_MAX}"));
    }
    if c.eat(b'(') {
        let mut keys = vec![key(c, depth + 1)?];
        loop {
            if c.eat(b')') {
                return Ok(SearchKey::And(keys));
            }
            if !c.eat(b' ') {
                return bad("Missing ) in SEARCH");
            }
            keys.push(key(c, depth + 1)?);
        }
    }
    if c.peek()
        .is_some_and(|b| b.is_ascii_digit() || b == b'*' || b == b'$')
    {
        return Ok(SearchKey::Sequence(sequence_set(c)?));
    }
    let name = c.keyword("SEARCH key")?;
    let key = match name.as_str() {
        "ALL" => SearchKey::All,
        "ANSWERED" => SearchKey::Answered,
        "DELETED" => SearchKey::Deleted,
        "DRAFT" => SearchKey::Draft,
        "FLAGGED" => SearchKey::Flagged,
        "NEW" => SearchKey::New,
        "OLD" => SearchKey::Old,
        "RECENT" => SearchKey::Recent,
        "SEEN" => SearchKey::Seen,
        "UNANSWERED" => SearchKey::Unanswered,
        "UNDELETED" => SearchKey::Undeleted,
        "UNDRAFT" => SearchKey::Undraft,
        "UNFLAGGED" => SearchKey::Unflagged,
        "UNSEEN" => SearchKey::Unseen,
        "BCC" => SearchKey::Bcc(text(c, "BCC")?),
        "BODY" => SearchKey::Body(text(c, "BODY")?),
        "CC" => SearchKey::Cc(text(c, "CC")?),
        "FROM" => SearchKey::From(text(c, "FROM")?),
        "SUBJECT" => SearchKey::Subject(text(c, "SUBJECT")?),
        "TEXT" => SearchKey::Text(text(c, "TEXT")?),
        "TO" => SearchKey::To(text(c, "TO")?),
        "HEADER" => {
            let field = text(c, "HEADER")?;
            SearchKey::Header(field, text(c, "HEADER")?)
        }
        "KEYWORD" | "UNKEYWORD" => {
            c.space(&name)?;
            let flag = String::from_utf8_lossy(c.atom("keyword")?).into_owned();
            if name == "KEYWORD" {
                SearchKey::Keyword(flag)
            } else {
                SearchKey::Unkeyword(flag)
            }
        }
        "BEFORE" | "ON" | "SINCE" | "SENTBEFORE" | "SENTON" | "SENTSINCE" => {
            c.space(&name)?;
            let day = date(c)?;
            match name.as_str() {
                "BEFORE" => SearchKey::Before(day),
                "ON" => SearchKey::On(day),
                "SINCE" => SearchKey::Since(day),
                "SENTBEFORE" => SearchKey::SentBefore(day),
                "SENTON" => SearchKey::SentOn(day),
                _ => SearchKey::SentSince(day),
            }
        }
        "LARGER" => {
            c.space("LARGER")?;
            SearchKey::Larger(c.number64("LARGER")?)
        }
        "SMALLER" => {
            c.space("SMALLER")?;
            SearchKey::Smaller(c.number64("SMALLER")?)
        }
        "UID" => {
            c.space("UID")?;
            SearchKey::Uid(sequence_set(c)?)
        }
        "NOT" => {
            c.space("NOT")?;
            SearchKey::Not(Box::new(key(c, depth + 1)?))
        }
        "OR" => {
            c.space("OR")?;
            let left = key(c, depth + 1)?;
            c.space("OR")?;
            SearchKey::Or(Box::new(left), Box::new(key(c, depth + 1)?))
        }
        _ => return bad(format!("Unknown SEARCH key {name}")),
    };
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::super::cursor::ParseError;
    use super::*;
    use crate::imap::command::{Date, SeqBound, SequenceSet};

    fn parse(text: &str) -> ParseResult<SearchCommand> {
        search(&mut Cursor::new(text.as_bytes()), false)
    }

    fn keys(text: &str) -> Vec<SearchKey> {
        parse(text).unwrap().criteria
    }

    fn s(text: &str) -> String {
        text.to_string()
    }

    #[test]
    fn every_rfc_3501_key_parses() {
        let date = Date::new(1994, 2, 1).unwrap();
        let text = "ALL ANSWERED BCC a BEFORE 1-Feb-1994 BODY \"b c\" CC c DELETED DRAFT FLAGGED \
                    FROM f HEADER X-Y z KEYWORD $k LARGER 10 NEW NOT SEEN OLD ON 1-Feb-1994 \
                    OR SEEN DRAFT RECENT SEEN SENTBEFORE 1-Feb-1994 SENTON 1-Feb-1994 \
                    SENTSINCE 1-Feb-1994 SINCE \"1-Feb-1994\" SMALLER 20 SUBJECT s TEXT t TO o \
                    UID 1:* UNANSWERED UNDELETED UNDRAFT UNFLAGGED UNKEYWORD $j UNSEEN 2,4";
        use SearchKey::*;
        assert_eq!(
            keys(text),
            vec![
                All,
                Answered,
                Bcc(s("a")),
                Before(date),
                Body(s("b c")),
                Cc(s("c")),
                Deleted,
                Draft,
                Flagged,
                From(s("f")),
                Header(s("X-Y"), s("z")),
                Keyword(s("$k")),
                Larger(10),
                New,
                Not(Box::new(Seen)),
                Old,
                On(date),
                Or(Box::new(Seen), Box::new(Draft)),
                Recent,
                Seen,
                SentBefore(date),
                SentOn(date),
                SentSince(date),
                Since(date),
                Smaller(20),
                Subject(s("s")),
                Text(s("t")),
                To(s("o")),
                Uid(SequenceSet {
                    ranges: vec![(SeqBound::Number(1), SeqBound::Largest)]
                }),
                Unanswered,
                Undeleted,
                Undraft,
                Unflagged,
                Unkeyword(s("$j")),
                Unseen,
                Sequence(SequenceSet {
                    ranges: vec![
                        (SeqBound::Number(2), SeqBound::Number(2)),
                        (SeqBound::Number(4), SeqBound::Number(4))
                    ]
                }),
            ]
        );
    }

    #[test]
    fn charset_return_and_nesting_parse() {
        let parsed =
            parse("RETURN (MIN count) CHARSET UTF-8 (OR (FROM {5}\r\nJörg) NOT (TO x)) SEEN")
                .unwrap();
        assert_eq!(parsed.charset.as_deref(), Some("UTF-8"));
        assert_eq!(parsed.return_options, vec![s("MIN"), s("COUNT")]);
        use SearchKey::*;
        assert_eq!(
            parsed.criteria,
            vec![
                And(vec![Or(
                    Box::new(And(vec![From(s("Jörg"))])),
                    Box::new(Not(Box::new(And(vec![To(s("x"))]))))
                )]),
                Seen
            ]
        );
        assert_eq!(parse("RETURN () ALL").unwrap().return_options.len(), 0);
    }

    #[test]
    fn malformed_searches_name_the_problem() {
        let cases = [
            ("", "Expected SEARCH key"),
            ("FOO", "Unknown SEARCH key FOO"),
            ("(SEEN", "Missing ) in SEARCH"),
            ("()", "Expected SEARCH key"),
            ("OR SEEN", "Missing argument to OR"),
            ("NOT", "Missing argument to NOT"),
            ("FROM", "Missing argument to FROM"),
            ("HEADER X", "Missing argument to HEADER"),
            ("BEFORE 31-Feb-2020", "Invalid date"),
            ("LARGER x", "Expected number for LARGER"),
            ("UID $", "Search result variable $ is not supported"),
            ("SEEN  ALL", "Expected SEARCH key"),
            ("SEEN)", "Unexpected characters after SEARCH arguments"),
            ("CHARSET UTF-8", "Missing argument to SEARCH"),
            ("RETURN (MIN ALL", "Missing ) in SEARCH RETURN options"),
            (
                "FROM \"\\xff\"",
                "Invalid escape in quoted string for FROM string",
            ),
        ];
        for (text, reason) in cases {
            assert_eq!(parse(text), Err(ParseError::Bad(reason.into())), "{text:?}");
        }
        assert_eq!(
            parse("FROM {1}\r\n\u{ff}").unwrap_err(),
            ParseError::Bad("FROM string is not UTF-8".into())
        );
    }

    #[test]
    fn nesting_depth_is_bounded() {
        let ok = format!(
            "{}SEEN{}",
            "(".repeat(SEARCH_DEPTH_MAX - 1),
            ")".repeat(SEARCH_DEPTH_MAX - 1)
        );
        assert!(parse(&ok).is_ok());
        let deep = format!(
            "{}SEEN{}",
            "(".repeat(SEARCH_DEPTH_MAX),
            ")".repeat(SEARCH_DEPTH_MAX)
        );
        assert!(parse(&deep).is_err());
        let nots = format!("{}SEEN", "NOT ".repeat(5000));
        assert!(parse(&nots).is_err());
    }
}
