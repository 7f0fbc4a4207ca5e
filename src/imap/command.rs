//! The typed form of one IMAP client command (RFC 3501 6, RFC 9051 6 and the
//! extensions tern announces), as the parser produces it and the session
//! consumes it, plus the small value types it is built from (sequence sets,
//! dates, flags, mailbox names).
//!
//! These are plain data: no parsing of wire syntax (that is the parser's job)
//! and no mailbox semantics (that is the session's). Nothing here may panic on
//! any value a parser can produce.

use super::utf7;

/// One complete client command: its tag and what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub tag: String,
    pub body: CommandBody,
}

/// What a command asks for. `uid` is true for the `UID` forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandBody {
    Capability,
    Noop,
    Logout,
    StartTls,
    Login {
        user: String,
        password: Vec<u8>,
    },
    /// `AUTHENTICATE mech [initial-response]` (RFC 4959 SASL-IR). The
    /// mechanism is upper-cased; the initial response is base64-decoded
    /// (`=` is an empty response).
    Authenticate {
        mechanism: String,
        initial_response: Option<Vec<u8>>,
    },
    /// `ENABLE cap...` (RFC 5161), capability names upper-cased.
    Enable {
        capabilities: Vec<String>,
    },
    /// `ID NIL` (None) or `ID (field value ...)` (RFC 2971).
    Id {
        parameters: Option<IdParameters>,
    },
    Namespace,
    Select {
        mailbox: MailboxName,
    },
    Examine {
        mailbox: MailboxName,
    },
    Create {
        mailbox: MailboxName,
    },
    Delete {
        mailbox: MailboxName,
    },
    Rename {
        from: MailboxName,
        to: MailboxName,
    },
    Subscribe {
        mailbox: MailboxName,
    },
    Unsubscribe {
        mailbox: MailboxName,
    },
    List(ListCommand),
    /// `LSUB reference pattern`, both decoded from modified UTF-7.
    Lsub {
        reference: String,
        pattern: String,
    },
    Status {
        mailbox: MailboxName,
        items: Vec<StatusItem>,
    },
    /// `APPEND mailbox [flags] [date-time] literal` (one message).
    Append {
        mailbox: MailboxName,
        flags: Vec<Flag>,
        internal_date: Option<DateTime>,
        message: Vec<u8>,
    },
    Check,
    Close,
    Unselect,
    Expunge,
    /// `UID EXPUNGE set` (RFC 4315 2.1).
    UidExpunge {
        set: SequenceSet,
    },
    Search(SearchCommand),
    Fetch {
        uid: bool,
        set: SequenceSet,
        attributes: Vec<FetchAttribute>,
    },
    Store {
        uid: bool,
        set: SequenceSet,
        action: StoreAction,
        silent: bool,
        flags: Vec<Flag>,
    },
    Copy {
        uid: bool,
        set: SequenceSet,
        mailbox: MailboxName,
    },
    /// `MOVE` (RFC 6851).
    Move {
        uid: bool,
        set: SequenceSet,
        mailbox: MailboxName,
    },
    /// `IDLE` (RFC 2177): after answering `+ idling` the session calls
    /// `CommandReader::expect_done`.
    Idle,
}

impl CommandBody {
    /// The command's name as a client spells it, for metrics labels and
    /// log lines (a fixed set, so safe as a label value).
    /// Every value `name` returns (the `command` label of
    /// `tern_imap_commands_total`, created at zero at start-up).
    pub const NAMES: [&'static str; 36] = [
        "CAPABILITY",
        "NOOP",
        "LOGOUT",
        "STARTTLS",
        "LOGIN",
        "AUTHENTICATE",
        "ENABLE",
        "ID",
        "NAMESPACE",
        "SELECT",
        "EXAMINE",
        "CREATE",
        "DELETE",
        "RENAME",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "LIST",
        "LSUB",
        "STATUS",
        "APPEND",
        "CHECK",
        "CLOSE",
        "UNSELECT",
        "EXPUNGE",
        "UID EXPUNGE",
        "UID SEARCH",
        "SEARCH",
        "UID FETCH",
        "FETCH",
        "UID STORE",
        "STORE",
        "UID COPY",
        "COPY",
        "UID MOVE",
        "MOVE",
        "IDLE",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            CommandBody::Capability => "CAPABILITY",
            CommandBody::Noop => "NOOP",
            CommandBody::Logout => "LOGOUT",
            CommandBody::StartTls => "STARTTLS",
            CommandBody::Login { .. } => "LOGIN",
            CommandBody::Authenticate { .. } => "AUTHENTICATE",
            CommandBody::Enable { .. } => "ENABLE",
            CommandBody::Id { .. } => "ID",
            CommandBody::Namespace => "NAMESPACE",
            CommandBody::Select { .. } => "SELECT",
            CommandBody::Examine { .. } => "EXAMINE",
            CommandBody::Create { .. } => "CREATE",
            CommandBody::Delete { .. } => "DELETE",
            CommandBody::Rename { .. } => "RENAME",
            CommandBody::Subscribe { .. } => "SUBSCRIBE",
            CommandBody::Unsubscribe { .. } => "UNSUBSCRIBE",
            CommandBody::List(_) => "LIST",
            CommandBody::Lsub { .. } => "LSUB",
            CommandBody::Status { .. } => "STATUS",
            CommandBody::Append { .. } => "APPEND",
            CommandBody::Check => "CHECK",
            CommandBody::Close => "CLOSE",
            CommandBody::Unselect => "UNSELECT",
            CommandBody::Expunge => "EXPUNGE",
            CommandBody::UidExpunge { .. } => "UID EXPUNGE",
            CommandBody::Search(s) if s.uid => "UID SEARCH",
            CommandBody::Search(_) => "SEARCH",
            CommandBody::Fetch { uid: true, .. } => "UID FETCH",
            CommandBody::Fetch { .. } => "FETCH",
            CommandBody::Store { uid: true, .. } => "UID STORE",
            CommandBody::Store { .. } => "STORE",
            CommandBody::Copy { uid: true, .. } => "UID COPY",
            CommandBody::Copy { .. } => "COPY",
            CommandBody::Move { uid: true, .. } => "UID MOVE",
            CommandBody::Move { .. } => "MOVE",
            CommandBody::Idle => "IDLE",
        }
    }
}

/// ID field/value pairs (RFC 2971 3.1); a value may be NIL.
pub type IdParameters = Vec<(String, Option<String>)>;

/// A mailbox name decoded to UTF-8. `INBOX` in any case is normalised to
/// `INBOX` (RFC 3501 5.1); other names keep their case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MailboxName(String);

impl MailboxName {
    /// Decodes a name as sent on the wire: modified UTF-7 (RFC 3501 5.1.3),
    /// or UTF-8 as IMAP4rev2 clients may send it (RFC 9051 5.1).
    pub fn from_wire(raw: &[u8]) -> Result<Self, utf7::Utf7Error> {
        Ok(Self::new(utf7::decode_mailbox(raw)?))
    }

    /// A name already in UTF-8 (for the session and tests).
    pub fn new(name: String) -> Self {
        if name.eq_ignore_ascii_case("INBOX") {
            MailboxName("INBOX".to_string())
        } else {
            MailboxName(name)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_inbox(&self) -> bool {
        self.0 == "INBOX"
    }

    /// The name as it goes on the wire in modified UTF-7.
    pub fn to_wire(&self) -> String {
        utf7::encode(&self.0)
    }
}

/// A system flag or keyword as a client sends it in STORE and APPEND.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Flag {
    Seen,
    Answered,
    Flagged,
    Deleted,
    Draft,
    /// `\Recent`: reported by the server, never settable by a client.
    Recent,
    /// Any other `\Name` (RFC 3501 flag-extension), without the backslash.
    Extension(String),
    /// A keyword atom, as sent.
    Keyword(String),
}

/// `FLAGS`, `+FLAGS` or `-FLAGS` in STORE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreAction {
    Replace,
    Add,
    Remove,
}

/// One end of a sequence range: a number or `*` (the largest in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqBound {
    Number(u32),
    Largest,
}

impl SeqBound {
    fn resolve(self, largest: u32) -> u32 {
        match self {
            SeqBound::Number(n) => n,
            SeqBound::Largest => largest,
        }
    }
}

/// A sequence set (RFC 3501 9 `sequence-set`): ranges in the order sent,
/// each possibly written high-to-low.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSet {
    pub ranges: Vec<(SeqBound, SeqBound)>,
}

impl SequenceSet {
    /// Whether `n` is in the set, with `*` meaning `largest`.
    pub fn contains(&self, n: u32, largest: u32) -> bool {
        self.ranges.iter().any(|&(a, b)| {
            let (a, b) = (a.resolve(largest), b.resolve(largest));
            a.min(b) <= n && n <= a.max(b)
        })
    }

    /// The set as sorted, merged, inclusive ranges with `*` resolved to
    /// `largest`. Ranges are not clipped: a UID set may name UIDs that no
    /// longer exist, which the caller skips.
    pub fn resolve(&self, largest: u32) -> Vec<(u32, u32)> {
        let mut ranges: Vec<(u32, u32)> = self
            .ranges
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.resolve(largest), b.resolve(largest));
                (a.min(b), a.max(b))
            })
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        merged
    }
}

/// A calendar date as used by SEARCH (RFC 3501 9 `date`), validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

impl Date {
    /// A valid Gregorian date, or None.
    pub fn new(year: u16, month: u8, day: u8) -> Option<Date> {
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let days_in_month = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        (day >= 1 && day <= days_in_month).then_some(Date { year, month, day })
    }

    /// Days since 1970-01-01 (negative before), by the civil-from-days
    /// algorithm of Howard Hinnant.
    pub fn days_since_epoch(&self) -> i64 {
        let month = i64::from(self.month);
        let year = i64::from(self.year) - i64::from(month <= 2);
        let era = year.div_euclid(400);
        let year_of_era = year - era * 400;
        let shifted_month = (month + 9) % 12;
        let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(self.day) - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        era * 146_097 + day_of_era - 719_468
    }
}

/// An APPEND `date-time` (RFC 3501 9): local time and its zone offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub date: Date,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// Offset east of UTC in minutes (`+0100` is 60).
    pub zone_minutes: i16,
}

impl DateTime {
    /// Seconds since the Unix epoch, UTC.
    pub fn unix_seconds(&self) -> i64 {
        self.date.days_since_epoch() * 86_400
            + i64::from(self.hour) * 3_600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - i64::from(self.zone_minutes) * 60
    }
}

/// `LIST [(selection)] reference pattern(s) [RETURN (options)]`
/// (RFC 3501 6.3.8, RFC 5258, RFC 6154). Reference and patterns are decoded
/// from modified UTF-7; wildcards `%` and `*` are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListCommand {
    pub reference: String,
    pub patterns: Vec<String>,
    /// Selection option `SUBSCRIBED`.
    pub select_subscribed: bool,
    /// Selection option `REMOTE` (no remote mailboxes exist; harmless).
    pub select_remote: bool,
    /// Selection option `RECURSIVEMATCH`.
    pub select_recursive_match: bool,
    /// Selection option `SPECIAL-USE` (RFC 6154 3).
    pub select_special_use: bool,
    /// Return option `SUBSCRIBED`.
    pub return_subscribed: bool,
    /// Return option `CHILDREN`.
    pub return_children: bool,
    /// Return option `SPECIAL-USE`.
    pub return_special_use: bool,
    /// Return option `STATUS (items)` (RFC 5819), if given.
    pub return_status: Option<Vec<StatusItem>>,
}

/// A STATUS data item (RFC 3501 6.3.10, RFC 9051 6.3.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    Recent,
    UidNext,
    UidValidity,
    Unseen,
    Deleted,
    Size,
}

/// `[UID] SEARCH [RETURN (...)] [CHARSET name] keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchCommand {
    pub uid: bool,
    /// The charset as sent, if any; the session answers `NO [BADCHARSET]`
    /// for one it does not know. Strings in keys are UTF-8 either way.
    pub charset: Option<String>,
    /// RFC 9051 `RETURN` options, upper-cased (parsed, for the session to
    /// honour or ignore).
    pub return_options: Vec<String>,
    /// All keys must match (the implicit AND of the top level).
    pub criteria: Vec<SearchKey>,
}

/// One search key (RFC 3501 6.4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    All,
    Answered,
    Bcc(String),
    Before(Date),
    Body(String),
    Cc(String),
    Deleted,
    Draft,
    Flagged,
    From(String),
    Header(String, String),
    Keyword(String),
    Larger(u64),
    New,
    Not(Box<SearchKey>),
    Old,
    On(Date),
    Or(Box<SearchKey>, Box<SearchKey>),
    Recent,
    Seen,
    SentBefore(Date),
    SentOn(Date),
    SentSince(Date),
    Since(Date),
    Smaller(u64),
    Subject(String),
    Text(String),
    To(String),
    Uid(SequenceSet),
    Unanswered,
    Undeleted,
    Undraft,
    Unflagged,
    Unkeyword(String),
    Unseen,
    /// A bare sequence set: message sequence numbers.
    Sequence(SequenceSet),
    /// A parenthesised list: all must match.
    And(Vec<SearchKey>),
}

/// One FETCH attribute (RFC 3501 6.4.5, RFC 3516 for BINARY). Macros
/// (ALL, FAST, FULL) are expanded by the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAttribute {
    Envelope,
    Flags,
    InternalDate,
    Rfc822,
    Rfc822Header,
    Rfc822Size,
    Rfc822Text,
    /// `BODY` without a section: the non-extensible BODYSTRUCTURE.
    Body,
    BodyStructure,
    Uid,
    /// `BODY[section]<partial>` or `BODY.PEEK[...]`.
    BodySection {
        peek: bool,
        section: Section,
        partial: Option<Partial>,
    },
    /// `BINARY[part]<partial>` or `BINARY.PEEK[...]` (RFC 3516).
    Binary {
        peek: bool,
        part: Vec<u32>,
        partial: Option<Partial>,
    },
    /// `BINARY.SIZE[part]` (RFC 3516).
    BinarySize {
        part: Vec<u32>,
    },
}

/// `<origin.length>` of a partial fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    pub origin: u32,
    pub length: u32,
}

/// A body section (RFC 3501 6.4.5 `section`): a part path (empty for the
/// whole message) and what of that part.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Section {
    pub part: Vec<u32>,
    pub text: Option<SectionText>,
}

/// The text specifier of a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionText {
    Header,
    /// Field names as sent (compare case-insensitively; echo as sent).
    HeaderFields(Vec<String>),
    HeaderFieldsNot(Vec<String>),
    Text,
    /// Only after a part number.
    Mime,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[(SeqBound, SeqBound)]) -> SequenceSet {
        SequenceSet {
            ranges: ranges.to_vec(),
        }
    }

    #[test]
    fn sequence_set_contains_and_resolves_star_and_reversed_ranges() {
        use SeqBound::*;
        let s = set(&[(Number(5), Number(3)), (Number(9), Largest)]);
        assert!(s.contains(4, 20));
        assert!(!s.contains(6, 20));
        assert!(s.contains(20, 20));
        assert!(!s.contains(21, 20));
        assert_eq!(s.resolve(20), vec![(3, 5), (9, 20)]);
        // `*` below the other end reverses the range.
        assert_eq!(set(&[(Number(9), Largest)]).resolve(4), vec![(4, 9)]);
    }

    #[test]
    fn sequence_set_resolve_merges_adjacent_and_overlapping() {
        use SeqBound::*;
        let s = set(&[
            (Number(7), Number(7)),
            (Number(1), Number(3)),
            (Number(4), Number(5)),
            (Number(2), Number(2)),
            (Number(u32::MAX), Number(u32::MAX)),
        ]);
        assert_eq!(s.resolve(1), vec![(1, 5), (7, 7), (u32::MAX, u32::MAX)]);
    }

    #[test]
    fn dates_validate_and_count_days() {
        assert!(Date::new(2024, 2, 29).is_some());
        assert!(Date::new(2023, 2, 29).is_none());
        assert!(Date::new(1900, 2, 29).is_none());
        assert!(Date::new(2000, 2, 29).is_some());
        assert!(Date::new(2024, 13, 1).is_none());
        assert!(Date::new(2024, 4, 31).is_none());
        assert!(Date::new(2024, 1, 0).is_none());
        let epoch = Date::new(1970, 1, 1).unwrap();
        assert_eq!(epoch.days_since_epoch(), 0);
        assert_eq!(Date::new(2000, 3, 1).unwrap().days_since_epoch(), 11_017);
        assert_eq!(Date::new(1969, 12, 31).unwrap().days_since_epoch(), -1);
    }

    #[test]
    fn date_time_converts_with_zone() {
        let dt = DateTime {
            date: Date::new(2009, 2, 13).unwrap(),
            hour: 23,
            minute: 31,
            second: 30,
            zone_minutes: 0,
        };
        assert_eq!(dt.unix_seconds(), 1_234_567_890);
        let east = DateTime {
            hour: 0,
            zone_minutes: 60,
            ..dt
        };
        assert_eq!(east.unix_seconds(), 1_234_567_890 - 23 * 3600 - 3600);
    }

    #[test]
    fn command_names_distinguish_uid_forms() {
        let set = SequenceSet {
            ranges: vec![(SeqBound::Number(1), SeqBound::Number(1))],
        };
        let fetch = |uid| CommandBody::Fetch {
            uid,
            set: set.clone(),
            attributes: vec![FetchAttribute::Uid],
        };
        assert_eq!(fetch(true).name(), "UID FETCH");
        assert_eq!(fetch(false).name(), "FETCH");
        assert_eq!(CommandBody::UidExpunge { set }.name(), "UID EXPUNGE");
        assert_eq!(CommandBody::Idle.name(), "IDLE");
    }

    #[test]
    fn mailbox_names_normalise_inbox_only() {
        assert!(MailboxName::new("inBox".into()).is_inbox());
        assert_eq!(MailboxName::new("Inbox/Sub".into()).as_str(), "Inbox/Sub");
        assert_eq!(
            MailboxName::from_wire(b"Entw&APw-rfe").unwrap().as_str(),
            "Entw\u{fc}rfe"
        );
        assert_eq!(
            MailboxName::new("Entw\u{fc}rfe".into()).to_wire(),
            "Entw&APw-rfe"
        );
        assert!(MailboxName::from_wire(b"bad&AB").is_err());
    }
}
