//! Incremental IMAP command reader: bytes from the client in, complete
//! commands (or precise reasons to refuse one) out. It frames command lines
//! and literals (RFC 3501 4.3 and 7.5, RFC 7888 LITERAL+), decides when the
//! server must send a continuation request, and reads the IDLE `DONE` line
//! (RFC 2177) and AUTHENTICATE continuation lines (RFC 3501 6.2.2).
//!
//! It is sans-IO and never panics. It never allocates for a literal it has
//! not accepted, never reads a refused literal as command data, and keeps
//! at most [`COMMAND_TEXT_MAX`] bytes of command text plus accepted
//! literals per command.

mod cursor;
mod fetch;
mod grammar;
mod search;
mod values;

pub(crate) use cursor::{is_astring_char, is_atom_char};
use cursor::{Cursor, ParseError};

use super::command::Command;
use crate::base64;

/// Longest command text outside literals, line endings excluded. RFC 7162
/// 4 asks servers to accept lines of at least 8192 octets.
pub const COMMAND_TEXT_MAX: usize = 8192;
/// Most literals in one command. RFC 3501 sets no limit; the largest
/// legitimate use (LOGIN, SEARCH with several strings) needs a handful.
pub const LITERALS_PER_COMMAND_MAX: usize = 32;
/// Bytes kept from a line being skipped so that a literal announcement at
/// its end is still recognised: `{`, 20 digits, `+}`, CR.
const ANNOUNCEMENT_TAIL: usize = 24;

/// What the reader produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A complete, well-formed command.
    Command(Command),
    /// A synchronising literal was announced and accepted: send
    /// `+ Ready for literal data` (RFC 3501 7.5) before more input comes.
    /// The reader now expects the literal, so the session always sends it
    /// and judges the command (state, permissions) once it is complete.
    NeedContinuation,
    /// A malformed command; answer `<tag> BAD <text>` (or `* BAD` without a
    /// tag). The rest of the command, including any literal announced on
    /// it, has been or will be skipped.
    Bad { tag: Option<String>, text: String },
    /// A literal larger than the reader's limit was announced (RFC 7889
    /// `[TOOBIG]`). Nothing was allocated for it. A synchronising one is
    /// never sent by the client; a non-synchronising one is skipped as it
    /// arrives, with the rest of its command.
    TooBig {
        tag: Option<String>,
        size: u64,
        synchronizing: bool,
    },
    /// The `DONE` ending IDLE, after [`CommandReader::expect_done`].
    Done,
    /// The client's line after an AUTHENTICATE continuation request, after
    /// [`CommandReader::expect_auth_response`].
    AuthResponse(AuthResponse),
}

/// A SASL continuation line (RFC 3501 6.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResponse {
    /// `*`: the client cancels the exchange.
    Cancel,
    /// The base64-decoded response.
    Data(Vec<u8>),
}

/// What the next line means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineMode {
    Command,
    IdleDone,
    AuthResponse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading command text up to the next line end.
    Line,
    /// Reading `remaining` bytes of an accepted literal.
    Literal { remaining: u64 },
    /// Discarding a refused non-synchronising literal.
    SkipLiteral { remaining: u64 },
    /// Discarding the rest of a refused command's line.
    SkipLine,
}

/// The incremental reader. Feed it with [`push`](Self::push), then drain
/// it as an [`Iterator`] until it yields None, which means "more input
/// needed" (so it is not fused: after another push it yields again).
#[derive(Debug)]
pub struct CommandReader {
    literal_max: u64,
    /// Bytes pushed; those before `start` are consumed.
    input: Vec<u8>,
    start: usize,
    /// Bytes after `start` already searched for a line end.
    scanned: usize,
    /// The command assembled so far: text with inline literals, each
    /// announcement normalised to end in CRLF.
    command: Vec<u8>,
    /// Bytes of `command` that are text rather than literal data.
    text_len: usize,
    literals: usize,
    /// Sum of the sizes of the literals accepted for this command.
    literal_total: u64,
    state: State,
    mode: LineMode,
}

impl CommandReader {
    /// A reader that accepts literals up to `literal_max` bytes in total
    /// per command (the largest APPEND message, RFC 7889 APPENDLIMIT).
    pub fn new(literal_max: u64) -> Self {
        CommandReader {
            literal_max,
            input: Vec::new(),
            start: 0,
            scanned: 0,
            command: Vec::new(),
            text_len: 0,
            literals: 0,
            literal_total: 0,
            state: State::Line,
            mode: LineMode::Command,
        }
    }

    /// Appends bytes received from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        // Reclaim consumed bytes once they are at least half the buffer, so
        // pipelined commands cost amortised O(1) moves per byte.
        if self.start > 0 && self.start >= self.input.len() / 2 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// Bytes held: pushed but unread, plus the command being assembled
    /// (for back-pressure).
    pub fn buffered(&self) -> usize {
        self.pending().len() + self.command.len()
    }

    /// The next line is the `DONE` ending an IDLE the session accepted.
    pub fn expect_done(&mut self) {
        self.mode = LineMode::IdleDone;
    }

    /// The next line answers an AUTHENTICATE continuation request.
    pub fn expect_auth_response(&mut self) {
        self.mode = LineMode::AuthResponse;
    }

    /// Handles the line ending at `pending()[end]` (the LF). Returns an
    /// outcome, or None when the command continues with a literal.
    fn line(&mut self, end: usize) -> Option<Parsed> {
        let line = strip_cr(&self.pending()[..end]);
        let line_len = line.len();
        if self.mode != LineMode::Command {
            let mode = std::mem::replace(&mut self.mode, LineMode::Command);
            let parsed = special_line(mode, strip_cr(&self.pending()[..end]));
            self.consume(end + 1);
            return Some(parsed);
        }
        let announced = announcement(line);
        let start = self.start;
        self.command
            .extend_from_slice(&self.input[start..start + line_len]);
        self.text_len += line_len;
        self.consume(end + 1);
        if self.text_len > COMMAND_TEXT_MAX {
            return Some(self.refuse(
                announced,
                format!("Command line longer than {COMMAND_TEXT_MAX} bytes"),
            ));
        }
        let Some((size, synchronizing)) = announced else {
            let parsed = self.finish();
            self.reset();
            return Some(parsed);
        };
        self.command.extend_from_slice(b"\r\n");
        self.literals += 1;
        if self.literals > LITERALS_PER_COMMAND_MAX {
            return Some(self.refuse(
                announced,
                format!("More than {LITERALS_PER_COMMAND_MAX} literals in one command"),
            ));
        }
        self.literal_total = self.literal_total.saturating_add(size);
        if self.literal_total > self.literal_max {
            let tag = self.tag();
            self.reset();
            if !synchronizing {
                self.state = State::SkipLiteral { remaining: size };
            }
            return Some(Parsed::TooBig {
                tag,
                size,
                synchronizing,
            });
        }
        let mut cursor = Cursor::prefix(&self.command);
        let prefix_check = match grammar::tag(&mut cursor) {
            Some(tag) => grammar::command(&mut cursor, tag).map(|_| ()),
            None => Err(ParseError::Bad("Invalid tag".into())),
        };
        match prefix_check {
            Err(ParseError::Incomplete) => {}
            Err(ParseError::Bad(text)) => return Some(self.refuse(announced, text)),
            Ok(()) => {
                return Some(self.refuse(announced, "Unexpected literal".to_string()));
            }
        }
        self.state = State::Literal { remaining: size };
        synchronizing.then_some(Parsed::NeedContinuation)
    }

    /// Parses the complete command buffer.
    fn finish(&self) -> Parsed {
        if self.command.iter().all(|&b| b == b' ') {
            return Parsed::Bad {
                tag: None,
                text: "Empty command line".into(),
            };
        }
        let mut cursor = Cursor::new(&self.command);
        let Some(tag) = grammar::tag(&mut cursor) else {
            return Parsed::Bad {
                tag: None,
                text: "Invalid tag".into(),
            };
        };
        match grammar::command(&mut cursor, tag.clone()) {
            Ok(command) => Parsed::Command(command),
            Err(ParseError::Bad(text)) => Parsed::Bad {
                tag: Some(tag),
                text,
            },
            // A complete buffer never ends at a literal's missing data;
            // report it as malformed all the same.
            Err(ParseError::Incomplete) => Parsed::Bad {
                tag: Some(tag),
                text: "Literal data missing".into(),
            },
        }
    }

    /// Refuses the command being read; `announced` is the literal announced
    /// at the end of its last line, whose data a LITERAL+ client sends anyway.
    fn refuse(&mut self, announced: Option<(u64, bool)>, text: String) -> Parsed {
        let tag = self.tag();
        self.reset();
        if let Some((size, false)) = announced {
            self.state = State::SkipLiteral { remaining: size };
        }
        Parsed::Bad { tag, text }
    }

    /// The tag of the command being read, if it has a valid one.
    fn tag(&self) -> Option<String> {
        let source = if self.command.is_empty() {
            self.pending()
        } else {
            &self.command
        };
        grammar::tag(&mut Cursor::new(source))
    }

    fn reset(&mut self) {
        self.command.clear();
        self.text_len = 0;
        self.literals = 0;
        self.literal_total = 0;
        self.state = State::Line;
    }

    /// Pushed bytes not yet consumed.
    fn pending(&self) -> &[u8] {
        self.input.get(self.start..).unwrap_or_default()
    }

    /// How many bytes of input a literal with `remaining` bytes left takes.
    fn take_input(&self, remaining: u64) -> usize {
        let available = self.pending().len();
        usize::try_from(remaining).map_or(available, |r| r.min(available))
    }

    /// Marks `n` pending bytes consumed (n never exceeds `pending().len()`).
    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.input.len());
        self.scanned = 0;
    }

    fn find_line_end(&mut self) -> Option<usize> {
        let pending = self.pending();
        let from = self.scanned.min(pending.len());
        let found = memchr::memchr(b'\n', &pending[from..]).map(|i| from + i);
        self.scanned = if found.is_some() { 0 } else { pending.len() };
        found
    }
}

impl Iterator for CommandReader {
    type Item = Parsed;

    /// The next outcome, or None when more input is needed. Every
    /// malformed input yields an outcome to answer; none is fatal.
    fn next(&mut self) -> Option<Parsed> {
        loop {
            match self.state {
                State::Literal { remaining } => {
                    let take = self.take_input(remaining);
                    let start = self.start;
                    self.command
                        .extend_from_slice(&self.input[start..start + take]);
                    self.consume(take);
                    match remaining - take as u64 {
                        0 => self.state = State::Line,
                        left => {
                            self.state = State::Literal { remaining: left };
                            return None;
                        }
                    }
                }
                State::SkipLiteral { remaining } => {
                    let take = self.take_input(remaining);
                    self.consume(take);
                    match remaining - take as u64 {
                        0 => self.state = State::SkipLine,
                        left => {
                            self.state = State::SkipLiteral { remaining: left };
                            return None;
                        }
                    }
                }
                State::SkipLine => match self.find_line_end() {
                    Some(end) => {
                        let line = strip_cr(&self.pending()[..end]);
                        self.state = match announcement(line) {
                            Some((size, false)) => State::SkipLiteral { remaining: size },
                            _ => State::Line,
                        };
                        self.consume(end + 1);
                    }
                    None => {
                        let drop = self.pending().len().saturating_sub(ANNOUNCEMENT_TAIL);
                        self.consume(drop);
                        return None;
                    }
                },
                State::Line => match self.find_line_end() {
                    Some(end) => {
                        if let Some(parsed) = self.line(end) {
                            return Some(parsed);
                        }
                    }
                    None => {
                        if self.text_len + self.pending().len() > COMMAND_TEXT_MAX + 1 {
                            let tag = self.tag();
                            self.reset();
                            self.state = State::SkipLine;
                            return Some(Parsed::Bad {
                                tag,
                                text: format!("Command line longer than {COMMAND_TEXT_MAX} bytes"),
                            });
                        }
                        return None;
                    }
                },
            }
        }
    }
}

/// A line read in IDLE or AUTHENTICATE mode.
fn special_line(mode: LineMode, line: &[u8]) -> Parsed {
    match mode {
        LineMode::IdleDone if line.eq_ignore_ascii_case(b"DONE") => Parsed::Done,
        LineMode::IdleDone => Parsed::Bad {
            tag: None,
            text: "Expected DONE to end IDLE".into(),
        },
        LineMode::AuthResponse if line == b"*" => Parsed::AuthResponse(AuthResponse::Cancel),
        LineMode::AuthResponse => match base64::decode(line) {
            Some(data) => Parsed::AuthResponse(AuthResponse::Data(data)),
            None => Parsed::Bad {
                tag: None,
                text: "Invalid base64 in AUTHENTICATE response".into(),
            },
        },
        LineMode::Command => Parsed::Bad {
            tag: None,
            text: "Unexpected line".into(),
        },
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A literal announcement `{n}` or `{n+}` ending `line` (without its line
/// end): the size (saturating) and whether it is synchronising.
fn announcement(line: &[u8]) -> Option<(u64, bool)> {
    let body = line.strip_suffix(b"}")?;
    let (body, synchronizing) = match body.strip_suffix(b"+") {
        Some(body) => (body, false),
        None => (body, true),
    };
    let open = body.iter().rposition(|&b| !b.is_ascii_digit())?;
    let digits = body.get(open + 1..)?;
    if body.get(open) != Some(&b'{') || digits.is_empty() {
        return None;
    }
    let size = digits.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    Some((size, synchronizing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::command::*;

    const LIMIT: u64 = 1024;

    /// Feeds `input` in one push and collects every outcome.
    fn run(input: &[u8]) -> Vec<Parsed> {
        let mut reader = CommandReader::new(LIMIT);
        reader.push(input);
        drain(&mut reader)
    }

    fn drain(reader: &mut CommandReader) -> Vec<Parsed> {
        reader.by_ref().collect()
    }

    /// The body of the single command `line` (CRLF appended).
    fn body(line: &str) -> CommandBody {
        match run(format!("{line}\r\n").as_bytes()).as_slice() {
            [Parsed::Command(command)] => command.body.clone(),
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    /// The BAD text for the single command `line`.
    fn bad(line: &str) -> String {
        match run(format!("{line}\r\n").as_bytes()).as_slice() {
            [Parsed::Bad { text, .. }] => text.clone(),
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    fn mailbox(name: &str) -> MailboxName {
        MailboxName::new(name.to_string())
    }

    fn set(ranges: &[(u32, u32)]) -> SequenceSet {
        SequenceSet {
            ranges: ranges
                .iter()
                .map(|&(a, b)| (SeqBound::Number(a), SeqBound::Number(b)))
                .collect(),
        }
    }

    #[test]
    fn commands_without_arguments_parse_in_any_case() {
        for (line, expected) in [
            ("a1 CAPABILITY", CommandBody::Capability),
            ("a1 noop", CommandBody::Noop),
            ("a1 Logout", CommandBody::Logout),
            ("a1 STARTTLS", CommandBody::StartTls),
            ("a1 NAMESPACE", CommandBody::Namespace),
            ("a1 CHECK", CommandBody::Check),
            ("a1 CLOSE", CommandBody::Close),
            ("a1 UNSELECT", CommandBody::Unselect),
            ("a1 EXPUNGE", CommandBody::Expunge),
            ("a1 IDLE", CommandBody::Idle),
        ] {
            assert_eq!(body(line), expected, "{line}");
            assert_eq!(
                bad(&format!("{line} x")),
                format!(
                    "Unexpected characters after {} arguments",
                    line[3..].to_ascii_uppercase()
                )
            );
        }
    }

    #[test]
    fn tags_are_kept_and_bad_tags_refused() {
        let parsed = run(b"A.1]x NOOP\r\n");
        assert!(matches!(&parsed[..], [Parsed::Command(c)] if c.tag == "A.1]x"));
        assert_eq!(
            run(b"a+b NOOP\r\n"),
            vec![Parsed::Bad {
                tag: None,
                text: "Invalid tag".into()
            }]
        );
        assert_eq!(
            run(b"* NOOP\r\n"),
            vec![Parsed::Bad {
                tag: None,
                text: "Invalid tag".into()
            }]
        );
        assert_eq!(
            run(b"\r\n"),
            vec![Parsed::Bad {
                tag: None,
                text: "Empty command line".into()
            }]
        );
        assert_eq!(
            run(b"t1\r\n"),
            vec![Parsed::Bad {
                tag: Some("t1".into()),
                text: "Missing argument to command".into()
            }]
        );
        assert_eq!(
            run(b"t1 FOO bar\r\n"),
            vec![Parsed::Bad {
                tag: Some("t1".into()),
                text: "Unknown command FOO".into()
            }]
        );
        assert_eq!(bad("t1 UID FOO 1"), "Unknown command UID FOO");
    }

    #[test]
    fn login_and_authenticate_parse() {
        assert_eq!(
            body("a LOGIN alice \"p a\\\"ss\""),
            CommandBody::Login {
                user: "alice".into(),
                password: b"p a\"ss".to_vec()
            }
        );
        assert_eq!(bad("a LOGIN alice"), "Missing argument to LOGIN");
        assert_eq!(bad("a LOGIN"), "Missing argument to LOGIN");
        assert_eq!(
            body("a AUTHENTICATE plain"),
            CommandBody::Authenticate {
                mechanism: "PLAIN".into(),
                initial_response: None
            }
        );
        assert_eq!(
            body("a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA=="),
            CommandBody::Authenticate {
                mechanism: "PLAIN".into(),
                initial_response: Some(b"\0alice\0secret".to_vec())
            }
        );
        assert_eq!(
            body("a AUTHENTICATE PLAIN ="),
            CommandBody::Authenticate {
                mechanism: "PLAIN".into(),
                initial_response: Some(Vec::new())
            }
        );
        assert_eq!(
            bad("a AUTHENTICATE PLAIN AGFsaWNl!"),
            "Unexpected characters after AUTHENTICATE arguments"
        );
        assert_eq!(
            bad("a AUTHENTICATE PLAIN AGF"),
            "Invalid base64 in AUTHENTICATE initial response"
        );
    }

    #[test]
    fn enable_id_and_mailbox_commands_parse() {
        assert_eq!(
            body("a ENABLE utf8=accept CONDSTORE"),
            CommandBody::Enable {
                capabilities: vec!["UTF8=ACCEPT".into(), "CONDSTORE".into()]
            }
        );
        assert_eq!(bad("a ENABLE"), "Missing argument to ENABLE");
        assert_eq!(body("a ID NIL"), CommandBody::Id { parameters: None });
        assert_eq!(
            body("a ID (\"name\" \"mutt\" \"os\" NIL)"),
            CommandBody::Id {
                parameters: Some(vec![
                    ("name".into(), Some("mutt".into())),
                    ("os".into(), None)
                ])
            }
        );
        assert_eq!(bad("a ID (\"name\")"), "Expected space in ID");
        assert_eq!(bad("a ID (\"a\" \"b\""), "Missing ) in ID parameter list");
        let long = format!("a ID (\"{}\" NIL)", "x".repeat(31));
        assert_eq!(bad(&long), "ID field or value too long");
        assert_eq!(
            body("a SELECT inbox"),
            CommandBody::Select {
                mailbox: mailbox("INBOX")
            }
        );
        assert_eq!(
            body("a EXAMINE \"Entw&APw-rfe\""),
            CommandBody::Examine {
                mailbox: mailbox("Entwürfe")
            }
        );
        assert_eq!(
            body("a CREATE Archive/2024"),
            CommandBody::Create {
                mailbox: mailbox("Archive/2024")
            }
        );
        assert_eq!(
            body("a DELETE {5+}\r\nTrash"),
            CommandBody::Delete {
                mailbox: mailbox("Trash")
            }
        );
        assert_eq!(
            body("a SUBSCRIBE Sent"),
            CommandBody::Subscribe {
                mailbox: mailbox("Sent")
            }
        );
        assert_eq!(
            body("a UNSUBSCRIBE Sent"),
            CommandBody::Unsubscribe {
                mailbox: mailbox("Sent")
            }
        );
        assert_eq!(
            body("a RENAME Old \"New Name\""),
            CommandBody::Rename {
                from: mailbox("Old"),
                to: mailbox("New Name")
            }
        );
        assert_eq!(bad("a RENAME Old"), "Missing argument to RENAME");
        assert_eq!(bad("a SELECT"), "Missing argument to SELECT");
        assert_eq!(
            bad("a SELECT &Jjo"),
            "Invalid mailbox name: unterminated &...- sequence in mailbox name"
        );
        assert_eq!(bad("a SELECT (x)"), "Expected mailbox name");
    }

    #[test]
    fn list_and_lsub_parse_with_options() {
        assert_eq!(
            body("a LIST \"\" *"),
            CommandBody::List(ListCommand {
                patterns: vec!["*".into()],
                ..ListCommand::default()
            })
        );
        assert_eq!(
            body("a LIST (SPECIAL-USE RECURSIVEMATCH) \"\" (% \"Arch*\" INBOX]) RETURN (CHILDREN special-use STATUS (MESSAGES UNSEEN))"),
            CommandBody::List(ListCommand {
                reference: String::new(),
                patterns: vec!["%".into(), "Arch*".into(), "INBOX]".into()],
                select_special_use: true,
                select_recursive_match: true,
                return_children: true,
                return_special_use: true,
                return_status: Some(vec![StatusItem::Messages, StatusItem::Unseen]),
                ..ListCommand::default()
            })
        );
        assert_eq!(
            body("a LIST () ~/Mail/ &AOQ-%"),
            CommandBody::List(ListCommand {
                reference: "~/Mail/".into(),
                patterns: vec!["ä%".into()],
                ..ListCommand::default()
            })
        );
        assert_eq!(
            bad("a LIST (RECURSIVEMATCH) \"\" *"),
            "RECURSIVEMATCH needs another LIST selection option"
        );
        assert_eq!(
            bad("a LIST (FOO) \"\" *"),
            "Unknown LIST selection option FOO"
        );
        assert_eq!(
            bad("a LIST \"\" * RETURN (BAR)"),
            "Unknown LIST return option BAR"
        );
        assert_eq!(
            bad("a LIST \"\" * FOO"),
            "Expected RETURN after LIST patterns"
        );
        assert_eq!(bad("a LIST \"\" (a b"), "Missing ) in LIST patterns");
        assert_eq!(bad("a LIST \"\""), "Missing argument to LIST");
        assert_eq!(
            body("a LSUB \"\" \"*\""),
            CommandBody::Lsub {
                reference: String::new(),
                pattern: "*".into()
            }
        );
        assert_eq!(bad("a LSUB \"\""), "Missing argument to LSUB");
    }

    #[test]
    fn status_parses_every_item() {
        assert_eq!(
            body("a STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE)"),
            CommandBody::Status {
                mailbox: mailbox("INBOX"),
                items: vec![
                    StatusItem::Messages,
                    StatusItem::Recent,
                    StatusItem::UidNext,
                    StatusItem::UidValidity,
                    StatusItem::Unseen,
                    StatusItem::Deleted,
                    StatusItem::Size
                ]
            }
        );
        assert_eq!(bad("a STATUS INBOX ()"), "Empty STATUS item list");
        assert_eq!(bad("a STATUS INBOX (FOO)"), "Unknown STATUS item FOO");
        assert_eq!(bad("a STATUS INBOX (MESSAGES"), "Missing ) in STATUS items");
        assert_eq!(
            bad("a STATUS INBOX MESSAGES"),
            "Expected ( before STATUS items"
        );
    }

    #[test]
    fn append_parses_flags_date_and_literal() {
        let parsed =
            run(b"a APPEND Drafts (\\Draft $x) \"05-Jan-2025 10:00:00 +0100\" {7+}\r\nSubject\r\n");
        let [Parsed::Command(command)] = &parsed[..] else {
            panic!("{parsed:?}");
        };
        let CommandBody::Append {
            mailbox: name,
            flags,
            internal_date,
            message,
        } = &command.body
        else {
            panic!("{command:?}");
        };
        assert_eq!(name, &mailbox("Drafts"));
        assert_eq!(flags, &vec![Flag::Draft, Flag::Keyword("$x".into())]);
        assert_eq!(internal_date.map(|d| d.zone_minutes), Some(60));
        assert_eq!(message, b"Subject");
        assert_eq!(
            body("a APPEND INBOX {0+}\r\n"),
            CommandBody::Append {
                mailbox: mailbox("INBOX"),
                flags: vec![],
                internal_date: None,
                message: vec![]
            }
        );
        assert_eq!(
            bad("a APPEND INBOX text"),
            "Expected message literal in APPEND"
        );
        assert_eq!(bad("a APPEND INBOX \"text\""), "Invalid day in date-time");
        assert_eq!(bad("a APPEND INBOX (\\Seen"), "Missing ) in flag list");
        assert_eq!(bad("a APPEND INBOX"), "Missing argument to APPEND");
    }

    #[test]
    fn fetch_store_copy_move_and_uid_forms_parse() {
        assert_eq!(
            body("a FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (DATE FROM)]<0.100>)"),
            CommandBody::Fetch {
                uid: false,
                set: SequenceSet {
                    ranges: vec![(SeqBound::Number(1), SeqBound::Largest)]
                },
                attributes: vec![
                    FetchAttribute::Flags,
                    FetchAttribute::BodySection {
                        peek: true,
                        section: Section {
                            part: vec![],
                            text: Some(SectionText::HeaderFields(vec![
                                "DATE".into(),
                                "FROM".into()
                            ]))
                        },
                        partial: Some(Partial {
                            origin: 0,
                            length: 100
                        })
                    }
                ]
            }
        );
        assert_eq!(
            body("a UID FETCH 5,7 FAST"),
            CommandBody::Fetch {
                uid: true,
                set: set(&[(5, 5), (7, 7)]),
                attributes: vec![
                    FetchAttribute::Flags,
                    FetchAttribute::InternalDate,
                    FetchAttribute::Rfc822Size
                ]
            }
        );
        assert_eq!(bad("a FETCH 1 (UID"), "Missing ) in FETCH attribute list");
        assert_eq!(bad("a FETCH 1"), "Missing argument to FETCH");
        assert_eq!(bad("a FETCH x FLAGS"), "Invalid sequence set");
        assert_eq!(
            bad("a FETCH $ FLAGS"),
            "Search result variable $ is not supported"
        );
        assert_eq!(
            body("a STORE 2:4 +FLAGS.SILENT (\\Deleted)"),
            CommandBody::Store {
                uid: false,
                set: set(&[(2, 4)]),
                action: StoreAction::Add,
                silent: true,
                flags: vec![Flag::Deleted]
            }
        );
        assert_eq!(
            body("a UID STORE 9 -flags \\Seen $Junk"),
            CommandBody::Store {
                uid: true,
                set: set(&[(9, 9)]),
                action: StoreAction::Remove,
                silent: false,
                flags: vec![Flag::Seen, Flag::Keyword("$Junk".into())]
            }
        );
        assert_eq!(
            body("a STORE 1 FLAGS ()"),
            CommandBody::Store {
                uid: false,
                set: set(&[(1, 1)]),
                action: StoreAction::Replace,
                silent: false,
                flags: vec![]
            }
        );
        assert_eq!(
            bad("a STORE 1 LABELS (x)"),
            "Expected FLAGS, +FLAGS or -FLAGS in STORE"
        );
        assert_eq!(bad("a STORE 1 +FLAGS"), "Missing argument to STORE");
        assert_eq!(
            body("a COPY 1:3 Trash"),
            CommandBody::Copy {
                uid: false,
                set: set(&[(1, 3)]),
                mailbox: mailbox("Trash")
            }
        );
        assert_eq!(
            body("a UID MOVE 3:1 Junk"),
            CommandBody::Move {
                uid: true,
                set: set(&[(3, 1)]),
                mailbox: mailbox("Junk")
            }
        );
        assert_eq!(
            body("a UID COPY 1 Sent"),
            CommandBody::Copy {
                uid: true,
                set: set(&[(1, 1)]),
                mailbox: mailbox("Sent")
            }
        );
        assert_eq!(
            body("a MOVE 1 Sent"),
            CommandBody::Move {
                uid: false,
                set: set(&[(1, 1)]),
                mailbox: mailbox("Sent")
            }
        );
        assert_eq!(bad("a MOVE 1"), "Missing argument to MOVE");
        assert_eq!(
            body("a UID EXPUNGE 3:5"),
            CommandBody::UidExpunge {
                set: set(&[(3, 5)])
            }
        );
        assert_eq!(bad("a UID EXPUNGE"), "Missing argument to UID EXPUNGE");
    }

    #[test]
    fn search_and_uid_search_parse() {
        assert_eq!(
            body("a UID SEARCH CHARSET UTF-8 SUBJECT {6+}\r\nhällo"),
            CommandBody::Search(SearchCommand {
                uid: true,
                charset: Some("UTF-8".into()),
                return_options: vec![],
                criteria: vec![SearchKey::Subject("hällo".into())]
            })
        );
        assert_eq!(bad("a SEARCH"), "Missing argument to SEARCH");
        assert_eq!(bad("a SEARCH FOO"), "Unknown SEARCH key FOO");
    }

    #[test]
    fn lines_real_clients_send_parse() {
        for line in [
            "2 UID fetch 1:* (FLAGS)",
            "5 UID fetch 1:4 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)])",
            "3 list (subscribed) \"\" \"*\" return (special-use)",
            "a4 LIST \"\" \"\"",
            "A003 SELECT \"INBOX\"",
            "a0005 UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])",
            "7 uid store 12 +Flags (\\Seen)",
            "8 uid move 3:5,9 \"Trash\"",
            "9 UID SEARCH UID 1:* NOT DELETED",
            "10 ID (\"name\" \"Thunderbird\" \"version\" \"115.0\")",
            "11 STATUS \"Sent\" (UIDNEXT MESSAGES UNSEEN RECENT)",
            "A001 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==",
        ] {
            assert!(
                matches!(&run(format!("{line}\r\n").as_bytes())[..], [Parsed::Command(_)]),
                "{line}"
            );
        }
    }

    #[test]
    fn synchronising_literal_asks_for_continuation_once() {
        let mut reader = CommandReader::new(LIMIT);
        reader.push(b"a LOGIN {5}\r\n");
        assert_eq!(reader.next(), Some(Parsed::NeedContinuation));
        assert_eq!(reader.next(), None);
        reader.push(b"al");
        assert_eq!(reader.next(), None);
        reader.push(b"ice {6}\r\n");
        assert_eq!(reader.next(), Some(Parsed::NeedContinuation));
        reader.push(b"se\r\ncr\r\n");
        assert_eq!(
            reader.next(),
            Some(Parsed::Command(Command {
                tag: "a".into(),
                body: CommandBody::Login {
                    user: "alice".into(),
                    password: b"se\r\ncr".to_vec()
                }
            }))
        );
        assert_eq!(reader.next(), None);
    }

    #[test]
    fn input_split_at_every_byte_gives_the_same_commands() {
        let input: &[u8] = b"a1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\na2 APPEND INBOX {11}\r\nHello\r\nBody\r\na3 FETCH 1 BODY[]\r\n";
        let whole = run(input);
        assert_eq!(whole.len(), 4, "{whole:?}");
        assert_eq!(whole[1], Parsed::NeedContinuation);
        for split in 0..=input.len() {
            let mut reader = CommandReader::new(LIMIT);
            reader.push(&input[..split]);
            let mut parsed = drain(&mut reader);
            reader.push(&input[split..]);
            parsed.extend(drain(&mut reader));
            assert_eq!(parsed, whole, "split at {split}");
        }
        let mut reader = CommandReader::new(LIMIT);
        let mut parsed = Vec::new();
        for byte in input {
            reader.push(std::slice::from_ref(byte));
            parsed.extend(drain(&mut reader));
        }
        assert_eq!(parsed, whole);
    }

    #[test]
    fn too_big_literal_is_refused_without_allocation() {
        let mut reader = CommandReader::new(LIMIT);
        reader.push(b"a APPEND INBOX {4294967296}\r\nb NOOP\r\n");
        assert_eq!(
            reader.next(),
            Some(Parsed::TooBig {
                tag: Some("a".into()),
                size: 4_294_967_296,
                synchronizing: true
            })
        );
        assert!(reader.command.capacity() < 1024);
        // The client never sends a refused synchronising literal: the next
        // line is a command.
        assert!(matches!(reader.next(), Some(Parsed::Command(c)) if c.tag == "b"));
        let mut reader = CommandReader::new(LIMIT);
        reader.push(b"a APPEND INBOX {99999999999999999999999999}\r\n");
        assert_eq!(
            reader.next(),
            Some(Parsed::TooBig {
                tag: Some("a".into()),
                size: u64::MAX,
                synchronizing: true
            })
        );
    }

    #[test]
    fn too_big_non_synchronising_literal_is_skipped_with_its_command() {
        let mut reader = CommandReader::new(4);
        reader.push(b"a APPEND INBOX {6+}\r\n");
        assert!(matches!(
            reader.next(),
            Some(Parsed::TooBig {
                size: 6,
                synchronizing: false,
                ..
            })
        ));
        reader.push(b"12345");
        assert_eq!(reader.next(), None);
        reader.push(b"6 more {2+}\r\nxy rest\r\nb NOOP\r\n");
        assert!(matches!(reader.next(), Some(Parsed::Command(c)) if c.tag == "b"));
        assert_eq!(reader.next(), None);
        assert!(reader.command.capacity() < 1024);
    }

    #[test]
    fn literal_total_per_command_is_bounded() {
        let mut reader = CommandReader::new(8);
        reader.push(b"a LOGIN {5+}\r\nalice {5+}\r\nxxxxx\r\nb NOOP\r\n");
        assert!(matches!(
            reader.next(),
            Some(Parsed::TooBig { size: 5, .. })
        ));
        assert!(matches!(reader.next(), Some(Parsed::Command(c)) if c.tag == "b"));
    }

    #[test]
    fn bad_command_with_literal_is_refused_before_continuation() {
        // Unknown command: no continuation, and the client (waiting for
        // one) sends its next command.
        assert_eq!(
            run(b"a FOO {5}\r\nb NOOP\r\n"),
            vec![
                Parsed::Bad {
                    tag: Some("a".into()),
                    text: "Unknown command FOO".into()
                },
                Parsed::Command(Command {
                    tag: "b".into(),
                    body: CommandBody::Noop
                })
            ]
        );
        // LITERAL+: the data comes anyway and must not be read as commands.
        assert_eq!(
            run(b"a FOO {10+}\r\nc NOOP\r\n\r\n rest {3+}\r\nd\r\n tail\r\nb NOOP\r\n"),
            vec![
                Parsed::Bad {
                    tag: Some("a".into()),
                    text: "Unknown command FOO".into()
                },
                Parsed::Command(Command {
                    tag: "b".into(),
                    body: CommandBody::Noop
                })
            ]
        );
        assert_eq!(
            run(b"a NOOP {3}\r\n"),
            vec![Parsed::Bad {
                tag: Some("a".into()),
                text: "Unexpected characters after NOOP arguments".into()
            }]
        );
        assert_eq!(
            run(b"a LOGIN \"x{3}\r\n"),
            vec![Parsed::Bad {
                tag: Some("a".into()),
                text: "Unterminated quoted string for LOGIN user name".into()
            }]
        );
    }

    #[test]
    fn literal_count_and_line_length_are_bounded() {
        let mut many = b"a SEARCH".to_vec();
        for _ in 0..=LITERALS_PER_COMMAND_MAX {
            many.extend_from_slice(b" TEXT {1+}\r\nx");
        }
        many.extend_from_slice(b"\r\nb NOOP\r\n");
        let parsed = run(&many);
        assert_eq!(
            parsed[0],
            Parsed::Bad {
                tag: Some("a".into()),
                text: format!("More than {LITERALS_PER_COMMAND_MAX} literals in one command")
            }
        );
        // The rest of the command, literals included, is skipped.
        assert_eq!(parsed.len(), 2, "{parsed:?}");
        assert!(matches!(&parsed[1], Parsed::Command(c) if c.tag == "b"));

        let mut reader = CommandReader::new(LIMIT);
        reader.push(b"a NOOP ");
        reader.push(&vec![b'x'; COMMAND_TEXT_MAX]);
        assert_eq!(
            reader.next(),
            Some(Parsed::Bad {
                tag: Some("a".into()),
                text: format!("Command line longer than {COMMAND_TEXT_MAX} bytes")
            })
        );
        // More of the long line, ending in a LITERAL+ whose data is skipped.
        reader.push(&vec![b'y'; 3 * COMMAND_TEXT_MAX]);
        assert_eq!(reader.next(), None);
        assert!(reader.buffered() <= ANNOUNCEMENT_TAIL);
        reader.push(b" {4+}\r\nc NO\r\nb NOOP\r\n");
        assert!(matches!(reader.next(), Some(Parsed::Command(c)) if c.tag == "b"));

        let exact = format!("a SEARCH TEXT {}\r\n", "x".repeat(COMMAND_TEXT_MAX - 14));
        assert!(matches!(&run(exact.as_bytes())[..], [Parsed::Command(_)]));
        let over = format!("a SEARCH TEXT {}\r\n", "x".repeat(COMMAND_TEXT_MAX - 13));
        assert!(matches!(&run(over.as_bytes())[..], [Parsed::Bad { .. }]));
    }

    #[test]
    fn idle_done_and_bare_lf_lines() {
        let mut reader = CommandReader::new(LIMIT);
        reader.push(b"a IDLE\n");
        assert!(matches!(reader.next(), Some(Parsed::Command(c)) if c.body == CommandBody::Idle));
        reader.expect_done();
        reader.push(b"done\r\nb NOOP\r\n");
        assert_eq!(reader.next(), Some(Parsed::Done));
        assert!(matches!(reader.next(), Some(Parsed::Command(c)) if c.tag == "b"));
        reader.expect_done();
        reader.push(b"c NOOP\r\n");
        assert_eq!(
            reader.next(),
            Some(Parsed::Bad {
                tag: None,
                text: "Expected DONE to end IDLE".into()
            })
        );
    }

    #[test]
    fn authenticate_continuation_lines() {
        let mut reader = CommandReader::new(LIMIT);
        reader.expect_auth_response();
        reader.push(b"AGFsaWNlAHNlY3JldA==\r\n");
        assert_eq!(
            reader.next(),
            Some(Parsed::AuthResponse(AuthResponse::Data(
                b"\0alice\0secret".to_vec()
            )))
        );
        reader.expect_auth_response();
        reader.push(b"*\r\n");
        assert_eq!(
            reader.next(),
            Some(Parsed::AuthResponse(AuthResponse::Cancel))
        );
        reader.expect_auth_response();
        reader.push(b"not base64\r\n");
        assert_eq!(
            reader.next(),
            Some(Parsed::Bad {
                tag: None,
                text: "Invalid base64 in AUTHENTICATE response".into()
            })
        );
        reader.push(b"a NOOP\r\n");
        assert!(matches!(reader.next(), Some(Parsed::Command(_))));
    }

    #[test]
    fn announcement_recognises_only_trailing_literals() {
        assert_eq!(announcement(b"a LOGIN {12}"), Some((12, true)));
        assert_eq!(announcement(b"{0+}"), Some((0, false)));
        assert_eq!(announcement(b"a {}"), None);
        assert_eq!(announcement(b"a {+}"), None);
        assert_eq!(announcement(b"a 12}"), None);
        assert_eq!(announcement(b"a {1x}"), None);
        assert_eq!(announcement(b"}"), None);
    }
}
