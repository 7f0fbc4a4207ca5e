//! `Received:` trace fields: the one tern puts at the top of every message
//! it passes on (RFC 5321 4.4, RFC 5322 3.6.7, "with" types of RFC 3848 and
//! RFC 6531 4.3), and counting those a message already carries to stop
//! mail loops (RFC 5321 6.3).
//!
//! This module only formats and counts text. It must never do I/O (no
//! reverse DNS, no clock: the arrival time comes from the envelope), must
//! never copy client-chosen text into the field unsanitised (a HELO name
//! must not be able to end the field, add a line or fake a clause or
//! comment), and must never look past the header section when counting.

use std::iter;
use std::net::IpAddr;

use mail_builder::headers::date::Date;
use memchr::{memchr_iter, memmem};

use crate::envelope::{ClientInfo, Envelope};

/// More `Received:` fields than this mean a mail loop (RFC 5321 6.3).
pub const RECEIVED_HOPS_MAX: usize = 100;
/// Line length a header field should keep to (RFC 5322 2.1.1).
const LINE_PREFERRED_MAX: usize = 78;
/// Longest domain (RFC 5321 4.5.3.1.2); longer HELO names are cut, which
/// with [`PATH_MAX`] keeps every line far below RFC 5322 2.1.1's 998.
const DOMAIN_MAX: usize = 255;
/// Longest path including the angle brackets (RFC 5321 4.5.3.1.3).
const PATH_MAX: usize = 256;
/// Put in place of a HELO name that has nothing printable left.
const UNKNOWN_NAME: &str = "unknown";

/// The complete `Received:` field for a message that arrived with
/// `envelope` and was queued as `queue_id` by `by_host`, with CRLF line
/// ends, folded before `by` and `for` (or the date) and wherever a line
/// would pass 78 characters.
pub fn received_header(envelope: &Envelope, queue_id: &str, by_host: &str) -> String {
    let client = &envelope.client;
    let mut field = FoldedField::new("Received:");
    field.word("from");
    field.word(&sanitised_name(&client.helo));
    field.word(&format!("({})", address_literal(client.ip)));
    field.break_line();
    field.word("by");
    field.word(&sanitised_name(by_host));
    field.word("(tern)");
    field.word("with");
    field.word(protocol(client, envelope.smtputf8));
    field.word("id");
    let id = sanitised_name(queue_id);
    match single_recipient_path(envelope) {
        Some(path) => {
            field.word(&id);
            field.break_line();
            field.word("for");
            field.word(&format!("{path};"));
        }
        None => {
            field.word(&format!("{id};"));
            field.break_line();
        }
    }
    // u64::MAX / 1000 is below i64::MAX, so the conversion cannot fail.
    let seconds = i64::try_from(envelope.received_at_ms / 1000).unwrap_or(i64::MAX);
    for word in Date::new(seconds).to_rfc822().split(' ') {
        field.word(word);
    }
    field.finish()
}

/// The message (CRLF line ends, as the session hands it out) has more than
/// [`RECEIVED_HOPS_MAX`] `Received:` fields in its header section, the
/// part before the first empty line. Field names match in any case, with
/// the white space before the colon that RFC 5322 4.5.3 still allows;
/// folded continuation lines start with white space and never count.
pub fn too_many_hops(message: &[u8]) -> bool {
    let header_len = if message.starts_with(b"\r\n") {
        0
    } else {
        // Up to and including the CRLF that ends the last field line.
        memmem::find(message, b"\r\n\r\n").map_or(message.len(), |end| end + 2)
    };
    let header = message.get(..header_len).unwrap_or(message);
    let line_starts = iter::once(0).chain(memchr_iter(b'\n', header).map(|lf| lf + 1));
    line_starts
        .filter(|&start| header.get(start..).is_some_and(is_received_field))
        .nth(RECEIVED_HOPS_MAX)
        .is_some()
}

/// The line starts a `Received` field: the name, optional blanks, a colon.
fn is_received_field(line: &[u8]) -> bool {
    const NAME: &[u8] = b"Received";
    let Some((name, rest)) = line.split_at_checked(NAME.len()) else {
        return false;
    };
    name.eq_ignore_ascii_case(NAME)
        && rest
            .iter()
            .find(|&&byte| byte != b' ' && byte != b'\t')
            .is_some_and(|&byte| byte == b':')
}

/// The "with" protocol type: RFC 3848 for (E)SMTP with TLS (S) and
/// authentication (A), RFC 6531 4.3 when the message used SMTPUTF8.
fn protocol(client: &ClientInfo, smtputf8: bool) -> &'static str {
    let authenticated = client.auth.is_some();
    match (client.esmtp, smtputf8, client.tls, authenticated) {
        // HELO has no registered variant with TLS or AUTH (both are ESMTP
        // extensions), and SMTPUTF8 cannot be used without EHLO.
        (false, _, _, _) => "SMTP",
        (true, false, false, false) => "ESMTP",
        (true, false, false, true) => "ESMTPA",
        (true, false, true, false) => "ESMTPS",
        (true, false, true, true) => "ESMTPSA",
        (true, true, false, false) => "UTF8SMTP",
        (true, true, false, true) => "UTF8SMTPA",
        (true, true, true, false) => "UTF8SMTPS",
        (true, true, true, true) => "UTF8SMTPSA",
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 4.1.3); an IPv4 client
/// seen on a dual-stack socket as `::ffff:a.b.c.d` is shown as IPv4.
fn address_literal(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// A name for the field as one atom: a well-formed address literal stays
/// as it is; otherwise letters, digits, `-`, `.` and `_` are kept, every
/// other character (space, CR, LF, `(`, `)`, `[`, `]`, `;`, `<`, non-ASCII
/// ...) becomes `?`, and the result is cut to [`DOMAIN_MAX`].
fn sanitised_name(name: &str) -> String {
    if is_address_literal(name) {
        return name.to_owned();
    }
    let cleaned: String = name
        .chars()
        .take(DOMAIN_MAX)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '?'
            }
        })
        .collect();
    if cleaned.is_empty() {
        UNKNOWN_NAME.to_owned()
    } else {
        cleaned
    }
}

/// `[IPv4]` or `[IPv6:IPv6]` with an address that parses.
fn is_address_literal(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) else {
        return false;
    };
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner
            .get(5..)
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok()),
        _ => inner.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

/// `<address>` of the only recipient, for the `for` clause. With several
/// recipients the clause is left out, so that no copy tells one recipient
/// who else got the message. Also left out for an address that no SMTP
/// path could carry (control characters or longer than [`PATH_MAX`]).
fn single_recipient_path(envelope: &Envelope) -> Option<String> {
    let [recipient] = envelope.recipients.as_slice() else {
        return None;
    };
    let address = &recipient.address;
    let fits = !address.is_empty()
        && address.len() + 2 <= PATH_MAX
        && !address.chars().any(char::is_control);
    fits.then(|| format!("<{address}>"))
}

/// A header field being built word by word, folded (RFC 5322 2.2.3) with
/// CRLF TAB before a word that would take its line past
/// [`LINE_PREFERRED_MAX`], or where the caller asks for a new line.
struct FoldedField {
    text: String,
    line_len: usize,
    /// The current line holds a word after its name or indent, so folding
    /// before the next word leaves no line of white space alone.
    line_has_word: bool,
    /// A new line was asked for and starts with the next word.
    break_pending: bool,
}

impl FoldedField {
    fn new(name: &str) -> Self {
        FoldedField {
            text: name.to_owned(),
            line_len: name.len(),
            line_has_word: false,
            break_pending: false,
        }
    }

    fn word(&mut self, word: &str) {
        let too_long = self.line_len + 1 + word.len() > LINE_PREFERRED_MAX;
        if self.line_has_word && (self.break_pending || too_long) {
            self.text.push_str("\r\n\t");
            self.line_len = 1;
        } else {
            self.text.push(' ');
            self.line_len += 1;
        }
        self.text.push_str(word);
        self.line_len += word.len();
        self.line_has_word = true;
        self.break_pending = false;
    }

    fn break_line(&mut self) {
        self.break_pending = true;
    }

    fn finish(mut self) -> String {
        self.text.push_str("\r\n");
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{BodyType, Notify, Recipient};
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// 2026-11-23 17:55:06 UTC.
    const ARRIVAL_MS: u64 = 1_795_456_506_123;

    fn recipient(address: &str) -> Recipient {
        Recipient {
            address: address.to_owned(),
            notify: Notify::default(),
            orcpt: None,
        }
    }

    fn envelope(helo: &str, ip: IpAddr, recipients: &[&str]) -> Envelope {
        Envelope {
            sender: "a@b.example".to_owned(),
            body: BodyType::SevenBit,
            smtputf8: false,
            ret: None,
            envid: None,
            declared_size: None,
            recipients: recipients.iter().map(|r| recipient(r)).collect(),
            client: ClientInfo {
                ip,
                helo: helo.to_owned(),
                esmtp: true,
                tls: true,
                auth: None,
            },
            received_at_ms: ARRIVAL_MS,
        }
    }

    fn client_v4() -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
    }

    /// Parses `field` at the top of a small message with mail-parser.
    fn parse(field: &str) -> mail_parser::Received<'static> {
        let message = format!("{field}Subject: x\r\n\r\nbody\r\n");
        let parsed = mail_parser::MessageParser::default()
            .parse(message.as_bytes())
            .expect("a message with headers and a body parses");
        parsed
            .received()
            .expect("the Received field parses as one")
            .clone()
            .into_owned()
    }

    /// Every line ends in CRLF, no line passes `max`, and continuation
    /// lines start with white space (so nothing reads as a new field).
    fn assert_lines(field: &str, max: usize) {
        assert!(field.ends_with("\r\n"), "{field:?}");
        let body = field.strip_suffix("\r\n").unwrap_or(field);
        for (index, line) in body.split("\r\n").enumerate() {
            assert!(line.len() <= max, "line {index} too long in {field:?}");
            assert!(!line.contains(['\r', '\n']), "bare CR/LF in {field:?}");
            if index > 0 {
                assert!(line.starts_with('\t'), "{field:?}");
            }
        }
    }

    #[test]
    fn typical_field_matches_the_expected_layout() {
        let envelope = envelope("client.example", client_v4(), &["u@d.example"]);
        let field = received_header(&envelope, "0000000100000040", "mx.tern.example");
        assert_eq!(
            field,
            "Received: from client.example ([192.0.2.1])\r\n\
             \tby mx.tern.example (tern) with ESMTPS id 0000000100000040\r\n\
             \tfor <u@d.example>; Mon, 23 Nov 2026 17:55:06 +0000\r\n"
        );
        assert_lines(&field, LINE_PREFERRED_MAX);
        let received = parse(&field);
        assert_eq!(
            received.from,
            Some(mail_parser::Host::Name("client.example".into()))
        );
        assert_eq!(received.from_ip, Some(client_v4()));
        assert_eq!(
            received.by,
            Some(mail_parser::Host::Name("mx.tern.example".into()))
        );
        assert_eq!(received.with, Some(mail_parser::Protocol::ESMTPS));
        assert_eq!(received.id.as_deref(), Some("0000000100000040"));
        assert_eq!(received.for_.as_deref(), Some("u@d.example"));
        let date = received.date.expect("the date parses");
        assert_eq!(
            (
                date.year,
                date.month,
                date.day,
                date.hour,
                date.minute,
                date.second
            ),
            (2026, 11, 23, 17, 55, 6)
        );
        assert_eq!((date.tz_hour, date.tz_minute), (0, 0));
    }

    #[test]
    fn every_with_type() {
        let cases = [
            // (esmtp, smtputf8, tls, auth, expected, parsed)
            (
                false,
                false,
                false,
                false,
                "SMTP",
                mail_parser::Protocol::SMTP,
            ),
            (
                false,
                false,
                true,
                true,
                "SMTP",
                mail_parser::Protocol::SMTP,
            ),
            (
                true,
                false,
                false,
                false,
                "ESMTP",
                mail_parser::Protocol::ESMTP,
            ),
            (
                true,
                false,
                false,
                true,
                "ESMTPA",
                mail_parser::Protocol::ESMTPA,
            ),
            (
                true,
                false,
                true,
                false,
                "ESMTPS",
                mail_parser::Protocol::ESMTPS,
            ),
            (
                true,
                false,
                true,
                true,
                "ESMTPSA",
                mail_parser::Protocol::ESMTPSA,
            ),
            (
                true,
                true,
                false,
                false,
                "UTF8SMTP",
                mail_parser::Protocol::UTF8SMTP,
            ),
            (
                true,
                true,
                false,
                true,
                "UTF8SMTPA",
                mail_parser::Protocol::UTF8SMTPA,
            ),
            (
                true,
                true,
                true,
                false,
                "UTF8SMTPS",
                mail_parser::Protocol::UTF8SMTPS,
            ),
            (
                true,
                true,
                true,
                true,
                "UTF8SMTPSA",
                mail_parser::Protocol::UTF8SMTPSA,
            ),
        ];
        for (esmtp, smtputf8, tls, auth, expected, parsed) in cases {
            let mut envelope = envelope("c.example", client_v4(), &["u@d.example"]);
            envelope.smtputf8 = smtputf8;
            envelope.client.esmtp = esmtp;
            envelope.client.tls = tls;
            envelope.client.auth = auth.then(|| "user".to_owned());
            let field = received_header(&envelope, "Q1", "mx.example");
            assert!(
                field.contains(&format!(" with {expected} id Q1\r\n")),
                "{field:?}"
            );
            assert_eq!(parse(&field).with, Some(parsed), "{field:?}");
        }
    }

    #[test]
    fn ipv6_and_ipv4_mapped_clients() {
        let v6 = IpAddr::V6(
            "2001:db8::1"
                .parse::<Ipv6Addr>()
                .unwrap_or(Ipv6Addr::LOCALHOST),
        );
        let field = received_header(&envelope("c.example", v6, &[]), "Q1", "mx.example");
        assert!(
            field.starts_with("Received: from c.example ([IPv6:2001:db8::1])\r\n"),
            "{field:?}"
        );
        assert_eq!(parse(&field).from_ip, Some(v6));

        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped());
        let field = received_header(&envelope("c.example", mapped, &[]), "Q1", "mx.example");
        assert!(
            field.starts_with("Received: from c.example ([192.0.2.9])\r\n"),
            "{field:?}"
        );
    }

    #[test]
    fn for_clause_only_with_exactly_one_recipient() {
        for recipients in [&[][..], &["u@d.example", "v@d.example"][..]] {
            let field = received_header(
                &envelope("c.example", client_v4(), recipients),
                "Q1",
                "mx.example",
            );
            assert!(!field.contains(" for "), "{field:?}");
            assert!(field.contains(" id Q1;\r\n\tMon, 23 Nov 2026"), "{field:?}");
            assert_lines(&field, LINE_PREFERRED_MAX);
            let received = parse(&field);
            assert_eq!(received.for_, None);
            assert_eq!(received.id.as_deref(), Some("Q1"));
            assert!(received.date.is_some());
        }
        let field = received_header(
            &envelope("c.example", client_v4(), &["only@d.example"]),
            "Q1",
            "mx.example",
        );
        assert!(field.contains("\tfor <only@d.example>; Mon,"), "{field:?}");
    }

    #[test]
    fn hostile_helo_cannot_add_lines_clauses_or_comments() {
        let hostile = "evil.example\r\nX-Injected: yes (fake [1.2.3.4]) by x; Mon";
        let field = received_header(
            &envelope(hostile, client_v4(), &["u@d.example"]),
            "Q1",
            "mx.example",
        );
        assert_lines(&field, LINE_PREFERRED_MAX);
        assert!(!field.contains("X-Injected:"), "{field:?}");
        // Only our own comment, `(tern)` and the `;` before the date.
        assert_eq!(
            field.matches(['(', ')', '[', ']', ';']).count(),
            7,
            "{field:?}"
        );
        assert!(
            field.starts_with(
                "Received: from evil.example??X-Injected??yes??fake??1.2.3.4???by?x??Mon\r\n\
                 \t([192.0.2.1])\r\n\tby mx.example (tern)"
            ),
            "{field:?}"
        );
        assert_eq!(parse(&field).from_ip, Some(client_v4()));
    }

    #[test]
    fn very_long_helo_is_cut_and_every_line_stays_short() {
        let long = "a".repeat(900);
        let field = received_header(
            &envelope(&long, client_v4(), &["u@d.example"]),
            "Q1",
            "mx.example",
        );
        assert!(field.contains(&format!("\r\n\t{}\r\n", "a".repeat(DOMAIN_MAX))));
        assert!(!field.contains(&"a".repeat(DOMAIN_MAX + 1)));
        assert_lines(&field, 998);
        // The over-long name stands alone on its line; the rest keep to 78.
        let long_lines = field.split("\r\n").filter(|l| l.len() > LINE_PREFERRED_MAX);
        assert_eq!(long_lines.count(), 1, "{field:?}");
        assert_eq!(parse(&field).from_ip, Some(client_v4()));
    }

    #[test]
    fn non_ascii_and_empty_helo() {
        let field = received_header(
            &envelope("bücher.example", client_v4(), &[]),
            "Q1",
            "mx.example",
        );
        assert!(
            field.starts_with("Received: from b?cher.example ("),
            "{field:?}"
        );
        let field = received_header(&envelope("", client_v4(), &[]), "Q1", "mx.example");
        assert!(field.starts_with("Received: from unknown ("), "{field:?}");
    }

    #[test]
    fn address_literal_helo_is_kept_and_bad_literals_are_not() {
        for literal in ["[192.0.2.1]", "[IPv6:2001:db8::1]", "[ipv6:::1]"] {
            let field = received_header(&envelope(literal, client_v4(), &[]), "Q1", "mx.example");
            assert!(
                field.starts_with(&format!("Received: from {literal} (")),
                "{field:?}"
            );
        }
        for bad in ["[192.0.2.1] x", "[evil)]", "[IPv6:nonsense]", "[]"] {
            let field = received_header(&envelope(bad, client_v4(), &[]), "Q1", "mx.example");
            let first_line = field.split("\r\n").next().unwrap_or_default();
            assert_eq!(first_line.matches('[').count(), 1, "{field:?}");
        }
    }

    #[test]
    fn smtputf8_recipient_is_kept_and_unusable_paths_are_left_out() {
        let mut utf8 = envelope("c.example", client_v4(), &["δοκιμή@παράδειγμα.example"]);
        utf8.smtputf8 = true;
        let field = received_header(&utf8, "Q1", "mx.example");
        assert!(
            field.contains("for <δοκιμή@παράδειγμα.example>;"),
            "{field:?}"
        );
        assert_eq!(
            parse(&field).for_.as_deref(),
            Some("δοκιμή@παράδειγμα.example")
        );

        let too_long = format!("{}@d.example", "x".repeat(PATH_MAX));
        let with_newline = "u@d.example\r\nX: y";
        for address in [too_long.as_str(), with_newline] {
            let field = received_header(
                &envelope("c.example", client_v4(), &[address]),
                "Q1",
                "mx.example",
            );
            assert!(!field.contains(" for "), "{field:?}");
            assert_eq!(field.matches("\r\n").count(), 3, "{field:?}");
        }
    }

    #[test]
    fn long_by_host_folds_inside_the_by_clause() {
        let host = format!("{}.example", "h".repeat(60));
        let field = received_header(
            &envelope("c.example", client_v4(), &["u@d.example"]),
            "0000000100000040",
            &host,
        );
        assert_lines(&field, LINE_PREFERRED_MAX);
        assert!(
            field.contains(&format!("\tby {host}\r\n\t(tern) with ESMTPS")),
            "{field:?}"
        );
        assert_eq!(parse(&field).with, Some(mail_parser::Protocol::ESMTPS));
    }

    /// `count` Received fields, each folded over two lines, then a subject,
    /// an empty line and `body`.
    fn message_with_hops(count: usize, body: &str) -> Vec<u8> {
        let mut message = String::new();
        for hop in 0..count {
            message.push_str(&format!(
                "Received: from h{hop}.example ([192.0.2.1])\r\n\tby mx.example; Mon, 23 Nov 2026 17:55:06 +0000\r\n"
            ));
        }
        message.push_str("Subject: loop\r\n\r\n");
        message.push_str(body);
        message.into_bytes()
    }

    #[test]
    fn hop_limit_is_inclusive() {
        assert!(!too_many_hops(&message_with_hops(0, "x\r\n")));
        assert!(!too_many_hops(&message_with_hops(
            RECEIVED_HOPS_MAX,
            "x\r\n"
        )));
        assert!(too_many_hops(&message_with_hops(
            RECEIVED_HOPS_MAX + 1,
            "x\r\n"
        )));
        assert!(too_many_hops(&message_with_hops(1000, "x\r\n")));
    }

    #[test]
    fn received_in_the_body_does_not_count() {
        let body = "Received: from quoted.example\r\n".repeat(50);
        assert!(!too_many_hops(&message_with_hops(RECEIVED_HOPS_MAX, &body)));
        // A message that is only a body (starts with the empty line).
        let only_body = format!("\r\n{}", "Received: x\r\n".repeat(200));
        assert!(!too_many_hops(only_body.as_bytes()));
        // A message without a body: all of it is header.
        let only_header = "Received: x\r\n".repeat(RECEIVED_HOPS_MAX + 1);
        assert!(too_many_hops(only_header.as_bytes()));
    }

    #[test]
    fn folded_lines_and_look_alike_fields_do_not_count() {
        // One field folded over many lines whose continuations mention Received.
        let folded = format!(
            "Received: from a.example\r\n{}\r\nbody\r\n",
            "\tReceived: by b.example\r\n Received:\r\n".repeat(RECEIVED_HOPS_MAX)
        );
        assert!(!too_many_hops(folded.as_bytes()));
        let look_alikes = format!(
            "{}\r\nbody\r\n",
            "X-Received: x\r\nReceived-SPF: pass\r\nReceivedx: y\r\nReceived\r\n"
                .repeat(RECEIVED_HOPS_MAX)
        );
        assert!(!too_many_hops(look_alikes.as_bytes()));
    }

    #[test]
    fn field_name_matches_in_any_case_and_with_blanks_before_the_colon() {
        let mixed = format!(
            "{}{}\r\nbody\r\n",
            "RECEIVED: x\r\nreceived \t: y\r\n".repeat(RECEIVED_HOPS_MAX / 2),
            "rEcEiVeD:z\r\n"
        );
        assert!(too_many_hops(mixed.as_bytes()));
    }
}
