//! The server-side SMTP session state machine (RFC 5321 with PIPELINING,
//! SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING, DSN, STARTTLS):
//! bytes from the peer go in through [`ServerSession::receive`], replies come
//! out of [`ServerSession::output`], and [`ServerSession::poll`] tells the
//! runtime what to do next.
//!
//! Sans-IO: this module must never touch a socket, a clock, a thread or an
//! async runtime, must never execute bytes pipelined after STARTTLS or after
//! a smuggled end of data, and must never hold more input than one command
//! line or the message being assembled.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use memchr::memchr;

use super::command::{parse_command, Command, CommandError, MailFrom, RcptTo, COMMAND_LINE_MAX};
use super::data::{ContentError, DataDecoder, Framing};
use super::reply::{EnhancedStatus, Reply};
use crate::envelope::{ClientInfo, Envelope, Recipient};
use crate::spool::SpoolError;

/// Default time to wait for a command (RFC 5321 4.5.3.2.7).
pub const COMMAND_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// Default time to wait for each block of DATA/BDAT content
/// (RFC 5321 4.5.3.2.5).
pub const DATA_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3 * 60);
/// Recipients per message a server must at least accept (RFC 5321 4.5.3.1.8).
pub const RECIPIENTS_MIN: usize = 100;

/// Settings shared by all sessions of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our name in greeting/EHLO/Received.
    pub hostname: String,
    /// Advertised in SIZE; above it 552 5.3.4.
    pub max_message_size: u64,
    /// At least [`RECIPIENTS_MIN`] (smaller values are raised to it); above
    /// it 452 4.5.3.
    pub max_recipients: usize,
    /// A TLS config exists: advertise STARTTLS when not yet under TLS.
    pub starttls_available: bool,
    /// RFC 5321 4.5.3.2.7 (5 min default).
    pub command_timeout: Duration,
    /// RFC 5321 4.5.3.2.5-6 (3 min default), while reading DATA/BDAT content.
    pub data_timeout: Duration,
}

/// What the runtime must do after [`ServerSession::poll`].
#[derive(Debug)]
pub enum SessionEvent {
    /// Flush `output()` (if non-empty) to the peer, then read more bytes and call `receive`.
    NeedInput,
    /// A complete message: the runtime stores it durably, then calls `message_stored`.
    /// The session processes no further input until then (replies stay in order).
    Message(Box<IncomingMessage>),
    /// Flush output (it ends with the `220 2.0.0 Ready to start TLS`), run the TLS handshake,
    /// then call `tls_started`. The session has already discarded any bytes that were
    /// pipelined after STARTTLS (CVE-2011-0411 class): they must never be executed.
    StartTls,
    /// Flush output, then close the connection (after QUIT, 421, or fatal errors).
    Close,
}

/// A message accepted by the session, to be stored by the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// `received_at_ms` left 0: the runtime sets it.
    pub envelope: Envelope,
    /// Message bytes as received, dot-unstuffed, CRLF line ends, no terminator.
    pub data: Vec<u8>,
}

#[derive(Debug)]
enum Phase {
    /// Reading command lines.
    Command,
    /// Reading DATA content.
    Data(DataDecoder),
    /// Reading the octets of an accepted BDAT chunk into the transaction.
    Bdat {
        size: u64,
        remaining: u64,
        last: bool,
    },
    /// Reading and dropping the octets of a refused BDAT chunk; the reply
    /// is sent once they are consumed (RFC 3030 2).
    BdatDiscard { remaining: u64, reply: Reply },
    /// A Message event is out; waiting for `message_stored`.
    AwaitingStore,
    /// A StartTls event is out; waiting for `tls_started`.
    AwaitingTls,
    /// The last reply is queued; the next poll returns Close.
    Closing,
    /// Close was returned; everything is ignored.
    Closed,
}

/// The client's EHLO/HELO.
#[derive(Debug)]
struct Greeting {
    name: String,
    esmtp: bool,
}

/// One mail transaction, from MAIL to the end of its data.
#[derive(Debug)]
struct Transaction {
    mail: MailFrom,
    recipients: Vec<Recipient>,
    /// Set once BDAT was used: decodes all chunks of the transaction.
    chunks: Option<DataDecoder>,
    data: Vec<u8>,
}

/// What one step of `poll` came to.
enum Step {
    Continue,
    Wait,
    Event(SessionEvent),
}

/// One SMTP server session.
#[derive(Debug)]
pub struct ServerSession {
    config: Arc<SessionConfig>,
    peer_ip: IpAddr,
    tls_active: bool,
    phase: Phase,
    greeting: Option<Greeting>,
    transaction: Option<Transaction>,
    input: Vec<u8>,
    /// Bytes of `input` already processed.
    input_pos: usize,
    /// Inside a command line already answered as too long: drop up to LF.
    discarding_long_line: bool,
    output: Vec<u8>,
}

const fn status(class: u8, subject: u16, detail: u16) -> EnhancedStatus {
    EnhancedStatus::new(class, subject, detail)
}

fn ok(code: u16, enhanced: EnhancedStatus) -> Reply {
    Reply::new(code, enhanced, "Ok")
}

fn bad_sequence(text: &'static str) -> Reply {
    Reply::new(503, status(5, 5, 1), text)
}

impl ServerSession {
    /// New session; queues the `220 <hostname> ESMTP tern` greeting in the output.
    pub fn new(config: Arc<SessionConfig>, peer_ip: IpAddr, tls_active: bool) -> Self {
        let mut session = Self {
            config,
            peer_ip,
            tls_active,
            phase: Phase::Command,
            greeting: None,
            transaction: None,
            input: Vec::new(),
            input_pos: 0,
            discarding_long_line: false,
            output: Vec::new(),
        };
        let banner = format!("{} ESMTP tern", session.config.hostname);
        session.send(&Reply::plain(220, banner));
        session
    }

    /// Append bytes read from the peer. Never fails; may be called with any bytes.
    pub fn receive(&mut self, input: &[u8]) {
        match self.phase {
            // After STARTTLS, whatever still arrives in plaintext is never
            // executed; after 421/QUIT, nothing is.
            Phase::AwaitingTls | Phase::Closing | Phase::Closed => return,
            _ => {}
        }
        if self.input_pos > 0 {
            self.input.drain(..self.input_pos);
            self.input_pos = 0;
        }
        self.input.extend_from_slice(input);
    }

    /// Advance the state machine over buffered input until the runtime must act.
    pub fn poll(&mut self) -> SessionEvent {
        loop {
            let step = match self.phase {
                Phase::Command => self.step_command(),
                Phase::Data(decoder) => self.step_data(decoder),
                Phase::Bdat {
                    size,
                    remaining,
                    last,
                } => self.step_bdat(size, remaining, last),
                Phase::BdatDiscard { remaining, .. } => self.step_bdat_discard(remaining),
                Phase::AwaitingStore | Phase::AwaitingTls => Step::Wait,
                Phase::Closing => {
                    self.phase = Phase::Closed;
                    self.input = Vec::new();
                    self.input_pos = 0;
                    self.transaction = None;
                    Step::Event(SessionEvent::Close)
                }
                Phase::Closed => Step::Event(SessionEvent::Close),
            };
            match step {
                Step::Continue => {}
                Step::Wait => return SessionEvent::NeedInput,
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
    }

    /// Outcome of storing the message of the last `SessionEvent::Message`:
    /// Ok(queue id) -> `250 2.0.0 Ok: queued as <id>`; Err -> `452 4.3.1 ...` (and for
    /// SpoolError::TooLarge `552 5.3.4`). Either way the transaction is reset.
    pub fn message_stored(&mut self, result: Result<String, &SpoolError>) {
        if !matches!(self.phase, Phase::AwaitingStore) {
            return;
        }
        let reply = match result {
            Ok(queue_id) => Reply::new(250, status(2, 0, 0), format!("Ok: queued as {queue_id}")),
            Err(SpoolError::TooLarge { .. }) => Reply::new(
                552,
                status(5, 3, 4),
                "Error: message too large for the spool",
            ),
            Err(_) => Reply::new(452, status(4, 3, 1), "Error: insufficient system storage"),
        };
        self.send(&reply);
        self.transaction = None;
        self.phase = Phase::Command;
    }

    /// TLS handshake finished: session resets to the state after greeting (RFC 3207 4.2:
    /// client must EHLO again), marks tls active, no longer advertises STARTTLS.
    pub fn tls_started(&mut self) {
        if !matches!(self.phase, Phase::AwaitingTls) {
            return;
        }
        self.tls_active = true;
        self.greeting = None;
        self.transaction = None;
        self.input.clear();
        self.input_pos = 0;
        self.discarding_long_line = false;
        self.phase = Phase::Command;
    }

    /// The runtime's read timer expired: queue `421 4.4.2 <host> Error: timeout exceeded`,
    /// next poll returns Close.
    pub fn timed_out(&mut self) {
        if matches!(self.phase, Phase::Closing | Phase::Closed) {
            return;
        }
        metrics::counter!("tern_smtp_timeouts_total").increment(1);
        let text = format!("{} Error: timeout exceeded", self.config.hostname);
        self.send(&Reply::new(421, status(4, 4, 2), text));
        self.transaction = None;
        self.phase = Phase::Closing;
    }

    /// Which timeout the runtime must apply to the next read (command or data phase).
    pub fn read_timeout(&self) -> Duration {
        match self.phase {
            Phase::Data(_) | Phase::Bdat { .. } | Phase::BdatDiscard { .. } => {
                self.config.data_timeout
            }
            _ => self.config.command_timeout,
        }
    }

    fn send(&mut self, reply: &Reply) {
        let class = match reply.code() / 100 {
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        metrics::counter!("tern_smtp_replies_total", "class" => class).increment(1);
        reply.write_to(&mut self.output);
    }

    fn pending_input(&self) -> &[u8] {
        // `input_pos` only ever advances over bytes of `input`, so the
        // slice start is in bounds; `get` keeps that from being a panic path.
        self.input.get(self.input_pos..).unwrap_or_default()
    }

    fn step_command(&mut self) -> Step {
        let pending = self.pending_input();
        let Some(lf) = memchr(b'\n', pending) else {
            // Even with its LF still to come this line cannot fit.
            if pending.len() >= COMMAND_LINE_MAX {
                self.input_pos = self.input.len();
                if !self.discarding_long_line {
                    self.discarding_long_line = true;
                    self.send(&line_too_long());
                }
            }
            return Step::Wait;
        };
        let line = &pending[..lf];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let parsed = if self.discarding_long_line || lf + 1 > COMMAND_LINE_MAX {
            None
        } else {
            Some(parse_command(line))
        };
        self.input_pos += lf + 1;
        match parsed {
            Some(parsed) => self.execute(parsed),
            None if self.discarding_long_line => {
                // The tail of a line already answered: never a command.
                self.discarding_long_line = false;
                Step::Continue
            }
            None => {
                self.send(&line_too_long());
                Step::Continue
            }
        }
    }

    fn execute(&mut self, parsed: Result<Command, CommandError>) -> Step {
        let command = match parsed {
            Ok(command) => command,
            Err(CommandError::BadChunkSize) => {
                // RFC 3030 2: with an unreadable chunk size the server
                // cannot know where the chunk ends. We answer 501 and read
                // on as commands (closing would punish a mistyped BDAT); the
                // transaction is dropped so no chunk data that gets read as
                // commands can ever complete it.
                self.transaction = None;
                self.send(&command_error_reply(&CommandError::BadChunkSize));
                return Step::Continue;
            }
            Err(error) => {
                self.send(&command_error_reply(&error));
                return Step::Continue;
            }
        };
        match command {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail(mail) => self.mail(mail),
            Command::Rcpt(rcpt) => self.rcpt(rcpt),
            Command::Data => return self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.transaction = None;
                self.send(&ok(250, status(2, 0, 0)));
            }
            Command::Noop => self.send(&ok(250, status(2, 0, 0))),
            Command::Quit => {
                self.send(&Reply::new(221, status(2, 0, 0), "Bye"));
                self.transaction = None;
                self.phase = Phase::Closing;
            }
            Command::Vrfy => self.send(&Reply::new(
                252,
                status(2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn => self.send(&Reply::new(
                502,
                status(5, 5, 1),
                "Error: EXPN not supported",
            )),
            Command::Help => self.send(
                &Reply::new(
                    214,
                    status(2, 0, 0),
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT",
                )
                .with_line("RSET NOOP QUIT VRFY HELP STARTTLS")
                .with_line("See RFC 5321"),
            ),
            Command::StartTls => return self.starttls(),
        }
        Step::Continue
    }

    fn ehlo(&mut self, name: String, esmtp: bool) {
        // RFC 5321 4.1.4: EHLO/HELO resets any transaction.
        self.transaction = None;
        self.greeting = Some(Greeting { name, esmtp });
        let hostname = self.config.hostname.clone();
        if !esmtp {
            self.send(&Reply::plain(250, hostname));
            return;
        }
        let mut reply = Reply::plain(250, hostname)
            .with_line("PIPELINING")
            .with_line(format!("SIZE {}", self.config.max_message_size))
            .with_line("8BITMIME")
            .with_line("SMTPUTF8")
            .with_line("ENHANCEDSTATUSCODES")
            .with_line("CHUNKING")
            .with_line("DSN");
        if self.config.starttls_available && !self.tls_active {
            reply = reply.with_line("STARTTLS");
        }
        self.send(&reply);
    }

    fn mail(&mut self, mail: MailFrom) {
        let reply = match &self.greeting {
            None => bad_sequence("Error: send HELO/EHLO first"),
            Some(_) if self.transaction.is_some() => bad_sequence("Error: nested MAIL command"),
            Some(greeting) if !greeting.esmtp && mail.has_parameters => parameters_after_helo(),
            Some(_) if !mail.smtputf8 && !mail.sender.is_ascii() => non_ascii_address(),
            Some(_)
                if mail
                    .size
                    .is_some_and(|size| size > self.config.max_message_size) =>
            {
                too_large()
            }
            Some(_) => {
                self.transaction = Some(Transaction {
                    mail,
                    recipients: Vec::new(),
                    chunks: None,
                    data: Vec::new(),
                });
                ok(250, status(2, 1, 0))
            }
        };
        self.send(&reply);
    }

    fn rcpt(&mut self, rcpt: RcptTo) {
        let esmtp = self
            .greeting
            .as_ref()
            .is_some_and(|greeting| greeting.esmtp);
        let max_recipients = self.config.max_recipients.max(RECIPIENTS_MIN);
        let reply = match &mut self.transaction {
            None => bad_sequence("Error: need MAIL command"),
            Some(_) if !esmtp && rcpt.has_parameters => parameters_after_helo(),
            Some(tx) if tx.chunks.is_some() => bad_sequence("Error: RCPT after BDAT"),
            Some(tx) if !tx.mail.smtputf8 && !rcpt.recipient.is_ascii() => non_ascii_address(),
            Some(tx) if tx.recipients.len() >= max_recipients => {
                Reply::new(452, status(4, 5, 3), "Error: too many recipients")
            }
            Some(tx) => {
                tx.recipients.push(Recipient {
                    address: rcpt.recipient,
                    notify: rcpt.notify,
                    orcpt: rcpt.orcpt,
                });
                ok(250, status(2, 1, 5))
            }
        };
        self.send(&reply);
    }

    fn data(&mut self) -> Step {
        let reply = match &self.transaction {
            None => bad_sequence("Error: need MAIL command"),
            Some(tx) if tx.chunks.is_some() => bad_sequence("Error: DATA after BDAT"),
            Some(tx) if tx.recipients.is_empty() => {
                Reply::new(554, status(5, 5, 1), "Error: no valid recipients")
            }
            Some(_) => {
                self.phase = Phase::Data(DataDecoder::new(
                    Framing::DotStuffed,
                    self.config.max_message_size,
                ));
                Reply::plain(354, "End data with <CR><LF>.<CR><LF>")
            }
        };
        self.send(&reply);
        Step::Continue
    }

    fn bdat(&mut self, size: u64, last: bool) {
        let max_size = self.config.max_message_size;
        match &mut self.transaction {
            Some(tx) if !tx.recipients.is_empty() => {
                tx.chunks
                    .get_or_insert_with(|| DataDecoder::new(Framing::Chunked, max_size));
                self.phase = Phase::Bdat {
                    size,
                    remaining: size,
                    last,
                };
            }
            Some(_) => {
                self.phase = Phase::BdatDiscard {
                    remaining: size,
                    reply: bad_sequence("Error: need RCPT command"),
                };
            }
            None => {
                self.phase = Phase::BdatDiscard {
                    remaining: size,
                    reply: bad_sequence("Error: need MAIL command"),
                };
            }
        }
    }

    fn starttls(&mut self) -> Step {
        if self.tls_active {
            self.send(&bad_sequence("Error: TLS already active"));
            return Step::Continue;
        }
        if !self.config.starttls_available {
            self.send(&Reply::new(
                502,
                status(5, 5, 1),
                "Error: STARTTLS not available",
            ));
            return Step::Continue;
        }
        self.send(&Reply::new(220, status(2, 0, 0), "Ready to start TLS"));
        // CVE-2011-0411: bytes pipelined after STARTTLS arrived in
        // plaintext and must never be executed after the handshake.
        self.input.clear();
        self.input_pos = 0;
        self.phase = Phase::AwaitingTls;
        Step::Event(SessionEvent::StartTls)
    }

    fn step_data(&mut self, mut decoder: DataDecoder) -> Step {
        let Some(tx) = self.transaction.as_mut() else {
            // DATA is only entered with a transaction; recover rather than panic.
            self.phase = Phase::Command;
            return Step::Continue;
        };
        let pending = self.input.get(self.input_pos..).unwrap_or_default();
        if pending.is_empty() {
            return Step::Wait;
        }
        let progress = decoder.feed(pending, &mut tx.data);
        self.input_pos += progress.consumed;
        if !progress.finished {
            self.phase = Phase::Data(decoder);
            return Step::Wait;
        }
        let error = decoder.finish();
        self.complete_message(error)
    }

    fn step_bdat(&mut self, size: u64, remaining: u64, last: bool) -> Step {
        let Some(tx) = self.transaction.as_mut() else {
            self.phase = Phase::BdatDiscard {
                remaining,
                reply: bad_sequence("Error: need MAIL command"),
            };
            return Step::Continue;
        };
        let pending = self.input.get(self.input_pos..).unwrap_or_default();
        let take = usize::try_from(remaining).map_or(pending.len(), |r| r.min(pending.len()));
        let chunk = pending.get(..take).unwrap_or_default();
        let decoder = tx.chunks.get_or_insert_with(|| {
            DataDecoder::new(Framing::Chunked, self.config.max_message_size)
        });
        decoder.feed(chunk, &mut tx.data);
        self.input_pos += take;
        // `take` is at most `remaining`, so this cannot underflow.
        let remaining = remaining - take as u64;
        if remaining > 0 {
            self.phase = Phase::Bdat {
                size,
                remaining,
                last,
            };
            return Step::Wait;
        }
        let error = if last {
            decoder.finish()
        } else {
            decoder.error()
        };
        if last || error.is_some() {
            return self.complete_message(error);
        }
        self.phase = Phase::Command;
        self.send(&Reply::new(
            250,
            status(2, 0, 0),
            format!("{size} octets received"),
        ));
        Step::Continue
    }

    fn step_bdat_discard(&mut self, remaining: u64) -> Step {
        let pending = self.pending_input().len();
        let take = usize::try_from(remaining).map_or(pending, |r| r.min(pending));
        self.input_pos += take;
        // `take` is at most `remaining`, so this cannot underflow.
        let remaining = remaining - take as u64;
        let phase = std::mem::replace(&mut self.phase, Phase::Command);
        if let Phase::BdatDiscard { reply, .. } = phase {
            if remaining > 0 {
                self.phase = Phase::BdatDiscard { remaining, reply };
                return Step::Wait;
            }
            self.send(&reply);
        }
        Step::Continue
    }

    /// The content of the transaction is complete: refuse it or hand it out.
    fn complete_message(&mut self, error: Option<ContentError>) -> Step {
        self.phase = Phase::Command;
        let Some(tx) = self.transaction.take() else {
            return Step::Continue;
        };
        if let Some(error) = error {
            let (reason, reply) = content_error_reply(error);
            metrics::counter!("tern_smtp_messages_rejected_total", "reason" => reason).increment(1);
            self.send(&reply);
            return Step::Continue;
        }
        let greeting = self.greeting.as_ref();
        let envelope = Envelope {
            sender: tx.mail.sender,
            body: tx.mail.body.unwrap_or_default(),
            smtputf8: tx.mail.smtputf8,
            ret: tx.mail.ret,
            envid: tx.mail.envid,
            declared_size: tx.mail.size,
            recipients: tx.recipients,
            client: ClientInfo {
                ip: self.peer_ip,
                helo: greeting.map(|g| g.name.clone()).unwrap_or_default(),
                esmtp: greeting.is_some_and(|g| g.esmtp),
                tls: self.tls_active,
                auth: None,
            },
            received_at_ms: 0,
        };
        self.phase = Phase::AwaitingStore;
        Step::Event(SessionEvent::Message(Box::new(IncomingMessage {
            envelope,
            data: tx.data,
        })))
    }
}

fn line_too_long() -> Reply {
    Reply::new(
        500,
        status(5, 5, 2),
        "Error: line too long (RFC 5321 4.5.3.1.4: 512 octets)",
    )
}

fn too_large() -> Reply {
    Reply::new(
        552,
        status(5, 3, 4),
        "Error: message size exceeds fixed maximum message size",
    )
}

fn parameters_after_helo() -> Reply {
    Reply::new(
        555,
        status(5, 5, 4),
        "Error: ESMTP parameters need EHLO, not HELO",
    )
}

fn non_ascii_address() -> Reply {
    // RFC 6531 3.5.
    Reply::new(
        553,
        status(5, 6, 7),
        "Error: non-ASCII address needs the SMTPUTF8 parameter",
    )
}

/// The metric label and the reply for refused message content.
fn content_error_reply(error: ContentError) -> (&'static str, Reply) {
    match error {
        ContentError::BareLineEnding => (
            "bare_line_ending",
            Reply::new(
                550,
                status(5, 6, 0),
                "Error: bare <CR> or <LF> not allowed, lines must end with <CR><LF> (RFC 5321 2.3.8)",
            ),
        ),
        ContentError::LineTooLong => (
            "line_too_long",
            Reply::new(
                550,
                status(5, 6, 0),
                "Error: text line longer than 1000 octets (RFC 5321 4.5.3.1.6)",
            ),
        ),
        ContentError::TooLarge => ("too_large", too_large()),
    }
}

fn command_error_reply(error: &CommandError) -> Reply {
    let text = format!("Error: {error}");
    match error {
        CommandError::UnknownCommand | CommandError::InvalidCharacter => {
            Reply::new(500, status(5, 5, 2), text)
        }
        CommandError::Syntax(_) => Reply::new(501, status(5, 5, 2), text),
        CommandError::MissingArgument(_)
        | CommandError::UnexpectedArgument(_)
        | CommandError::BadParameterValue(_)
        | CommandError::ParameterSyntax
        | CommandError::NotifyNeverCombined
        | CommandError::BadChunkSize => Reply::new(501, status(5, 5, 4), text),
        CommandError::BadSender => Reply::new(553, status(5, 1, 7), text),
        CommandError::BadRecipient => Reply::new(553, status(5, 1, 3), text),
        CommandError::UnknownParameter(_)
        | CommandError::DuplicateParameter(_)
        | CommandError::UnsupportedBody => Reply::new(555, status(5, 5, 4), text),
    }
}
