//! SEARCH evaluation (RFC 3501 6.4.4, RFC 9051 6.4.4): whether one message
//! matches a search key, given its sequence number, UID, metadata and,
//! for keys about its content, its raw bytes (prefix plus spool data).
//!
//! Text keys compare case-insensitively (Unicode lower-casing) as
//! substrings of decoded text: header values with RFC 2047 encoded words
//! decoded, bodies with their transfer encoding undone and their charset
//! converted to UTF-8 (mail-parser's charset tables and encoded-word
//! decoder; parts are located by `super::mime`). Dates compare as calendar dates,
//! ignoring time and zone, as RFC 3501 6.4.4 asks.
//!
//! Pure functions: no I/O, no clocks, no mailbox changes. Work per message
//! is bounded by [`SEARCH_BYTES_MAX`], and nothing here may panic on any
//! message bytes.

use crate::imap::mime::{decode_quoted_printable, header_fields};
use std::borrow::Cow;
use std::cell::OnceCell;

use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::parsers::MessageStream;

use super::command::{Date, SearchKey};
use super::mime::{field_value, multipart_parts, ContentType, Entity};
use super::structure::MIME_DEPTH_MAX;
use crate::mailbox::{MessageMeta, SystemFlags};

/// Bytes of one message that content keys look at; the rest of a larger
/// message is not searched. RFC 3501 sets no limit; this bounds the work
/// (and the decoded copies) one SEARCH makes per message.
pub const SEARCH_BYTES_MAX: usize = 16 << 20;

/// Seconds in a calendar day (dates here ignore leap seconds, like POSIX
/// time does).
const SECONDS_PER_DAY: i64 = 86_400;

/// One message as SEARCH sees it.
#[derive(Debug, Clone, Copy)]
pub struct SearchMessage<'a> {
    /// Message sequence number in the session's view.
    pub seq: u32,
    pub uid: u32,
    /// The largest sequence number in the mailbox: what `*` means in a
    /// sequence set.
    pub largest_seq: u32,
    /// The largest UID in the mailbox: what `*` means in a UID set.
    pub largest_uid: u32,
    pub meta: &'a MessageMeta,
    /// The raw message (prefix plus spool data, CRLF lines), when a key
    /// needs it ([`needs_bytes`]); None if it could not be read, in which
    /// case content keys match nothing.
    pub bytes: Option<&'a [u8]>,
}

/// Whether evaluating `key` needs the message bytes (header, body, text
/// and sent-date keys, anywhere inside it), so the caller reads them only
/// then.
pub fn needs_bytes(key: &SearchKey) -> bool {
    match key {
        SearchKey::Bcc(_)
        | SearchKey::Body(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::Header(..)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_)
        | SearchKey::Subject(_)
        | SearchKey::Text(_)
        | SearchKey::To(_) => true,
        SearchKey::Not(inner) => needs_bytes(inner),
        SearchKey::Or(left, right) => needs_bytes(left) || needs_bytes(right),
        SearchKey::And(keys) => keys.iter().any(needs_bytes),
        SearchKey::All
        | SearchKey::Answered
        | SearchKey::Before(_)
        | SearchKey::Deleted
        | SearchKey::Draft
        | SearchKey::Flagged
        | SearchKey::Keyword(_)
        | SearchKey::Larger(_)
        | SearchKey::New
        | SearchKey::Old
        | SearchKey::On(_)
        | SearchKey::Recent
        | SearchKey::Seen
        | SearchKey::Since(_)
        | SearchKey::Smaller(_)
        | SearchKey::Uid(_)
        | SearchKey::Unanswered
        | SearchKey::Undeleted
        | SearchKey::Undraft
        | SearchKey::Unflagged
        | SearchKey::Unkeyword(_)
        | SearchKey::Unseen
        | SearchKey::Sequence(_) => false,
    }
}

/// Whether `msg` matches `key`.
pub fn matches(key: &SearchKey, msg: &SearchMessage<'_>) -> bool {
    matches_all(std::slice::from_ref(key), msg)
}

/// Whether `msg` matches every one of `keys` (the implicit AND of a SEARCH
/// command's criteria). The message is parsed at most once for all keys.
pub fn matches_all(keys: &[SearchKey], msg: &SearchMessage<'_>) -> bool {
    let evaluation = Evaluation::new(msg);
    keys.iter().all(|key| evaluation.matches(key))
}

/// One message being evaluated, with its decoded text computed on first
/// use and shared by every key.
struct Evaluation<'m, 'a> {
    msg: &'m SearchMessage<'a>,
    /// The searched bytes: at most [`SEARCH_BYTES_MAX`] of the message.
    bytes: Option<&'a [u8]>,
    header: OnceCell<HeaderText>,
    /// Decoded, lower-cased body text.
    body: OnceCell<String>,
}

impl<'m, 'a> Evaluation<'m, 'a> {
    fn new(msg: &'m SearchMessage<'a>) -> Self {
        let bytes = msg
            .bytes
            .map(|bytes| bytes.get(..SEARCH_BYTES_MAX).unwrap_or(bytes));
        Evaluation {
            msg,
            bytes,
            header: OnceCell::new(),
            body: OnceCell::new(),
        }
    }

    fn header(&self) -> Option<&HeaderText> {
        let bytes = self.bytes?;
        Some(
            self.header
                .get_or_init(|| HeaderText::parse(header_block(bytes))),
        )
    }

    fn body(&self) -> Option<&str> {
        let bytes = self.bytes?;
        Some(self.body.get_or_init(|| body_text(bytes).to_lowercase()))
    }

    fn flag(&self, flag: SystemFlags) -> bool {
        self.msg.meta.flags.system.contains(flag)
    }

    fn keyword(&self, name: &str) -> bool {
        self.msg
            .meta
            .flags
            .keywords
            .iter()
            .any(|keyword| keyword.as_str().eq_ignore_ascii_case(name))
    }

    /// The internal date as days since the epoch (UTC: the index keeps
    /// no zone for it).
    fn internal_day(&self) -> i64 {
        let seconds = i64::try_from(self.msg.meta.internal_date_ms / 1000).unwrap_or(i64::MAX);
        seconds.div_euclid(SECONDS_PER_DAY)
    }

    /// The Date: header's calendar date as days since the epoch.
    fn sent_day(&self) -> Option<i64> {
        self.header()?.sent_day
    }

    /// Whether some field called `name` contains `needle`.
    fn field_contains(&self, name: &str, needle: &str) -> bool {
        let Some(header) = self.header() else {
            return false;
        };
        let needle = needle.to_lowercase();
        header
            .fields
            .iter()
            .any(|(field, value)| field.eq_ignore_ascii_case(name) && value.contains(&needle))
    }

    fn matches(&self, key: &SearchKey) -> bool {
        let meta = self.msg.meta;
        match key {
            SearchKey::All => true,
            SearchKey::Answered => self.flag(SystemFlags::ANSWERED),
            SearchKey::Deleted => self.flag(SystemFlags::DELETED),
            SearchKey::Draft => self.flag(SystemFlags::DRAFT),
            SearchKey::Flagged => self.flag(SystemFlags::FLAGGED),
            SearchKey::Seen => self.flag(SystemFlags::SEEN),
            SearchKey::Unanswered => !self.flag(SystemFlags::ANSWERED),
            SearchKey::Undeleted => !self.flag(SystemFlags::DELETED),
            SearchKey::Undraft => !self.flag(SystemFlags::DRAFT),
            SearchKey::Unflagged => !self.flag(SystemFlags::FLAGGED),
            SearchKey::Unseen => !self.flag(SystemFlags::SEEN),
            SearchKey::Keyword(name) => self.keyword(name),
            SearchKey::Unkeyword(name) => !self.keyword(name),
            // No message is \Recent: the index does not keep it (RFC 9051
            // dropped it), so NEW (RECENT UNSEEN) matches nothing and OLD
            // (NOT RECENT) everything.
            SearchKey::Recent | SearchKey::New => false,
            SearchKey::Old => true,
            SearchKey::Before(date) => self.internal_day() < date.days_since_epoch(),
            SearchKey::On(date) => self.internal_day() == date.days_since_epoch(),
            SearchKey::Since(date) => self.internal_day() >= date.days_since_epoch(),
            SearchKey::SentBefore(date) => self
                .sent_day()
                .is_some_and(|day| day < date.days_since_epoch()),
            SearchKey::SentOn(date) => self
                .sent_day()
                .is_some_and(|day| day == date.days_since_epoch()),
            SearchKey::SentSince(date) => self
                .sent_day()
                .is_some_and(|day| day >= date.days_since_epoch()),
            SearchKey::Larger(size) => meta.size > *size,
            SearchKey::Smaller(size) => meta.size < *size,
            SearchKey::Uid(set) => set.contains(self.msg.uid, self.msg.largest_uid),
            SearchKey::Sequence(set) => set.contains(self.msg.seq, self.msg.largest_seq),
            SearchKey::Not(inner) => !self.matches(inner),
            SearchKey::Or(left, right) => self.matches(left) || self.matches(right),
            SearchKey::And(keys) => keys.iter().all(|key| self.matches(key)),
            SearchKey::Bcc(needle) => self.field_contains("bcc", needle),
            SearchKey::Cc(needle) => self.field_contains("cc", needle),
            SearchKey::From(needle) => self.field_contains("from", needle),
            SearchKey::To(needle) => self.field_contains("to", needle),
            SearchKey::Subject(needle) => self.field_contains("subject", needle),
            SearchKey::Header(name, needle) => self.field_contains(name, needle),
            SearchKey::Body(needle) => self
                .body()
                .is_some_and(|body| body.contains(&needle.to_lowercase())),
            SearchKey::Text(needle) => {
                let needle = needle.to_lowercase();
                self.header()
                    .is_some_and(|header| header.all.contains(&needle))
                    || self.body().is_some_and(|body| body.contains(&needle))
            }
        }
    }
}

/// The decoded header of a message.
struct HeaderText {
    /// Each field: its name as written, its unfolded value with encoded
    /// words decoded, lower-cased.
    fields: Vec<(String, String)>,
    /// Every field as `name: value` lines, lower-cased, for TEXT.
    all: String,
    /// The first Date: field's calendar date, as days since the epoch.
    sent_day: Option<i64>,
}

impl HeaderText {
    fn parse(header: &[u8]) -> HeaderText {
        let mut fields = Vec::new();
        let mut all = String::new();
        let mut sent_day = None;
        for field in header_fields(header) {
            let Some(colon) = memchr::memchr(b':', field) else {
                continue;
            };
            let (name, rest) = field.split_at(colon);
            let name = String::from_utf8_lossy(name.trim_ascii()).into_owned();
            let value = decode_header_value(&unfold(rest.get(1..).unwrap_or_default()));
            if sent_day.is_none() && name.eq_ignore_ascii_case("date") {
                sent_day = parse_date_day(&value);
            }
            let value = value.to_lowercase();
            all.push_str(&name.to_lowercase());
            all.push_str(": ");
            all.push_str(&value);
            all.push('\n');
            fields.push((name, value));
        }
        HeaderText {
            fields,
            all,
            sent_day,
        }
    }
}

/// The header block at the start of `message`, up to (not including) the
/// empty line that ends it; all of `message` if there is none.
fn header_block(message: &[u8]) -> &[u8] {
    let mut line_start = 0;
    loop {
        let rest = message.get(line_start..).unwrap_or_default();
        if rest.is_empty() || rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return message.get(..line_start).unwrap_or(message);
        }
        match memchr::memchr(b'\n', rest) {
            Some(end) => line_start += end + 1,
            None => return message,
        }
    }
}

/// A field value with line breaks removed (RFC 5322 2.2.3) and outer
/// whitespace trimmed.
fn unfold(value: &[u8]) -> Vec<u8> {
    value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect::<Vec<u8>>()
        .trim_ascii()
        .to_vec()
}

/// A header value with RFC 2047 encoded words decoded to UTF-8; the
/// whitespace between two adjacent encoded words is dropped (RFC 2047 6.2).
/// Other bytes are taken as UTF-8 (RFC 6532), invalid sequences replaced.
fn decode_header_value(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    let mut after_encoded_word = false;
    while let Some(start) = memchr::memmem::find(rest, b"=?") {
        let (before, word) = rest.split_at(start);
        // decode_rfc2047 starts after the `=`, on the `?`.
        let mut stream = MessageStream::new(word.get(1..).unwrap_or_default());
        match stream.decode_rfc2047() {
            Some(text) => {
                let only_space = before.iter().all(u8::is_ascii_whitespace);
                if !(after_encoded_word && only_space) {
                    out.push_str(&String::from_utf8_lossy(before));
                }
                out.push_str(&text);
                let consumed = 1 + stream.offset();
                rest = word.get(consumed..).unwrap_or_default();
                after_encoded_word = true;
            }
            None => {
                out.push_str(&String::from_utf8_lossy(before));
                out.push_str("=?");
                rest = word.get(2..).unwrap_or_default();
                after_encoded_word = false;
            }
        }
    }
    out.push_str(&String::from_utf8_lossy(rest));
    out
}

/// The calendar date of an RFC 5322 3.3 date-time (`[day-name ","] day
/// month year time zone`, with the obsolete two- and three-digit years of
/// 4.3), as days since the epoch; time and zone are ignored.
fn parse_date_day(value: &str) -> Option<i64> {
    let tokens: Vec<&str> = value
        .split(|c: char| c.is_ascii_whitespace() || c == ',')
        .filter(|token| !token.is_empty())
        .collect();
    tokens.windows(3).find_map(|window| {
        let [day, month, year] = window else {
            return None;
        };
        let (day, _) = parse_digits(day, 1, 2)?;
        let month = month_number(month)?;
        let year = match parse_digits(year, 2, 4)? {
            (year, 2) if year < 50 => year + 2000,
            (year, 2 | 3) => year + 1900,
            (year, _) => year,
        };
        let date = Date::new(u16::try_from(year).ok()?, month, u8::try_from(day).ok()?)?;
        Some(date.days_since_epoch())
    })
}

/// The value of a token of `min_len` to `max_len` ASCII digits, and its
/// length.
fn parse_digits(token: &str, min_len: usize, max_len: usize) -> Option<(u32, usize)> {
    let len = token.len();
    if len < min_len || len > max_len || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((token.parse().ok()?, len))
}

fn month_number(name: &str) -> Option<u8> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let index = MONTHS
        .iter()
        .position(|month| month.eq_ignore_ascii_case(name))?;
    u8::try_from(index + 1).ok()
}

/// The text of a message's body: every text part (plain, HTML and other
/// text types) with its transfer encoding undone and its charset converted
/// to UTF-8, and encapsulated messages' headers and text, one part per
/// line. Parts are found as FETCH finds them (`super::mime`), so SEARCH
/// sees the parts BODYSTRUCTURE describes.
fn body_text(message: &[u8]) -> String {
    let mut out = String::new();
    let top = Entity::parse(message, 0..message.len(), false);
    append_entity_text(message, &top, 0, &mut out);
    out
}

/// Appends the searchable text of `entity`'s body. Nesting deeper than
/// [`MIME_DEPTH_MAX`] is not searched, which bounds the recursion.
fn append_entity_text(message: &[u8], entity: &Entity, depth: usize, out: &mut String) {
    let content_type = entity.content_type(message);
    let header = message.get(entity.header.clone()).unwrap_or_default();
    let body = message.get(entity.body.clone()).unwrap_or_default();
    let boundary = parameter(&content_type, "boundary").filter(|b| !b.is_empty());
    if content_type.is_multipart() && boundary.is_some() {
        if depth >= MIME_DEPTH_MAX {
            return;
        }
        let boundary = boundary.unwrap_or_default();
        let digest = content_type.subtype == "digest";
        for range in multipart_parts(message, entity.body.clone(), boundary) {
            let part = Entity::parse(message, range, digest);
            append_entity_text(message, &part, depth + 1, out);
        }
    } else if content_type.is_rfc822() && is_identity_encoding(header) {
        if depth >= MIME_DEPTH_MAX {
            return;
        }
        let inner = Entity::parse(message, entity.body.clone(), false);
        let inner_header = message.get(inner.header.clone()).unwrap_or_default();
        out.push_str(&HeaderText::parse(inner_header).all);
        append_entity_text(message, &inner, depth + 1, out);
    } else if content_type.media_type == "text" || content_type.is_multipart() {
        // A multipart without a boundary cannot be split: search it whole.
        let decoded = decode_transfer_encoding(header, body);
        let charset = parameter(&content_type, "charset").unwrap_or_default();
        match charset_decoder(charset) {
            Some(decode) => out.push_str(&decode(&decoded)),
            None => out.push_str(&String::from_utf8_lossy(&decoded)),
        }
        out.push('\n');
    }
}

/// The value of the parameter `name` (lower-case) of a content type.
fn parameter<'c>(content_type: &'c ContentType, name: &str) -> Option<&'c [u8]> {
    content_type
        .params
        .iter()
        .find(|(parameter, _)| parameter == name)
        .map(|(_, value)| value.as_slice())
}

/// The Content-Transfer-Encoding (RFC 2045 6.1) of an entity, lower-cased;
/// 7bit when absent.
fn transfer_encoding(header: &[u8]) -> String {
    field_value(header, b"content-transfer-encoding")
        .map(|value| String::from_utf8_lossy(value.trim_ascii()).to_ascii_lowercase())
        .unwrap_or_else(|| "7bit".to_string())
}

/// Whether an entity's body is stored as is (7bit, 8bit, binary), as an
/// encapsulated message must be to be searched in place (RFC 2046 5.2.1).
fn is_identity_encoding(header: &[u8]) -> bool {
    matches!(
        transfer_encoding(header).as_str(),
        "7bit" | "8bit" | "binary"
    )
}

/// `body` with its transfer encoding undone; unknown encodings are taken
/// as identity (RFC 2045 6.4 would make the part opaque, but its bytes
/// are still the best text there is).
fn decode_transfer_encoding<'b>(header: &[u8], body: &'b [u8]) -> Cow<'b, [u8]> {
    match transfer_encoding(header).as_str() {
        "base64" => Cow::Owned(decode_base64_lenient(body)),
        "quoted-printable" => Cow::Owned(decode_quoted_printable(body)),
        _ => Cow::Borrowed(body),
    }
}

/// Base64 (RFC 2045 6.8) that skips characters outside the alphabet, as
/// decoders must, and stops at the first `=`.
fn decode_base64_lenient(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut bits: u32 = 0;
    let mut bit_count = 0;
    for &b in text {
        let value = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => continue,
        };
        // Only the low 14 bits can still be pending; keep no more.
        bits = ((bits << 6) | u32::from(value)) & 0x3fff;
        bit_count += 6;
        if bit_count >= 8 {
            bit_count -= 8;
            // Truncation keeps the eight bits just completed.
            out.push((bits >> bit_count) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::imap::command::{SeqBound, SequenceSet};
    use crate::mailbox::Flags;
    use crate::spool::QueueId;

    /// 2024-03-15 23:30:00 UTC.
    const MARCH_15_LATE_MS: u64 = 1_710_545_400_000;

    const PLAIN: &[u8] = b"Return-Path: <alice@example.org>\r\n\
From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg@example.org>\r\n\
To: Bob <bob@example.net>,\r\n carol@example.net\r\n\
Cc: dave@example.com\r\n\
Subject: =?ISO-8859-1?B?U2No9m4=?= =?utf-8?q?e_Gr=C3=BC=C3=9Fe?= aus Berlin\r\n\
Date: Fri, 1 Mar 2024 23:59:59 -1200\r\n\
X-Empty:\r\n\
X-Tag: Alpha\r\n\
\r\n\
Hello World, plain body.\r\n";

    const BASE64_LATIN1: &[u8] = b"From: a@example.org\r\n\
Subject: =?iso-8859-1?q?caf=E9?=\r\n\
Date: 2 Feb 99 10:00 GMT\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
R3L832UgYXVzIE38bmNoZW4K\r\n";

    const MULTIPART: &[u8] = b"From: b@example.org\r\n\
Subject: parts\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
preamble is not searched\r\n\
--outer\r\n\
Content-Type: multipart/alternative; boundary=inner\r\n\
\r\n\
--inner\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
Stra=C3=9Fe and a soft=\r\n\
\x20break\r\n\
--inner\r\n\
Content-Type: text/html\r\n\
\r\n\
<p>HTML only phrase</p>\r\n\
--inner--\r\n\
--outer\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
Subject: =?utf-8?b?aW5uZXIgc3ViamVjdA==?=\r\n\
\r\n\
nested body words\r\n\
--outer\r\n\
Content-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
c2VjcmV0IGJpbmFyeQ==\r\n\
--outer--\r\n";

    fn meta(flags: &[&str], size: u64, internal_date_ms: u64) -> MessageMeta {
        let mut message_flags = Flags::default();
        for name in flags {
            message_flags.insert_name(name).unwrap();
        }
        MessageMeta {
            uid: 7,
            // Offset 0 of segment 0 is always a valid record ID.
            id: QueueId::new(0, 0).unwrap(),
            rcpt: 0,
            size,
            internal_date_ms,
            flags: message_flags,
            prefix: Arc::from(&b""[..]),
        }
    }

    fn message<'a>(meta: &'a MessageMeta, bytes: Option<&'a [u8]>) -> SearchMessage<'a> {
        SearchMessage {
            seq: 3,
            uid: meta.uid,
            largest_seq: 10,
            largest_uid: 50,
            meta,
            bytes,
        }
    }

    fn check(key: &SearchKey, bytes: &[u8]) -> bool {
        let meta = meta(&[], 100, MARCH_15_LATE_MS);
        matches(key, &message(&meta, Some(bytes)))
    }

    fn date(year: u16, month: u8, day: u8) -> Date {
        Date::new(year, month, day).unwrap()
    }

    fn set(ranges: &[(SeqBound, SeqBound)]) -> SequenceSet {
        SequenceSet {
            ranges: ranges.to_vec(),
        }
    }

    fn not(key: SearchKey) -> SearchKey {
        SearchKey::Not(Box::new(key))
    }

    fn or(left: SearchKey, right: SearchKey) -> SearchKey {
        SearchKey::Or(Box::new(left), Box::new(right))
    }

    #[test]
    fn system_flags_and_their_negations() {
        use SearchKey::*;
        let pairs = [
            ("\\Answered", Answered, Unanswered),
            ("\\Deleted", Deleted, Undeleted),
            ("\\Draft", Draft, Undraft),
            ("\\Flagged", Flagged, Unflagged),
            ("\\Seen", Seen, Unseen),
        ];
        for (name, set_key, unset_key) in pairs {
            let with = meta(&[name], 1, 0);
            let without = meta(&[], 1, 0);
            assert!(matches(&set_key, &message(&with, None)), "{name}");
            assert!(!matches(&unset_key, &message(&with, None)), "{name}");
            assert!(!matches(&set_key, &message(&without, None)), "{name}");
            assert!(matches(&unset_key, &message(&without, None)), "{name}");
        }
        let seen_only = meta(&["\\Seen"], 1, 0);
        assert!(!matches(&Flagged, &message(&seen_only, None)));
    }

    #[test]
    fn keywords_compare_without_case() {
        let with = meta(&["$Forwarded"], 1, 0);
        let msg = message(&with, None);
        assert!(matches(&SearchKey::Keyword("$forwarded".into()), &msg));
        assert!(!matches(&SearchKey::Keyword("$Junk".into()), &msg));
        assert!(!matches(&SearchKey::Unkeyword("$FORWARDED".into()), &msg));
        assert!(matches(&SearchKey::Unkeyword("$Junk".into()), &msg));
        // Not an atom: no message can have it.
        assert!(!matches(&SearchKey::Keyword("a b".into()), &msg));
    }

    #[test]
    fn recent_new_and_old_without_recent_support() {
        let unseen = meta(&[], 1, 0);
        let msg = message(&unseen, None);
        assert!(!matches(&SearchKey::Recent, &msg));
        assert!(!matches(&SearchKey::New, &msg));
        assert!(matches(&SearchKey::Old, &msg));
        assert!(matches(&SearchKey::All, &msg));
    }

    #[test]
    fn internal_date_keys_compare_calendar_days() {
        let late = meta(&[], 1, MARCH_15_LATE_MS);
        let msg = message(&late, None);
        assert!(matches(&SearchKey::On(date(2024, 3, 15)), &msg));
        assert!(!matches(&SearchKey::On(date(2024, 3, 16)), &msg));
        assert!(matches(&SearchKey::Since(date(2024, 3, 15)), &msg));
        assert!(matches(&SearchKey::Since(date(2024, 3, 14)), &msg));
        assert!(!matches(&SearchKey::Since(date(2024, 3, 16)), &msg));
        assert!(matches(&SearchKey::Before(date(2024, 3, 16)), &msg));
        assert!(!matches(&SearchKey::Before(date(2024, 3, 15)), &msg));
        let epoch = meta(&[], 1, 0);
        assert!(matches(
            &SearchKey::On(date(1970, 1, 1)),
            &message(&epoch, None)
        ));
    }

    #[test]
    fn sent_date_keys_use_the_date_header_in_its_own_zone() {
        // Fri, 1 Mar 2024 23:59:59 -1200 is 2 March in UTC: still 1 March.
        assert!(check(&SearchKey::SentOn(date(2024, 3, 1)), PLAIN));
        assert!(!check(&SearchKey::SentOn(date(2024, 3, 2)), PLAIN));
        assert!(check(&SearchKey::SentBefore(date(2024, 3, 2)), PLAIN));
        assert!(!check(&SearchKey::SentBefore(date(2024, 3, 1)), PLAIN));
        assert!(check(&SearchKey::SentSince(date(2024, 3, 1)), PLAIN));
        assert!(!check(&SearchKey::SentSince(date(2024, 3, 2)), PLAIN));
        // A two-digit year (RFC 5322 4.3) without a day name.
        assert!(check(&SearchKey::SentOn(date(1999, 2, 2)), BASE64_LATIN1));
        // No Date: header: no sent-date key matches.
        assert!(!check(&SearchKey::SentSince(date(1900, 1, 1)), MULTIPART));
        assert!(!check(&SearchKey::SentBefore(date(2100, 1, 1)), MULTIPART));
    }

    #[test]
    fn date_header_parsing() {
        let day = |text: &str| parse_date_day(text);
        let expected = Some(date(2024, 3, 1).days_since_epoch());
        assert_eq!(day("Fri, 1 Mar 2024 23:59:59 -1200"), expected);
        assert_eq!(day("01 mar 2024 00:00 +0000 (UTC)"), expected);
        assert_eq!(day("Fri,1 Mar 2024 12:00"), expected);
        assert_eq!(
            day("1 Mar 124 12:00"),
            Some(date(2024, 3, 1).days_since_epoch())
        );
        assert_eq!(day("1 Mar 49"), Some(date(2049, 3, 1).days_since_epoch()));
        assert_eq!(day("1 Mar 50"), Some(date(1950, 3, 1).days_since_epoch()));
        assert_eq!(day("31 Feb 2024"), None);
        assert_eq!(day("yesterday"), None);
        assert_eq!(day("1 Foo 2024"), None);
        assert_eq!(day(""), None);
    }

    #[test]
    fn sizes_are_strict_comparisons() {
        let sized = meta(&[], 100, 0);
        let msg = message(&sized, None);
        assert!(matches(&SearchKey::Larger(99), &msg));
        assert!(!matches(&SearchKey::Larger(100), &msg));
        assert!(matches(&SearchKey::Smaller(101), &msg));
        assert!(!matches(&SearchKey::Smaller(100), &msg));
    }

    #[test]
    fn sequence_and_uid_sets_with_star() {
        use SeqBound::*;
        // seq 3 of 10, uid 7 of 50.
        let plain = meta(&[], 1, 0);
        let msg = message(&plain, None);
        let sequence = |ranges: &[(SeqBound, SeqBound)]| SearchKey::Sequence(set(ranges));
        let uid = |ranges: &[(SeqBound, SeqBound)]| SearchKey::Uid(set(ranges));
        assert!(matches(&sequence(&[(Number(3), Number(3))]), &msg));
        assert!(matches(&sequence(&[(Number(1), Largest)]), &msg));
        assert!(!matches(&sequence(&[(Number(4), Largest)]), &msg));
        assert!(!matches(&sequence(&[(Largest, Largest)]), &msg));
        assert!(matches(&sequence(&[(Number(5), Number(2))]), &msg));
        assert!(!matches(&sequence(&[(Number(7), Number(7))]), &msg));
        assert!(matches(&uid(&[(Number(7), Number(7))]), &msg));
        assert!(matches(&uid(&[(Largest, Number(5))]), &msg));
        assert!(!matches(&uid(&[(Number(8), Largest)]), &msg));
        assert!(!matches(&uid(&[(Number(3), Number(3))]), &msg));
        // `*` is the largest sequence number, not the largest UID.
        let last = SearchMessage {
            seq: 10,
            ..message(&plain, None)
        };
        assert!(matches(&sequence(&[(Largest, Largest)]), &last));
        assert!(!matches(&uid(&[(Largest, Largest)]), &last));
    }

    #[test]
    fn nested_not_or_and() {
        let flagged = meta(&["\\Flagged"], 100, 0);
        let msg = message(&flagged, None);
        use SearchKey::*;
        assert!(matches(&not(Seen), &msg));
        assert!(!matches(&not(Flagged), &msg));
        assert!(matches(&not(not(Flagged)), &msg));
        assert!(matches(&or(Seen, Flagged), &msg));
        assert!(!matches(&or(Seen, Deleted), &msg));
        assert!(matches(&or(Seen, or(Deleted, Larger(10))), &msg));
        assert!(matches(&not(or(Seen, Deleted)), &msg));
        assert!(!matches(&not(or(Seen, not(Deleted))), &msg));
        assert!(matches(&And(vec![Flagged, Unseen, Larger(50)]), &msg));
        assert!(!matches(&And(vec![Flagged, Seen]), &msg));
        assert!(matches(&And(vec![]), &msg));
        assert!(matches_all(&[Flagged, not(Seen)], &msg));
        assert!(!matches_all(&[Flagged, Seen], &msg));
    }

    #[test]
    fn address_and_subject_keys_search_decoded_headers() {
        use SearchKey::*;
        assert!(check(&From("jörg müller".into()), PLAIN));
        assert!(check(&From("JÖRG".into()), PLAIN));
        assert!(check(&From("joerg@example.org".into()), PLAIN));
        assert!(!check(&From("bob".into()), PLAIN));
        // Folded To: both lines are the value.
        assert!(check(&To("CAROL@".into()), PLAIN));
        assert!(check(&To("bob <bob@".into()), PLAIN));
        assert!(!check(&To("dave".into()), PLAIN));
        assert!(check(&Cc("dave@example.com".into()), PLAIN));
        assert!(!check(&Cc("carol".into()), PLAIN));
        assert!(!check(&Bcc("".into()), PLAIN));
        assert!(!check(&Bcc("bob".into()), PLAIN));
        // Adjacent encoded words join without their space; Latin-1 and
        // UTF-8 words decode; the trailing plain text stays.
        assert!(check(&Subject("schöne grüße aus berlin".into()), PLAIN));
        assert!(check(&Subject("SCHÖNE GRÜßE".into()), PLAIN));
        // Simple case folding: ß is not SS.
        assert!(!check(&Subject("grüsse".into()), PLAIN));
        assert!(!check(&Subject("=?utf-8".into()), PLAIN));
        assert!(!check(&Subject("schön e".into()), PLAIN));
        assert!(check(&Subject("CAFÉ".into()), BASE64_LATIN1));
        // An encapsulated message's subject is body, not header.
        assert!(!check(&Subject("inner".into()), MULTIPART));
    }

    #[test]
    fn header_key_by_name_with_empty_value_meaning_present() {
        use SearchKey::*;
        let header = |name: &str, value: &str| Header(name.into(), value.into());
        assert!(check(&header("x-tag", "alp"), PLAIN));
        assert!(!check(&header("x-tag", "beta"), PLAIN));
        assert!(check(&header("X-EMPTY", ""), PLAIN));
        assert!(!check(&header("X-Missing", ""), PLAIN));
        assert!(check(&header("return-path", "alice@"), PLAIN));
        assert!(check(&header("Subject", "grüße"), PLAIN));
        // The body is not a header.
        assert!(!check(&header("Subject", "Hello"), PLAIN));
    }

    #[test]
    fn body_key_searches_decoded_bodies_only() {
        use SearchKey::*;
        assert!(check(&Body("hello world".into()), PLAIN));
        assert!(!check(&Body("joerg".into()), PLAIN));
        assert!(!check(&Body("goodbye".into()), PLAIN));
        // Base64 of ISO-8859-1 text.
        assert!(check(&Body("grüße aus münchen".into()), BASE64_LATIN1));
        assert!(!check(&Body("R3L832".into()), BASE64_LATIN1));
    }

    #[test]
    fn multipart_bodies_quoted_printable_html_and_nested_messages() {
        use SearchKey::*;
        assert!(check(&Body("straße and a soft break".into()), MULTIPART));
        assert!(!check(&Body("=C3=9F".into()), MULTIPART));
        assert!(check(&Body("html only phrase".into()), MULTIPART));
        assert!(check(&Body("nested body words".into()), MULTIPART));
        assert!(check(&Body("inner subject".into()), MULTIPART));
        assert!(!check(&Body("preamble".into()), MULTIPART));
        assert!(!check(&Body("secret binary".into()), MULTIPART));
        assert!(!check(&Body("b@example.org".into()), MULTIPART));
    }

    #[test]
    fn text_key_searches_headers_and_body() {
        use SearchKey::*;
        assert!(check(&Text("JOERG@example".into()), PLAIN));
        assert!(check(&Text("müller".into()), PLAIN));
        assert!(check(&Text("plain body".into()), PLAIN));
        assert!(check(&Text("x-tag: alpha".into()), PLAIN));
        assert!(!check(&Text("absent words".into()), PLAIN));
        assert!(check(&Text("straße".into()), MULTIPART));
        assert!(!check(&Text("secret binary".into()), MULTIPART));
    }

    #[test]
    fn content_keys_need_bytes_and_match_nothing_without_them() {
        use SearchKey::*;
        assert!(needs_bytes(&Body("x".into())));
        assert!(needs_bytes(&SentOn(date(2024, 1, 1))));
        assert!(needs_bytes(&Header("a".into(), "".into())));
        assert!(needs_bytes(&not(or(Seen, And(vec![All, To("x".into())])))));
        assert!(!needs_bytes(&not(or(Seen, And(vec![All, Larger(1)])))));
        assert!(!needs_bytes(&On(date(2024, 1, 1))));
        assert!(!needs_bytes(&Uid(set(&[(
            SeqBound::Largest,
            SeqBound::Largest
        )]))));
        let unread = meta(&[], 1, 0);
        let msg = message(&unread, None);
        assert!(!matches(&Body("".into()), &msg));
        assert!(!matches(&Text("".into()), &msg));
        assert!(!matches(&SentSince(date(1900, 1, 1)), &msg));
    }

    #[test]
    fn transfer_decoders_are_lenient() {
        assert_eq!(decode_base64_lenient(b"aGVs\r\nbG8=\r\n"), b"hello");
        assert_eq!(decode_base64_lenient(b"aG*Vs bG8"), b"hello");
        assert_eq!(decode_base64_lenient(b"aGVsbG8=aGVsbG8="), b"hello");
        assert_eq!(decode_base64_lenient(b""), b"");
        assert_eq!(decode_quoted_printable(b"a=3Db=\r\nc=\nd"), b"a=bcd");
        assert_eq!(decode_quoted_printable(b"caf=e9"), b"caf\xe9");
        assert_eq!(decode_quoted_printable(b"1=2 and =ZZ ="), b"1=2 and =ZZ =");
        assert_eq!(decode_quoted_printable(b"=4"), b"=4");
    }

    #[test]
    fn encoded_word_decoding() {
        let decode = |raw: &str| decode_header_value(raw.as_bytes());
        assert_eq!(decode("=?utf-8?q?a_b?= =?utf-8?q?c?="), "a bc");
        assert_eq!(decode("x =?utf-8?b?w6k=?= y"), "x é y");
        assert_eq!(decode("=?UTF-8*en?Q?hi?="), "hi");
        assert_eq!(decode("=?bogus"), "=?bogus");
        assert_eq!(decode("a =? b ?= c"), "a =? b ?= c");
        assert_eq!(decode("plain"), "plain");
        assert_eq!(decode(""), "");
    }

    #[test]
    fn hostile_bytes_do_not_panic() {
        let keys = [
            SearchKey::Text("x".into()),
            SearchKey::SentOn(date(2024, 1, 1)),
            SearchKey::Header("=?".into(), "".into()),
        ];
        let inputs: [&[u8]; 9] = [
            b"",
            b"\r\n",
            b"no header at all",
            b"Subject: =?\r\n\r\n",
            b"Subject: =?utf-8?b?####?=\r\nDate: 99 Jan 99999\r\n\r\n\xff\xfe",
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n--x\r\n\r\n",
            b"Content-Type: message/rfc822\r\n\r\nContent-Type: message/rfc822\r\n\r\n",
            b"Content-Transfer-Encoding: base64\r\n\r\n====\xff",
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=\r\n=Z",
        ];
        for input in inputs {
            for key in &keys {
                check(key, input);
            }
        }
        let mut fuzz = Vec::new();
        let mut state: u32 = 1;
        for _ in 0..4096 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let alphabet = b"=?QqBb:\r\n -x\xc3\xa9\"<>;boundary";
            let index = usize::try_from(state >> 16).unwrap_or(0) % alphabet.len();
            fuzz.extend_from_slice(alphabet.get(index..index + 1).unwrap_or_default());
        }
        for key in &keys {
            check(key, &fuzz);
        }
    }

    #[test]
    fn only_the_first_search_bytes_max_are_searched() {
        let mut big = b"Subject: big\r\n\r\n".to_vec();
        big.resize(SEARCH_BYTES_MAX, b'a');
        big.extend_from_slice(b" needle beyond the limit");
        assert!(!check(&SearchKey::Body("needle".into()), &big));
        assert!(check(&SearchKey::Body("aaaa".into()), &big));
    }
}
