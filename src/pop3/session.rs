//! The POP3 server session state machine (RFC 1939 AUTHORIZATION,
//! TRANSACTION and UPDATE states; RFC 2449 CAPA, PIPELINING, RESP-CODES;
//! RFC 2595 STLS; RFC 5034 AUTH PLAIN): bytes from the peer go in through
//! [`Pop3Session::receive`], responses come out of [`Pop3Session::output`],
//! and [`Pop3Session::poll`] tells the runtime what to do next.
//!
//! Sans-IO: this module must never touch a socket, a clock, a thread or an
//! async runtime, must never execute bytes pipelined after STLS, must never
//! delete anything except through [`Maildrop::delete`] after QUIT, and must
//! never hold more input than one command or SASL response line.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use memchr::memchr;

use super::command::{parse_command, verb_label, Command, CommandError, COMMAND_LINE_MAX};
use super::response::{
    top_part, write_continuation, write_dot_stuffed, write_err, write_lines, write_ok, RespCode,
};
use super::{Maildrop, MaildropError, Pop3Backend};
use crate::limits::{self, ErrorCount, InputDeadline, SessionLimits};
use crate::sasl::{authzid_permitted, decode_response, parse_plain, SASL_RESPONSE_MAX};

/// The autologout timer: at least 10 minutes of inactivity (RFC 1939 3).
pub const AUTOLOGOUT_MIN: Duration = Duration::from_secs(10 * 60);
/// Failed logins on one connection before it is closed: guessing stays slow
/// without locking anybody out.
pub const LOGIN_FAILURES_MAX: u32 = 3;

/// Settings shared by all sessions of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop3Config {
    /// Our name in the greeting and sign-off.
    pub hostname: String,
    /// A TLS config exists: offer STLS while not yet under TLS.
    pub stls_available: bool,
    /// Allow USER/PASS and AUTH before TLS (`[pop3] allow_plaintext_auth`).
    pub allow_plaintext_auth: bool,
    /// Time for the next complete command before the session is closed
    /// (`[limits] pop3_autologout`; RFC 1939 3 asks for at least
    /// [`AUTOLOGOUT_MIN`], which is the default; tests use less).
    pub autologout: Duration,
    /// The hard error limit (`[limits]`): bad commands in a row.
    pub limits: SessionLimits,
}

/// What the runtime must do after [`Pop3Session::poll`].
#[derive(Debug)]
pub enum Pop3Event<C> {
    /// Flush `output()` (if non-empty) to the peer, then read more bytes and
    /// call `receive`.
    NeedInput,
    /// Flush output (it ends with `+OK Begin TLS negotiation`), run the TLS
    /// handshake, then call `tls_started`. Bytes pipelined after STLS have
    /// already been discarded: they must never be executed.
    StartTls,
    /// QUIT entered the UPDATE state with deletions: await the maildrop's
    /// commit, then call `commit_done`. The session reads nothing meanwhile.
    Commit(C),
    /// Check these credentials (off the event loop: the hash is slow by
    /// design), then call `auth_done` with the user's name or None.
    Authenticate { login: String, password: String },
    /// Flush output, then close the connection.
    Close,
}

/// An open maildrop and the messages marked deleted in this session.
struct OpenDrop<C> {
    maildrop: Box<dyn Maildrop<Commit = C>>,
    /// Parallel to `maildrop.messages()`: marked by DELE, cleared by RSET.
    deleted: Vec<bool>,
}

impl<C> OpenDrop<C> {
    fn new(maildrop: Box<dyn Maildrop<Commit = C>>) -> Self {
        let deleted = vec![false; maildrop.messages().len()];
        Self { maildrop, deleted }
    }

    fn is_deleted(&self, index: usize) -> bool {
        self.deleted.get(index).copied().unwrap_or(false)
    }

    /// The index of message `number` if it exists and is not deleted, else
    /// the `-ERR` text (RFC 1939 5: deleted messages are not listed).
    fn index(&self, number: u64) -> Result<usize, String> {
        let index = usize::try_from(number)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|&i| i < self.maildrop.messages().len())
            .ok_or_else(|| "no such message".to_owned())?;
        if self.is_deleted(index) {
            return Err(format!("message {number} already deleted"));
        }
        Ok(index)
    }

    /// (message number, message) of every message not marked deleted.
    fn visible(&self) -> impl Iterator<Item = (usize, &super::DropMessage)> {
        self.maildrop
            .messages()
            .iter()
            .enumerate()
            .filter(|(index, _)| !self.is_deleted(*index))
            .map(|(index, message)| (index + 1, message))
    }

    /// Count and total octets of the messages not marked deleted.
    fn summary(&self) -> (usize, u64) {
        self.visible()
            .fold((0, 0), |(count, octets), (_, message)| {
                (count + 1, octets.saturating_add(message.size))
            })
    }
}

enum Phase<C> {
    /// AUTHORIZATION: reading commands before login.
    Authorization,
    /// AUTH PLAIN sent `+ `: the next line is the client's response.
    SaslResponse,
    /// An Authenticate event is out (or about to be); waiting for
    /// `auth_done`. Password checks are slow on purpose (argon2id), so
    /// the runtime runs them off the event loop.
    AwaitingAuth {
        login: String,
        authzid: Option<String>,
    },
    /// TRANSACTION: logged in, the maildrop is locked.
    Transaction(OpenDrop<C>),
    /// UPDATE: a Commit event is out; waiting for `commit_done`.
    AwaitingCommit {
        /// Never read: held so that its lock is released only after the
        /// commit (dropping it releases the lock).
        _open: OpenDrop<C>,
        deleted: usize,
    },
    /// A StartTls event is out; waiting for `tls_started`.
    AwaitingTls,
    /// The last response is queued; the next poll returns Close.
    Closing,
    /// Close was returned; everything is ignored.
    Closed,
}

/// What one step of `poll` came to.
enum Step<C> {
    Continue,
    Wait,
    Event(Pop3Event<C>),
}

/// A complete input line, read before the session acts on it.
enum Line {
    Command(Result<Command, CommandError>),
    SaslResponse(Vec<u8>),
}

/// One POP3 server session. `C` is the backend's commit type
/// ([`Pop3Backend::Commit`]), passed through to the runtime untouched.
pub struct Pop3Session<C> {
    config: Arc<Pop3Config>,
    backend: Rc<dyn Pop3Backend<Commit = C>>,
    tls_active: bool,
    phase: Phase<C>,
    /// The name given by USER, consumed by the PASS right after it.
    pending_user: Option<String>,
    /// Credentials for the next Authenticate event.
    auth_request: Option<(String, String)>,
    login_failures: u32,
    input: Vec<u8>,
    /// Bytes of `input` already processed.
    input_pos: usize,
    /// Inside a line already answered as too long: drop up to LF.
    discarding_long_line: bool,
    output: Vec<u8>,
    /// `-ERR` answers in a row, against the hard error limit.
    errors: ErrorCount,
    /// Lines completed: the runtime's autologout clock restarts on each.
    units: u64,
}

impl<C> Pop3Session<C> {
    /// New session; queues the `+OK` greeting in the output.
    pub fn new(
        config: Arc<Pop3Config>,
        backend: Rc<dyn Pop3Backend<Commit = C>>,
        tls_active: bool,
    ) -> Self {
        let mut session = Self {
            config,
            backend,
            tls_active,
            phase: Phase::Authorization,
            pending_user: None,
            auth_request: None,
            login_failures: 0,
            input: Vec::new(),
            input_pos: 0,
            discarding_long_line: false,
            output: Vec::new(),
            errors: ErrorCount::default(),
            units: 0,
        };
        let greeting = format!("{} POP3 tern ready", session.config.hostname);
        write_ok(&mut session.output, &greeting);
        session
    }

    /// Append bytes read from the peer. Never fails; may be called with any bytes.
    pub fn receive(&mut self, input: &[u8]) {
        match self.phase {
            // After STLS, whatever still arrives in plaintext is never
            // executed; after QUIT or a fatal error, nothing is.
            Phase::AwaitingTls | Phase::AwaitingCommit { .. } | Phase::Closing | Phase::Closed => {
                return
            }
            _ => {}
        }
        if self.input_pos > 0 {
            self.input.drain(..self.input_pos);
            self.input_pos = 0;
        }
        self.input.extend_from_slice(input);
    }

    /// Advance the state machine over buffered input until the runtime must
    /// act. Pipelined commands are all answered, in order, before this
    /// returns NeedInput (RFC 2449 6.6).
    pub fn poll(&mut self) -> Pop3Event<C> {
        loop {
            let step = match self.phase {
                Phase::Authorization | Phase::SaslResponse | Phase::Transaction(_) => {
                    self.step_line()
                }
                Phase::AwaitingAuth { .. } => match self.auth_request.take() {
                    Some((login, password)) => {
                        Step::Event(Pop3Event::Authenticate { login, password })
                    }
                    None => Step::Wait,
                },
                Phase::AwaitingCommit { .. } | Phase::AwaitingTls => Step::Wait,
                Phase::Closing => {
                    self.phase = Phase::Closed;
                    self.input = Vec::new();
                    self.input_pos = 0;
                    Step::Event(Pop3Event::Close)
                }
                Phase::Closed => Step::Event(Pop3Event::Close),
            };
            match step {
                Step::Continue => {}
                Step::Wait => return Pop3Event::NeedInput,
                Step::Event(event) => return event,
            }
        }
    }

    /// Bytes to send to the peer.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// The runtime wrote `n` bytes of `output()`.
    pub fn consume_output(&mut self, n: usize) {
        let n = n.min(self.output.len());
        self.output.drain(..n);
        metrics::counter!("tern_pop3_bytes_sent_total").increment(n as u64);
    }

    /// TLS handshake finished: back to a fresh AUTHORIZATION state under
    /// TLS (RFC 2595 4); STLS is no longer offered.
    pub fn tls_started(&mut self) {
        if !matches!(self.phase, Phase::AwaitingTls) {
            return;
        }
        self.tls_active = true;
        self.pending_user = None;
        self.input.clear();
        self.input_pos = 0;
        self.discarding_long_line = false;
        self.phase = Phase::Authorization;
        self.units = self.units.wrapping_add(1);
    }

    /// Outcome of the commit of the last [`Pop3Event::Commit`]: Ok -> `+OK`
    /// sign-off; Err -> `-ERR [SYS/TEMP] some deleted messages not removed`
    /// (RFC 1939 6; the error text is logged, not sent). Either way the
    /// maildrop is released and the next poll returns Close.
    pub fn commit_done(&mut self, result: Result<(), String>) {
        let Phase::AwaitingCommit { deleted, .. } = self.phase else {
            return;
        };
        match result {
            Ok(()) => {
                let text = format!(
                    "{} POP3 tern signing off ({deleted} messages deleted)",
                    self.config.hostname
                );
                write_ok(&mut self.output, &text);
            }
            Err(error) => {
                tracing::warn!(%error, "pop3: deletions at QUIT failed");
                write_err(
                    &mut self.output,
                    Some(RespCode::SysTemp),
                    "some deleted messages not removed",
                );
            }
        }
        // Replacing the phase drops the maildrop, which releases its lock.
        self.phase = Phase::Closing;
    }

    /// The autologout timer expired (RFC 1939 3): queue `-ERR`, release the
    /// maildrop without deleting anything; the next poll returns Close.
    /// Ignored while a commit or a TLS handshake is under way (no read is
    /// pending then).
    pub fn timed_out(&mut self) {
        match self.phase {
            Phase::Authorization | Phase::SaslResponse | Phase::Transaction(_) => {
                limits::ended_by("pop3", "deadline");
                write_err(&mut self.output, None, "autologout timer expired");
                self.phase = Phase::Closing;
            }
            _ => {}
        }
    }

    /// The server is shutting down. Between commands: queue
    /// `-ERR [SYS/TEMP] server shutting down`, release the maildrop without
    /// deleting anything and return true (the next poll returns Close).
    /// While a commit or a TLS handshake is under way: do nothing and
    /// return false; the runtime asks again later.
    pub fn shutting_down(&mut self) -> bool {
        match self.phase {
            Phase::Authorization | Phase::SaslResponse | Phase::Transaction(_) => {
                write_err(
                    &mut self.output,
                    Some(RespCode::SysTemp),
                    "server shutting down",
                );
                self.phase = Phase::Closing;
                true
            }
            _ => false,
        }
    }

    /// The timeout the runtime applies to the next read.
    pub fn read_timeout(&self) -> Duration {
        self.config.autologout
    }

    /// The autologout timer runs from the last complete line: a client
    /// trickling the bytes of one command is as idle as a silent one.
    pub fn deadline(&self) -> InputDeadline {
        InputDeadline {
            unit: self.units,
            within: self.config.autologout,
        }
    }

    /// After a line was answered from `answer_start` on: a `-ERR` counts
    /// against the hard error limit, a `+OK` starts the count again.
    fn count_errors(&mut self, answer_start: usize) {
        let answer = self.output.get(answer_start..).unwrap_or_default();
        if answer.starts_with(b"+OK") {
            self.errors.reset();
        } else if answer.starts_with(b"-ERR")
            && !matches!(self.phase, Phase::Closing | Phase::Closed)
            && self.errors.add(&self.config.limits)
        {
            limits::ended_by("pop3", "errors");
            self.pending_user = None;
            write_err(&mut self.output, None, "too many bad commands, closing");
            self.phase = Phase::Closing;
        }
    }

    fn auth_allowed(&self) -> bool {
        self.tls_active || self.config.allow_plaintext_auth
    }

    fn ok(&mut self, text: &str) {
        write_ok(&mut self.output, text);
    }

    fn err(&mut self, code: Option<RespCode>, text: &str) {
        write_err(&mut self.output, code, text);
    }

    fn pending_input(&self) -> &[u8] {
        // `input_pos` only ever advances over bytes of `input`, so the
        // slice start is in bounds; `get` keeps that from being a panic path.
        self.input.get(self.input_pos..).unwrap_or_default()
    }

    fn line_limit(&self) -> usize {
        match self.phase {
            Phase::SaslResponse => SASL_RESPONSE_MAX,
            _ => COMMAND_LINE_MAX,
        }
    }

    fn step_line(&mut self) -> Step<C> {
        let limit = self.line_limit();
        let pending = self.pending_input();
        let Some(lf) = memchr(b'\n', pending) else {
            // Even with its LF still to come this line cannot fit.
            if pending.len() >= limit {
                self.input_pos = self.input.len();
                if !self.discarding_long_line {
                    self.discarding_long_line = true;
                    let answer_start = self.output.len();
                    self.line_too_long();
                    self.count_errors(answer_start);
                    if matches!(self.phase, Phase::Closing) {
                        return Step::Continue;
                    }
                }
            }
            return Step::Wait;
        };
        let too_long = lf + 1 > limit;
        let raw = &pending[..lf];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = if self.discarding_long_line || too_long {
            None
        } else if matches!(self.phase, Phase::SaslResponse) {
            Some(Line::SaslResponse(raw.to_vec()))
        } else {
            metrics::counter!("tern_pop3_commands_total", "command" => verb_label(raw))
                .increment(1);
            Some(Line::Command(parse_command(raw)))
        };
        self.input_pos += lf + 1;
        self.units = self.units.wrapping_add(1);
        let answer_start = self.output.len();
        let step = match line {
            Some(Line::Command(parsed)) => self.execute(parsed),
            Some(Line::SaslResponse(response)) => {
                self.sasl_response(&response);
                Step::Continue
            }
            None if self.discarding_long_line => {
                // The tail of a line already answered: never a command.
                self.discarding_long_line = false;
                Step::Continue
            }
            None => {
                self.line_too_long();
                Step::Continue
            }
        };
        self.count_errors(answer_start);
        step
    }

    /// An overlong line is answered and dropped; one in place of a SASL
    /// response also ends the exchange.
    fn line_too_long(&mut self) {
        self.pending_user = None;
        if matches!(self.phase, Phase::SaslResponse) {
            self.phase = Phase::Authorization;
            self.err(None, "AUTH response too long");
        } else {
            self.err(None, "command line too long");
        }
    }

    fn execute(&mut self, parsed: Result<Command, CommandError>) -> Step<C> {
        let command = match parsed {
            Ok(command) => command,
            Err(error) => {
                self.pending_user = None;
                self.err(None, &error.to_string());
                return Step::Continue;
            }
        };
        if matches!(self.phase, Phase::Transaction(_)) {
            self.transaction_command(command)
        } else {
            self.authorization_command(command)
        }
    }

    fn authorization_command(&mut self, command: Command) -> Step<C> {
        // RFC 1939 7: PASS completes the USER right before it.
        let user = self.pending_user.take();
        match command {
            Command::User(_) | Command::Pass(_) | Command::Auth { .. } if !self.auth_allowed() => {
                self.err(
                    Some(RespCode::Auth),
                    "plaintext authentication disallowed, use STLS first",
                );
            }
            Command::User(name) => {
                self.pending_user = Some(name);
                self.ok("send PASS");
            }
            Command::Pass(password) => match user {
                Some(user) => self.login(&user, &password, None),
                None => self.err(None, "send USER first"),
            },
            Command::Auth {
                mechanism: None, ..
            } => {
                self.ok("SASL mechanisms follow");
                write_lines(&mut self.output, ["PLAIN"]);
            }
            Command::Auth {
                mechanism: Some(mechanism),
                initial_response,
            } => {
                if mechanism != "PLAIN" {
                    self.err(None, "unsupported SASL mechanism");
                } else if let Some(response) = initial_response {
                    // RFC 5034 4: "=" is an empty initial response.
                    let response = if response == "=" { "" } else { &response };
                    self.plain_response(response.as_bytes());
                } else {
                    write_continuation(&mut self.output);
                    self.phase = Phase::SaslResponse;
                }
            }
            Command::Capa => self.capa(),
            Command::Stls => return self.stls(),
            Command::Quit => {
                let text = format!("{} POP3 tern signing off", self.config.hostname);
                self.ok(&text);
                self.phase = Phase::Closing;
            }
            Command::Stat
            | Command::List(_)
            | Command::Uidl(_)
            | Command::Retr(_)
            | Command::Top(..)
            | Command::Dele(_)
            | Command::Rset
            | Command::Noop => {
                let text = format!(
                    "{} not valid in the AUTHORIZATION state",
                    command.verb().to_ascii_uppercase()
                );
                self.err(None, &text);
            }
        }
        Step::Continue
    }

    fn stls(&mut self) -> Step<C> {
        if self.tls_active {
            self.err(None, "TLS already active");
            return Step::Continue;
        }
        if !self.config.stls_available {
            self.err(None, "STLS not available");
            return Step::Continue;
        }
        self.ok("Begin TLS negotiation");
        // RFC 2595 4 and the CVE-2011-0411 class: bytes pipelined after
        // STLS arrived in plaintext and must never be executed.
        self.input.clear();
        self.input_pos = 0;
        self.phase = Phase::AwaitingTls;
        Step::Event(Pop3Event::StartTls)
    }

    fn capa(&mut self) {
        self.ok("Capability list follows");
        write_lines(
            &mut self.output,
            capabilities(&self.config, self.tls_active, true),
        );
    }

    /// The line answering AUTH PLAIN's `+ ` continuation.
    fn sasl_response(&mut self, response: &[u8]) {
        self.phase = Phase::Authorization;
        if response == b"*" {
            // RFC 5034 4: a cancelled exchange is rejected with -ERR.
            self.err(None, "AUTH cancelled");
            return;
        }
        self.plain_response(response);
    }

    /// A base64 PLAIN response (initial or continuation).
    fn plain_response(&mut self, response: &[u8]) {
        let Ok(decoded) = decode_response(response) else {
            self.err(None, "invalid base64 in AUTH response");
            return;
        };
        match parse_plain(&decoded) {
            Ok(credentials) => self.login(
                &credentials.authcid,
                &credentials.password,
                Some(&credentials.authzid),
            ),
            Err(error) => self.err(None, &error.to_string()),
        }
    }

    /// Ask the runtime to check the credentials (an Authenticate event);
    /// `auth_done` goes on. `authzid` is PLAIN's authorization identity.
    fn login(&mut self, login: &str, password: &str, authzid: Option<&str>) {
        self.auth_request = Some((login.to_owned(), password.to_owned()));
        self.phase = Phase::AwaitingAuth {
            login: login.to_owned(),
            authzid: authzid.map(str::to_owned),
        };
    }

    /// The outcome of the last [`Pop3Event::Authenticate`]: the user's
    /// canonical name, or None for an unknown login or a wrong password.
    /// Then the maildrop is opened. The authorization identity may only be
    /// empty, the login or the user it names (RFC 4616 2).
    pub fn auth_done(&mut self, user: Option<String>) {
        let Phase::AwaitingAuth { login, authzid } =
            std::mem::replace(&mut self.phase, Phase::Authorization)
        else {
            return;
        };
        self.auth_request = None;
        let Some(user) = user else {
            self.login_failed("invalid user name or password");
            return;
        };
        if !authzid_permitted(authzid.as_deref().unwrap_or_default(), &login, &user) {
            self.login_failed("not authorized to act as that identity");
            return;
        }
        metrics::counter!("tern_pop3_logins_total", "result" => "ok").increment(1);
        match self.backend.open_maildrop(&user) {
            Ok(maildrop) => {
                let open = OpenDrop::new(maildrop);
                let (count, octets) = open.summary();
                self.phase = Phase::Transaction(open);
                self.ok(&format!(
                    "maildrop locked and ready, {count} messages ({octets} octets)"
                ));
            }
            Err(MaildropError::InUse) => self.err(
                Some(RespCode::InUse),
                "maildrop already locked by another session",
            ),
            Err(MaildropError::Unavailable(error)) => {
                tracing::warn!(%error, %user, "pop3: maildrop unavailable");
                self.err(
                    Some(RespCode::SysTemp),
                    "maildrop unavailable, try again later",
                );
            }
        }
    }

    fn login_failed(&mut self, text: &str) {
        metrics::counter!("tern_pop3_logins_total", "result" => "failed").increment(1);
        self.login_failures += 1;
        if self.login_failures >= LOGIN_FAILURES_MAX {
            self.err(
                Some(RespCode::Auth),
                &format!("{text}; too many failures, closing"),
            );
            self.phase = Phase::Closing;
        } else {
            self.err(Some(RespCode::Auth), text);
        }
    }

    fn transaction_command(&mut self, command: Command) -> Step<C> {
        let Phase::Transaction(open) = &mut self.phase else {
            return Step::Continue;
        };
        let out = &mut self.output;
        match command {
            Command::Stat => {
                let (count, octets) = open.summary();
                write_ok(out, &format!("{count} {octets}"));
            }
            Command::List(None) => {
                let (count, octets) = open.summary();
                let lines: Vec<String> = open
                    .visible()
                    .map(|(number, message)| format!("{number} {}", message.size))
                    .collect();
                write_ok(out, &format!("{count} messages ({octets} octets)"));
                write_lines(out, lines.iter().map(String::as_str));
            }
            Command::Uidl(None) => {
                let lines: Vec<String> = open
                    .visible()
                    .map(|(number, message)| format!("{number} {}", message.uidl))
                    .collect();
                write_ok(out, "unique-id listing follows");
                write_lines(out, lines.iter().map(String::as_str));
            }
            Command::List(Some(number)) => match open.index(number) {
                Ok(index) => {
                    let size = open.maildrop.messages().get(index).map_or(0, |m| m.size);
                    write_ok(out, &format!("{number} {size}"));
                }
                Err(text) => write_err(out, None, &text),
            },
            Command::Uidl(Some(number)) => match open.index(number) {
                Ok(index) => {
                    let uidl = open
                        .maildrop
                        .messages()
                        .get(index)
                        .map_or("", |m| m.uidl.as_str());
                    write_ok(out, &format!("{number} {uidl}"));
                }
                Err(text) => write_err(out, None, &text),
            },
            Command::Retr(number) => match open.index(number) {
                Ok(index) => match open.maildrop.content(index) {
                    Some(content) => {
                        write_ok(out, &format!("{} octets", content.len()));
                        write_dot_stuffed(out, &content);
                    }
                    None => unreadable(out, number),
                },
                Err(text) => write_err(out, None, &text),
            },
            Command::Top(number, body_lines) => match open.index(number) {
                Ok(index) => match open.maildrop.content(index) {
                    Some(content) => {
                        write_ok(out, "top of message follows");
                        write_dot_stuffed(out, top_part(&content, body_lines));
                    }
                    None => unreadable(out, number),
                },
                Err(text) => write_err(out, None, &text),
            },
            Command::Dele(number) => match open.index(number) {
                Ok(index) => {
                    if let Some(mark) = open.deleted.get_mut(index) {
                        *mark = true;
                    }
                    write_ok(out, &format!("message {number} deleted"));
                }
                Err(text) => write_err(out, None, &text),
            },
            Command::Rset => {
                open.deleted.iter_mut().for_each(|mark| *mark = false);
                let (count, octets) = open.summary();
                write_ok(
                    out,
                    &format!("maildrop has {count} messages ({octets} octets)"),
                );
            }
            Command::Noop => write_ok(out, ""),
            Command::Capa => {
                write_ok(out, "Capability list follows");
                write_lines(out, capabilities(&self.config, self.tls_active, false));
            }
            Command::Quit => return self.update(),
            Command::User(_) | Command::Pass(_) | Command::Auth { .. } | Command::Stls => {
                let text = format!(
                    "{} not valid in the TRANSACTION state",
                    command.verb().to_ascii_uppercase()
                );
                write_err(out, None, &text);
            }
        }
        Step::Continue
    }

    /// QUIT in the TRANSACTION state: the UPDATE state (RFC 1939 6).
    fn update(&mut self) -> Step<C> {
        let Phase::Transaction(mut open) = std::mem::replace(&mut self.phase, Phase::Closing)
        else {
            return Step::Continue;
        };
        let indexes: Vec<usize> = open
            .deleted
            .iter()
            .enumerate()
            .filter(|(_, &deleted)| deleted)
            .map(|(index, _)| index)
            .collect();
        if indexes.is_empty() {
            let text = format!("{} POP3 tern signing off", self.config.hostname);
            self.ok(&text);
            // Phase is Closing: `open` drops here and releases the lock.
            return Step::Continue;
        }
        let commit = open.maildrop.delete(&indexes);
        self.phase = Phase::AwaitingCommit {
            _open: open,
            deleted: indexes.len(),
        };
        Step::Event(Pop3Event::Commit(commit))
    }
}

/// The CAPA list (RFC 2449 5). It names what is usable now: the login
/// capabilities only in the AUTHORIZATION state, and not before TLS when
/// plaintext logins are refused; STLS only before TLS.
fn capabilities(config: &Pop3Config, tls_active: bool, authorization: bool) -> Vec<&'static str> {
    let mut lines = vec!["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"];
    if authorization && (tls_active || config.allow_plaintext_auth) {
        lines.extend(["USER", "SASL PLAIN"]);
    }
    if authorization && config.stls_available && !tls_active {
        lines.push("STLS");
    }
    lines.push("IMPLEMENTATION tern");
    lines
}

fn unreadable(out: &mut Vec<u8>, number: u64) {
    write_err(
        out,
        Some(RespCode::SysTemp),
        &format!("message {number} cannot be read now"),
    );
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashSet;

    use super::*;
    use crate::pop3::DropMessage;

    const ONE: &[u8] = b"Subject: one\r\n\r\nhello\r\n.dot line\r\n";
    const TWO: &[u8] = b"Subject: two\r\nX: y\r\n\r\nl1\r\nl2\r\nl3\r\n";

    /// Users alice (also alice@example.org) and broken (whose maildrop
    /// cannot be opened), password "secret"; every maildrop holds ONE, TWO
    /// and a third message whose bytes cannot be read.
    #[derive(Default)]
    struct FakeBackend {
        locks: Rc<RefCell<HashSet<String>>>,
    }

    impl FakeBackend {
        fn authenticate(&self, login: &str, password: &str) -> Option<String> {
            let user = match login {
                "alice" | "alice@example.org" => "alice",
                "broken" => "broken",
                _ => return None,
            };
            (password == "secret").then(|| user.to_owned())
        }
    }

    impl Pop3Backend for FakeBackend {
        type Commit = Vec<usize>;

        fn open_maildrop(
            &self,
            user: &str,
        ) -> Result<Box<dyn Maildrop<Commit = Vec<usize>>>, MaildropError> {
            if user == "broken" {
                return Err(MaildropError::Unavailable("disk on fire".into()));
            }
            if !self.locks.borrow_mut().insert(user.to_owned()) {
                return Err(MaildropError::InUse);
            }
            let size = |content: &[u8]| content.len() as u64;
            Ok(Box::new(FakeDrop {
                user: user.to_owned(),
                locks: Rc::clone(&self.locks),
                messages: vec![
                    DropMessage {
                        uidl: "u1".into(),
                        size: size(ONE),
                    },
                    DropMessage {
                        uidl: "u2".into(),
                        size: size(TWO),
                    },
                    DropMessage {
                        uidl: "u3".into(),
                        size: 10,
                    },
                ],
            }))
        }
    }

    struct FakeDrop {
        user: String,
        locks: Rc<RefCell<HashSet<String>>>,
        messages: Vec<DropMessage>,
    }

    impl Maildrop for FakeDrop {
        type Commit = Vec<usize>;

        fn messages(&self) -> &[DropMessage] {
            &self.messages
        }

        fn content(&self, index: usize) -> Option<Vec<u8>> {
            [ONE, TWO].get(index).map(|c| c.to_vec())
        }

        fn delete(&mut self, indexes: &[usize]) -> Vec<usize> {
            indexes.to_vec()
        }
    }

    impl Drop for FakeDrop {
        fn drop(&mut self) {
            self.locks.borrow_mut().remove(&self.user);
        }
    }

    fn config(stls_available: bool, allow_plaintext_auth: bool) -> Pop3Config {
        Pop3Config {
            hostname: "pop.example".into(),
            stls_available,
            allow_plaintext_auth,
            autologout: AUTOLOGOUT_MIN,
            limits: SessionLimits {
                hard_error_limit: 20,
                data_min_rate: 500,
            },
        }
    }

    /// A session driven as a runtime would: every event answered at once.
    struct Harness {
        backend: Rc<FakeBackend>,
        session: Pop3Session<Vec<usize>>,
        commits: Vec<Vec<usize>>,
        commit_result: Result<(), String>,
        tls_starts: usize,
        closed: bool,
    }

    impl Harness {
        fn new() -> Self {
            Self::with(config(true, true), false, Rc::default())
        }

        fn with(config: Pop3Config, tls_active: bool, backend: Rc<FakeBackend>) -> Self {
            let dyn_backend: Rc<dyn Pop3Backend<Commit = Vec<usize>>> = backend.clone();
            let mut harness = Self {
                session: Pop3Session::new(Arc::new(config), dyn_backend, tls_active),
                backend,
                commits: Vec::new(),
                commit_result: Ok(()),
                tls_starts: 0,
                closed: false,
            };
            let greeting = harness.take_output();
            assert_eq!(greeting, "+OK pop.example POP3 tern ready\r\n");
            harness
        }

        fn take_output(&mut self) -> String {
            let written = self.session.output().len();
            let out = String::from_utf8_lossy(self.session.output()).into_owned();
            self.session.consume_output(written);
            out
        }

        /// Feed `input` in one read, run until the session needs input or
        /// closes, and return what it wrote.
        fn send(&mut self, input: &[u8]) -> String {
            self.session.receive(input);
            self.run()
        }

        fn run(&mut self) -> String {
            loop {
                match self.session.poll() {
                    Pop3Event::NeedInput => break,
                    Pop3Event::Close => {
                        self.closed = true;
                        break;
                    }
                    Pop3Event::StartTls => {
                        self.tls_starts += 1;
                        self.session.tls_started();
                    }
                    Pop3Event::Commit(indexes) => {
                        self.commits.push(indexes);
                        self.session.commit_done(self.commit_result.clone());
                    }
                    Pop3Event::Authenticate { login, password } => {
                        let user = self.backend.authenticate(&login, &password);
                        self.session.auth_done(user);
                    }
                }
            }
            self.take_output()
        }

        fn line(&mut self, line: &str) -> String {
            self.send(format!("{line}\r\n").as_bytes())
        }

        fn login(&mut self) {
            assert_eq!(self.line("USER alice"), "+OK send PASS\r\n");
            assert_eq!(
                self.line("PASS secret"),
                "+OK maildrop locked and ready, 3 messages (78 octets)\r\n"
            );
        }

        fn locked(&self) -> bool {
            self.backend.locks.borrow().contains("alice")
        }
    }

    fn plain(authzid: &str, authcid: &str, password: &str) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let raw = format!("{authzid}\0{authcid}\0{password}");
        let mut out = String::new();
        for chunk in raw.as_bytes().chunks(3) {
            let mut quad = [0u8; 3];
            quad[..chunk.len()].copy_from_slice(chunk);
            let n = u32::from_be_bytes([0, quad[0], quad[1], quad[2]]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn user_pass_login_then_stat_list_uidl() {
        let mut h = Harness::new();
        h.login();
        assert!(h.locked());
        assert_eq!(h.line("STAT"), "+OK 3 78\r\n");
        assert_eq!(
            h.line("LIST"),
            "+OK 3 messages (78 octets)\r\n1 34\r\n2 34\r\n3 10\r\n.\r\n"
        );
        assert_eq!(h.line("LIST 2"), "+OK 2 34\r\n");
        assert_eq!(
            h.line("UIDL"),
            "+OK unique-id listing follows\r\n1 u1\r\n2 u2\r\n3 u3\r\n.\r\n"
        );
        assert_eq!(h.line("UIDL 3"), "+OK 3 u3\r\n");
        assert_eq!(h.line("NOOP"), "+OK\r\n");
    }

    #[test]
    fn message_numbers_out_of_range() {
        let mut h = Harness::new();
        h.login();
        for command in [
            "LIST 0",
            "LIST 4",
            "UIDL 9",
            "RETR 0",
            "TOP 4 1",
            "DELE 18446744073709551615",
        ] {
            assert_eq!(h.line(command), "-ERR no such message\r\n", "{command}");
        }
        assert_eq!(
            h.line("RETR x"),
            "-ERR syntax: expected a decimal number\r\n"
        );
        assert_eq!(h.line("RETR"), "-ERR RETR requires an argument\r\n");
    }

    #[test]
    fn login_by_address_and_case_insensitive_verbs() {
        let mut h = Harness::new();
        assert_eq!(h.line("user alice@example.org"), "+OK send PASS\r\n");
        assert!(h.line("pass secret").starts_with("+OK maildrop locked"));
        assert!(h.locked());
    }

    #[test]
    fn wrong_password_gets_auth_code_and_three_failures_close() {
        let mut h = Harness::new();
        h.line("USER alice");
        assert_eq!(
            h.line("PASS wrong"),
            "-ERR [AUTH] invalid user name or password\r\n"
        );
        h.line("USER nobody");
        assert_eq!(
            h.line("PASS secret"),
            "-ERR [AUTH] invalid user name or password\r\n"
        );
        assert!(!h.closed);
        h.line("USER alice");
        assert_eq!(
            h.line("PASS nope"),
            "-ERR [AUTH] invalid user name or password; too many failures, closing\r\n"
        );
        assert!(h.closed);
        assert_eq!(h.line("USER alice"), "");
    }

    #[test]
    fn pass_needs_the_user_command_right_before_it() {
        let mut h = Harness::new();
        assert_eq!(h.line("PASS secret"), "-ERR send USER first\r\n");
        h.line("USER alice");
        h.line("NOOP");
        assert_eq!(h.line("PASS secret"), "-ERR send USER first\r\n");
        h.line("USER alice");
        h.line("BOGUS");
        assert_eq!(h.line("PASS secret"), "-ERR send USER first\r\n");
        assert!(!h.locked());
    }

    #[test]
    fn commands_outside_their_state() {
        let mut h = Harness::new();
        for verb in [
            "STAT", "LIST", "UIDL", "RETR 1", "TOP 1 1", "DELE 1", "RSET", "NOOP",
        ] {
            let reply = h.line(verb);
            assert!(
                reply.starts_with("-ERR ")
                    && reply.ends_with("not valid in the AUTHORIZATION state\r\n"),
                "{verb}: {reply}"
            );
        }
        h.login();
        assert_eq!(
            h.line("USER alice"),
            "-ERR USER not valid in the TRANSACTION state\r\n"
        );
        assert_eq!(
            h.line("PASS secret"),
            "-ERR PASS not valid in the TRANSACTION state\r\n"
        );
        assert_eq!(
            h.line("AUTH PLAIN"),
            "-ERR AUTH not valid in the TRANSACTION state\r\n"
        );
        assert_eq!(
            h.line("STLS"),
            "-ERR STLS not valid in the TRANSACTION state\r\n"
        );
        assert_eq!(h.tls_starts, 0);
    }

    #[test]
    fn unknown_commands_and_bad_bytes() {
        let mut h = Harness::new();
        assert_eq!(h.line("APOP alice 0123"), "-ERR unknown command\r\n");
        assert_eq!(h.line(""), "-ERR unknown command\r\n");
        assert_eq!(
            h.send(b"NOOP\xff\r\n"),
            "-ERR control character or invalid UTF-8 in command\r\n"
        );
        assert_eq!(h.line("QUIT now"), "-ERR QUIT takes no argument\r\n");
        assert!(!h.closed);
    }

    #[test]
    fn retr_dot_stuffs_and_reports_unreadable_messages() {
        let mut h = Harness::new();
        h.login();
        assert_eq!(
            h.line("RETR 1"),
            "+OK 34 octets\r\nSubject: one\r\n\r\nhello\r\n..dot line\r\n.\r\n"
        );
        assert_eq!(
            h.line("RETR 3"),
            "-ERR [SYS/TEMP] message 3 cannot be read now\r\n"
        );
        assert_eq!(
            h.line("TOP 3 0"),
            "-ERR [SYS/TEMP] message 3 cannot be read now\r\n"
        );
    }

    #[test]
    fn top_serves_header_blank_line_and_body_lines() {
        let mut h = Harness::new();
        h.login();
        let head = "+OK top of message follows\r\nSubject: two\r\nX: y\r\n\r\n";
        assert_eq!(h.line("TOP 2 0"), format!("{head}.\r\n"));
        assert_eq!(h.line("TOP 2 2"), format!("{head}l1\r\nl2\r\n.\r\n"));
        assert_eq!(h.line("TOP 2 3"), format!("{head}l1\r\nl2\r\nl3\r\n.\r\n"));
        assert_eq!(
            h.line("TOP 2 99999999999999999999999"),
            format!("{head}l1\r\nl2\r\nl3\r\n.\r\n")
        );
        assert_eq!(
            h.line("TOP 1 1"),
            "+OK top of message follows\r\nSubject: one\r\n\r\nhello\r\n.\r\n"
        );
        assert_eq!(
            h.line("TOP 1 5"),
            "+OK top of message follows\r\nSubject: one\r\n\r\nhello\r\n..dot line\r\n.\r\n"
        );
        assert_eq!(h.line("TOP 1"), "-ERR syntax: TOP msg n\r\n");
        h.line("DELE 1");
        assert_eq!(h.line("TOP 1 0"), "-ERR message 1 already deleted\r\n");
    }

    #[test]
    fn deleted_messages_are_invisible_until_rset() {
        let mut h = Harness::new();
        h.login();
        assert_eq!(h.line("DELE 1"), "+OK message 1 deleted\r\n");
        assert_eq!(h.line("DELE 1"), "-ERR message 1 already deleted\r\n");
        assert_eq!(h.line("STAT"), "+OK 2 44\r\n");
        assert_eq!(
            h.line("LIST"),
            "+OK 2 messages (44 octets)\r\n2 34\r\n3 10\r\n.\r\n"
        );
        assert_eq!(
            h.line("UIDL"),
            "+OK unique-id listing follows\r\n2 u2\r\n3 u3\r\n.\r\n"
        );
        for command in ["LIST 1", "UIDL 1", "RETR 1"] {
            assert_eq!(h.line(command), "-ERR message 1 already deleted\r\n");
        }
        assert_eq!(
            h.line("RSET"),
            "+OK maildrop has 3 messages (78 octets)\r\n"
        );
        assert_eq!(h.line("STAT"), "+OK 3 78\r\n");
        assert!(h.line("RETR 1").starts_with("+OK 34 octets\r\n"));
    }

    #[test]
    fn quit_commits_the_deletions_then_signs_off_and_unlocks() {
        let mut h = Harness::new();
        h.login();
        h.line("DELE 3");
        h.line("DELE 1");
        assert_eq!(
            h.line("QUIT"),
            "+OK pop.example POP3 tern signing off (2 messages deleted)\r\n"
        );
        assert_eq!(h.commits, vec![vec![0, 2]]);
        assert!(h.closed);
        assert!(!h.locked());
    }

    #[test]
    fn session_waits_for_the_commit_and_ignores_input_meanwhile() {
        let mut h = Harness::new();
        h.login();
        h.session.receive(b"DELE 2\r\nQUIT\r\nNOOP\r\n");
        assert!(matches!(h.session.poll(), Pop3Event::Commit(ref i) if i == &[1]));
        assert_eq!(h.take_output(), "+OK message 2 deleted\r\n");
        h.session.receive(b"NOOP\r\n");
        assert!(matches!(h.session.poll(), Pop3Event::NeedInput));
        assert_eq!(h.take_output(), "");
        h.session.timed_out();
        assert!(!h.session.shutting_down());
        assert!(h.locked(), "the lock is held until the commit is done");
        h.session.commit_done(Ok(()));
        assert!(!h.locked());
        assert!(matches!(h.session.poll(), Pop3Event::Close));
        assert_eq!(
            h.take_output(),
            "+OK pop.example POP3 tern signing off (1 messages deleted)\r\n"
        );
    }

    #[test]
    fn failed_commit_answers_sys_temp() {
        let mut h = Harness::new();
        h.commit_result = Err("journal fsync failed".into());
        h.login();
        h.line("DELE 2");
        assert_eq!(
            h.line("QUIT"),
            "-ERR [SYS/TEMP] some deleted messages not removed\r\n"
        );
        assert_eq!(h.commits, vec![vec![1]]);
        assert!(h.closed);
        assert!(!h.locked());
    }

    #[test]
    fn quit_without_deletions_or_after_rset_commits_nothing() {
        let mut h = Harness::new();
        h.login();
        assert_eq!(h.line("QUIT"), "+OK pop.example POP3 tern signing off\r\n");
        assert!(h.closed && h.commits.is_empty() && !h.locked());

        let mut h = Harness::new();
        h.login();
        h.line("DELE 1");
        h.line("RSET");
        assert_eq!(h.line("QUIT"), "+OK pop.example POP3 tern signing off\r\n");
        assert!(h.closed && h.commits.is_empty() && !h.locked());
    }

    #[test]
    fn quit_before_login_just_signs_off() {
        let mut h = Harness::new();
        assert_eq!(h.line("QUIT"), "+OK pop.example POP3 tern signing off\r\n");
        assert!(h.closed);
        assert_eq!(h.line("NOOP"), "");
    }

    #[test]
    fn session_ending_without_quit_deletes_nothing_and_unlocks() {
        let mut h = Harness::new();
        h.login();
        h.line("DELE 1");
        h.line("DELE 2");
        let backend = Rc::clone(&h.backend);
        drop(h);
        assert!(backend.locks.borrow().is_empty());

        let mut h = Harness::new();
        h.login();
        h.line("DELE 1");
        h.session.timed_out();
        assert!(!h.locked());
        assert_eq!(h.run(), "-ERR autologout timer expired\r\n");
        assert!(h.closed && h.commits.is_empty());
    }

    #[test]
    fn second_session_on_a_locked_maildrop_gets_in_use() {
        let backend: Rc<FakeBackend> = Rc::default();
        let mut first = Harness::with(config(false, true), false, Rc::clone(&backend));
        first.login();
        let mut second = Harness::with(config(false, true), false, Rc::clone(&backend));
        second.line("USER alice");
        assert_eq!(
            second.line("PASS secret"),
            "-ERR [IN-USE] maildrop already locked by another session\r\n"
        );
        assert!(!second.closed);
        assert_eq!(
            second.line("STAT"),
            "-ERR STAT not valid in the AUTHORIZATION state\r\n"
        );
        first.line("QUIT");
        second.line("USER alice");
        assert!(second
            .line("PASS secret")
            .starts_with("+OK maildrop locked"));
    }

    #[test]
    fn unavailable_maildrop_gets_sys_temp() {
        let mut h = Harness::new();
        h.line("USER broken");
        assert_eq!(
            h.line("PASS secret"),
            "-ERR [SYS/TEMP] maildrop unavailable, try again later\r\n"
        );
        assert_eq!(
            h.line("NOOP"),
            "-ERR NOOP not valid in the AUTHORIZATION state\r\n"
        );
    }

    #[test]
    fn auth_plain_with_initial_response() {
        let mut h = Harness::new();
        let reply = h.line(&format!("AUTH PLAIN {}", plain("", "alice", "secret")));
        assert!(reply.starts_with("+OK maildrop locked"), "{reply}");
        assert!(h.locked());
    }

    #[test]
    fn auth_plain_with_continuation() {
        let mut h = Harness::new();
        assert_eq!(h.line("auth plain"), "+ \r\n");
        let reply = h.line(&plain("alice", "alice@example.org", "secret"));
        assert!(reply.starts_with("+OK maildrop locked"), "{reply}");
    }

    #[test]
    fn auth_plain_authzid_must_be_the_login_or_its_user() {
        let mut h = Harness::new();
        let reply = h.line(&format!("AUTH PLAIN {}", plain("bob", "alice", "secret")));
        assert_eq!(
            reply,
            "-ERR [AUTH] not authorized to act as that identity\r\n"
        );
        assert!(!h.locked());
        let reply = h.line(&format!("AUTH PLAIN {}", plain("alice", "alice", "secret")));
        assert!(reply.starts_with("+OK"), "{reply}");
    }

    #[test]
    fn auth_plain_refusals() {
        let mut h = Harness::new();
        assert_eq!(h.line("AUTH PLAIN"), "+ \r\n");
        assert_eq!(h.line("*"), "-ERR AUTH cancelled\r\n");
        assert_eq!(h.line("AUTH PLAIN"), "+ \r\n");
        assert_eq!(
            h.line("not base64!"),
            "-ERR invalid base64 in AUTH response\r\n"
        );
        assert_eq!(h.line("AUTH PLAIN"), "+ \r\n");
        assert_eq!(
            h.send(b"\xff\xfe\r\n"),
            "-ERR invalid base64 in AUTH response\r\n"
        );
        assert_eq!(
            h.line("AUTH PLAIN Zm9v"),
            "-ERR malformed PLAIN message\r\n"
        );
        assert_eq!(h.line("AUTH PLAIN ="), "-ERR malformed PLAIN message\r\n");
        assert_eq!(h.line("AUTH PLAIN"), "+ \r\n");
        assert_eq!(h.line(""), "-ERR malformed PLAIN message\r\n");
        assert_eq!(
            h.line("AUTH CRAM-MD5"),
            "-ERR unsupported SASL mechanism\r\n"
        );
        assert_eq!(
            h.line(&format!("AUTH PLAIN {}", plain("", "alice", "wrong"))),
            "-ERR [AUTH] invalid user name or password\r\n"
        );
        assert!(!h.closed);
        // The exchange is over: the next line is a command again.
        assert_eq!(
            h.line("NOOP"),
            "-ERR NOOP not valid in the AUTHORIZATION state\r\n"
        );
    }

    #[test]
    fn bare_auth_lists_mechanisms() {
        let mut h = Harness::new();
        assert_eq!(
            h.line("AUTH"),
            "+OK SASL mechanisms follow\r\nPLAIN\r\n.\r\n"
        );
    }

    #[test]
    fn capa_follows_state_tls_and_policy() {
        let base = "TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n";
        let head = "+OK Capability list follows\r\n";
        let tail = "IMPLEMENTATION tern\r\n.\r\n";
        let mut h = Harness::new();
        assert_eq!(
            h.line("CAPA"),
            format!("{head}{base}USER\r\nSASL PLAIN\r\nSTLS\r\n{tail}")
        );
        h.login();
        assert_eq!(h.line("CAPA"), format!("{head}{base}{tail}"));

        let mut h = Harness::with(config(true, false), false, Rc::default());
        assert_eq!(h.line("CAPA"), format!("{head}{base}STLS\r\n{tail}"));
        h.line("STLS");
        assert_eq!(
            h.line("CAPA"),
            format!("{head}{base}USER\r\nSASL PLAIN\r\n{tail}")
        );

        let mut h = Harness::with(config(false, true), false, Rc::default());
        assert_eq!(
            h.line("CAPA"),
            format!("{head}{base}USER\r\nSASL PLAIN\r\n{tail}")
        );
    }

    #[test]
    fn plaintext_logins_refused_before_tls_when_configured() {
        let mut h = Harness::with(config(true, false), false, Rc::default());
        let refusal = "-ERR [AUTH] plaintext authentication disallowed, use STLS first\r\n";
        assert_eq!(h.line("USER alice"), refusal);
        assert_eq!(h.line("PASS secret"), refusal);
        assert_eq!(h.line("AUTH PLAIN"), refusal);
        assert_eq!(
            h.line(&format!("AUTH PLAIN {}", plain("", "alice", "secret"))),
            refusal
        );
        assert!(!h.locked() && !h.closed);
        assert_eq!(h.line("STLS"), "+OK Begin TLS negotiation\r\n");
        assert_eq!(h.tls_starts, 1);
        h.login();

        let mut h = Harness::with(config(false, false), true, Rc::default());
        h.login();
    }

    #[test]
    fn stls_discards_pipelined_plaintext() {
        let mut h = Harness::new();
        h.session
            .receive(b"USER alice\r\nSTLS\r\nPASS secret\r\nSTAT\r\n");
        assert!(matches!(h.session.poll(), Pop3Event::StartTls));
        assert_eq!(
            h.take_output(),
            "+OK send PASS\r\n+OK Begin TLS negotiation\r\n"
        );
        h.session.receive(b"PASS secret\r\n");
        h.session.tls_started();
        assert!(matches!(h.session.poll(), Pop3Event::NeedInput));
        assert_eq!(h.take_output(), "");
        // USER given before STLS does not survive it.
        assert_eq!(h.line("PASS secret"), "-ERR send USER first\r\n");
    }

    #[test]
    fn stls_refusals() {
        let mut h = Harness::with(config(false, true), false, Rc::default());
        assert_eq!(h.line("STLS"), "-ERR STLS not available\r\n");
        let mut h = Harness::with(config(true, true), true, Rc::default());
        assert_eq!(h.line("STLS"), "-ERR TLS already active\r\n");
        assert_eq!(h.line("STLS x"), "-ERR STLS takes no argument\r\n");
        assert_eq!(h.tls_starts, 0);
        h.session.tls_started();
        assert_eq!(h.line("STLS"), "-ERR TLS already active\r\n");
    }

    #[test]
    fn pipelined_commands_are_answered_in_order_in_one_batch() {
        let mut h = Harness::new();
        h.session.receive(
            b"CAPA\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nDELE 1\r\nLIST 1\r\nUIDL 2\r\nQUIT\r\n",
        );
        // The password check is the one pause: the rest follows at once.
        assert!(matches!(
            h.session.poll(),
            Pop3Event::Authenticate { ref login, .. } if login == "alice"
        ));
        h.session.auth_done(Some("alice".into()));
        assert!(matches!(h.session.poll(), Pop3Event::Commit(_)));
        let batch = h.take_output();
        let statuses: Vec<&str> = batch
            .split("\r\n")
            .filter(|l| l.starts_with('+') || l.starts_with('-'))
            .collect();
        assert_eq!(
            statuses,
            [
                "+OK Capability list follows",
                "+OK send PASS",
                "+OK maildrop locked and ready, 3 messages (78 octets)",
                "+OK 3 78",
                "+OK message 1 deleted",
                "-ERR message 1 already deleted",
                "+OK 2 u2",
            ]
        );
        h.session.commit_done(Ok(()));
        assert!(matches!(h.session.poll(), Pop3Event::Close));
    }

    #[test]
    fn command_line_limit_is_255_octets_with_crlf() {
        let mut h = Harness::new();
        let longest = format!("USER {}", "a".repeat(COMMAND_LINE_MAX - 7));
        assert_eq!(h.line(&longest), "+OK send PASS\r\n");
        let too_long = format!("USER {}", "a".repeat(COMMAND_LINE_MAX - 6));
        assert_eq!(h.line(&too_long), "-ERR command line too long\r\n");
        assert_eq!(h.line("PASS secret"), "-ERR send USER first\r\n");
    }

    #[test]
    fn long_line_without_lf_is_answered_once_and_not_kept() {
        let mut h = Harness::new();
        assert_eq!(h.send(&[b'x'; 300]), "-ERR command line too long\r\n");
        assert_eq!(h.send(&[b'y'; 5000]), "");
        assert!(h.session.input.len() <= 5000);
        assert_eq!(
            h.send(b"still the same line\r\nNOOP\r\n"),
            "-ERR NOOP not valid in the AUTHORIZATION state\r\n"
        );
    }

    #[test]
    fn sasl_responses_may_exceed_the_command_limit_up_to_their_own() {
        let mut h = Harness::new();
        let long_password = "p".repeat(255);
        h.line("AUTH PLAIN");
        let response = plain("", "alice", &long_password);
        assert!(response.len() > COMMAND_LINE_MAX);
        assert_eq!(
            h.line(&response),
            "-ERR [AUTH] invalid user name or password\r\n"
        );
        h.line("AUTH PLAIN");
        assert_eq!(
            h.line(&"A".repeat(SASL_RESPONSE_MAX)),
            "-ERR AUTH response too long\r\n"
        );
        assert_eq!(
            h.line("NOOP"),
            "-ERR NOOP not valid in the AUTHORIZATION state\r\n"
        );
        h.line("AUTH PLAIN");
        assert_eq!(h.send(&[b'A'; 2000]), "-ERR AUTH response too long\r\n");
        assert_eq!(
            h.send(b"AAAA\r\nQUIT\r\n"),
            "+OK pop.example POP3 tern signing off\r\n"
        );
    }

    #[test]
    fn read_timeout_and_deadline_are_the_autologout_timer() {
        let h = Harness::new();
        assert_eq!(h.session.read_timeout(), AUTOLOGOUT_MIN);
        let mut long = config(true, true);
        long.autologout = Duration::from_secs(3600);
        let mut h = Harness::with(long, false, Rc::default());
        assert_eq!(h.session.read_timeout(), Duration::from_secs(3600));
        let start = h.session.deadline();
        assert_eq!(start.within, Duration::from_secs(3600));
        // Part of a line is no progress; a whole line restarts the clock.
        h.send(b"CA");
        assert_eq!(h.session.deadline(), start);
        h.send(b"PA\r\n");
        assert_ne!(h.session.deadline().unit, start.unit);
    }

    #[test]
    fn bad_commands_in_a_row_reach_the_hard_error_limit() {
        let mut limited = config(true, true);
        limited.limits.hard_error_limit = 3;
        let mut h = Harness::with(limited, false, Rc::default());
        // A good command in between starts the count again.
        assert!(h
            .send(b"BOGUS\r\nBOGUS\r\nCAPA\r\nBOGUS\r\n")
            .ends_with("-ERR unknown command\r\n"));
        let out = h.send(&[b'x'; 600]);
        assert_eq!(out, "-ERR command line too long\r\n");
        let out = h.send(b"\r\nNOOP\r\nUSER alice\r\n");
        assert_eq!(
            out,
            "-ERR NOOP not valid in the AUTHORIZATION state\r\n-ERR too many bad commands, closing\r\n"
        );
        assert!(h.closed);
    }

    #[test]
    fn timeout_before_login_closes_once() {
        let mut h = Harness::new();
        h.session.timed_out();
        h.session.timed_out();
        assert_eq!(h.run(), "-ERR autologout timer expired\r\n");
        assert!(h.closed);
    }

    #[test]
    fn shutdown_releases_the_maildrop_without_deleting() {
        let mut h = Harness::new();
        h.login();
        h.line("DELE 1");
        assert!(h.session.shutting_down());
        assert!(!h.locked());
        assert_eq!(h.run(), "-ERR [SYS/TEMP] server shutting down\r\n");
        assert!(h.closed && h.commits.is_empty());
        assert!(!h.session.shutting_down());
    }

    #[test]
    fn stray_runtime_calls_are_ignored() {
        let mut h = Harness::new();
        h.session.commit_done(Ok(()));
        h.session.tls_started();
        assert_eq!(h.run(), "");
        assert!(!h.closed);
        assert_eq!(h.line("CAPA").lines().last(), Some("."));
    }

    #[test]
    fn consume_output_partially_and_beyond() {
        let mut h = Harness::new();
        h.session.receive(b"NOOP\r\n");
        assert!(matches!(h.session.poll(), Pop3Event::NeedInput));
        let all = h.session.output().to_vec();
        h.session.consume_output(3);
        assert_eq!(h.session.output(), &all[3..]);
        h.session.consume_output(usize::MAX);
        assert!(h.session.output().is_empty());
    }

    #[test]
    fn bare_lf_lines_are_commands_too() {
        let mut h = Harness::new();
        assert_eq!(
            h.send(b"USER alice\nPASS secret\nSTAT\n").lines().last(),
            Some("+OK 3 78")
        );
    }

    const SCRIPT_FRAGMENTS: [&[u8]; 24] = [
        b"USER alice\r\n",
        b"PASS secret\r\n",
        b"PASS wrong\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
        b"AGFsaWNlAHNlY3JldA==\r\n",
        b"*\r\n",
        b"CAPA\r\n",
        b"STLS\r\n",
        b"STAT\r\n",
        b"LIST\r\n",
        b"LIST 2\r\n",
        b"UIDL\r\n",
        b"RETR 1\r\n",
        b"TOP 2 1\r\n",
        b"DELE 1\r\n",
        b"DELE 3\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b"\r",
        b"\n",
        b"\0\xff",
        &[b'q'; 300],
    ];

    fn run_split(script: &[u8], chunk: usize) -> (String, Vec<Vec<usize>>) {
        let mut h = Harness::new();
        let mut out = String::new();
        for piece in script.chunks(chunk.max(1)) {
            out.push_str(&h.send(piece));
        }
        (out, h.commits)
    }

    #[test]
    fn random_scripts_never_panic_and_split_reads_agree() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300 {
            let mut script = Vec::new();
            for _ in 0..30 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let pick = usize::try_from(seed % SCRIPT_FRAGMENTS.len() as u64).unwrap_or(0);
                script.extend_from_slice(SCRIPT_FRAGMENTS[pick]);
            }
            let whole = run_split(&script, script.len());
            let bytewise = run_split(&script, 1);
            // STLS discards what was read with it; split reads change
            // what that is, so only STLS-free scripts must agree exactly.
            if !script.windows(4).any(|w| w == b"STLS") {
                assert_eq!(whole, bytewise);
            }
            for line in whole.0.split_terminator("\r\n") {
                assert!(!line.contains('\r') && !line.contains('\n'));
            }
            assert!(whole.0.is_empty() || whole.0.ends_with("\r\n"));
        }
    }
}
