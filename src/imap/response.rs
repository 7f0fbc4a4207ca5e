//! IMAP response encoder (RFC 3501 7 and 9 `response`, RFC 9051 7): tagged,
//! untagged and continuation lines, response codes (RFC 3501 7.1, RFC 4315
//! UIDPLUS, RFC 5530, RFC 7889 TOOBIG), and the data encodings responses
//! are built from: astring/quoted/literal choice for arbitrary bytes, flag
//! lists, mailbox names in modified UTF-7 and compressed sequence sets.
//!
//! Every function appends to a caller's buffer and returns nothing: it
//! cannot fail and must never panic. Client-influenced text is sanitised
//! so that no output line can be split or ended early (no bare CR or LF
//! outside a literal).

use std::io::Write;

use super::command::{Flag, MailboxName, StatusItem};
use super::parser::{is_astring_char, is_atom_char};

/// Longest string written as a quoted string; longer ones go out as a
/// literal, which clients read without scanning for escapes.
const QUOTED_MAX: usize = 1024;

/// The status of a tagged or untagged condition response (RFC 3501 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
    /// Untagged greeting only.
    Preauth,
    /// Untagged only.
    Bye,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
            Status::Preauth => "PREAUTH",
            Status::Bye => "BYE",
        }
    }
}

/// A response code (the bracketed part of resp-text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseCode<'a> {
    Alert,
    Parse,
    ReadOnly,
    ReadWrite,
    TryCreate,
    /// RFC 7889 / RFC 9051 7.1: a literal or message is too large.
    TooBig,
    Capability(&'a [&'a str]),
    /// `[BADCHARSET (charsets)]`.
    BadCharset(&'a [&'a str]),
    /// `[PERMANENTFLAGS (flags [\*])]`; `new_keywords` adds `\*`.
    PermanentFlags {
        flags: &'a [Flag],
        new_keywords: bool,
    },
    UidNext(u32),
    UidValidity(u32),
    Unseen(u32),
    /// RFC 4315 3: `[APPENDUID uidvalidity uid]`.
    AppendUid {
        validity: u32,
        uid: u32,
    },
    /// RFC 4315 3: `[COPYUID uidvalidity source-set dest-set]`, the two sets
    /// in corresponding order.
    CopyUid {
        validity: u32,
        source: &'a [u32],
        destination: &'a [u32],
    },
    /// RFC 4315 3: the mailbox cannot keep UIDs across sessions.
    UidNotSticky,
    /// RFC 5530 codes.
    Unavailable,
    AuthenticationFailed,
    AuthorizationFailed,
    PrivacyRequired,
    ContactAdmin,
    NoPerm,
    InUse,
    ExpungeIssued,
    Corruption,
    ServerBug,
    ClientBug,
    Cannot,
    Limit,
    OverQuota,
    AlreadyExists,
    NonExistent,
    /// RFC 7162 3.2.11 / RFC 9051 7.1: the previous mailbox was closed.
    Closed,
}

/// `<tag> <status> [code] <text>` CRLF.
pub fn tagged(
    out: &mut Vec<u8>,
    tag: &str,
    status: Status,
    code: Option<&ResponseCode<'_>>,
    text: &str,
) {
    push_sanitised(out, tag.as_bytes());
    out.push(b' ');
    condition(out, status, code, text);
}

/// `* <status> [code] <text>` CRLF (greeting, BYE, untagged OK/NO/BAD).
pub fn untagged_status(
    out: &mut Vec<u8>,
    status: Status,
    code: Option<&ResponseCode<'_>>,
    text: &str,
) {
    out.extend_from_slice(b"* ");
    condition(out, status, code, text);
}

/// The refusal of a connection a limit turned away before any session
/// (`[limits]`): `* BYE <reason>` as the greeting, after which the server
/// closes (RFC 3501 7.1.5).
pub fn connection_refused(reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    untagged_status(&mut out, Status::Bye, None, reason);
    out
}

/// `+ <text>` CRLF: a continuation request (RFC 3501 7.5). For SASL
/// challenges pass the base64 text; for literals `Ready for literal data`.
pub fn continuation(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"+ ");
    push_sanitised(out, text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `* <data>` CRLF where `data` was built with the writers below. The
/// caller guarantees `data` holds no CR or LF outside literals it wrote
/// with [`write_string`].
pub fn untagged_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(b"* ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// `* <n> EXISTS`.
pub fn exists(out: &mut Vec<u8>, count: u32) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "* {count} EXISTS\r\n");
}

/// `* <n> RECENT`.
pub fn recent(out: &mut Vec<u8>, count: u32) {
    let _ = write!(out, "* {count} RECENT\r\n");
}

/// `* <seq> EXPUNGE`.
pub fn expunge(out: &mut Vec<u8>, sequence: u32) {
    let _ = write!(out, "* {sequence} EXPUNGE\r\n");
}

/// `* FLAGS (<flags>)`.
pub fn flags(out: &mut Vec<u8>, flags: &[Flag]) {
    out.extend_from_slice(b"* FLAGS ");
    write_flag_list(out, flags, false);
    out.extend_from_slice(b"\r\n");
}

/// `* CAPABILITY <caps>`.
pub fn capability(out: &mut Vec<u8>, capabilities: &[&str]) {
    out.extend_from_slice(b"* CAPABILITY");
    for capability in capabilities {
        out.push(b' ');
        push_sanitised(out, capability.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `* ENABLED <caps>` (RFC 5161 3.2).
pub fn enabled(out: &mut Vec<u8>, capabilities: &[&str]) {
    out.extend_from_slice(b"* ENABLED");
    for capability in capabilities {
        out.push(b' ');
        push_sanitised(out, capability.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `* SEARCH <n>...` (RFC 3501 7.2.5).
pub fn search(out: &mut Vec<u8>, numbers: &[u32]) {
    out.extend_from_slice(b"* SEARCH");
    for n in numbers {
        let _ = write!(out, " {n}");
    }
    out.extend_from_slice(b"\r\n");
}

/// `* LIST (<attributes>) <delimiter> <name>` or LSUB with `lsub` set
/// (RFC 3501 7.2.2). Attributes are written as given (`\HasNoChildren`,
/// `\Sent`, ...); no delimiter is `NIL`.
pub fn list(
    out: &mut Vec<u8>,
    lsub: bool,
    attributes: &[&str],
    delimiter: Option<char>,
    name: &MailboxName,
) {
    out.extend_from_slice(if lsub { b"* LSUB (" } else { b"* LIST (" });
    for (index, attribute) in attributes.iter().enumerate() {
        if index > 0 {
            out.push(b' ');
        }
        push_sanitised(out, attribute.as_bytes());
    }
    out.extend_from_slice(b") ");
    match delimiter {
        Some(d @ ('"' | '\\')) => {
            let _ = write!(out, "\"\\{d}\"");
        }
        Some(d) if d.is_ascii() && !d.is_ascii_control() => {
            let _ = write!(out, "\"{d}\"");
        }
        _ => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    write_mailbox(out, name);
    out.extend_from_slice(b"\r\n");
}

/// `* STATUS <name> (<item> <value> ...)` (RFC 3501 7.2.4).
pub fn status(out: &mut Vec<u8>, name: &MailboxName, items: &[(StatusItem, u64)]) {
    out.extend_from_slice(b"* STATUS ");
    write_mailbox(out, name);
    out.extend_from_slice(b" (");
    for (index, (item, value)) in items.iter().enumerate() {
        if index > 0 {
            out.push(b' ');
        }
        let name = match item {
            StatusItem::Messages => "MESSAGES",
            StatusItem::Recent => "RECENT",
            StatusItem::UidNext => "UIDNEXT",
            StatusItem::UidValidity => "UIDVALIDITY",
            StatusItem::Unseen => "UNSEEN",
            StatusItem::Deleted => "DELETED",
            StatusItem::Size => "SIZE",
        };
        let _ = write!(out, "{name} {value}");
    }
    out.extend_from_slice(b")\r\n");
}

/// A mailbox name as an astring in modified UTF-7.
pub fn write_mailbox(out: &mut Vec<u8>, name: &MailboxName) {
    write_astring(out, name.to_wire().as_bytes());
}

/// Arbitrary bytes as an `astring`: a bare atom when every byte is an
/// ASTRING-CHAR (and it is not `NIL`), otherwise as [`write_string`].
pub fn write_astring(out: &mut Vec<u8>, bytes: &[u8]) {
    let atom_safe = !bytes.is_empty()
        && !bytes.eq_ignore_ascii_case(b"NIL")
        && bytes.iter().all(|&b| is_astring_char(b));
    if atom_safe {
        out.extend_from_slice(bytes);
    } else {
        write_string(out, bytes);
    }
}

/// Arbitrary bytes as a `string`: quoted when short and 7-bit without CR,
/// LF or NUL, a literal otherwise.
pub fn write_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let quotable = bytes.len() <= QUOTED_MAX
        && bytes
            .iter()
            .all(|&b| b != 0 && b != b'\r' && b != b'\n' && b.is_ascii());
    if quotable {
        out.push(b'"');
        for &b in bytes {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        write_literal(out, bytes);
    }
}

/// `{n}` CRLF and the bytes.
pub fn write_literal(out: &mut Vec<u8>, bytes: &[u8]) {
    let _ = write!(out, "{{{}}}\r\n", bytes.len());
    out.extend_from_slice(bytes);
}

/// An `nstring`: NIL or [`write_string`].
pub fn write_nstring(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => write_string(out, bytes),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// One flag: system flags with their backslash, keywords as atoms
/// (bytes outside ATOM-CHAR are dropped so the list stays parseable).
pub fn write_flag(out: &mut Vec<u8>, flag: &Flag) {
    let (backslash, name): (bool, &str) = match flag {
        Flag::Seen => (true, "Seen"),
        Flag::Answered => (true, "Answered"),
        Flag::Flagged => (true, "Flagged"),
        Flag::Deleted => (true, "Deleted"),
        Flag::Draft => (true, "Draft"),
        Flag::Recent => (true, "Recent"),
        Flag::Extension(name) => (true, name),
        Flag::Keyword(name) => (false, name),
    };
    if backslash {
        out.push(b'\\');
    }
    out.extend(name.bytes().filter(|&b| is_atom_char(b)));
}

/// `(flag ...)`, with `\*` appended when `new_keywords` (PERMANENTFLAGS).
pub fn write_flag_list(out: &mut Vec<u8>, flags: &[Flag], new_keywords: bool) {
    out.push(b'(');
    for (index, flag) in flags.iter().enumerate() {
        if index > 0 {
            out.push(b' ');
        }
        write_flag(out, flag);
    }
    if new_keywords {
        if !flags.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(b"\\*");
    }
    out.push(b')');
}

/// A sequence set from numbers in the order given, runs of consecutive
/// ascending numbers compressed to `a:b` (`1,2,3,5,7,8` is `1:3,5,7:8`).
/// Order is kept because COPYUID pairs source and destination sets by
/// position (RFC 4315 3). An empty slice writes nothing.
pub fn write_sequence_set(out: &mut Vec<u8>, numbers: &[u32]) {
    let mut iter = numbers.iter().copied();
    let Some(mut start) = iter.next() else {
        return;
    };
    let mut end = start;
    let mut first = true;
    let mut flush = |out: &mut Vec<u8>, start: u32, end: u32| {
        if !first {
            out.push(b',');
        }
        first = false;
        let _ = if start == end {
            write!(out, "{start}")
        } else {
            write!(out, "{start}:{end}")
        };
    };
    for n in iter {
        if end.checked_add(1) == Some(n) {
            end = n;
        } else {
            flush(out, start, end);
            start = n;
            end = n;
        }
    }
    flush(out, start, end);
}

fn condition(out: &mut Vec<u8>, status: Status, code: Option<&ResponseCode<'_>>, text: &str) {
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    if let Some(code) = code {
        out.push(b'[');
        write_code(out, code);
        out.extend_from_slice(b"] ");
    }
    push_sanitised(out, text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_code(out: &mut Vec<u8>, code: &ResponseCode<'_>) {
    let simple = match code {
        ResponseCode::Alert => "ALERT",
        ResponseCode::Parse => "PARSE",
        ResponseCode::ReadOnly => "READ-ONLY",
        ResponseCode::ReadWrite => "READ-WRITE",
        ResponseCode::TryCreate => "TRYCREATE",
        ResponseCode::TooBig => "TOOBIG",
        ResponseCode::UidNotSticky => "UIDNOTSTICKY",
        ResponseCode::Unavailable => "UNAVAILABLE",
        ResponseCode::AuthenticationFailed => "AUTHENTICATIONFAILED",
        ResponseCode::AuthorizationFailed => "AUTHORIZATIONFAILED",
        ResponseCode::PrivacyRequired => "PRIVACYREQUIRED",
        ResponseCode::ContactAdmin => "CONTACTADMIN",
        ResponseCode::NoPerm => "NOPERM",
        ResponseCode::InUse => "INUSE",
        ResponseCode::ExpungeIssued => "EXPUNGEISSUED",
        ResponseCode::Corruption => "CORRUPTION",
        ResponseCode::ServerBug => "SERVERBUG",
        ResponseCode::ClientBug => "CLIENTBUG",
        ResponseCode::Cannot => "CANNOT",
        ResponseCode::Limit => "LIMIT",
        ResponseCode::OverQuota => "OVERQUOTA",
        ResponseCode::AlreadyExists => "ALREADYEXISTS",
        ResponseCode::NonExistent => "NONEXISTENT",
        ResponseCode::Closed => "CLOSED",
        ResponseCode::Capability(capabilities) => {
            out.extend_from_slice(b"CAPABILITY");
            for capability in *capabilities {
                out.push(b' ');
                push_code_word(out, capability.as_bytes());
            }
            return;
        }
        ResponseCode::BadCharset(charsets) => {
            out.extend_from_slice(b"BADCHARSET (");
            for (index, charset) in charsets.iter().enumerate() {
                if index > 0 {
                    out.push(b' ');
                }
                write_astring(out, charset.as_bytes());
            }
            out.push(b')');
            return;
        }
        ResponseCode::PermanentFlags {
            flags,
            new_keywords,
        } => {
            out.extend_from_slice(b"PERMANENTFLAGS ");
            write_flag_list(out, flags, *new_keywords);
            return;
        }
        ResponseCode::UidNext(n) => {
            let _ = write!(out, "UIDNEXT {n}");
            return;
        }
        ResponseCode::UidValidity(n) => {
            let _ = write!(out, "UIDVALIDITY {n}");
            return;
        }
        ResponseCode::Unseen(n) => {
            let _ = write!(out, "UNSEEN {n}");
            return;
        }
        ResponseCode::AppendUid { validity, uid } => {
            let _ = write!(out, "APPENDUID {validity} {uid}");
            return;
        }
        ResponseCode::CopyUid {
            validity,
            source,
            destination,
        } => {
            let _ = write!(out, "COPYUID {validity} ");
            write_sequence_set(out, source);
            out.push(b' ');
            write_sequence_set(out, destination);
            return;
        }
    };
    out.extend_from_slice(simple.as_bytes());
}

/// A word inside a response code: atom characters only, so a `]` cannot
/// end the code early.
fn push_code_word(out: &mut Vec<u8>, word: &[u8]) {
    out.extend(word.iter().copied().filter(|&b| is_atom_char(b)));
}

/// Text that must stay on one line: CR, LF and NUL become spaces.
fn push_sanitised(out: &mut Vec<u8>, text: &[u8]) {
    out.extend(text.iter().map(|&b| match b {
        b'\r' | b'\n' | 0 => b' ',
        b => b,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn tagged_and_untagged_status_lines() {
        assert_eq!(
            text(|o| tagged(o, "a1", Status::Ok, None, "LOGIN completed")),
            "a1 OK LOGIN completed\r\n"
        );
        assert_eq!(
            text(|o| tagged(
                o,
                "a2",
                Status::No,
                Some(&ResponseCode::TooBig),
                "Message too large"
            )),
            "a2 NO [TOOBIG] Message too large\r\n"
        );
        assert_eq!(
            text(|o| untagged_status(
                o,
                Status::Ok,
                Some(&ResponseCode::Capability(&[
                    "IMAP4rev1",
                    "IDLE",
                    "AUTH=PLAIN"
                ])),
                "tern ready"
            )),
            "* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN] tern ready\r\n"
        );
        assert_eq!(
            text(|o| untagged_status(o, Status::Bye, Some(&ResponseCode::Alert), "bye\r\nx")),
            "* BYE [ALERT] bye  x\r\n"
        );
        assert_eq!(
            text(|o| continuation(o, "Ready for literal data")),
            "+ Ready for literal data\r\n"
        );
        assert_eq!(text(|o| continuation(o, "")), "+ \r\n");
    }

    #[test]
    fn response_codes_format() {
        let permanent = [Flag::Deleted, Flag::Seen, Flag::Keyword("$Junk".into())];
        let cases: Vec<(ResponseCode<'_>, &str)> = vec![
            (
                ResponseCode::UidValidity(3857529045),
                "UIDVALIDITY 3857529045",
            ),
            (ResponseCode::UidNext(4392), "UIDNEXT 4392"),
            (ResponseCode::Unseen(12), "UNSEEN 12"),
            (
                ResponseCode::PermanentFlags {
                    flags: &permanent,
                    new_keywords: true,
                },
                r"PERMANENTFLAGS (\Deleted \Seen $Junk \*)",
            ),
            (
                ResponseCode::PermanentFlags {
                    flags: &[],
                    new_keywords: false,
                },
                "PERMANENTFLAGS ()",
            ),
            (
                ResponseCode::AppendUid {
                    validity: 38505,
                    uid: 3955,
                },
                "APPENDUID 38505 3955",
            ),
            (
                ResponseCode::CopyUid {
                    validity: 38505,
                    source: &[304, 319, 320, 321],
                    destination: &[3956, 3957, 3958, 3959],
                },
                "COPYUID 38505 304,319:321 3956:3959",
            ),
            (
                ResponseCode::BadCharset(&["UTF-8", "US-ASCII"]),
                "BADCHARSET (UTF-8 US-ASCII)",
            ),
            (
                ResponseCode::Capability(&["IMAP4rev1", "X]Y"]),
                "CAPABILITY IMAP4rev1 XY",
            ),
            (ResponseCode::ReadWrite, "READ-WRITE"),
            (ResponseCode::TryCreate, "TRYCREATE"),
            (ResponseCode::AuthenticationFailed, "AUTHENTICATIONFAILED"),
        ];
        for (code, expected) in cases {
            assert_eq!(text(|o| write_code(o, &code)), expected);
        }
    }

    #[test]
    fn strings_choose_atom_quoted_or_literal() {
        assert_eq!(text(|o| write_astring(o, b"INBOX")), "INBOX");
        assert_eq!(text(|o| write_astring(o, b"a]b")), "a]b");
        assert_eq!(text(|o| write_astring(o, b"")), "\"\"");
        assert_eq!(text(|o| write_astring(o, b"nil")), "\"nil\"");
        assert_eq!(text(|o| write_astring(o, b"My Box")), "\"My Box\"");
        assert_eq!(text(|o| write_astring(o, b"a*b")), "\"a*b\"");
        assert_eq!(
            text(|o| write_string(o, br#"say "hi" \o/"#)),
            r#""say \"hi\" \\o/""#
        );
        assert_eq!(text(|o| write_string(o, b"a\r\nb")), "{4}\r\na\r\nb");
        assert_eq!(text(|o| write_string(o, "ü".as_bytes())), "{2}\r\nü");
        let long = vec![b'x'; QUOTED_MAX + 1];
        assert!(text(|o| write_string(o, &long)).starts_with("{1025}\r\nxx"));
        assert_eq!(text(|o| write_nstring(o, None)), "NIL");
        assert_eq!(text(|o| write_nstring(o, Some(b"x"))), "\"x\"");
    }

    #[test]
    fn sequence_sets_compress_runs_in_order() {
        for (numbers, expected) in [
            (&[][..], ""),
            (&[7][..], "7"),
            (&[1, 2, 3, 5, 7, 8][..], "1:3,5,7:8"),
            (&[5, 4, 3][..], "5,4,3"),
            (&[u32::MAX - 1, u32::MAX, 1][..], "4294967294:4294967295,1"),
        ] {
            assert_eq!(text(|o| write_sequence_set(o, numbers)), expected);
        }
    }

    #[test]
    fn untagged_data_lines() {
        assert_eq!(text(|o| exists(o, 23)), "* 23 EXISTS\r\n");
        assert_eq!(text(|o| recent(o, 0)), "* 0 RECENT\r\n");
        assert_eq!(text(|o| expunge(o, 4)), "* 4 EXPUNGE\r\n");
        assert_eq!(
            text(|o| flags(
                o,
                &[Flag::Answered, Flag::Flagged, Flag::Draft, Flag::Recent]
            )),
            "* FLAGS (\\Answered \\Flagged \\Draft \\Recent)\r\n"
        );
        assert_eq!(
            text(|o| capability(o, &["IMAP4rev1", "LITERAL+"])),
            "* CAPABILITY IMAP4rev1 LITERAL+\r\n"
        );
        assert_eq!(
            text(|o| enabled(o, &["UTF8=ACCEPT"])),
            "* ENABLED UTF8=ACCEPT\r\n"
        );
        assert_eq!(text(|o| search(o, &[2, 84, 882])), "* SEARCH 2 84 882\r\n");
        assert_eq!(text(|o| search(o, &[])), "* SEARCH\r\n");
        assert_eq!(
            text(|o| list(
                o,
                false,
                &["\\HasNoChildren", "\\Drafts"],
                Some('/'),
                &MailboxName::new("Entwürfe".into())
            )),
            "* LIST (\\HasNoChildren \\Drafts) \"/\" Entw&APw-rfe\r\n"
        );
        assert_eq!(
            text(|o| list(o, true, &[], None, &MailboxName::new("My Box".into()))),
            "* LSUB () NIL \"My Box\"\r\n"
        );
        assert_eq!(
            text(|o| list(o, false, &[], Some('\\'), &MailboxName::new("inbox".into()))),
            "* LIST () \"\\\\\" INBOX\r\n"
        );
        assert_eq!(
            text(|o| status(
                o,
                &MailboxName::new("INBOX".into()),
                &[(StatusItem::Messages, 231), (StatusItem::UidNext, 44292)]
            )),
            "* STATUS INBOX (MESSAGES 231 UIDNEXT 44292)\r\n"
        );
        assert_eq!(
            text(|o| untagged_data(o, b"12 FETCH (UID 5)")),
            "* 12 FETCH (UID 5)\r\n"
        );
    }

    #[test]
    fn flags_drop_bytes_that_would_break_the_list() {
        assert_eq!(
            text(|o| write_flag(o, &Flag::Keyword("a) (b".into()))),
            "ab"
        );
        assert_eq!(
            text(|o| write_flag(o, &Flag::Extension("X-Ok".into()))),
            "\\X-Ok"
        );
    }

    #[test]
    fn written_strings_read_back_through_the_parser() {
        use crate::imap::{CommandBody, CommandReader, Parsed};
        for value in [
            &b"plain"[..],
            b"with space",
            b"q\"uote\\",
            b"line\r\nbreak",
            b"",
        ] {
            let mut line = b"a LOGIN user ".to_vec();
            write_astring(&mut line, value);
            line.extend_from_slice(b"\r\n");
            let mut reader = CommandReader::new(1024);
            reader.push(&line);
            let parsed: Vec<Parsed> = reader
                .by_ref()
                .filter(|p| *p != Parsed::NeedContinuation)
                .collect();
            match &parsed[..] {
                [Parsed::Command(c)] => assert_eq!(
                    c.body,
                    CommandBody::Login {
                        user: "user".into(),
                        password: value.to_vec()
                    }
                ),
                other => panic!("{value:?}: {other:?}"),
            }
        }
    }
}
