//! FETCH response data for one message (RFC 3501 7.4.2, 6.4.5): FLAGS,
//! UID, INTERNALDATE, RFC822.SIZE, ENVELOPE, BODY, BODYSTRUCTURE, body
//! sections with partial windows, the RFC822 forms and BINARY (RFC 3516)
//! parts, written from the
//! message's metadata and its raw bytes.
//!
//! It only renders: it must never change flags (the session sets \Seen
//! before rendering) and never read bytes itself.

use std::io::Write;

use super::binary;
use super::view::write_flag_names;
use crate::imap::command::{FetchAttribute, Section, SectionText};
use crate::imap::response::{write_astring, write_literal, write_nstring};
use crate::imap::{mime, structure};
use crate::mailbox::MessageMeta;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Whether any attribute needs the message bytes.
pub(super) fn needs_bytes(attributes: &[FetchAttribute]) -> bool {
    attributes.iter().any(|a| {
        !matches!(
            a,
            FetchAttribute::Flags
                | FetchAttribute::Uid
                | FetchAttribute::InternalDate
                | FetchAttribute::Rfc822Size
        )
    })
}

/// Whether any attribute sets \Seen as a side effect (RFC 3501 6.4.5:
/// BODY[...] without .PEEK, RFC822, RFC822.TEXT).
pub(super) fn sets_seen(attributes: &[FetchAttribute]) -> bool {
    attributes.iter().any(|a| match a {
        FetchAttribute::BodySection { peek, .. } | FetchAttribute::Binary { peek, .. } => !peek,
        FetchAttribute::Rfc822 | FetchAttribute::Rfc822Text => true,
        _ => false,
    })
}

/// How one message's FETCH response is to be written.
pub(super) struct FetchItem<'a> {
    pub(super) seq: usize,
    pub(super) meta: &'a MessageMeta,
    /// None when no attribute needs them, or they could not be read (the
    /// byte-based attributes are then left out).
    pub(super) bytes: Option<&'a [u8]>,
    /// UID FETCH: UID is always reported (RFC 3501 6.4.8).
    pub(super) force_uid: bool,
    /// \Seen was just set: FLAGS is reported (RFC 3501 6.4.5).
    pub(super) force_flags: bool,
}

/// Writes `* seq FETCH (...)`. False when a BINARY part had an encoding
/// that could not be undone (written as NIL; the command ends in
/// `NO [UNKNOWN-CTE]`, RFC 3516 4.3).
pub(super) fn write_fetch(
    out: &mut Vec<u8>,
    item: &FetchItem<'_>,
    attributes: &[FetchAttribute],
) -> bool {
    let _ = write!(out, "* {} FETCH (", item.seq);
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b' ');
        }
        first = false;
    };
    let asks = |wanted: &FetchAttribute| attributes.contains(wanted);
    if item.force_uid && !asks(&FetchAttribute::Uid) {
        sep(out);
        let _ = write!(out, "UID {}", item.meta.uid);
    }
    if item.force_flags && !asks(&FetchAttribute::Flags) {
        sep(out);
        out.extend_from_slice(b"FLAGS ");
        write_flag_names(out, item.meta);
    }
    let mut decoded = true;
    for attribute in attributes {
        if needs_bytes(std::slice::from_ref(attribute)) && item.bytes.is_none() {
            continue;
        }
        sep(out);
        decoded &= write_attribute(out, item, attribute);
    }
    out.extend_from_slice(b")\r\n");
    decoded
}

/// Writes one attribute; false for an undecodable BINARY part.
fn write_attribute(out: &mut Vec<u8>, item: &FetchItem<'_>, attribute: &FetchAttribute) -> bool {
    let bytes = item.bytes.unwrap_or_default();
    match attribute {
        FetchAttribute::Flags => {
            out.extend_from_slice(b"FLAGS ");
            write_flag_names(out, item.meta);
        }
        FetchAttribute::Uid => {
            let _ = write!(out, "UID {}", item.meta.uid);
        }
        FetchAttribute::InternalDate => {
            out.extend_from_slice(b"INTERNALDATE \"");
            out.extend_from_slice(internal_date(item.meta.internal_date_ms).as_bytes());
            out.push(b'"');
        }
        FetchAttribute::Rfc822Size => {
            let _ = write!(out, "RFC822.SIZE {}", item.meta.size);
        }
        FetchAttribute::Envelope => {
            out.extend_from_slice(b"ENVELOPE ");
            structure::write_envelope(out, bytes);
        }
        FetchAttribute::Body => {
            out.extend_from_slice(b"BODY ");
            structure::write_body_structure(out, bytes, false);
        }
        FetchAttribute::BodyStructure => {
            out.extend_from_slice(b"BODYSTRUCTURE ");
            structure::write_body_structure(out, bytes, true);
        }
        FetchAttribute::Rfc822 => {
            out.extend_from_slice(b"RFC822 ");
            write_literal(out, bytes);
        }
        FetchAttribute::Rfc822Header => {
            out.extend_from_slice(b"RFC822.HEADER ");
            let header = section_bytes(bytes, SectionText::Header);
            write_nstring(out, header.as_deref());
        }
        FetchAttribute::Rfc822Text => {
            out.extend_from_slice(b"RFC822.TEXT ");
            let text = section_bytes(bytes, SectionText::Text);
            write_nstring(out, text.as_deref());
        }
        FetchAttribute::BodySection {
            section, partial, ..
        } => {
            out.extend_from_slice(b"BODY[");
            write_section_spec(out, section);
            out.push(b']');
            let data = mime::section(bytes, section);
            match (data, partial) {
                (Some(data), Some(window)) => {
                    let _ = write!(out, "<{}> ", window.origin);
                    write_literal(out, mime::partial(&data, *window));
                }
                (Some(data), None) => {
                    out.push(b' ');
                    write_literal(out, &data);
                }
                (None, Some(window)) => {
                    let _ = write!(out, "<{}> NIL", window.origin);
                }
                (None, None) => out.extend_from_slice(b" NIL"),
            }
        }
        FetchAttribute::Binary { part, partial, .. } => {
            out.extend_from_slice(b"BINARY[");
            write_part(out, part);
            out.push(b']');
            if let Some(window) = partial {
                let _ = write!(out, "<{}>", window.origin);
            }
            out.push(b' ');
            match binary::content(bytes, part) {
                Ok(Some(data)) => {
                    let data = match partial {
                        Some(window) => mime::partial(&data, *window),
                        None => &data,
                    };
                    // RFC 3516 4.2: content with NUL goes out as literal8.
                    if data.contains(&0) {
                        out.push(b'~');
                    }
                    write_literal(out, data);
                }
                Ok(None) => out.extend_from_slice(b"NIL"),
                Err(_) => {
                    out.extend_from_slice(b"NIL");
                    return false;
                }
            }
        }
        FetchAttribute::BinarySize { part } => {
            out.extend_from_slice(b"BINARY.SIZE[");
            write_part(out, part);
            out.push(b']');
            match binary::content(bytes, part) {
                Ok(Some(data)) => {
                    let _ = write!(out, " {}", data.len());
                }
                Ok(None) => out.extend_from_slice(b" NIL"),
                Err(_) => {
                    out.extend_from_slice(b" NIL");
                    return false;
                }
            }
        }
    }
    true
}

fn section_bytes(message: &[u8], text: SectionText) -> Option<Vec<u8>> {
    let section = Section {
        part: Vec::new(),
        text: Some(text),
    };
    mime::section(message, &section).map(|data| data.into_owned())
}

/// A part path `1.2.3`.
fn write_part(out: &mut Vec<u8>, part: &[u32]) {
    for (index, number) in part.iter().enumerate() {
        if index > 0 {
            out.push(b'.');
        }
        let _ = write!(out, "{number}");
    }
}

/// The section as the client wrote it, for the response item name.
fn write_section_spec(out: &mut Vec<u8>, section: &Section) {
    write_part(out, &section.part);
    let Some(text) = &section.text else {
        return;
    };
    if !section.part.is_empty() {
        out.push(b'.');
    }
    let (keyword, names) = match text {
        SectionText::Header => ("HEADER", None),
        SectionText::Text => ("TEXT", None),
        SectionText::Mime => ("MIME", None),
        SectionText::HeaderFields(names) => ("HEADER.FIELDS", Some(names)),
        SectionText::HeaderFieldsNot(names) => ("HEADER.FIELDS.NOT", Some(names)),
    };
    out.extend_from_slice(keyword.as_bytes());
    if let Some(names) = names {
        out.extend_from_slice(b" (");
        for (index, name) in names.iter().enumerate() {
            if index > 0 {
                out.push(b' ');
            }
            write_astring(out, name.as_bytes());
        }
        out.push(b')');
    }
}

/// RFC 3501 9 `date-time` in UTC: `dd-Mon-yyyy hh:mm:ss +0000`.
pub(super) fn internal_date(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let month_name = usize::try_from(month)
        .ok()
        .and_then(|m| m.checked_sub(1))
        .and_then(|m| MONTHS.get(m))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{day:02}-{month_name}-{year:04} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// (year, month 1-12, day 1-31) of days since 1970-01-01, by Howard
/// Hinnant's civil-from-days algorithm.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_dates_format_in_utc() {
        assert_eq!(internal_date(0), "01-Jan-1970 00:00:00 +0000");
        assert_eq!(
            internal_date(1_234_567_890_000),
            "13-Feb-2009 23:31:30 +0000"
        );
        assert_eq!(internal_date(951_782_400_000), "29-Feb-2000 00:00:00 +0000");
    }

    #[test]
    fn section_specs_echo_the_request() {
        let spec = |section: Section| {
            let mut out = Vec::new();
            write_section_spec(&mut out, &section);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(spec(Section::default()), "");
        assert_eq!(
            spec(Section {
                part: vec![1, 2],
                text: Some(SectionText::Mime)
            }),
            "1.2.MIME"
        );
        assert_eq!(
            spec(Section {
                part: vec![],
                text: Some(SectionText::HeaderFields(vec!["From".into(), "X y".into()]))
            }),
            "HEADER.FIELDS (From \"X y\")"
        );
    }

    #[test]
    fn seen_side_effect_only_without_peek() {
        let body = |peek| FetchAttribute::BodySection {
            peek,
            section: Section::default(),
            partial: None,
        };
        assert!(sets_seen(&[body(false)]));
        assert!(!sets_seen(&[body(true), FetchAttribute::Rfc822Header]));
        assert!(sets_seen(&[FetchAttribute::Rfc822Text]));
        assert!(!needs_bytes(&[FetchAttribute::Flags, FetchAttribute::Uid]));
        assert!(needs_bytes(&[FetchAttribute::Envelope]));
    }
}
