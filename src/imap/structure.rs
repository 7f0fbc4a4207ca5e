//! ENVELOPE and BODYSTRUCTURE / BODY (RFC 3501 7.4.2, 9 `envelope` and
//! `body`) of a raw RFC 5322 message, written as IMAP response data.
//!
//! Header values go out as they are in the message (encoded-words intact,
//! folding removed), as RFC 3501 asks; addresses are split by a small RFC
//! 5322 3.4 parser that tolerates malformed input. Nothing here decodes
//! bodies; recursion is bounded by [`MIME_DEPTH_MAX`] and nothing may panic
//! on any input.

use std::io::Write;

use super::mime::{field_value, multipart_parts, ContentType, Entity};
use super::response::{write_nstring, write_string};

/// Deepest MIME nesting described part by part; deeper entities are
/// described as opaque application/octet-stream parts. RFC 2046 sets no
/// limit; this bounds recursion on hostile messages.
pub const MIME_DEPTH_MAX: usize = 32;

/// Writes the ENVELOPE of the message or encapsulated message `message`.
pub fn write_envelope(out: &mut Vec<u8>, message: &[u8]) {
    let entity = Entity::parse(message, 0..message.len(), false);
    envelope(out, message.get(entity.header).unwrap_or_default());
}

/// Writes BODYSTRUCTURE (`extensible`) or BODY (not) of `message`.
pub fn write_body_structure(out: &mut Vec<u8>, message: &[u8], extensible: bool) {
    let entity = Entity::parse(message, 0..message.len(), false);
    body(out, message, &entity, extensible, 0);
}

fn envelope(out: &mut Vec<u8>, header: &[u8]) {
    let field = |name: &[u8]| field_value(header, name).map(|v| v.trim_ascii().to_vec());
    out.push(b'(');
    write_nstring(out, field(b"date").as_deref());
    out.push(b' ');
    write_nstring(out, field(b"subject").as_deref());
    let from = field(b"from");
    for (name, fallback) in [
        (&b"from"[..], None),
        (b"sender", from.as_deref()),
        (b"reply-to", from.as_deref()),
        (b"to", None),
        (b"cc", None),
        (b"bcc", None),
    ] {
        out.push(b' ');
        let value = field(name);
        // RFC 3501 7.4.2: Sender and Reply-To default to From.
        let value = value.as_deref().or(fallback);
        write_address_list(out, value.map(parse_addresses).unwrap_or_default());
    }
    out.push(b' ');
    write_nstring(out, field(b"in-reply-to").as_deref());
    out.push(b' ');
    write_nstring(out, field(b"message-id").as_deref());
    out.push(b')');
}

/// One ENVELOPE address (RFC 3501 9 `address`); a group start has only a
/// mailbox (the group name), a group end has nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Address {
    name: Option<Vec<u8>>,
    route: Option<Vec<u8>>,
    mailbox: Option<Vec<u8>>,
    host: Option<Vec<u8>>,
}

fn write_address_list(out: &mut Vec<u8>, addresses: Vec<Address>) {
    if addresses.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for address in &addresses {
        out.push(b'(');
        write_nstring(out, address.name.as_deref());
        out.push(b' ');
        write_nstring(out, address.route.as_deref());
        out.push(b' ');
        write_nstring(out, address.mailbox.as_deref());
        out.push(b' ');
        write_nstring(out, address.host.as_deref());
        out.push(b')');
    }
    out.push(b')');
}

/// A lenient RFC 5322 3.4 address-list parser over an unfolded value.
struct AddressParser<'a> {
    text: &'a [u8],
    pos: usize,
}

/// Characters that end an atom here (RFC 5322 3.2.3 specials, less `.`,
/// which obsolete phrases and dot-atoms both contain).
fn is_special(b: u8) -> bool {
    matches!(
        b,
        b'(' | b')' | b'<' | b'>' | b'[' | b']' | b':' | b';' | b'@' | b'\\' | b',' | b'"'
    ) || b.is_ascii_whitespace()
}

impl AddressParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    /// Skips whitespace and (nested) comments.
    fn skip_cfws(&mut self) {
        let mut depth = 0usize;
        while let Some(b) = self.peek() {
            match b {
                b'(' => depth += 1,
                b')' if depth > 0 => depth -= 1,
                b'\\' if depth > 0 => self.pos += 1,
                _ if depth > 0 || b.is_ascii_whitespace() => {}
                _ => return,
            }
            self.pos += 1;
        }
    }

    /// An atom (with dots), a quoted string (unescaped) or a domain
    /// literal (kept with its brackets).
    fn word(&mut self) -> Option<Vec<u8>> {
        self.skip_cfws();
        match self.peek()? {
            b'"' => {
                self.pos += 1;
                let mut word = Vec::new();
                while let Some(b) = self.peek() {
                    self.pos += 1;
                    match b {
                        b'"' => break,
                        b'\\' => {
                            if let Some(escaped) = self.peek() {
                                word.push(escaped);
                                self.pos += 1;
                            }
                        }
                        _ => word.push(b),
                    }
                }
                Some(word)
            }
            b'[' => {
                let start = self.pos;
                while let Some(b) = self.peek() {
                    self.pos += 1;
                    if b == b']' {
                        break;
                    }
                }
                self.text.get(start..self.pos).map(<[u8]>::to_vec)
            }
            b if !is_special(b) => {
                let start = self.pos;
                while self.peek().is_some_and(|b| !is_special(b)) {
                    self.pos += 1;
                }
                self.text.get(start..self.pos).map(<[u8]>::to_vec)
            }
            _ => None,
        }
    }

    /// Words up to the next special, joined by single spaces.
    fn phrase(&mut self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.word()).collect()
    }

    fn eat(&mut self, b: u8) -> bool {
        self.skip_cfws();
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// `local@domain` after its local part was read as `words`.
    fn addr_spec(&mut self, words: Vec<Vec<u8>>) -> Address {
        let mailbox = Some(words.concat());
        let host = if self.eat(b'@') {
            Some(self.phrase().concat())
        } else {
            None
        };
        Address {
            mailbox,
            host: host.or_else(|| Some(Vec::new())),
            ..Address::default()
        }
    }

    /// `[route:]local@domain>` after the `<`.
    fn angle_addr(&mut self, name: Vec<Vec<u8>>) -> Address {
        let mut route = None;
        self.skip_cfws();
        if self.peek() == Some(b'@') {
            let start = self.pos;
            while self.peek().is_some_and(|b| b != b':' && b != b'>') {
                self.pos += 1;
            }
            route = self.text.get(start..self.pos).map(<[u8]>::to_vec);
            self.eat(b':');
        }
        let local = self.phrase();
        let mut address = self.addr_spec(local);
        while self.peek().is_some_and(|b| b != b'>') {
            self.pos += 1;
        }
        self.eat(b'>');
        address.route = route;
        address.name = (!name.is_empty()).then(|| name.join(&b' '));
        address
    }

    fn list(&mut self, depth: usize, out: &mut Vec<Address>) {
        loop {
            let before = self.pos;
            let words = self.phrase();
            self.skip_cfws();
            match self.peek() {
                Some(b'<') => {
                    self.pos += 1;
                    out.push(self.angle_addr(words));
                }
                Some(b':') if depth == 0 => {
                    self.pos += 1;
                    out.push(Address {
                        mailbox: Some(words.join(&b' ')),
                        ..Address::default()
                    });
                    self.list(1, out);
                    self.eat(b';');
                    out.push(Address::default());
                }
                Some(b';') if depth > 0 => {
                    if !words.is_empty() {
                        out.push(self.addr_spec(words));
                    }
                    return;
                }
                _ if !words.is_empty() => out.push(self.addr_spec(words)),
                _ => {}
            }
            self.skip_cfws();
            match self.peek() {
                None => return,
                Some(b';') if depth > 0 => return,
                Some(b',') => self.pos += 1,
                // Skip a stray character so that parsing always advances.
                Some(_) if self.pos == before => self.pos += 1,
                Some(_) => {}
            }
        }
    }
}

fn parse_addresses(value: &[u8]) -> Vec<Address> {
    let mut parser = AddressParser {
        text: value,
        pos: 0,
    };
    let mut addresses = Vec::new();
    parser.list(0, &mut addresses);
    addresses
}

/// Number of lines in `body` (RFC 3501 `body-fld-lines`): line ends, plus
/// an unterminated last line.
fn line_count(body: &[u8]) -> usize {
    let ends = memchr::memchr_iter(b'\n', body).count();
    ends + usize::from(!body.is_empty() && !body.ends_with(b"\n"))
}

fn write_upper(out: &mut Vec<u8>, text: &str) {
    write_string(out, text.to_ascii_uppercase().as_bytes());
}

/// `body-fld-param`: `("NAME" "value" ...)` or NIL.
fn write_params(out: &mut Vec<u8>, params: &[(String, Vec<u8>)]) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (index, (name, value)) in params.iter().enumerate() {
        if index > 0 {
            out.push(b' ');
        }
        write_upper(out, name);
        out.push(b' ');
        write_string(out, value);
    }
    out.push(b')');
}

/// `body-fld-dsp SP body-fld-lang SP body-fld-loc`.
fn write_extension_tail(out: &mut Vec<u8>, header: &[u8]) {
    out.push(b' ');
    match field_value(header, b"content-disposition") {
        Some(value) => {
            let disposition = ContentType::parse_disposition(&value);
            out.push(b'(');
            write_upper(out, &disposition.media_type);
            out.push(b' ');
            write_params(out, &disposition.params);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    let trimmed = |name: &[u8]| field_value(header, name).map(|v| v.trim_ascii().to_vec());
    write_nstring(out, trimmed(b"content-language").as_deref());
    out.push(b' ');
    write_nstring(out, trimmed(b"content-location").as_deref());
}

fn body(out: &mut Vec<u8>, message: &[u8], entity: &Entity, extensible: bool, depth: usize) {
    let header = message.get(entity.header.clone()).unwrap_or_default();
    let mut content_type = entity.content_type(message);
    if depth >= MIME_DEPTH_MAX && (content_type.is_multipart() || content_type.is_rfc822()) {
        content_type = ContentType {
            media_type: "application".into(),
            subtype: "octet-stream".into(),
            params: Vec::new(),
        };
    }
    out.push(b'(');
    if content_type.is_multipart() {
        let boundary = content_type
            .params
            .iter()
            .find(|(name, _)| name == "boundary")
            .map(|(_, value)| value.as_slice())
            .unwrap_or_default();
        let parts = if boundary.is_empty() {
            Vec::new()
        } else {
            multipart_parts(message, entity.body.clone(), boundary)
        };
        if parts.is_empty() {
            // RFC 3501 9 needs at least one part: describe an empty one.
            out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)");
        }
        let digest = content_type.subtype == "digest";
        for range in parts {
            let part = Entity::parse(message, range, digest);
            body(out, message, &part, extensible, depth + 1);
        }
        out.push(b' ');
        write_upper(out, &content_type.subtype);
        if extensible {
            out.push(b' ');
            write_params(out, &content_type.params);
            write_extension_tail(out, header);
        }
        out.push(b')');
        return;
    }
    write_upper(out, &content_type.media_type);
    out.push(b' ');
    write_upper(out, &content_type.subtype);
    out.push(b' ');
    write_params(out, &content_type.params);
    let trimmed = |name: &[u8]| field_value(header, name).map(|v| v.trim_ascii().to_vec());
    out.push(b' ');
    write_nstring(out, trimmed(b"content-id").as_deref());
    out.push(b' ');
    write_nstring(out, trimmed(b"content-description").as_deref());
    out.push(b' ');
    match trimmed(b"content-transfer-encoding") {
        Some(encoding) => write_string(out, &encoding.to_ascii_uppercase()),
        None => out.extend_from_slice(b"\"7BIT\""),
    }
    let body_bytes = message.get(entity.body.clone()).unwrap_or_default();
    let _ = write!(out, " {}", body_bytes.len());
    if content_type.is_rfc822() {
        let inner = Entity::parse(message, entity.body.clone(), false);
        out.push(b' ');
        envelope(out, message.get(inner.header.clone()).unwrap_or_default());
        out.push(b' ');
        body(out, message, &inner, extensible, depth + 1);
        let _ = write!(out, " {}", line_count(body_bytes));
    } else if content_type.media_type == "text" {
        let _ = write!(out, " {}", line_count(body_bytes));
    }
    if extensible {
        out.push(b' ');
        write_nstring(out, trimmed(b"content-md5").as_deref());
        write_extension_tail(out, header);
    }
    out.push(b')');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope_of(message: &[u8]) -> String {
        let mut out = Vec::new();
        write_envelope(&mut out, message);
        String::from_utf8(out).unwrap()
    }

    fn structure(message: &[u8], extensible: bool) -> String {
        let mut out = Vec::new();
        write_body_structure(&mut out, message, extensible);
        String::from_utf8(out).unwrap()
    }

    fn addresses(value: &str) -> String {
        let mut out = Vec::new();
        write_address_list(&mut out, parse_addresses(value.as_bytes()));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn envelope_matches_rfc_3501_example_shape() {
        let message = b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n\
From: Terry Gray <gray@cac.washington.edu>\r\n\
Subject: IMAP4rev1 WG mtg summary and minutes\r\n\
To: imap@cac.washington.edu\r\n\
cc: minutes@CNRI.Reston.VA.US,\r\n \"John Klensin\" <KLENSIN@MIT.EDU>\r\n\
Message-Id: <B27397-0100000@cac.washington.edu>\r\n\
\r\n\
body\r\n";
        assert_eq!(
            envelope_of(message),
            "(\"Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\" \"IMAP4rev1 WG mtg summary and minutes\" \
((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) \
((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) \
((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) \
((NIL NIL \"imap\" \"cac.washington.edu\")) \
((NIL NIL \"minutes\" \"CNRI.Reston.VA.US\")(\"John Klensin\" NIL \"KLENSIN\" \"MIT.EDU\")) \
NIL NIL \"<B27397-0100000@cac.washington.edu>\")"
        );
        assert_eq!(
            envelope_of(b""),
            "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
        );
    }

    #[test]
    fn addresses_cover_groups_routes_comments_and_junk() {
        assert_eq!(
            addresses("=?utf-8?q?J=C3=B6rg?= <joerg@example.org>"),
            "((\"=?utf-8?q?J=C3=B6rg?=\" NIL \"joerg\" \"example.org\"))"
        );
        assert_eq!(
            addresses("a@b (comment), \"q \\\" x\"@c"),
            "((NIL NIL \"a\" \"b\")(NIL NIL \"q \\\" x\" \"c\"))"
        );
        assert_eq!(
            addresses("team: x@y, z@w; , last@q"),
            "((NIL NIL \"team\" NIL)(NIL NIL \"x\" \"y\")(NIL NIL \"z\" \"w\")(NIL NIL NIL NIL)(NIL NIL \"last\" \"q\"))"
        );
        assert_eq!(
            addresses("undisclosed-recipients:;"),
            "((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL))"
        );
        assert_eq!(
            addresses("<@relay.example:user@example.org>"),
            "((NIL \"@relay.example\" \"user\" \"example.org\"))"
        );
        assert_eq!(addresses("localonly"), "((NIL NIL \"localonly\" \"\"))");
        assert_eq!(addresses(""), "NIL");
        // Junk never hangs or panics.
        for junk in [
            ">>>",
            "<<<",
            ",,,",
            "\"unterminated",
            "(((",
            "a@",
            "@",
            ":;:;",
            "<a@b",
        ] {
            addresses(junk);
        }
    }

    #[test]
    fn single_part_text_structure() {
        let message = b"Content-Type: text/plain; charset=\"UTF-8\"; format=flowed\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
line one\r\nline two\r\n";
        assert_eq!(
            structure(message, false),
            "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"UTF-8\" \"FORMAT\" \"flowed\") NIL NIL \"QUOTED-PRINTABLE\" 20 2)"
        );
        assert_eq!(
            structure(message, true),
            "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"UTF-8\" \"FORMAT\" \"flowed\") NIL NIL \"QUOTED-PRINTABLE\" 20 2 NIL NIL NIL NIL)"
        );
        assert_eq!(
            structure(b"Subject: x\r\n\r\nhi", false),
            "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 2 1)"
        );
    }

    #[test]
    fn multipart_with_attachment_and_encapsulated_message() {
        let message = b"Content-Type: multipart/mixed; boundary=b\r\n\
\r\n\
--b\r\n\
Content-Type: text/plain\r\n\
\r\n\
hello\r\n\
--b\r\n\
Content-Type: application/pdf; name=a.pdf\r\n\
Content-Disposition: attachment; filename=\"a.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-ID: <id1>\r\n\
\r\n\
QUJD\r\n\
--b\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
Subject: inner\r\n\
From: x@y\r\n\
\r\n\
inner body\r\n\
--b--\r\n";
        assert_eq!(
            structure(message, false),
            "((\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 5 1)\
(\"APPLICATION\" \"PDF\" (\"NAME\" \"a.pdf\") \"<id1>\" NIL \"BASE64\" 4)\
(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 39 \
(NIL \"inner\" ((NIL NIL \"x\" \"y\")) ((NIL NIL \"x\" \"y\")) ((NIL NIL \"x\" \"y\")) NIL NIL NIL NIL NIL) \
(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 10 1) 4) \"MIXED\")"
        );
        let extensible = structure(message, true);
        assert!(extensible
            .contains("\"BASE64\" 4 NIL (\"ATTACHMENT\" (\"FILENAME\" \"a.pdf\")) NIL NIL)"));
        assert!(extensible.ends_with(" \"MIXED\" (\"BOUNDARY\" \"b\") NIL NIL NIL)"));
    }

    #[test]
    fn degenerate_and_deep_structures_stay_well_formed() {
        assert_eq!(
            structure(b"Content-Type: multipart/mixed\r\n\r\nno parts", false),
            "((\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0) \"MIXED\")"
        );
        assert_eq!(
            structure(b"Content-Type: garbage\r\n\r\nx", false),
            "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 1 1)"
        );
        let mut deep = Vec::new();
        for _ in 0..(MIME_DEPTH_MAX * 2) {
            deep.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        deep.extend_from_slice(b"end");
        let text = structure(&deep, true);
        assert!(text.contains("\"APPLICATION\" \"OCTET-STREAM\""));
        assert_eq!(
            text.matches('(').count(),
            text.matches(')').count(),
            "{text}"
        );
    }
}
