//! Parsers for the value syntaxes several IMAP commands share (RFC 3501 9):
//! sequence sets, flags and flag lists, mailbox names, dates and
//! date-times.
//!
//! Each reads from a [`Cursor`] and names what was wrong on failure; none
//! may panic, and the sequence-set parser bounds how many ranges it keeps.

use super::cursor::{bad, is_atom_char, Cursor, ParseResult};
use crate::imap::command::{Date, DateTime, Flag, MailboxName, SeqBound, SequenceSet};

/// Most ranges in one sequence set. RFC 3501 sets no limit; a command line
/// is bounded (RFC 7162 4 recommends servers accept at least 8192 octets)
/// and this bounds the work a single set can cause.
pub(super) const SEQUENCE_RANGES_MAX: usize = 1024;

/// RFC 3501 9 `sequence-set`.
pub(super) fn sequence_set(c: &mut Cursor<'_>) -> ParseResult<SequenceSet> {
    if c.peek() == Some(b'$') {
        return bad("Search result variable $ is not supported");
    }
    let mut ranges = Vec::new();
    loop {
        let first = seq_bound(c)?;
        let second = if c.eat(b':') { seq_bound(c)? } else { first };
        if ranges.len() == SEQUENCE_RANGES_MAX {
            return bad(format!(
                "Sequence set has more than {SEQUENCE_RANGES_MAX} ranges"
            ));
        }
        ranges.push((first, second));
        if !c.eat(b',') {
            return Ok(SequenceSet { ranges });
        }
    }
}

fn seq_bound(c: &mut Cursor<'_>) -> ParseResult<SeqBound> {
    if c.eat(b'*') {
        Ok(SeqBound::Largest)
    } else if c.peek().is_some_and(|b| b.is_ascii_digit()) {
        Ok(SeqBound::Number(c.nz_number("sequence set")?))
    } else {
        bad("Invalid sequence set")
    }
}

/// A mailbox argument (RFC 3501 9 `mailbox`: astring, modified UTF-7).
pub(super) fn mailbox(c: &mut Cursor<'_>, what: &str) -> ParseResult<MailboxName> {
    let raw = c.astring(what)?;
    MailboxName::from_wire(&raw).or_else(|e| bad(format!("Invalid {what}: {e}")))
}

/// A mailbox name or list pattern decoded to UTF-8.
pub(super) fn decode_name(raw: &[u8], what: &str) -> ParseResult<String> {
    crate::imap::utf7::decode_mailbox(raw).or_else(|e| bad(format!("Invalid {what}: {e}")))
}

/// RFC 3501 9 `flag`: a system flag, `\extension` or keyword atom.
pub(super) fn flag(c: &mut Cursor<'_>) -> ParseResult<Flag> {
    if c.eat(b'\\') {
        let name = c.atom("flag name after \\")?;
        let name = String::from_utf8_lossy(name).into_owned();
        return Ok(match name.to_ascii_lowercase().as_str() {
            "seen" => Flag::Seen,
            "answered" => Flag::Answered,
            "flagged" => Flag::Flagged,
            "deleted" => Flag::Deleted,
            "draft" => Flag::Draft,
            "recent" => Flag::Recent,
            _ => Flag::Extension(name),
        });
    }
    let keyword = c.take_while(is_atom_char);
    if keyword.is_empty() {
        return bad("Invalid flag");
    }
    Ok(Flag::Keyword(String::from_utf8_lossy(keyword).into_owned()))
}

/// `(flag *(SP flag))` or `()`.
pub(super) fn flag_list(c: &mut Cursor<'_>) -> ParseResult<Vec<Flag>> {
    c.expect(b'(', "Expected ( before flag list")?;
    let mut flags = Vec::new();
    if c.eat(b')') {
        return Ok(flags);
    }
    loop {
        flags.push(flag(c)?);
        if c.eat(b')') {
            return Ok(flags);
        }
        if !c.eat(b' ') {
            return bad("Missing ) in flag list");
        }
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn month(c: &mut Cursor<'_>) -> ParseResult<u8> {
    for (index, name) in (1u8..).zip(MONTHS) {
        if c.eat_word(name) {
            return Ok(index);
        }
    }
    bad("Invalid month in date")
}

fn digits(c: &mut Cursor<'_>, min: usize, max: usize, what: &str) -> ParseResult<u32> {
    let text = c.take_while(|b| b.is_ascii_digit());
    if text.len() < min || text.len() > max {
        return bad(format!("Invalid {what}"));
    }
    Ok(text.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')))
}

fn date_text(c: &mut Cursor<'_>, day: u32) -> ParseResult<Date> {
    c.expect(b'-', "Expected - after day in date")?;
    let month = month(c)?;
    c.expect(b'-', "Expected - after month in date")?;
    let year = digits(c, 4, 4, "year in date")?;
    let (Ok(year), Ok(day)) = (u16::try_from(year), u8::try_from(day)) else {
        return bad("Invalid date");
    };
    Date::new(year, month, day).map_or_else(|| bad("Invalid date"), Ok)
}

/// RFC 3501 9 `date`: `d-Mon-yyyy`, optionally quoted (SEARCH).
pub(super) fn date(c: &mut Cursor<'_>) -> ParseResult<Date> {
    let quoted = c.eat(b'"');
    let day = digits(c, 1, 2, "day in date")?;
    let date = date_text(c, day)?;
    if quoted {
        c.expect(b'"', "Missing closing quote after date")?;
    }
    Ok(date)
}

/// RFC 3501 9 `date-time`: `"dd-Mon-yyyy hh:mm:ss +zzzz"` (APPEND).
pub(super) fn date_time(c: &mut Cursor<'_>) -> ParseResult<DateTime> {
    c.expect(b'"', "Expected quoted date-time")?;
    c.eat(b' ');
    let day = digits(c, 1, 2, "day in date-time")?;
    let date = date_text(c, day)?;
    c.expect(b' ', "Expected space before time in date-time")?;
    let hour = digits(c, 2, 2, "hour in date-time")?;
    c.expect(b':', "Invalid time in date-time")?;
    let minute = digits(c, 2, 2, "minute in date-time")?;
    c.expect(b':', "Invalid time in date-time")?;
    let second = digits(c, 2, 2, "second in date-time")?;
    c.expect(b' ', "Expected space before zone in date-time")?;
    let sign: i32 = if c.eat(b'+') {
        1
    } else if c.eat(b'-') {
        -1
    } else {
        return bad("Invalid zone in date-time");
    };
    let zone = digits(c, 4, 4, "zone in date-time")?;
    c.expect(b'"', "Missing closing quote after date-time")?;
    let (zone_hours, zone_mins) = (zone / 100, zone % 100);
    // Seconds up to 60 allow a leap second.
    if hour > 23 || minute > 59 || second > 60 || zone_hours > 23 || zone_mins > 59 {
        return bad("Invalid time in date-time");
    }
    // Bounded above: the values fit u8 and the zone fits i16.
    let zone_minutes = sign * (zone_hours * 60 + zone_mins) as i32;
    Ok(DateTime {
        date,
        hour: hour as u8,
        minute: minute as u8,
        second: second as u8,
        zone_minutes: zone_minutes as i16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_sets_parse_star_ranges_and_lists() {
        let mut c = Cursor::new(b"1,3:5,*,7:*,9:2 x");
        let set = sequence_set(&mut c).unwrap();
        use SeqBound::*;
        assert_eq!(
            set.ranges,
            vec![
                (Number(1), Number(1)),
                (Number(3), Number(5)),
                (Largest, Largest),
                (Number(7), Largest),
                (Number(9), Number(2)),
            ]
        );
        assert_eq!(c.rest(), b" x");
    }

    #[test]
    fn sequence_sets_reject_bad_forms() {
        for bad in ["0", "1:0", "$", "1,", ":3", "a", "1:", "4294967296"] {
            assert!(
                sequence_set(&mut Cursor::new(bad.as_bytes())).is_err(),
                "{bad}"
            );
        }
        let many = vec!["1"; SEQUENCE_RANGES_MAX + 1].join(",");
        assert!(sequence_set(&mut Cursor::new(many.as_bytes())).is_err());
        let enough = vec!["1"; SEQUENCE_RANGES_MAX].join(",");
        assert!(sequence_set(&mut Cursor::new(enough.as_bytes())).is_ok());
    }

    #[test]
    fn flags_parse_system_extension_and_keywords() {
        let mut c = Cursor::new(br"(\Seen \deleted $Junk \Foo)");
        assert_eq!(
            flag_list(&mut c).unwrap(),
            vec![
                Flag::Seen,
                Flag::Deleted,
                Flag::Keyword("$Junk".into()),
                Flag::Extension("Foo".into())
            ]
        );
        assert_eq!(flag_list(&mut Cursor::new(b"()")).unwrap(), vec![]);
        assert!(flag_list(&mut Cursor::new(br"(\Seen")).is_err());
        assert!(flag_list(&mut Cursor::new(br"(\)")).is_err());
        assert!(flag_list(&mut Cursor::new(b"(a  b)")).is_err());
    }

    #[test]
    fn dates_parse_plain_and_quoted() {
        let d = date(&mut Cursor::new(b"1-Feb-1994")).unwrap();
        assert_eq!(d, Date::new(1994, 2, 1).unwrap());
        let d = date(&mut Cursor::new(b"\"29-feb-2024\"")).unwrap();
        assert_eq!(d, Date::new(2024, 2, 29).unwrap());
        for bad in [
            "30-Feb-2024",
            "1-Foo-2024",
            "123-Jan-2024",
            "1-Jan-24",
            "\"1-Jan-2024",
        ] {
            assert!(date(&mut Cursor::new(bad.as_bytes())).is_err(), "{bad}");
        }
    }

    #[test]
    fn date_times_parse_zone_and_space_padded_day() {
        let dt = date_time(&mut Cursor::new(b"\" 7-Jul-2025 13:05:09 -0230\"")).unwrap();
        assert_eq!(dt.date, Date::new(2025, 7, 7).unwrap());
        assert_eq!((dt.hour, dt.minute, dt.second), (13, 5, 9));
        assert_eq!(dt.zone_minutes, -150);
        for bad in [
            "\"07-Jul-2025 24:00:00 +0000\"",
            "\"07-Jul-2025 13:05 +0000\"",
            "\"07-Jul-2025 13:05:09 0000\"",
            "\"07-Jul-2025 13:05:09 +0060\"",
            "07-Jul-2025 13:05:09 +0000",
        ] {
            assert!(
                date_time(&mut Cursor::new(bad.as_bytes())).is_err(),
                "{bad}"
            );
        }
    }
}
