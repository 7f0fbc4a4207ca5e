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
use super::sasl::{decode_base64, parse_plain, SASL_RESPONSE_MAX};
use super::{Maildrop, MaildropError, Pop3Backend};

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
    /// Idle time before the session is closed; values below
    /// [`AUTOLOGOUT_MIN`] are raised to it.
    pub autologout: Duration,
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

    /// (number, index) of every message not marked deleted.
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
        self.visible().fold((0, 0), |(count, octets), (_, message)| {
            (count + 1, octets.saturating_add(message.size))
        })
    }
}

enum Phase<C> {
    /// AUTHORIZATION: reading commands before login.
    Authorization,
    /// AUTH PLAIN sent `+ `: the next line is the client's response.
    SaslResponse,
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
    login_failures: u32,
    input: Vec<u8>,
    /// Bytes of `input` already processed.
    input_pos: usize,
    /// Inside a line already answered as too long: drop up to LF.
    discarding_long_line: bool,
    output: Vec<u8>,
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
            login_failures: 0,
            input: Vec::new(),
            input_pos: 0,
            discarding_long_line: false,
            output: Vec::new(),
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
            Phase::AwaitingTls
            | Phase::AwaitingCommit { .. }
            | Phase::Closing
            | Phase::Closed => return,
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
        self.config.autologout.max(AUTOLOGOUT_MIN)
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
                    self.line_too_long();
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
        match line {
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
        }
    }

    /// An overlong line is answered and dropped; one in place of a SASL
    /// response also ends the exchange.
    fn line_too_long(&mut self) {
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
        let Some(decoded) = std::str::from_utf8(response)
            .ok()
            .and_then(|text| decode_base64(text).ok())
        else {
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

    /// Check credentials and open the maildrop. `authzid` is PLAIN's
    /// authorization identity: empty, the login or the user it names are
    /// the only ones a user may act as (RFC 4616 2).
    fn login(&mut self, login: &str, password: &str, authzid: Option<&str>) {
        let Some(user) = self.backend.authenticate(login, password) else {
            self.login_failed("invalid user name or password");
            return;
        };
        if let Some(authzid) = authzid.filter(|z| !z.is_empty()) {
            if authzid != login && authzid != user {
                self.login_failed("not authorized to act as that identity");
                return;
            }
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
