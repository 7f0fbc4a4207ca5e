//! The IMAP server session state machine (RFC 3501, with RFC 9051 where
//! cheap, and the extensions it announces: LITERAL+, SASL-IR, IDLE,
//! NAMESPACE, UIDPLUS, MOVE, UNSELECT, ENABLE, ID, SPECIAL-USE, CHILDREN,
//! APPENDLIMIT): bytes from the client go in through
//! [`ImapSession::receive`], responses come out of [`ImapSession::output`],
//! and [`ImapSession::poll`] tells the runtime what to do next.
//!
//! Sans-IO: this module must never touch a socket, a clock, a thread or an
//! async runtime, never await (changes come back as [`Durable`] or
//! [`AppendTicket`] for the runtime to await), never send a tagged OK for a
//! change before it is durable, never execute bytes pipelined after
//! STARTTLS, and never renumber messages without telling the client.

mod binary;
mod fetch;
mod view;

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use self::fetch::{sets_seen, write_fetch, FetchItem};
use self::view::{write_flags_announcement, write_flags_fetch, SelectedView};
use super::command::{
    Command, CommandBody, FetchAttribute, Flag, ListCommand, MailboxName, SearchCommand,
    SequenceSet, StatusItem, StoreAction,
};
use super::parser::{AuthResponse, CommandReader, Parsed};
use super::response::{self, ResponseCode, Status};
use super::search::{matches_all, needs_bytes, SearchMessage};
use crate::limits::{self, ErrorCount, InputDeadline, SessionLimits};
use crate::mailbox::{
    canonical_folder, Durable, FlagOp, Flags, MailboxError, MessageMeta, SystemFlags,
    UserMailboxes, HIERARCHY_DELIMITER,
};
use crate::sasl::{authzid_permitted, parse_plain};

/// The autologout timer: at least 30 minutes of inactivity (RFC 3501
/// 5.4), the default of `[limits] imap_autologout`. It also bounds an
/// IDLE, which clients re-issue every 29 minutes (RFC 2177 3).
pub const AUTOLOGOUT: Duration = Duration::from_secs(30 * 60);
/// Failed logins on one connection before it is closed: guessing stays
/// slow without locking anybody out.
pub const LOGIN_FAILURES_MAX: u32 = 3;
/// Output size at which a FETCH pauses for the runtime to write (Flush):
/// a large FETCH is held in memory a slice at a time, not whole.
pub const OUTPUT_HIGH_WATER: usize = 256 << 10;
/// Charsets SEARCH accepts (RFC 3501 6.4.4); keys arrive in UTF-8.
const SEARCH_CHARSETS: [&str; 2] = ["UTF-8", "US-ASCII"];

/// Settings shared by all sessions of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapConfig {
    /// Our name in the greeting and sign-off.
    pub hostname: String,
    /// A TLS config exists: offer STARTTLS while not yet under TLS.
    pub starttls_available: bool,
    /// Allow LOGIN and AUTHENTICATE before TLS (`[imap]
    /// allow_plaintext_auth`); otherwise LOGINDISABLED (RFC 3501 6.2.3).
    pub allow_plaintext_auth: bool,
    /// Largest literal a command may carry (APPEND's message), announced
    /// as APPENDLIMIT (RFC 7889).
    pub literal_max: u64,
    /// Time for the next complete command (`[limits] imap_autologout`,
    /// [`AUTOLOGOUT`] by default); literals get more at the minimum rate.
    pub autologout: Duration,
    /// The hard error limit (malformed or misplaced commands in a row: a
    /// client this confused is not going to recover) and the literal pace.
    pub limits: SessionLimits,
}

/// Resolves when an APPENDed message is filed and durable: to the
/// folder's (UIDVALIDITY, UID of the new message), or why it failed (for
/// the log; the client gets a generic NO).
pub type AppendTicket = Pin<Box<dyn Future<Output = Result<(u32, u32), String>>>>;

/// The session's view of users, their mailboxes and message bytes. Calls
/// answer at once from memory; persistence hides behind the returned
/// [`Durable`] and [`AppendTicket`].
pub trait ImapBackend {
    /// The user's mailboxes.
    fn mailboxes(&self, user: &str) -> Result<Arc<UserMailboxes>, MailboxError>;

    /// Prefix and spool data of one message, CRLF lines; None if
    /// unreadable.
    fn message_bytes(&self, meta: &MessageMeta) -> Option<Vec<u8>>;

    /// APPEND: store `bytes` as a new spool record for `user` and file it
    /// in `folder` (canonical, existing) with `flags` and the internal date
    /// (now when None).
    fn append(
        &self,
        user: &str,
        folder: &str,
        flags: Flags,
        date_ms: Option<u64>,
        bytes: Vec<u8>,
    ) -> Result<AppendTicket, MailboxError>;
}

/// What the runtime must do after [`ImapSession::poll`].
pub enum ImapEvent {
    /// Flush `output()` (if non-empty), then read more bytes and call
    /// `receive`.
    NeedInput,
    /// Flush output (it ends with the tagged OK to STARTTLS), run the TLS
    /// handshake, then call `tls_started`. Bytes pipelined after STARTTLS
    /// have been discarded: they must never be executed.
    StartTls,
    /// Flush output, await the change, then call `commit_done` and poll
    /// again. The tagged response waits for it.
    Commit(Durable),
    /// Flush output, await the APPEND, then call `append_done` and poll
    /// again.
    Append(AppendTicket),
    /// The client is in IDLE (RFC 2177): flush output, then wait for
    /// input (call `receive`, then `poll`) or for the receiver to report a
    /// change (`changed()`; call `mailbox_changed`, then `poll`). The
    /// receiver has seen every change the session already reported.
    Idle(watch::Receiver<u64>),
    /// Write all of `output()`, then poll again (without reading): a
    /// large response continues.
    Flush,
    /// Check these credentials off the event loop (the hash is slow by
    /// design), then call `auth_done` with the user's canonical name, or
    /// None for an unknown login or a wrong password.
    Authenticate { login: String, password: String },
    /// Flush output, then close the connection.
    Close,
}

impl fmt::Debug for ImapEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImapEvent::NeedInput => "NeedInput",
            ImapEvent::StartTls => "StartTls",
            ImapEvent::Commit(_) => "Commit",
            ImapEvent::Append(_) => "Append",
            ImapEvent::Idle(_) => "Idle",
            ImapEvent::Flush => "Flush",
            ImapEvent::Authenticate { .. } => "Authenticate",
            ImapEvent::Close => "Close",
        })
    }
}

enum Phase {
    /// Reading commands.
    Ready,
    /// AUTHENTICATE sent `+ `: the next line is the client's response.
    AuthResponse { tag: String },
    /// In IDLE: the next line must be DONE.
    Idling { tag: String },
    /// A Commit event is out; `line` is the tagged OK to send once it
    /// resolved.
    AwaitingCommit { tag: String, line: Vec<u8> },
    /// An Append event is out.
    AwaitingAppend { tag: String },
    /// An Authenticate event is out; `auth_done` goes on with the login.
    AwaitingAuth {
        tag: String,
        login: String,
        authzid: Option<String>,
    },
    /// A FETCH is being answered a part at a time.
    Fetching(Box<FetchJob>),
    /// A StartTls event is out.
    AwaitingTls,
    /// The last response is queued; the next poll returns Close.
    Closing,
    /// Close was returned; everything is ignored.
    Closed,
}

/// A FETCH in progress: the messages still to write and what the
/// tagged response will say.
struct FetchJob {
    tag: String,
    uid: bool,
    attributes: Vec<FetchAttribute>,
    /// Indexes into the selected view, which no command changes meanwhile.
    indexes: Vec<usize>,
    next: usize,
    /// UIDs whose \Seen this FETCH set: FLAGS is reported for them.
    newly_seen: BTreeSet<u32>,
    /// The \Seen change, awaited before the tagged OK.
    durable: Option<Durable>,
    unreadable: bool,
    decoded: bool,
}

/// A logged-in user.
struct User {
    name: String,
    mailboxes: Arc<UserMailboxes>,
    /// Marked seen each time the session syncs with the mailbox.
    changes: watch::Receiver<u64>,
}

/// How a command ends, once its untagged responses are written.
enum Reply {
    /// The tagged line: written after the session syncs its view.
    Line(Vec<u8>),
    /// The tag and the tagged OK line, sent once the change is durable.
    Commit(Durable, String, Vec<u8>),
    /// The command set the phase and the runtime must act.
    Event(ImapEvent),
    /// Everything is written (or the phase says what comes next).
    Nothing,
}

fn tagged(tag: &str, status: Status, code: Option<&ResponseCode<'_>>, text: &str) -> Vec<u8> {
    let mut line = Vec::new();
    response::tagged(&mut line, tag, status, code, text);
    line
}

fn ok(tag: &str, text: &str) -> Reply {
    Reply::Line(tagged(tag, Status::Ok, None, text))
}

fn no(tag: &str, code: Option<&ResponseCode<'_>>, text: &str) -> Reply {
    Reply::Line(tagged(tag, Status::No, code, text))
}

/// The tagged OK of a change, sent once `durable` resolves.
fn committed(durable: Durable, tag: &str, code: Option<&ResponseCode<'_>>, text: &str) -> Reply {
    Reply::Commit(
        durable,
        tag.to_string(),
        tagged(tag, Status::Ok, code, text),
    )
}

fn bad(tag: &str, text: &str) -> Reply {
    Reply::Line(tagged(tag, Status::Bad, None, text))
}

/// The `NO` for a refused mailbox operation. Internal failures are
/// logged, not shown (they may name paths).
fn mailbox_no(tag: &str, error: &MailboxError) -> Reply {
    let code = match error {
        MailboxError::NoSuchFolder(_) => ResponseCode::NonExistent,
        MailboxError::FolderExists(_) => ResponseCode::AlreadyExists,
        MailboxError::TooManyFolders { .. }
        | MailboxError::TooManyKeywords { .. }
        | MailboxError::UidsExhausted(_)
        | MailboxError::CounterExhausted(_)
        | MailboxError::ChangeTooLarge { .. } => ResponseCode::Limit,
        MailboxError::CannotDeleteInbox
        | MailboxError::HasChildren(_)
        | MailboxError::RenameIntoItself { .. }
        | MailboxError::InvalidFolderName { .. }
        | MailboxError::InvalidUserName { .. }
        | MailboxError::InvalidFlag { .. } => ResponseCode::Cannot,
        MailboxError::SizeBelowPrefix { .. }
        | MailboxError::PrefixTooLong { .. }
        | MailboxError::AlreadyHeld { .. }
        | MailboxError::Io { .. }
        | MailboxError::Corrupt { .. }
        | MailboxError::JournalFailed { .. }
        | MailboxError::Stopped => {
            tracing::warn!(%error, "imap: mailbox operation failed");
            return no(
                tag,
                Some(&ResponseCode::ServerBug),
                "Internal error, try again later",
            );
        }
    };
    no(tag, Some(&code), &error.to_string())
}

/// Flags a client sent, as the mailbox stores them. `\Recent` is the
/// server's to set (RFC 3501 2.3.2) and is ignored.
fn to_flags(flags: &[Flag]) -> Result<Flags, MailboxError> {
    let mut out = Flags::default();
    for flag in flags {
        let system = match flag {
            Flag::Seen => SystemFlags::SEEN,
            Flag::Answered => SystemFlags::ANSWERED,
            Flag::Flagged => SystemFlags::FLAGGED,
            Flag::Deleted => SystemFlags::DELETED,
            Flag::Draft => SystemFlags::DRAFT,
            Flag::Recent => continue,
            Flag::Extension(name) => {
                return Err(MailboxError::InvalidFlag {
                    name: format!("\\{name}"),
                    reason: "not a settable system flag",
                })
            }
            Flag::Keyword(name) => {
                out.insert_name(name)?;
                continue;
            }
        };
        out.system.insert(system);
    }
    Ok(out)
}

/// Whether EXPUNGE responses may be sent while answering `body` (RFC 3501
/// 7.4.1: not during FETCH, STORE or SEARCH by sequence number).
fn allows_expunges(body: &CommandBody) -> bool {
    match body {
        CommandBody::Fetch { uid, .. } | CommandBody::Store { uid, .. } => *uid,
        CommandBody::Search(search) => search.uid,
        _ => true,
    }
}

/// Whether `name` matches the LIST pattern (RFC 3501 6.3.8): `*` matches
/// anything, `%` anything but the hierarchy delimiter.
fn list_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // matched[j]: the pattern so far matches the first j characters.
    // Every index below is at most name.len(), so within both vectors.
    let mut matched = vec![false; name.len() + 1];
    matched[0] = true;
    for p in &pattern {
        let mut next = vec![false; name.len() + 1];
        match p {
            '*' | '%' => {
                let mut reachable = false;
                for j in 0..=name.len() {
                    reachable |= matched[j];
                    next[j] = reachable;
                    if *p == '%' && name.get(j) == Some(&HIERARCHY_DELIMITER) {
                        reachable = false;
                    }
                }
            }
            c => {
                for j in 0..name.len() {
                    next[j + 1] = matched[j] && name.get(j) == Some(c);
                }
            }
        }
        matched = next;
    }
    matched[name.len()]
}

/// The full LIST pattern: reference and pattern joined, a first level
/// spelled INBOX in any case made canonical (RFC 3501 5.1).
fn full_pattern(reference: &str, pattern: &str) -> String {
    let joined = format!("{reference}{pattern}");
    let first_len = joined.find(HIERARCHY_DELIMITER).unwrap_or(joined.len());
    match joined.get(..first_len) {
        Some(first) if first.eq_ignore_ascii_case("INBOX") => {
            format!("INBOX{}", joined.get(first_len..).unwrap_or_default())
        }
        _ => joined,
    }
}

/// One IMAP server session.
pub struct ImapSession {
    config: Arc<ImapConfig>,
    backend: Rc<dyn ImapBackend>,
    tls_active: bool,
    reader: CommandReader,
    phase: Phase,
    user: Option<User>,
    selected: Option<SelectedView>,
    consecutive_bad: ErrorCount,
    login_failures: u32,
    output: Vec<u8>,
    /// Reader outcomes (commands, IDLE's DONE, SASL answers): the
    /// runtime's autologout clock restarts on each.
    units: u64,
}

impl ImapSession {
    /// New session; queues the `* OK` greeting.
    pub fn new(config: Arc<ImapConfig>, backend: Rc<dyn ImapBackend>, tls_active: bool) -> Self {
        let reader = CommandReader::new(config.literal_max);
        let mut session = ImapSession {
            config,
            backend,
            tls_active,
            reader,
            phase: Phase::Ready,
            user: None,
            selected: None,
            consecutive_bad: ErrorCount::default(),
            login_failures: 0,
            output: Vec::new(),
            units: 0,
        };
        let capabilities = session.capabilities();
        let names: Vec<&str> = capabilities.iter().map(String::as_str).collect();
        let text = format!("{} IMAP4rev1 tern ready", session.config.hostname);
        response::untagged_status(
            &mut session.output,
            Status::Ok,
            Some(&ResponseCode::Capability(&names)),
            &text,
        );
        session
    }

    /// Appends bytes read from the client. Never fails.
    pub fn receive(&mut self, input: &[u8]) {
        match self.phase {
            // After STARTTLS, plaintext that still arrives is never
            // executed; after LOGOUT or a fatal error, nothing is.
            Phase::AwaitingTls | Phase::Closing | Phase::Closed => {}
            _ => self.reader.push(input),
        }
    }

    /// Advances over buffered input until the runtime must act. Pipelined
    /// commands are answered in order.
    pub fn poll(&mut self) -> ImapEvent {
        loop {
            match self.phase {
                Phase::Closing => {
                    self.phase = Phase::Closed;
                    return ImapEvent::Close;
                }
                Phase::Closed => return ImapEvent::Close,
                Phase::AwaitingCommit { .. }
                | Phase::AwaitingAppend { .. }
                | Phase::AwaitingAuth { .. }
                | Phase::AwaitingTls => return ImapEvent::NeedInput,
                Phase::Fetching(_) => {
                    if let Some(event) = self.fetch_step() {
                        return event;
                    }
                    continue;
                }
                Phase::Ready | Phase::AuthResponse { .. } | Phase::Idling { .. } => {}
            }
            let Some(parsed) = self.reader.next() else {
                if let (Phase::Idling { .. }, Some(user)) = (&self.phase, &self.user) {
                    return ImapEvent::Idle(user.changes.clone());
                }
                return ImapEvent::NeedInput;
            };
            if let Some(event) = self.parsed(parsed) {
                return event;
            }
        }
    }

    /// Bytes to send to the client.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// The runtime wrote `n` bytes of `output()`.
    pub fn consume_output(&mut self, n: usize) {
        let n = n.min(self.output.len());
        self.output.drain(..n);
        metrics::counter!("tern_imap_bytes_sent_total").increment(n as u64);
    }

    /// The changes of the logged-in user's mailboxes, for a runtime that
    /// wants to watch them outside IDLE.
    pub fn changes(&self) -> Option<watch::Receiver<u64>> {
        self.user.as_ref().map(|user| user.changes.clone())
    }

    /// TLS is up after STARTTLS: a fresh not-authenticated state under
    /// TLS (RFC 3501 6.2.1).
    pub fn tls_started(&mut self) {
        if !matches!(self.phase, Phase::AwaitingTls) {
            return;
        }
        self.tls_active = true;
        self.reader = CommandReader::new(self.config.literal_max);
        self.phase = Phase::Ready;
        self.units = self.units.wrapping_add(1);
    }

    /// Outcome of the last [`ImapEvent::Commit`]: the tagged OK, or a NO
    /// saying the change may not have been saved.
    pub fn commit_done(&mut self, result: Result<(), String>) {
        let Phase::AwaitingCommit { tag, line } = std::mem::replace(&mut self.phase, Phase::Ready)
        else {
            return;
        };
        match result {
            Ok(()) => self.output.extend_from_slice(&line),
            Err(error) => {
                tracing::warn!(%error, "imap: change not made durable");
                response::tagged(
                    &mut self.output,
                    &tag,
                    Status::No,
                    Some(&ResponseCode::ServerBug),
                    "The change could not be saved",
                );
            }
        }
    }

    /// Outcome of the last [`ImapEvent::Append`]: (UIDVALIDITY, UID) of
    /// the new message, or why it failed.
    pub fn append_done(&mut self, result: Result<(u32, u32), String>) {
        let Phase::AwaitingAppend { tag } = std::mem::replace(&mut self.phase, Phase::Ready) else {
            return;
        };
        match result {
            Ok((validity, uid)) => {
                if !self.sync(true) {
                    return;
                }
                response::tagged(
                    &mut self.output,
                    &tag,
                    Status::Ok,
                    Some(&ResponseCode::AppendUid { validity, uid }),
                    "APPEND completed",
                );
            }
            Err(error) => {
                tracing::warn!(%error, "imap: APPEND failed");
                response::tagged(
                    &mut self.output,
                    &tag,
                    Status::No,
                    Some(&ResponseCode::ServerBug),
                    "The message could not be saved",
                );
            }
        }
    }

    /// The user's mailboxes changed while in IDLE: report what the
    /// selected mailbox shows now (RFC 2177 3). Outside IDLE it does
    /// nothing: the next command reports the change.
    pub fn mailbox_changed(&mut self) {
        if matches!(self.phase, Phase::Idling { .. }) {
            self.sync(true);
        }
    }

    /// The autologout timer expired (RFC 3501 5.4): BYE, then Close.
    /// Ignored while the runtime awaits a change or a handshake.
    pub fn timed_out(&mut self) {
        if matches!(
            self.phase,
            Phase::Ready | Phase::AuthResponse { .. } | Phase::Idling { .. }
        ) {
            limits::ended_by("imap", "deadline");
            self.bye("Autologout; idle for too long");
        }
    }

    /// The server is shutting down. Between commands: BYE and true (the
    /// next poll returns Close). While a change, an APPEND or a handshake
    /// is under way: false; the runtime asks again later.
    pub fn shutting_down(&mut self) -> bool {
        match self.phase {
            Phase::Ready | Phase::AuthResponse { .. } | Phase::Idling { .. } => {
                self.bye("Server shutting down");
                true
            }
            Phase::Closing | Phase::Closed => true,
            _ => false,
        }
    }

    /// The timeout the runtime applies to the next read.
    pub fn read_timeout(&self) -> Duration {
        self.config.autologout
    }

    /// The autologout timer runs from the last complete command (so a
    /// client trickling one command's bytes is as idle as a silent one, and
    /// an IDLE ends with it however often the mailbox changes); a literal
    /// being received adds its size at the minimum rate.
    pub fn deadline(&self) -> InputDeadline {
        InputDeadline {
            unit: self.units,
            within: self
                .config
                .limits
                .paced(self.config.autologout, self.reader.buffered() as u64),
        }
    }

    fn bye(&mut self, text: &str) {
        response::untagged_status(&mut self.output, Status::Bye, None, text);
        self.phase = Phase::Closing;
    }

    fn auth_allowed(&self) -> bool {
        self.tls_active || self.config.allow_plaintext_auth
    }

    /// The capability list for the current state (RFC 3501 7.2.1).
    fn capabilities(&self) -> Vec<String> {
        let mut list = vec!["IMAP4rev1".to_string()];
        if self.user.is_none() {
            if self.config.starttls_available && !self.tls_active {
                list.push("STARTTLS".into());
            }
            if self.auth_allowed() {
                list.push("AUTH=PLAIN".into());
            } else {
                list.push("LOGINDISABLED".into());
            }
        }
        list.extend(
            [
                "SASL-IR",
                "LITERAL+",
                "ID",
                "ENABLE",
                "IDLE",
                "NAMESPACE",
                "UIDPLUS",
                "MOVE",
                "UNSELECT",
                "SPECIAL-USE",
                "CHILDREN",
            ]
            .map(String::from),
        );
        list.push(format!("APPENDLIMIT={}", self.config.literal_max));
        list
    }

    /// Handles one outcome of the reader.
    fn parsed(&mut self, parsed: Parsed) -> Option<ImapEvent> {
        if !matches!(parsed, Parsed::NeedContinuation) {
            self.units = self.units.wrapping_add(1);
        }
        match parsed {
            Parsed::Command(command) => {
                metrics::counter!("tern_imap_commands_total", "command" => command.body.name())
                    .increment(1);
                self.consecutive_bad.reset();
                self.command(command)
            }
            Parsed::NeedContinuation => {
                response::continuation(&mut self.output, "Ready for literal data");
                None
            }
            Parsed::Bad { tag, text } => {
                metrics::counter!("tern_imap_commands_total", "command" => "bad").increment(1);
                let tag = match std::mem::replace(&mut self.phase, Phase::Ready) {
                    Phase::AuthResponse { tag } | Phase::Idling { tag } => Some(tag),
                    phase => {
                        self.phase = phase;
                        tag
                    }
                };
                self.bad_command(tag.as_deref(), &text);
                None
            }
            Parsed::TooBig { tag, size, .. } => {
                let text = format!(
                    "Literal of {size} bytes exceeds the limit of {}",
                    self.config.literal_max
                );
                let code = Some(&ResponseCode::TooBig);
                match tag {
                    Some(tag) => response::tagged(&mut self.output, &tag, Status::No, code, &text),
                    None => response::untagged_status(&mut self.output, Status::No, code, &text),
                }
                None
            }
            Parsed::Done => {
                match std::mem::replace(&mut self.phase, Phase::Ready) {
                    Phase::Idling { tag } => response::tagged(
                        &mut self.output,
                        &tag,
                        Status::Ok,
                        None,
                        "IDLE terminated",
                    ),
                    phase => {
                        self.phase = phase;
                        self.bad_command(None, "Unexpected DONE");
                    }
                }
                None
            }
            Parsed::AuthResponse(answer) => {
                match std::mem::replace(&mut self.phase, Phase::Ready) {
                    Phase::AuthResponse { tag } => match answer {
                        AuthResponse::Cancel => response::tagged(
                            &mut self.output,
                            &tag,
                            Status::Bad,
                            None,
                            "AUTHENTICATE cancelled",
                        ),
                        AuthResponse::Data(data) => {
                            let reply = self.plain(&tag, &data);
                            return self.finish(reply, true);
                        }
                    },
                    phase => {
                        self.phase = phase;
                        self.bad_command(None, "Unexpected SASL response");
                    }
                }
                None
            }
        }
    }

    /// A malformed or misplaced command; too many in a row end the session.
    fn bad_command(&mut self, tag: Option<&str>, text: &str) {
        match tag {
            Some(tag) => response::tagged(&mut self.output, tag, Status::Bad, None, text),
            None => response::untagged_status(&mut self.output, Status::Bad, None, text),
        }
        if self.consecutive_bad.add(&self.config.limits) {
            limits::ended_by("imap", "errors");
            self.bye("Too many invalid commands");
        }
    }

    /// Syncs the selected view, then writes the tagged line or hands out
    /// the event.
    fn finish(&mut self, reply: Reply, expunges: bool) -> Option<ImapEvent> {
        match reply {
            Reply::Line(line) => {
                if self.sync(expunges) {
                    self.output.extend_from_slice(&line);
                }
                None
            }
            Reply::Commit(durable, tag, line) => {
                if !self.sync(expunges) {
                    return None;
                }
                self.phase = Phase::AwaitingCommit { tag, line };
                Some(ImapEvent::Commit(durable))
            }
            Reply::Event(event) => Some(event),
            Reply::Nothing => None,
        }
    }

    /// Reconciles the selected view with the mailbox. False when the
    /// folder vanished: BYE is queued and the session closes.
    fn sync(&mut self, expunges: bool) -> bool {
        let Some(user) = &mut self.user else {
            return true;
        };
        // Every change bumps the version: unchanged means nothing to
        // report, unless an earlier sync had to hold expunges back.
        let changed = user.changes.has_changed().unwrap_or(true);
        user.changes.borrow_and_update();
        let Some(view) = &mut self.selected else {
            return true;
        };
        let deferred = expunges && view.expunges_deferred;
        if !changed && !deferred {
            return true;
        }
        let fresh = user.mailboxes.snapshot(&view.name).ok();
        if view.sync(fresh, expunges, &mut self.output) == view::SyncOutcome::Current {
            return true;
        }
        self.selected = None;
        self.bye("The selected mailbox was deleted or renamed elsewhere");
        false
    }

    fn command(&mut self, command: Command) -> Option<ImapEvent> {
        let Command { tag, body } = command;
        let expunges = allows_expunges(&body);
        let reply = match body {
            CommandBody::Capability => {
                let capabilities = self.capabilities();
                let names: Vec<&str> = capabilities.iter().map(String::as_str).collect();
                response::capability(&mut self.output, &names);
                ok(&tag, "CAPABILITY completed")
            }
            CommandBody::Noop => ok(&tag, "NOOP completed"),
            CommandBody::Logout => {
                let text = format!("{} IMAP4rev1 tern signing off", self.config.hostname);
                response::untagged_status(&mut self.output, Status::Bye, None, &text);
                response::tagged(&mut self.output, &tag, Status::Ok, None, "LOGOUT completed");
                self.phase = Phase::Closing;
                Reply::Nothing
            }
            CommandBody::Id { .. } => {
                response::untagged_data(&mut self.output, b"ID (\"name\" \"tern\")");
                ok(&tag, "ID completed")
            }
            CommandBody::StartTls => self.starttls(&tag),
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } if self.user.is_some() => {
                self.misplaced(&tag, "Already authenticated")
            }
            CommandBody::Login { user, password } => self.login_command(&tag, &user, &password),
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => self.authenticate(&tag, &mechanism, initial_response),
            body if self.user.is_none() => {
                let text = format!("{} needs a login first", body.name());
                self.misplaced(&tag, &text)
            }
            CommandBody::Enable { .. } => {
                // No extension tern announces changes behaviour when enabled.
                response::enabled(&mut self.output, &[]);
                ok(&tag, "ENABLE completed")
            }
            CommandBody::Namespace => {
                response::untagged_data(&mut self.output, b"NAMESPACE ((\"\" \"/\")) NIL NIL");
                ok(&tag, "NAMESPACE completed")
            }
            CommandBody::Select { mailbox } => self.select(&tag, &mailbox, false),
            CommandBody::Examine { mailbox } => self.select(&tag, &mailbox, true),
            CommandBody::Create { mailbox } => self.create(&tag, &mailbox),
            CommandBody::Delete { mailbox } => self.delete(&tag, &mailbox),
            CommandBody::Rename { from, to } => self.rename(&tag, &from, &to),
            CommandBody::Subscribe { mailbox } => self.subscribe(&tag, &mailbox, true),
            CommandBody::Unsubscribe { mailbox } => self.subscribe(&tag, &mailbox, false),
            CommandBody::List(list) => self.list(&tag, &list),
            CommandBody::Lsub { reference, pattern } => self.lsub(&tag, &reference, &pattern),
            CommandBody::Status { mailbox, items } => self.status(&tag, &mailbox, &items),
            CommandBody::Append {
                mailbox,
                flags,
                internal_date,
                message,
            } => {
                let date_ms = internal_date
                    .and_then(|date| u64::try_from(date.unix_seconds()).ok())
                    .map(|secs| secs.saturating_mul(1000));
                self.append(&tag, &mailbox, &flags, date_ms, message)
            }
            CommandBody::Idle => {
                response::continuation(&mut self.output, "idling");
                self.reader.expect_done();
                self.phase = Phase::Idling { tag };
                self.sync(true);
                Reply::Nothing
            }
            body if self.selected.is_none() => {
                let text = format!("{} needs a selected mailbox", body.name());
                self.misplaced(&tag, &text)
            }
            body => self.selected_command(&tag, body),
        };
        self.finish(reply, expunges)
    }

    /// A well-formed command in the wrong state: BAD, counted like one.
    fn misplaced(&mut self, tag: &str, text: &str) -> Reply {
        self.bad_command(Some(tag), text);
        Reply::Nothing
    }

    fn starttls(&mut self, tag: &str) -> Reply {
        if self.tls_active {
            return bad(tag, "TLS is already active");
        }
        if !self.config.starttls_available {
            return bad(tag, "STARTTLS is not available");
        }
        if self.user.is_some() {
            return bad(tag, "STARTTLS is only valid before login");
        }
        response::tagged(
            &mut self.output,
            tag,
            Status::Ok,
            None,
            "Begin TLS negotiation now",
        );
        // RFC 3501 6.2.1 and the CVE-2011-0411 class: bytes pipelined
        // after STARTTLS arrived in plaintext and must never be executed.
        self.reader = CommandReader::new(self.config.literal_max);
        self.phase = Phase::AwaitingTls;
        Reply::Event(ImapEvent::StartTls)
    }

    fn login_command(&mut self, tag: &str, user: &str, password: &[u8]) -> Reply {
        if !self.auth_allowed() {
            return no(
                tag,
                Some(&ResponseCode::PrivacyRequired),
                "LOGIN is disabled before STARTTLS",
            );
        }
        match std::str::from_utf8(password) {
            Ok(password) => self.login(tag, user, password, None),
            Err(_) => self.login_failed(tag),
        }
    }

    fn authenticate(&mut self, tag: &str, mechanism: &str, initial: Option<Vec<u8>>) -> Reply {
        if !self.auth_allowed() {
            return no(
                tag,
                Some(&ResponseCode::PrivacyRequired),
                "Authentication is disabled before STARTTLS",
            );
        }
        if mechanism != "PLAIN" {
            return no(tag, Some(&ResponseCode::Cannot), "Unsupported mechanism");
        }
        match initial {
            Some(response) => self.plain(tag, &response),
            None => {
                response::continuation(&mut self.output, "");
                self.reader.expect_auth_response();
                self.phase = Phase::AuthResponse {
                    tag: tag.to_string(),
                };
                Reply::Nothing
            }
        }
    }

    /// A decoded PLAIN message (RFC 4616 2).
    fn plain(&mut self, tag: &str, message: &[u8]) -> Reply {
        match parse_plain(message) {
            Ok(credentials) => self.login(
                tag,
                &credentials.authcid,
                &credentials.password,
                Some(&credentials.authzid),
            ),
            Err(error) => bad(tag, &error.to_string()),
        }
    }

    /// Checks credentials; `authzid` (PLAIN) may only name the user
    /// itself (RFC 4616 2).
    /// Hands the credentials to the runtime (an Authenticate event);
    /// `auth_done` finishes the login.
    fn login(&mut self, tag: &str, login: &str, password: &str, authzid: Option<&str>) -> Reply {
        self.phase = Phase::AwaitingAuth {
            tag: tag.to_owned(),
            login: login.to_owned(),
            authzid: authzid.map(str::to_owned),
        };
        Reply::Event(ImapEvent::Authenticate {
            login: login.to_owned(),
            password: password.to_owned(),
        })
    }

    /// Outcome of the last [`ImapEvent::Authenticate`].
    pub fn auth_done(&mut self, user: Option<String>) {
        let Phase::AwaitingAuth {
            tag,
            login,
            authzid,
        } = std::mem::replace(&mut self.phase, Phase::Ready)
        else {
            return;
        };
        if let Reply::Line(line) = self.logged_in(&tag, &login, authzid.as_deref(), user) {
            self.output.extend_from_slice(&line);
        }
    }

    /// The rest of a login once the password was checked: the
    /// authorization identity may only be empty, the login or the user it
    /// names (RFC 4616 2).
    fn logged_in(
        &mut self,
        tag: &str,
        login: &str,
        authzid: Option<&str>,
        user: Option<String>,
    ) -> Reply {
        let Some(name) = user else {
            return self.login_failed(tag);
        };
        if !authzid_permitted(authzid.unwrap_or_default(), login, &name) {
            metrics::counter!("tern_imap_logins_total", "result" => "failed").increment(1);
            return no(
                tag,
                Some(&ResponseCode::AuthorizationFailed),
                "Not authorized to act as that identity",
            );
        }
        let mailboxes = match self.backend.mailboxes(&name) {
            Ok(mailboxes) => mailboxes,
            Err(error) => {
                tracing::warn!(%error, user = %name, "imap: mailboxes unavailable");
                return no(
                    tag,
                    Some(&ResponseCode::Unavailable),
                    "Mailbox unavailable, try again later",
                );
            }
        };
        metrics::counter!("tern_imap_logins_total", "result" => "ok").increment(1);
        let changes = mailboxes.changes();
        self.user = Some(User {
            name,
            mailboxes,
            changes,
        });
        let capabilities = self.capabilities();
        let names: Vec<&str> = capabilities.iter().map(String::as_str).collect();
        Reply::Line(tagged(
            tag,
            Status::Ok,
            Some(&ResponseCode::Capability(&names)),
            "Logged in",
        ))
    }

    fn login_failed(&mut self, tag: &str) -> Reply {
        metrics::counter!("tern_imap_logins_total", "result" => "failed").increment(1);
        self.login_failures += 1;
        response::tagged(
            &mut self.output,
            tag,
            Status::No,
            Some(&ResponseCode::AuthenticationFailed),
            "Invalid credentials",
        );
        if self.login_failures >= LOGIN_FAILURES_MAX {
            self.bye("Too many failed logins");
        }
        Reply::Nothing
    }

    fn mailboxes(&self) -> Option<Arc<UserMailboxes>> {
        self.user.as_ref().map(|user| Arc::clone(&user.mailboxes))
    }

    fn select(&mut self, tag: &str, mailbox: &MailboxName, read_only: bool) -> Reply {
        // RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected.
        self.selected = None;
        let Some(mailboxes) = self.mailboxes() else {
            return bad(tag, "Not logged in");
        };
        // Marked before the snapshot: a change after it bumps again.
        if let Some(user) = &mut self.user {
            user.changes.borrow_and_update();
        }
        let snapshot = match canonical_folder(mailbox.as_str())
            .and_then(|name| Ok((mailboxes.snapshot(&name)?, name)))
        {
            Ok(found) => found,
            Err(error) => return mailbox_no(tag, &error),
        };
        let (snapshot, name) = snapshot;
        let out = &mut self.output;
        write_flags_announcement(out, &snapshot.keywords, read_only);
        response::exists(
            out,
            u32::try_from(snapshot.messages.len()).unwrap_or(u32::MAX),
        );
        response::recent(out, 0);
        let first_unseen = snapshot
            .messages
            .iter()
            .position(|m| !m.flags.system.contains(SystemFlags::SEEN));
        if let Some(index) = first_unseen {
            let seq = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let text = format!("Message {seq} is the first unseen");
            response::untagged_status(out, Status::Ok, Some(&ResponseCode::Unseen(seq)), &text);
        }
        response::untagged_status(
            out,
            Status::Ok,
            Some(&ResponseCode::UidValidity(snapshot.uidvalidity)),
            "UIDs valid",
        );
        response::untagged_status(
            out,
            Status::Ok,
            Some(&ResponseCode::UidNext(snapshot.uidnext)),
            "Predicted next UID",
        );
        self.selected = Some(SelectedView::new(name, read_only, snapshot));
        let (code, text) = if read_only {
            (ResponseCode::ReadOnly, "EXAMINE completed")
        } else {
            (ResponseCode::ReadWrite, "SELECT completed")
        };
        Reply::Line(tagged(tag, Status::Ok, Some(&code), text))
    }

    /// Runs a mailbox change and answers once it is durable.
    fn change(
        &mut self,
        tag: &str,
        text: &str,
        change: impl FnOnce(&UserMailboxes) -> Result<Durable, MailboxError>,
    ) -> Reply {
        let Some(mailboxes) = self.mailboxes() else {
            return bad(tag, "Not logged in");
        };
        match change(&mailboxes) {
            Ok(durable) => committed(durable, tag, None, text),
            Err(error) => mailbox_no(tag, &error),
        }
    }

    fn create(&mut self, tag: &str, mailbox: &MailboxName) -> Reply {
        if mailbox.is_inbox() {
            return no(
                tag,
                Some(&ResponseCode::AlreadyExists),
                "INBOX always exists",
            );
        }
        self.change(tag, "CREATE completed", |m| m.create(mailbox.as_str()))
    }

    fn delete(&mut self, tag: &str, mailbox: &MailboxName) -> Reply {
        let name = canonical_folder(mailbox.as_str()).unwrap_or_default();
        let reply = self.change(tag, "DELETE completed", |m| m.delete(mailbox.as_str()));
        if matches!(reply, Reply::Commit(..))
            && self.selected.as_ref().is_some_and(|view| view.name == name)
        {
            self.selected = None;
        }
        reply
    }

    fn rename(&mut self, tag: &str, from: &MailboxName, to: &MailboxName) -> Reply {
        let reply = self.change(tag, "RENAME completed", |m| {
            m.rename(from.as_str(), to.as_str())
        });
        if let (Reply::Commit(..), Some(view)) = (&reply, &mut self.selected) {
            let old = canonical_folder(from.as_str()).unwrap_or_default();
            let new = canonical_folder(to.as_str()).unwrap_or_default();
            // Renaming INBOX leaves an empty INBOX behind (the view
            // reports the expunges); any other folder moves, and the
            // view follows it and its inferiors.
            if old != crate::mailbox::INBOX {
                if view.name == old {
                    view.name = new;
                } else if let Some(rest) = view
                    .name
                    .strip_prefix(&old)
                    .and_then(|rest| rest.strip_prefix(HIERARCHY_DELIMITER))
                {
                    view.name = format!("{new}{HIERARCHY_DELIMITER}{rest}");
                }
            }
        }
        reply
    }

    fn subscribe(&mut self, tag: &str, mailbox: &MailboxName, subscribe: bool) -> Reply {
        if subscribe {
            self.change(tag, "SUBSCRIBE completed", |m| {
                m.subscribe(mailbox.as_str())
            })
        } else {
            self.change(tag, "UNSUBSCRIBE completed", |m| {
                m.unsubscribe(mailbox.as_str())
            })
        }
    }

    fn list(&mut self, tag: &str, list: &ListCommand) -> Reply {
        let Some(mailboxes) = self.mailboxes() else {
            return bad(tag, "Not logged in");
        };
        let plain = !list.select_subscribed && !list.select_special_use;
        if plain && list.patterns.iter().all(String::is_empty) {
            // RFC 3501 6.3.8: the hierarchy delimiter and root.
            response::list(
                &mut self.output,
                false,
                &["\\Noselect"],
                Some(HIERARCHY_DELIMITER),
                &MailboxName::new(String::new()),
            );
            return ok(tag, "LIST completed");
        }
        let patterns: Vec<String> = list
            .patterns
            .iter()
            .map(|p| full_pattern(&list.reference, p))
            .collect();
        let wanted = |name: &str| patterns.iter().any(|p| list_match(p, name));
        let folders = mailboxes.folders();
        let mut listed = Vec::new();
        for folder in &folders {
            if !wanted(&folder.name)
                || (list.select_subscribed && !folder.subscribed)
                || (list.select_special_use && folder.special_use.is_none())
            {
                continue;
            }
            let mut attributes = vec![if folder.has_children {
                "\\HasChildren"
            } else {
                "\\HasNoChildren"
            }];
            if let Some(special) = folder.special_use {
                attributes.push(special.attribute());
            }
            if folder.subscribed && (list.select_subscribed || list.return_subscribed) {
                attributes.push("\\Subscribed");
            }
            let name = MailboxName::new(folder.name.clone());
            response::list(
                &mut self.output,
                false,
                &attributes,
                Some(HIERARCHY_DELIMITER),
                &name,
            );
            listed.push(name);
        }
        if list.select_subscribed && !list.select_special_use {
            // RFC 5258 3.1: subscriptions to folders that do not exist.
            for name in mailboxes.subscriptions() {
                if wanted(&name) && !folders.iter().any(|f| f.name == name) {
                    response::list(
                        &mut self.output,
                        false,
                        &["\\Subscribed", "\\NonExistent"],
                        Some(HIERARCHY_DELIMITER),
                        &MailboxName::new(name),
                    );
                }
            }
        }
        if let Some(items) = &list.return_status {
            for name in &listed {
                if let Ok(status) = mailboxes.status(name.as_str()) {
                    write_status(&mut self.output, name, items, &status);
                }
            }
        }
        ok(tag, "LIST completed")
    }

    fn lsub(&mut self, tag: &str, reference: &str, pattern: &str) -> Reply {
        let Some(mailboxes) = self.mailboxes() else {
            return bad(tag, "Not logged in");
        };
        let pattern = full_pattern(reference, pattern);
        let folders = mailboxes.folders();
        for name in mailboxes.subscriptions() {
            if !list_match(&pattern, &name) {
                continue;
            }
            let exists = folders.iter().any(|f| f.name == name);
            let attributes: &[&str] = if exists { &[] } else { &["\\Noselect"] };
            response::list(
                &mut self.output,
                true,
                attributes,
                Some(HIERARCHY_DELIMITER),
                &MailboxName::new(name),
            );
        }
        ok(tag, "LSUB completed")
    }

    fn status(&mut self, tag: &str, mailbox: &MailboxName, items: &[StatusItem]) -> Reply {
        let Some(mailboxes) = self.mailboxes() else {
            return bad(tag, "Not logged in");
        };
        match mailboxes.status(mailbox.as_str()) {
            Ok(status) => {
                write_status(&mut self.output, mailbox, items, &status);
                ok(tag, "STATUS completed")
            }
            Err(error) => mailbox_no(tag, &error),
        }
    }

    fn append(
        &mut self,
        tag: &str,
        mailbox: &MailboxName,
        flags: &[Flag],
        date_ms: Option<u64>,
        message: Vec<u8>,
    ) -> Reply {
        let (Some(mailboxes), Some(user)) = (self.mailboxes(), self.user.as_ref()) else {
            return bad(tag, "Not logged in");
        };
        let flags = match to_flags(flags) {
            Ok(flags) => flags,
            Err(error) => return mailbox_no(tag, &error),
        };
        let folder = match canonical_folder(mailbox.as_str()) {
            Ok(folder) => folder,
            Err(error) => return mailbox_no(tag, &error),
        };
        if let Err(error) = mailboxes.status(&folder) {
            return match error {
                // RFC 3501 6.3.11: the client may CREATE and retry.
                MailboxError::NoSuchFolder(_) => no(
                    tag,
                    Some(&ResponseCode::TryCreate),
                    "No such mailbox; create it first",
                ),
                error => mailbox_no(tag, &error),
            };
        }
        match self
            .backend
            .append(&user.name, &folder, flags, date_ms, message)
        {
            Ok(ticket) => {
                self.phase = Phase::AwaitingAppend {
                    tag: tag.to_string(),
                };
                Reply::Event(ImapEvent::Append(ticket))
            }
            Err(error) => mailbox_no(tag, &error),
        }
    }

    /// Commands of the selected state; the view is taken out while they
    /// run and put back unless the command deselects.
    fn selected_command(&mut self, tag: &str, body: CommandBody) -> Reply {
        let (Some(mut view), Some(mailboxes)) = (self.selected.take(), self.mailboxes()) else {
            return bad(tag, "No mailbox selected");
        };
        let (reply, keep) = match body {
            CommandBody::Close => (self.close(tag, &view, &mailboxes), false),
            CommandBody::Unselect => (ok(tag, "UNSELECT completed"), false),
            CommandBody::Check => (ok(tag, "CHECK completed"), true),
            CommandBody::Expunge => (self.expunge(tag, &mut view, &mailboxes, None), true),
            CommandBody::UidExpunge { set } => {
                let uids = match targets(&view, true, &set) {
                    Ok(indexes) => uids_of(&view, &indexes),
                    Err(text) => return self.restore(view, bad(tag, text)),
                };
                let reply = self.expunge(tag, &mut view, &mailboxes, Some(&uids));
                (reply, true)
            }
            CommandBody::Search(search) => (self.search(tag, &view, &search), true),
            CommandBody::Fetch {
                uid,
                set,
                attributes,
            } => (
                self.fetch(tag, &mut view, &mailboxes, uid, &set, &attributes),
                true,
            ),
            CommandBody::Store {
                uid,
                set,
                action,
                silent,
                flags,
            } => {
                let store = StoreRequest {
                    uid,
                    set: &set,
                    action,
                    silent,
                    flags: &flags,
                };
                (self.store(tag, &mut view, &mailboxes, &store), true)
            }
            CommandBody::Copy { uid, set, mailbox } => (
                self.copy(tag, &mut view, &mailboxes, uid, &set, &mailbox, false),
                true,
            ),
            CommandBody::Move { uid, set, mailbox } => (
                self.copy(tag, &mut view, &mailboxes, uid, &set, &mailbox, true),
                true,
            ),
            body => {
                let text = format!("{} is not valid in the selected state", body.name());
                (bad(tag, &text), true)
            }
        };
        if keep {
            self.selected = Some(view);
        }
        reply
    }

    fn restore(&mut self, view: SelectedView, reply: Reply) -> Reply {
        self.selected = Some(view);
        reply
    }

    fn close(&mut self, tag: &str, view: &SelectedView, mailboxes: &UserMailboxes) -> Reply {
        if view.read_only {
            return ok(tag, "CLOSE completed");
        }
        // RFC 3501 6.4.2: expunge silently, then deselect.
        match mailboxes.expunge(&view.name, None) {
            Ok((_, durable)) => committed(durable, tag, None, "CLOSE completed"),
            Err(error) => mailbox_no(tag, &error),
        }
    }

    fn expunge(
        &mut self,
        tag: &str,
        view: &mut SelectedView,
        mailboxes: &UserMailboxes,
        only: Option<&[u32]>,
    ) -> Reply {
        if view.read_only {
            return no(tag, Some(&ResponseCode::Cannot), "Mailbox is read-only");
        }
        match mailboxes.expunge(&view.name, only) {
            Ok((uids, durable)) => {
                view.expunge_uids(&uids, &mut self.output);
                committed(durable, tag, None, "EXPUNGE completed")
            }
            Err(error) => mailbox_no(tag, &error),
        }
    }

    fn search(&mut self, tag: &str, view: &SelectedView, search: &SearchCommand) -> Reply {
        if let Some(charset) = &search.charset {
            if !SEARCH_CHARSETS
                .iter()
                .any(|known| known.eq_ignore_ascii_case(charset))
            {
                return no(
                    tag,
                    Some(&ResponseCode::BadCharset(&SEARCH_CHARSETS)),
                    "Unsupported charset",
                );
            }
        }
        let with_bytes = search.criteria.iter().any(needs_bytes);
        let largest_seq = view.exists();
        let largest_uid = view.largest_uid();
        let mut found = Vec::new();
        for (index, meta) in view.messages.iter().enumerate() {
            let bytes = if with_bytes {
                self.backend.message_bytes(meta)
            } else {
                None
            };
            let seq = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let message = SearchMessage {
                seq,
                uid: meta.uid,
                largest_seq,
                largest_uid,
                meta,
                bytes: bytes.as_deref(),
            };
            if matches_all(&search.criteria, &message) {
                found.push(if search.uid { meta.uid } else { seq });
            }
        }
        response::search(&mut self.output, &found);
        ok(tag, "SEARCH completed")
    }

    fn fetch(
        &mut self,
        tag: &str,
        view: &mut SelectedView,
        mailboxes: &UserMailboxes,
        uid: bool,
        set: &SequenceSet,
        attributes: &[FetchAttribute],
    ) -> Reply {
        let indexes = match targets(view, uid, set) {
            Ok(indexes) => indexes,
            Err(text) => return bad(tag, text),
        };
        let mut durable = None;
        let mut newly_seen = BTreeSet::new();
        if sets_seen(attributes) && !view.read_only {
            let unseen: Vec<u32> = indexes
                .iter()
                .filter_map(|&i| view.messages.get(i))
                .filter(|m| !m.flags.system.contains(SystemFlags::SEEN))
                .map(|m| m.uid)
                .collect();
            if !unseen.is_empty() {
                let mut seen = Flags::default();
                seen.system.insert(SystemFlags::SEEN);
                match mailboxes.store_flags(&view.name, &unseen, FlagOp::Add, &seen) {
                    Ok((after, change)) => {
                        for (uid, flags) in after {
                            if let Some(message) = view
                                .seq_of(uid)
                                .and_then(|seq| view.messages.get_mut(seq as usize - 1))
                            {
                                message.flags = flags;
                                newly_seen.insert(uid);
                            }
                        }
                        durable = Some(change);
                    }
                    Err(error) => return mailbox_no(tag, &error),
                }
            }
        }
        self.phase = Phase::Fetching(Box::new(FetchJob {
            tag: tag.to_string(),
            uid,
            attributes: attributes.to_vec(),
            indexes,
            next: 0,
            newly_seen,
            durable,
            unreadable: false,
            decoded: true,
        }));
        Reply::Nothing
    }

    /// Writes FETCH responses until the output reaches
    /// [`OUTPUT_HIGH_WATER`] (then Flush) or the job is done (then the
    /// tagged response, possibly after a Commit).
    fn fetch_step(&mut self) -> Option<ImapEvent> {
        let (Phase::Fetching(job), Some(view)) = (&mut self.phase, &self.selected) else {
            self.phase = Phase::Ready;
            return None;
        };
        let with_bytes = fetch::needs_bytes(&job.attributes);
        while let Some(&index) = job.indexes.get(job.next) {
            if self.output.len() >= OUTPUT_HIGH_WATER {
                return Some(ImapEvent::Flush);
            }
            job.next += 1;
            let Some(meta) = view.messages.get(index) else {
                continue;
            };
            let bytes = if with_bytes {
                let bytes = self.backend.message_bytes(meta);
                job.unreadable |= bytes.is_none();
                bytes
            } else {
                None
            };
            let item = FetchItem {
                seq: index + 1,
                meta,
                bytes: bytes.as_deref(),
                force_uid: job.uid,
                force_flags: job.newly_seen.contains(&meta.uid),
            };
            job.decoded &= write_fetch(&mut self.output, &item, &job.attributes);
        }
        let Phase::Fetching(job) = std::mem::replace(&mut self.phase, Phase::Ready) else {
            return None;
        };
        let tag = job.tag.as_str();
        let line = if !job.decoded {
            // RFC 3516 4.3: the response code is not in the encoder's set.
            tagged(
                tag,
                Status::No,
                None,
                "[UNKNOWN-CTE] Some parts have an unknown content transfer encoding",
            )
        } else if job.unreadable {
            tagged(
                tag,
                Status::No,
                Some(&ResponseCode::Unavailable),
                "Some messages could not be read",
            )
        } else {
            tagged(tag, Status::Ok, None, "FETCH completed")
        };
        let reply = match job.durable {
            Some(durable) => Reply::Commit(durable, job.tag, line),
            None => Reply::Line(line),
        };
        self.finish(reply, job.uid)
    }

    fn store(
        &mut self,
        tag: &str,
        view: &mut SelectedView,
        mailboxes: &UserMailboxes,
        store: &StoreRequest<'_>,
    ) -> Reply {
        if view.read_only {
            return no(tag, Some(&ResponseCode::Cannot), "Mailbox is read-only");
        }
        let flags = match to_flags(store.flags) {
            Ok(flags) => flags,
            Err(error) => return mailbox_no(tag, &error),
        };
        let indexes = match targets(view, store.uid, store.set) {
            Ok(indexes) => indexes,
            Err(text) => return bad(tag, text),
        };
        let uids = uids_of(view, &indexes);
        let op = match store.action {
            StoreAction::Add => FlagOp::Add,
            StoreAction::Remove => FlagOp::Remove,
            StoreAction::Replace => FlagOp::Replace,
        };
        match mailboxes.store_flags(&view.name, &uids, op, &flags) {
            Ok((after, durable)) => {
                for (uid, flags) in after {
                    let Some(seq) = view.seq_of(uid) else {
                        continue;
                    };
                    if let Some(message) = view.messages.get_mut(seq as usize - 1) {
                        message.flags = flags;
                        if !store.silent {
                            write_flags_fetch(&mut self.output, seq as usize, message, store.uid);
                        }
                    }
                }
                committed(durable, tag, None, "STORE completed")
            }
            Err(error) => mailbox_no(tag, &error),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn copy(
        &mut self,
        tag: &str,
        view: &mut SelectedView,
        mailboxes: &UserMailboxes,
        uid: bool,
        set: &SequenceSet,
        mailbox: &MailboxName,
        move_: bool,
    ) -> Reply {
        if move_ && view.read_only {
            return no(tag, Some(&ResponseCode::Cannot), "Mailbox is read-only");
        }
        let indexes = match targets(view, uid, set) {
            Ok(indexes) => indexes,
            Err(text) => return bad(tag, text),
        };
        let uids = uids_of(view, &indexes);
        let result = if move_ {
            mailboxes.move_(&view.name, &uids, mailbox.as_str())
        } else {
            mailboxes.copy(&view.name, &uids, mailbox.as_str())
        };
        let (pairs, durable) = match result {
            Ok(done) => done,
            // RFC 3501 6.4.7: the client may CREATE and retry.
            Err(MailboxError::NoSuchFolder(_)) => {
                return no(
                    tag,
                    Some(&ResponseCode::TryCreate),
                    "No such mailbox; create it first",
                )
            }
            Err(error) => return mailbox_no(tag, &error),
        };
        let name = if move_ { "MOVE" } else { "COPY" };
        let done = format!("{name} completed");
        if pairs.is_empty() {
            return committed(durable, tag, None, &done);
        }
        let validity = mailboxes
            .status(mailbox.as_str())
            .map(|status| status.uidvalidity)
            .unwrap_or_default();
        let (source, destination): (Vec<u32>, Vec<u32>) = pairs.into_iter().unzip();
        let code = ResponseCode::CopyUid {
            validity,
            source: &source,
            destination: &destination,
        };
        if !move_ {
            return committed(durable, tag, Some(&code), &done);
        }
        // RFC 6851 4.3: COPYUID goes in an untagged OK before the expunges.
        response::untagged_status(&mut self.output, Status::Ok, Some(&code), "Moved");
        let mut moved = source;
        moved.sort_unstable();
        view.expunge_uids(&moved, &mut self.output);
        committed(durable, tag, None, &done)
    }
}

/// The arguments of STORE.
struct StoreRequest<'a> {
    uid: bool,
    set: &'a SequenceSet,
    action: StoreAction,
    silent: bool,
    flags: &'a [Flag],
}

/// Indexes into the view's messages named by a sequence set (every
/// number must exist, RFC 3501 9 `seq-number`) or a UID set (UIDs that
/// do not exist are skipped, RFC 3501 6.4.8).
fn targets(view: &SelectedView, uid: bool, set: &SequenceSet) -> Result<Vec<usize>, &'static str> {
    if uid {
        // Sorted, disjoint ranges: the one that could hold a UID is the
        // last starting at or below it.
        let ranges = set.resolve(view.largest_uid());
        let in_set = |uid: u32| {
            let after = ranges.partition_point(|&(lo, _)| lo <= uid);
            after
                .checked_sub(1)
                .and_then(|i| ranges.get(i))
                .is_some_and(|&(_, hi)| uid <= hi)
        };
        return Ok(view
            .messages
            .iter()
            .enumerate()
            .filter(|(_, m)| in_set(m.uid))
            .map(|(index, _)| index)
            .collect());
    }
    let count = view.exists();
    let mut indexes = Vec::new();
    for (lo, hi) in set.resolve(count) {
        if lo == 0 || hi > count {
            return Err("Invalid message sequence number");
        }
        indexes.extend((lo as usize - 1)..(hi as usize));
    }
    Ok(indexes)
}

fn uids_of(view: &SelectedView, indexes: &[usize]) -> Vec<u32> {
    indexes
        .iter()
        .filter_map(|&i| view.messages.get(i))
        .map(|m| m.uid)
        .collect()
}

fn write_status(
    out: &mut Vec<u8>,
    name: &MailboxName,
    items: &[StatusItem],
    status: &crate::mailbox::FolderStatus,
) {
    let values: Vec<(StatusItem, u64)> = items
        .iter()
        .map(|&item| {
            let value = match item {
                StatusItem::Messages => u64::from(status.messages),
                StatusItem::Recent => 0,
                StatusItem::UidNext => u64::from(status.uidnext),
                StatusItem::UidValidity => u64::from(status.uidvalidity),
                StatusItem::Unseen => u64::from(status.unseen),
                StatusItem::Deleted => u64::from(status.deleted),
                StatusItem::Size => status.size,
            };
            (item, value)
        })
        .collect();
    response::status(out, name, &values);
}

#[cfg(test)]
mod tests;
