//! Header-section work for mail authentication: finding the fields of a
//! message, removing `Authentication-Results:` fields that claim to come
//! from us (RFC 8601 5), choosing the fields a DKIM signature covers, and
//! the author (`From:`) domain.
//!
//! This module only reads and copies bytes. It must never look past the
//! header section (the part before the first empty line) and never change
//! a byte of the fields it keeps.

use std::ops::Range;

use memchr::memmem;

/// One header field: its name and its bytes, continuation lines and the
/// final CRLF included.
struct Field<'a> {
    name: &'a [u8],
    span: Range<usize>,
}

/// The fields of the header section, in order. A line that is neither a
/// field nor a continuation ends the section, as the empty line does.
fn fields(message: &[u8]) -> Vec<Field<'_>> {
    let mut found: Vec<Field<'_>> = Vec::new();
    let mut pos = 0;
    while pos < message.len() && !message[pos..].starts_with(b"\r\n") {
        let end = memmem::find(&message[pos..], b"\r\n").map_or(message.len(), |at| pos + at + 2);
        let line = &message[pos..end];
        if line[0] == b' ' || line[0] == b'\t' {
            match found.last_mut() {
                Some(field) => field.span.end = end,
                None => break,
            }
        } else {
            let Some(colon) = memchr::memchr(b':', line) else {
                break;
            };
            let name = line[..colon].trim_ascii_end();
            if name.is_empty() {
                break;
            }
            found.push(Field {
                name,
                span: pos..end,
            });
        }
        pos = end;
    }
    found
}

/// The authserv-id an `Authentication-Results:` field names: the first
/// word of its value (RFC 8601 2.2), without the optional version.
fn authserv_id(field: &[u8], name_len: usize) -> &[u8] {
    let value = field
        .get(name_len..)
        .and_then(|rest| rest.trim_ascii_start().strip_prefix(b":"))
        .unwrap_or_default()
        .trim_ascii_start();
    let end = value
        .iter()
        .position(|&b| b == b';' || b.is_ascii_whitespace())
        .unwrap_or(value.len());
    &value[..end]
}

/// The message without the `Authentication-Results:` fields that carry
/// our authserv-id: only we may claim results in our name (RFC 8601 5).
/// None when there is none to remove (the message is kept as it is).
pub fn without_forged_results(message: &[u8], own_id: &str) -> Option<Vec<u8>> {
    let forged: Vec<Range<usize>> = fields(message)
        .into_iter()
        .filter(|field| {
            field.name.eq_ignore_ascii_case(b"Authentication-Results")
                && authserv_id(&message[field.span.clone()], field.name.len())
                    .eq_ignore_ascii_case(own_id.as_bytes())
        })
        .map(|field| field.span)
        .collect();
    if forged.is_empty() {
        return None;
    }
    let mut kept = Vec::with_capacity(message.len());
    let mut pos = 0;
    for span in forged {
        kept.extend_from_slice(&message[pos..span.start]);
        pos = span.end;
    }
    kept.extend_from_slice(&message[pos..]);
    Some(kept)
}

/// The fields a signature covers: `From` always (RFC 6376 5.4), then each
/// of `wanted` that the message has, once, in the order of `wanted`.
/// Absent fields are left out so that a later hop may still add them.
pub fn fields_to_sign(message: &[u8], wanted: &[String]) -> Vec<String> {
    let present = fields(message);
    let mut chosen = vec!["From".to_string()];
    for name in wanted {
        let listed = chosen.iter().any(|c| c.eq_ignore_ascii_case(name));
        let present = present
            .iter()
            .any(|field| field.name.eq_ignore_ascii_case(name.as_bytes()));
        if present && !listed {
            chosen.push(name.clone());
        }
    }
    chosen
}

/// The domain of the first `From:` address, in lower case.
pub fn author_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let address = parsed.from()?.first()?.address()?;
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.');
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &str = "From: Ann <ann@Example.ORG>\r\n\
        Authentication-Results: tern.test; spf=pass smtp.mailfrom=forged\r\n\
        To: bob@example.net\r\n\
        Authentication-Results: other.example;\r\n\tdkim=pass header.d=example.org\r\n\
        authentication-results : TERN.test 1;\r\n\tdkim=pass\r\n\
        Subject: hi\r\n\
        \r\n\
        Authentication-Results: tern.test; body line, not a field\r\n";

    #[test]
    fn own_results_are_removed_and_others_kept() {
        let kept = without_forged_results(MESSAGE.as_bytes(), "tern.test").unwrap();
        let kept = String::from_utf8(kept).unwrap();
        assert_eq!(
            kept,
            "From: Ann <ann@Example.ORG>\r\n\
             To: bob@example.net\r\n\
             Authentication-Results: other.example;\r\n\tdkim=pass header.d=example.org\r\n\
             Subject: hi\r\n\
             \r\n\
             Authentication-Results: tern.test; body line, not a field\r\n"
        );
    }

    #[test]
    fn nothing_to_remove_keeps_the_message() {
        assert_eq!(
            without_forged_results(MESSAGE.as_bytes(), "mx.example"),
            None
        );
        assert_eq!(without_forged_results(b"", "tern.test"), None);
        assert_eq!(
            without_forged_results(b"\r\nAuthentication-Results: tern.test; x\r\n", "tern.test"),
            None
        );
        // A prefix of our id is another id.
        assert_eq!(
            without_forged_results(
                b"Authentication-Results: tern.testing; x\r\n\r\n",
                "tern.test"
            ),
            None
        );
    }

    #[test]
    fn a_line_that_is_no_field_ends_the_header_section() {
        let message = b"Subject: x\r\nnot a field\r\nAuthentication-Results: tern.test; x\r\n\r\n";
        assert_eq!(without_forged_results(message, "tern.test"), None);
        let leading_continuation = b" folded\r\nAuthentication-Results: tern.test; x\r\n\r\n";
        assert_eq!(
            without_forged_results(leading_continuation, "tern.test"),
            None
        );
    }

    #[test]
    fn message_without_body_separator_is_all_header() {
        let kept = without_forged_results(
            b"Subject: x\r\nAuthentication-Results: tern.test",
            "tern.test",
        )
        .unwrap();
        assert_eq!(kept, b"Subject: x\r\n");
    }

    #[test]
    fn signed_fields_are_from_and_those_present() {
        let wanted: Vec<String> = ["from", "Subject", "Date", "to", "Cc", "SUBJECT"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            fields_to_sign(MESSAGE.as_bytes(), &wanted),
            ["From", "Subject", "to"]
        );
        assert_eq!(fields_to_sign(b"Subject: x\r\n\r\n", &[]), ["From"]);
    }

    #[test]
    fn author_domain_is_the_first_from_domain_in_lower_case() {
        assert_eq!(
            author_domain(MESSAGE.as_bytes()).as_deref(),
            Some("example.org")
        );
        assert_eq!(
            author_domain(b"From: a@one.example, b@two.example\r\n\r\n").as_deref(),
            Some("one.example")
        );
        assert_eq!(author_domain(b"Subject: no author\r\n\r\nbody\r\n"), None);
        assert_eq!(author_domain(b"From: undisclosed\r\n\r\n"), None);
    }
}
