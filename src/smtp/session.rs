//! The server-side SMTP session state machine (RFC 5321 with PIPELINING,
//! SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING, DSN, STARTTLS,
//! and AUTH with the submission rules of RFC 6409 where the listener has
//! them):
//! bytes from the peer go in through [`ServerSession::receive`], replies come
//! out of [`ServerSession::output`], and [`ServerSession::poll`] tells the
//! runtime what to do next.
//!
//! Sans-IO: this module must never touch a socket, a clock, a thread or an
//! async runtime, must never execute bytes pipelined after STARTTLS or after
//! a smuggled end of data, must never hold more input than one command
//! line or the message being assembled, and must never check a password
//! (it asks the runtime with an Authenticate event).

use std::fmt;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use memchr::memchr;

use super::auth::{self, Credentials, Exchange, Mechanism, Progress, MECHANISMS_ADVERTISED};
use super::command::{parse_command, Command, CommandError, MailFrom, RcptTo, COMMAND_LINE_MAX};
use super::data::{ContentError, DataDecoder, Framing};
use super::relay_access::RelayAccess;
use super::reply::{class_label, EnhancedStatus, Reply};
use super::submission::{AuthenticatedUser, SubmissionPolicy};
use super::trace::too_many_hops;
use crate::envelope::{ClientInfo, Envelope, Recipient};
use crate::limits::{self, ErrorCount, InputDeadline, SessionLimits};
use crate::sasl::{authzid_permitted, SASL_RESPONSE_MAX};
use crate::spool::SpoolError;

/// Default time to wait for a command (RFC 5321 4.5.3.2.7).
pub const COMMAND_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// Default time to wait for each block of DATA/BDAT content
/// (RFC 5321 4.5.3.2.5).
pub const DATA_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3 * 60);
/// Recipients per message a server must at least accept (RFC 5321 4.5.3.1.8).
pub const RECIPIENTS_MIN: usize = 100;
/// Failed AUTH attempts one session may make: the last is answered 535,
/// then 421 and the connection closes (RFC 4954 leaves this to the server).
pub const AUTH_FAILURES_PER_SESSION_MAX: u32 = 3;
/// NOOP, RSET, VRFY, EXPN and HELP commands a client may send since its
/// last accepted message before each further one counts as an error
/// (Postfix's `smtpd_junk_command_limit`): a client that only keeps the
/// session alive reaches the hard error limit.
pub const JUNK_COMMANDS_FREE: u32 = 100;
/// Content buffer reserved at DATA when the client declared no SIZE: most
/// mail fits, so the buffer is not copied as it grows.
const CONTENT_RESERVE_GUESS: u64 = 64 * 1024;
/// The most reserved ahead of content, whatever SIZE the client declared:
/// a claim must not hold memory the client never sends.
const CONTENT_RESERVE_MAX: u64 = 1024 * 1024;

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
    /// Which recipients a client may give (no open relay).
    pub relay_access: RelayAccess,
    /// Submission rules (RFC 6409): AUTH offered, MAIL needs AUTH unless
    /// the client is in mynetworks. None on relay/MX listeners, which
    /// never offer AUTH.
    pub submission: Option<SubmissionPolicy>,
    /// Hard error limit and content pace (`[limits]`).
    pub limits: SessionLimits,
    /// Messages accepted over one connection before MAIL gets 421 4.7.0.
    pub max_messages_per_connection: usize,
}

/// Consulted for every recipient that the relay access policy allowed,
/// before the 250. Must answer at once from memory (it may start background
/// work, e.g. a DNS prefetch): the session stays sans-IO and never waits.
pub trait RecipientHook {
    /// `domain` is the domain part as received (may be an address literal;
    /// empty for the domainless `<Postmaster>`); `None` accepts.
    fn check_recipient(&self, address: &str, domain: &str) -> Option<Reply>;
}

/// The session's optional [`RecipientHook`]; its own type so that the
/// session stays `Debug` (a trait object has no `Debug`).
#[derive(Default)]
struct HookSlot(Option<Rc<dyn RecipientHook>>);

impl HookSlot {
    /// The hook's reply refusing `recipient`, if there is a hook and it
    /// refuses. The domainless `<Postmaster>` (RFC 5321 4.5.1) reaches it
    /// too: accepting it without a mailbox behind it would only turn into
    /// a bounce later.
    fn refusal(&self, recipient: &str) -> Option<Reply> {
        let hook = self.0.as_ref()?;
        let domain = recipient.rsplit_once('@').map_or("", |(_, domain)| domain);
        hook.check_recipient(recipient, domain)
    }
}

impl fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(RecipientHook)"
        } else {
            "None"
        })
    }
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
    /// Check these credentials against the users file (off the event
    /// loop), then call `auth_done`. The session processes no further
    /// input until then.
    Authenticate { login: String, password: String },
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
    /// A `334` challenge is out: the next line is a SASL response.
    SaslResponse(Exchange),
    /// AUTH credentials are complete: the Authenticate event goes out
    /// (carrying `password`, taken then), then `auth_done` is awaited.
    AwaitingAuth {
        mechanism: Mechanism,
        login: String,
        authzid: String,
        password: Option<String>,
    },
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
    /// RCPTs refused by policy (relay access, recipient limit, hook): with
    /// none accepted, the content gets `no valid recipients`, not `need RCPT`.
    refused_recipients: usize,
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
    /// Set by a successful AUTH; kept across EHLO and RSET, dropped by
    /// STARTTLS (RFC 3207 4.2).
    authenticated: Option<AuthenticatedUser>,
    /// Failed AUTH attempts on this connection.
    auth_failures: u32,
    recipient_hook: HookSlot,
    phase: Phase,
    greeting: Option<Greeting>,
    transaction: Option<Transaction>,
    input: Vec<u8>,
    /// Bytes of `input` already processed.
    input_pos: usize,
    /// Inside a command line already answered as too long: drop up to LF.
    discarding_long_line: bool,
    output: Vec<u8>,
    /// Errors since the last accepted message (the hard error limit).
    errors: ErrorCount,
    /// Messages accepted over this connection.
    messages: usize,
    /// Junk commands since the last accepted message.
    junk_commands: u32,
    /// Units of input (command lines, contents) completed: the runtime's
    /// deadline clock restarts when this changes.
    units: u64,
    /// Content bytes consumed in the current unit (DATA, BDAT chunk).
    unit_bytes: u64,
}

/// Bytes to reserve for `expected` more octets of content.
fn content_reserve(expected: u64, max_size: u64) -> usize {
    let bytes = expected.min(max_size).min(CONTENT_RESERVE_MAX);
    // At most CONTENT_RESERVE_MAX, which fits any usize tern runs on.
    usize::try_from(bytes).unwrap_or(0)
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
            authenticated: None,
            auth_failures: 0,
            recipient_hook: HookSlot::default(),
            phase: Phase::Command,
            greeting: None,
            transaction: None,
            input: Vec::new(),
            input_pos: 0,
            discarding_long_line: false,
            output: Vec::new(),
            errors: ErrorCount::default(),
            messages: 0,
            junk_commands: 0,
            units: 0,
            unit_bytes: 0,
        };
        let banner = format!("{} ESMTP tern", session.config.hostname);
        session.send(&Reply::plain(220, banner));
        session
    }

    /// Consult `hook` for every recipient the relay access policy allows;
    /// a reply from it refuses that recipient (the transaction goes on).
    pub fn with_recipient_hook(mut self, hook: Rc<dyn RecipientHook>) -> Self {
        self.recipient_hook = HookSlot(Some(hook));
        self
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
                Phase::Command | Phase::SaslResponse(_) => self.step_command(),
                Phase::Data(decoder) => self.step_data(decoder),
                Phase::Bdat {
                    size,
                    remaining,
                    last,
                } => self.step_bdat(size, remaining, last),
                Phase::BdatDiscard { remaining, .. } => self.step_bdat_discard(remaining),
                Phase::AwaitingAuth {
                    ref login,
                    ref mut password,
                    ..
                } => match password.take() {
                    Some(password) => Step::Event(SessionEvent::Authenticate {
                        login: login.clone(),
                        password,
                    }),
                    None => Step::Wait,
                },
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
                // An error that reached the hard limit queued the 421.
                Step::Wait if matches!(self.phase, Phase::Closing) => {}
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
        if result.is_ok() {
            // Postfix's discipline: errors count until mail is delivered.
            self.errors.reset();
            self.junk_commands = 0;
            self.messages += 1;
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
        // A storage failure is ours, not the client's: never an error here.
        self.write_reply(&reply);
        self.transaction = None;
        self.phase = Phase::Command;
    }

    /// The runtime refused the message of the last `SessionEvent::Message`
    /// on a policy check (mail authentication): `reply` is sent, nothing
    /// was queued, and the transaction is reset.
    pub fn message_refused(&mut self, reply: &Reply) {
        if !matches!(self.phase, Phase::AwaitingStore) {
            return;
        }
        self.send(reply);
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
        self.authenticated = None;
        self.transaction = None;
        self.input.clear();
        self.input_pos = 0;
        self.discarding_long_line = false;
        self.phase = Phase::Command;
        self.unit_done();
    }

    /// The runtime's read timer expired: queue `421 4.4.2 <host> Error: timeout exceeded`,
    /// next poll returns Close.
    pub fn timed_out(&mut self) {
        if matches!(self.phase, Phase::Closing | Phase::Closed) {
            return;
        }
        metrics::counter!("tern_smtp_timeouts_total").increment(1);
        limits::ended_by("smtp", "deadline");
        let text = format!("{} Error: timeout exceeded", self.config.hostname);
        self.write_reply(&Reply::new(421, status(4, 4, 2), text));
        self.transaction = None;
        self.phase = Phase::Closing;
    }

    /// The server is shutting down. Between commands: queue
    /// `421 4.3.2 <host> Service shutting down` (RFC 5321 3.8) and return
    /// true (the next poll returns Close). While message content is being
    /// read, or a stored/TLS result is pending: do nothing and return false,
    /// so the client can finish; the runtime asks again at the next read.
    pub fn shutting_down(&mut self) -> bool {
        match self.phase {
            Phase::Command => {}
            Phase::SaslResponse(ref exchange) => count_auth(exchange.mechanism(), "aborted"),
            _ => return false,
        }
        let text = format!(
            "{} Service shutting down, closing transmission channel",
            self.config.hostname
        );
        self.write_reply(&Reply::new(421, status(4, 3, 2), text));
        self.transaction = None;
        self.phase = Phase::Closing;
        true
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

    /// How long the input the session awaits may take in all: a command
    /// line [`SessionConfig::command_timeout`] from the previous reply on
    /// (RFC 5321 4.5.3.2.7), content the data timeout plus its size at the
    /// minimum rate.
    pub fn deadline(&self) -> InputDeadline {
        let within = match self.phase {
            Phase::Data(_) | Phase::Bdat { .. } | Phase::BdatDiscard { .. } => self
                .config
                .limits
                .paced(self.config.data_timeout, self.unit_bytes),
            _ => self.config.command_timeout,
        };
        InputDeadline {
            unit: self.units,
            within,
        }
    }

    fn unit_done(&mut self) {
        self.units = self.units.wrapping_add(1);
        self.unit_bytes = 0;
    }

    /// Queue a reply to a client's command. A 4xx or 5xx one counts
    /// against the hard error limit; at the limit the session ends with
    /// `421 4.7.0` (like Postfix's `smtpd_hard_error_limit`).
    fn send(&mut self, reply: &Reply) {
        self.write_reply(reply);
        if reply.code() >= 400 {
            self.client_error();
        }
    }

    fn client_error(&mut self) {
        if self.errors.add(&self.config.limits) {
            limits::ended_by("smtp", "errors");
            let text = format!("{} Error: too many errors", self.config.hostname);
            self.close_with(&Reply::new(421, status(4, 7, 0), text));
        }
    }

    /// Queue a reply that is not the client's fault (never an error).
    fn write_reply(&mut self, reply: &Reply) {
        metrics::counter!("tern_smtp_replies_total", "class" => class_label(reply.code()))
            .increment(1);
        reply.write_to(&mut self.output);
    }

    fn close_with(&mut self, reply: &Reply) {
        self.write_reply(reply);
        self.transaction = None;
        self.phase = Phase::Closing;
    }

    fn pending_input(&self) -> &[u8] {
        // `input_pos` only ever advances over bytes of `input`, so the
        // slice start is in bounds; `get` keeps that from being a panic path.
        self.input.get(self.input_pos..).unwrap_or_default()
    }

    /// Reads one line: a command, or the SASL response a `334` asked for.
    fn step_command(&mut self) -> Step {
        let in_sasl = matches!(self.phase, Phase::SaslResponse(_));
        let limit = if in_sasl {
            SASL_RESPONSE_MAX
        } else {
            COMMAND_LINE_MAX
        };
        let pending = self.pending_input();
        let Some(lf) = memchr(b'\n', pending) else {
            // Even with its LF still to come this line cannot fit.
            if pending.len() >= limit {
                self.input_pos = self.input.len();
                if !self.discarding_long_line {
                    self.discarding_long_line = true;
                    self.refuse_long_line();
                }
            }
            return Step::Wait;
        };
        let line = &pending[..lf];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let read = if self.discarding_long_line || lf + 1 > limit {
            None
        } else if in_sasl {
            Some(Err(line.to_vec()))
        } else {
            Some(Ok(parse_command(line)))
        };
        self.input_pos += lf + 1;
        self.unit_done();
        match read {
            Some(Ok(parsed)) => self.execute(parsed),
            Some(Err(response)) => self.sasl_response(&response),
            None if self.discarding_long_line => {
                // The tail of a line already answered: never a command.
                self.discarding_long_line = false;
                Step::Continue
            }
            None => {
                self.refuse_long_line();
                Step::Continue
            }
        }
    }

    /// An overlong line is answered and dropped; one in place of a SASL
    /// response also ends the exchange (RFC 4954 6: 500 5.5.6).
    fn refuse_long_line(&mut self) {
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::SaslResponse(exchange) => {
                count_auth(exchange.mechanism(), "aborted");
                self.send(&Reply::new(
                    500,
                    status(5, 5, 6),
                    "Error: authentication exchange line is too long",
                ));
            }
            phase => {
                self.phase = phase;
                self.send(&line_too_long());
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
        let junk = matches!(
            command,
            Command::Noop | Command::Rset | Command::Vrfy | Command::Expn | Command::Help
        );
        let step = self.execute_command(command);
        if junk {
            self.junk_commands = self.junk_commands.saturating_add(1);
            if self.junk_commands > JUNK_COMMANDS_FREE
                && !matches!(self.phase, Phase::Closing | Phase::Closed)
            {
                self.client_error();
            }
        }
        step
    }

    fn execute_command(&mut self, command: Command) -> Step {
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
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(&mechanism, initial_response.as_deref()),
        }
        Step::Continue
    }

    /// AUTH is offered on this listener right now.
    fn auth_offered(&self) -> bool {
        self.config
            .submission
            .as_ref()
            .is_some_and(|policy| policy.auth_offered(self.tls_active))
    }

    /// `AUTH mechanism [initial-response]` (RFC 4954 4).
    fn auth(&mut self, mechanism: &str, initial_response: Option<&str>) {
        let refusal = match &self.config.submission {
            None => Some(Reply::new(
                502,
                status(5, 5, 1),
                "Error: authentication not enabled on this port",
            )),
            Some(_) if !self.greeting.as_ref().is_some_and(|g| g.esmtp) => {
                Some(bad_sequence("Error: send EHLO first"))
            }
            Some(_) if self.authenticated.is_some() => {
                Some(bad_sequence("Error: already authenticated"))
            }
            Some(_) if self.transaction.is_some() => Some(bad_sequence(
                "Error: AUTH not permitted during a mail transaction",
            )),
            Some(policy) if !policy.auth_offered(self.tls_active) => Some(Reply::new(
                538,
                status(5, 7, 11),
                "Error: encryption required for requested authentication mechanism, use STARTTLS first",
            )),
            Some(_) => None,
        };
        if let Some(refusal) = refusal {
            self.send(&refusal);
            return;
        }
        match Mechanism::from_name(mechanism) {
            Some(mechanism) => {
                self.auth_progress(mechanism, auth::start(mechanism, initial_response))
            }
            None => self.send(&Reply::new(
                504,
                status(5, 5, 4),
                "Error: unrecognized authentication mechanism",
            )),
        }
    }

    /// The line answering a `334` challenge.
    fn sasl_response(&mut self, response: &[u8]) -> Step {
        if let Phase::SaslResponse(exchange) = std::mem::replace(&mut self.phase, Phase::Command) {
            let mechanism = exchange.mechanism();
            self.auth_progress(mechanism, auth::respond(exchange, response));
        }
        Step::Continue
    }

    fn auth_progress(&mut self, mechanism: Mechanism, progress: Progress) {
        match progress {
            Progress::Challenge(challenge, exchange) => {
                self.send(&Reply::plain(334, challenge));
                self.phase = Phase::SaslResponse(exchange);
            }
            Progress::Credentials(Credentials {
                login,
                password,
                authzid,
            }) => {
                self.phase = Phase::AwaitingAuth {
                    mechanism,
                    login,
                    authzid,
                    password: Some(password),
                };
            }
            Progress::Refused(reply) => {
                count_auth(mechanism, "aborted");
                self.send(&reply);
            }
        }
    }

    /// The outcome of the last [`SessionEvent::Authenticate`]: the user the
    /// credentials belong to, or None for an unknown login or a wrong
    /// password. The authorization identity may only name that user.
    pub fn auth_done(&mut self, user: Option<AuthenticatedUser>) {
        let Phase::AwaitingAuth {
            mechanism,
            login,
            authzid,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Command)
        else {
            return;
        };
        match user {
            Some(user) if authzid_permitted(&authzid, &login, &user.name) => {
                count_auth(mechanism, "ok");
                self.authenticated = Some(user);
                self.send(&Reply::new(
                    235,
                    status(2, 7, 0),
                    "Authentication successful",
                ));
            }
            _ => {
                count_auth(mechanism, "failed");
                self.auth_failures += 1;
                self.send(&Reply::new(
                    535,
                    status(5, 7, 8),
                    "Error: authentication credentials invalid",
                ));
                if self.auth_failures >= AUTH_FAILURES_PER_SESSION_MAX {
                    let text = format!(
                        "{} Error: too many failed authentication attempts",
                        self.config.hostname
                    );
                    self.send(&Reply::new(421, status(4, 7, 0), text));
                    self.transaction = None;
                    self.phase = Phase::Closing;
                }
            }
        }
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
        if self.auth_offered() {
            reply = reply.with_line(MECHANISMS_ADVERTISED);
        }
        self.send(&reply);
    }

    fn mail(&mut self, mail: MailFrom) {
        if self.messages >= self.config.max_messages_per_connection {
            limits::ended_by("smtp", "messages");
            let text = format!(
                "{} Error: too many messages in one connection, reconnect to send more",
                self.config.hostname
            );
            self.close_with(&Reply::new(421, status(4, 7, 0), text));
            return;
        }
        let reply = match &self.greeting {
            None => bad_sequence("Error: send HELO/EHLO first"),
            Some(_) if self.transaction.is_some() => bad_sequence("Error: nested MAIL command"),
            Some(greeting) if !greeting.esmtp && mail.has_parameters => parameters_after_helo(),
            Some(_) if !mail.smtputf8 && !mail.sender.is_ascii() => non_ascii_address(),
            // RFC 4954 5: the parameter belongs to the AUTH extension.
            Some(_) if mail.auth.is_some() && self.config.submission.is_none() => {
                Reply::new(555, status(5, 5, 4), "Error: parameter AUTH not supported")
            }
            Some(_) if self.must_authenticate() => {
                Reply::new(530, status(5, 7, 0), "Error: authentication required")
            }
            Some(_) if !self.sender_allowed(&mail.sender) => Reply::new(
                553,
                status(5, 7, 1),
                format!(
                    "Error: <{}>: sender address not owned by the authenticated user",
                    mail.sender
                ),
            ),
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
                    refused_recipients: 0,
                    chunks: None,
                    data: Vec::new(),
                });
                ok(250, status(2, 1, 0))
            }
        };
        self.send(&reply);
    }

    /// On a submission listener, MAIL needs AUTH first unless the client
    /// is in mynetworks (trusted like on the relay port: local programs
    /// submit without a password).
    fn must_authenticate(&self) -> bool {
        self.config.submission.is_some()
            && self.authenticated.is_none()
            && !self.config.relay_access.client_is_trusted(self.peer_ip)
    }

    /// Whether the authenticated user (if any) may use `sender`.
    fn sender_allowed(&self, sender: &str) -> bool {
        match (&self.config.submission, &self.authenticated) {
            (Some(policy), Some(user)) => policy.sender_allowed(user, sender),
            _ => true,
        }
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
            // An authenticated submitter may relay anywhere (RFC 6409 4.3).
            Some(tx)
                if self.authenticated.is_none()
                    && !self
                        .config
                        .relay_access
                        .may_accept(self.peer_ip, &rcpt.recipient) =>
            {
                tx.refused_recipients += 1;
                metrics::counter!("tern_smtp_relay_denied_total").increment(1);
                Reply::new(
                    554,
                    status(5, 7, 1),
                    format!("<{}>: Relay access denied", rcpt.recipient),
                )
            }
            Some(tx) if tx.recipients.len() >= max_recipients => {
                tx.refused_recipients += 1;
                Reply::new(452, status(4, 5, 3), "Error: too many recipients")
            }
            Some(tx) => match self.recipient_hook.refusal(&rcpt.recipient) {
                Some(refusal) => {
                    tx.refused_recipients += 1;
                    metrics::counter!(
                        "tern_smtp_recipient_hook_refused_total",
                        "class" => class_label(refusal.code())
                    )
                    .increment(1);
                    refusal
                }
                None => {
                    tx.recipients.push(Recipient {
                        address: rcpt.recipient,
                        notify: rcpt.notify,
                        orcpt: rcpt.orcpt,
                    });
                    ok(250, status(2, 1, 5))
                }
            },
        };
        self.send(&reply);
    }

    fn data(&mut self) -> Step {
        let reply = match &self.transaction {
            None => bad_sequence("Error: need MAIL command"),
            Some(tx) if tx.chunks.is_some() => bad_sequence("Error: DATA after BDAT"),
            Some(tx) if tx.recipients.is_empty() => no_valid_recipients(),
            Some(_) => {
                let max_size = self.config.max_message_size;
                if let Some(tx) = self.transaction.as_mut() {
                    let expected = tx.mail.size.unwrap_or(CONTENT_RESERVE_GUESS);
                    tx.data.reserve(content_reserve(expected, max_size));
                }
                self.phase = Phase::Data(DataDecoder::new(Framing::DotStuffed, max_size));
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
                tx.data.reserve(content_reserve(size, max_size));
                self.phase = Phase::Bdat {
                    size,
                    remaining: size,
                    last,
                };
            }
            Some(tx) => {
                let reply = if tx.refused_recipients > 0 {
                    no_valid_recipients()
                } else {
                    bad_sequence("Error: need RCPT command")
                };
                self.phase = Phase::BdatDiscard {
                    remaining: size,
                    reply,
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
        self.unit_bytes += progress.consumed as u64;
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
        self.unit_bytes += take as u64;
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
        self.unit_done();
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
        self.unit_bytes += take as u64;
        // `take` is at most `remaining`, so this cannot underflow.
        let remaining = remaining - take as u64;
        let phase = std::mem::replace(&mut self.phase, Phase::Command);
        if let Phase::BdatDiscard { reply, .. } = phase {
            if remaining > 0 {
                self.phase = Phase::BdatDiscard { remaining, reply };
                return Step::Wait;
            }
            self.unit_done();
            self.send(&reply);
        }
        Step::Continue
    }

    /// The content of the transaction is complete: refuse it or hand it out.
    fn complete_message(&mut self, error: Option<ContentError>) -> Step {
        self.phase = Phase::Command;
        self.unit_done();
        let Some(tx) = self.transaction.take() else {
            return Step::Continue;
        };
        let error = error.or_else(|| too_many_hops(&tx.data).then_some(ContentError::TooManyHops));
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
                auth: self.authenticated.as_ref().map(|user| user.name.clone()),
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

/// Counts one AUTH exchange that ended: `ok`, `failed` (credentials
/// checked and refused) or `aborted` (cancelled, malformed, cut short).
fn count_auth(mechanism: Mechanism, result: &'static str) {
    metrics::counter!(
        "tern_smtp_auth_total",
        "mechanism" => mechanism.label(),
        "result" => result
    )
    .increment(1);
}

fn line_too_long() -> Reply {
    Reply::new(
        500,
        status(5, 5, 2),
        "Error: line too long (RFC 5321 4.5.3.1.4: 512 octets)",
    )
}

fn no_valid_recipients() -> Reply {
    Reply::new(554, status(5, 5, 1), "Error: no valid recipients")
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
        ContentError::TooManyHops => (
            "hops",
            Reply::new(554, status(5, 4, 6), "Too many hops (mail loop?)"),
        ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{BodyType, DsnRet, Notify};
    use crate::smtp::trace::RECEIVED_HOPS_MAX;
    use std::net::Ipv4Addr;

    const HOST: &str = "mx.test.example";

    fn config(starttls_available: bool) -> Arc<SessionConfig> {
        Arc::new(SessionConfig {
            hostname: HOST.into(),
            max_message_size: 10_000,
            max_recipients: RECIPIENTS_MIN,
            starttls_available,
            command_timeout: COMMAND_TIMEOUT_DEFAULT,
            data_timeout: DATA_TIMEOUT_DEFAULT,
            relay_access: RelayAccess::new(
                &["192.0.2.0/24".parse().unwrap()],
                &["local.example".into()],
                &[],
            ),
            submission: None,
            limits: SessionLimits {
                hard_error_limit: 20,
                data_min_rate: 500,
            },
            max_messages_per_connection: 1000,
        })
    }

    /// A session whose hard error limit is `errors` and that accepts
    /// `messages` messages per connection.
    fn limited_session(errors: u32, messages: usize) -> ServerSession {
        let mut config = (*config(false)).clone();
        config.limits.hard_error_limit = errors;
        config.max_messages_per_connection = messages;
        ServerSession::new(
            Arc::new(config),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            false,
        )
    }

    fn new_session(starttls_available: bool, tls_active: bool) -> ServerSession {
        ServerSession::new(
            config(starttls_available),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            tls_active,
        )
    }

    /// What a session did over a script.
    #[derive(Debug, PartialEq)]
    struct Transcript {
        output: String,
        messages: Vec<IncomingMessage>,
        starttls: usize,
        /// Authenticate events answered.
        auth_checks: usize,
        closed: bool,
    }

    impl Transcript {
        fn replies(&self) -> Vec<&str> {
            self.output
                .split("\r\n")
                .filter(|l| !l.is_empty())
                .collect()
        }
        fn codes(&self) -> Vec<&str> {
            self.replies()
                .iter()
                .map(|l| l.get(..3).unwrap_or(l))
                .collect()
        }
    }

    /// Drives `session` like a runtime would: each chunk is received, then
    /// polled until the session needs input; messages are stored with ids
    /// Q1, Q2, ...; STARTTLS handshakes succeed at once.
    fn drive<'a>(
        session: &mut ServerSession,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Transcript {
        let mut transcript = Transcript {
            output: String::new(),
            messages: Vec::new(),
            starttls: 0,
            auth_checks: 0,
            closed: false,
        };
        'chunks: for chunk in chunks {
            session.receive(chunk);
            loop {
                match session.poll() {
                    SessionEvent::NeedInput => break,
                    SessionEvent::Message(message) => {
                        transcript.messages.push(*message);
                        let id = format!("Q{}", transcript.messages.len());
                        session.message_stored(Ok(id));
                    }
                    SessionEvent::StartTls => {
                        transcript.starttls += 1;
                        session.tls_started();
                    }
                    SessionEvent::Authenticate { login, password } => {
                        transcript.auth_checks += 1;
                        session.auth_done(check_password(&login, &password));
                    }
                    SessionEvent::Close => {
                        transcript.closed = true;
                        break 'chunks;
                    }
                }
            }
        }
        transcript
            .output
            .push_str(&String::from_utf8_lossy(session.output()));
        session.consume_output(usize::MAX);
        transcript
    }

    /// The users the test runtime knows: alice (also by her address), password `secret`.
    fn check_password(login: &str, password: &str) -> Option<AuthenticatedUser> {
        let known = login == "alice" || login == "alice@local.example";
        (known && password == "secret").then(|| AuthenticatedUser {
            name: "alice".into(),
            addresses: vec!["alice@local.example".into(), "Sales@Local.example".into()],
        })
    }

    fn run_with(session: &mut ServerSession, script: &[u8]) -> Transcript {
        drive(session, [script])
    }

    /// Runs `script` all at once and one byte at a time; both must agree.
    fn run(script: &[u8]) -> Transcript {
        let whole = run_with(&mut new_session(false, false), script);
        let bytewise = drive(&mut new_session(false, false), script.chunks(1));
        assert_eq!(whole, bytewise, "byte-at-a-time differs for {script:?}");
        whole
    }

    const HELLO: &str = "EHLO client.example\r\n";
    const EHLO_LINES: usize = 8;

    /// Replies after the greeting and the EHLO block.
    fn after_ehlo(t: &Transcript) -> Vec<&str> {
        t.replies().into_iter().skip(1 + EHLO_LINES).collect()
    }

    fn script(lines: &[&str]) -> Vec<u8> {
        lines.concat().into_bytes()
    }

    #[test]
    fn greeting_is_queued_at_once() {
        let session = new_session(false, false);
        assert_eq!(session.output(), b"220 mx.test.example ESMTP tern\r\n");
    }

    #[test]
    fn ehlo_lists_extensions_and_starttls_only_when_available_and_not_active() {
        let base = "250-mx.test.example\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n\
                    250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n";
        let greeting = "220 mx.test.example ESMTP tern\r\n";
        let t = run_with(&mut new_session(true, false), HELLO.as_bytes());
        assert_eq!(
            t.output,
            format!("{greeting}{base}250-DSN\r\n250 STARTTLS\r\n")
        );
        for (available, active) in [(false, false), (true, true), (false, true)] {
            let t = run_with(&mut new_session(available, active), HELLO.as_bytes());
            assert_eq!(t.output, format!("{greeting}{base}250 DSN\r\n"));
        }
    }

    #[test]
    fn helo_has_no_extensions_and_both_need_an_argument() {
        let t = run(b"HELO client.example\r\nHELO\r\nEHLO\r\n");
        assert_eq!(
            &t.replies()[1..],
            [
                "250 mx.test.example",
                "501 5.5.4 Error: HELO requires an argument",
                "501 5.5.4 Error: EHLO requires an argument",
            ]
        );
    }

    #[test]
    fn second_ehlo_resets_the_transaction() {
        let t = run(&script(&[
            HELLO,
            "MAIL FROM:<a@b.example>\r\n",
            HELLO,
            "RCPT TO:<c@d.example>\r\n",
        ]));
        let replies = t.replies();
        assert_eq!(replies[1 + EHLO_LINES], "250 2.1.0 Ok");
        assert_eq!(replies.last(), Some(&"503 5.5.1 Error: need MAIL command"));
    }

    #[test]
    fn mail_sequence_errors() {
        let t = run(&script(&[
            "MAIL FROM:<a@b.example>\r\n",
            HELLO,
            "MAIL FROM:<a@b.example>\r\n",
            "MAIL FROM:<a@b.example>\r\n",
        ]));
        let replies = t.replies();
        assert_eq!(replies[1], "503 5.5.1 Error: send HELO/EHLO first");
        assert_eq!(
            after_ehlo(&t)[1..],
            ["250 2.1.0 Ok", "503 5.5.1 Error: nested MAIL command"]
        );
    }

    #[test]
    fn mail_parameter_and_syntax_replies() {
        let cases: &[(&str, &str)] = &[
            ("MAIL FROM:<> SIZE=10000", "250 2.1.0"),
            ("MAIL FROM:<> SIZE=10001", "552 5.3.4"),
            ("MAIL FROM:<> BODY=BINARYMIME", "555 5.5.4"),
            ("MAIL FROM:<> BODY=8BITMIME", "250 2.1.0"),
            ("MAIL FROM:<> XFOO=1", "555 5.5.4"),
            ("MAIL FROM:<> RET=FULL RET=HDRS", "555 5.5.4"),
            ("MAIL FROM:<> RET=ALL", "501 5.5.4"),
            ("MAIL FROM:<> ENVID=a+0Ab", "501 5.5.4"),
            ("MAIL FROM:a@b.example", "501 5.5.2"),
            ("MAIL FROM<a@b.example>", "501 5.5.2"),
            ("MAIL FROM:<a@@b.example>", "553 5.1.7"),
            ("MAIL FROM:<jöran@b.example>", "553 5.6.7"),
            ("MAIL FROM:<jöran@b.example> SMTPUTF8", "250 2.1.0"),
            (
                "MAIL FROM:<a@b.example> SMTPUTF8 RET=HDRS ENVID=x",
                "250 2.1.0",
            ),
        ];
        for (command, expected) in cases {
            let t = run(format!("{HELLO}{command}\r\n").as_bytes());
            let reply = after_ehlo(&t)[0];
            assert!(reply.starts_with(expected), "{command}: {reply}");
        }
    }

    #[test]
    fn parameters_need_ehlo() {
        let t = run(b"HELO c.example\r\nMAIL FROM:<> SIZE=10\r\nMAIL FROM:<>\r\nRCPT TO:<u@d.example> NOTIFY=NEVER\r\nRCPT TO:<u@d.example>\r\n");
        assert_eq!(t.codes()[2..], ["555", "250", "555", "250"]);
    }

    #[test]
    fn rcpt_replies() {
        let cases: &[(&str, &str)] = &[
            ("RCPT TO:<u@d.example>", "250 2.1.5 Ok"),
            ("RCPT TO:<Postmaster>", "250 2.1.5 Ok"),
            ("RCPT TO:u@d.example", "501 5.5.2"),
            ("RCPT TO:<u@>", "553 5.1.3"),
            ("RCPT TO:<>", "553 5.1.3"),
            ("RCPT TO:<u@d.example> NOTIFY=NEVER,DELAY", "501 5.5.4"),
            ("RCPT TO:<u@d.example> FOO=1", "555 5.5.4"),
            ("RCPT TO:<ü@d.example>", "553 5.6.7"),
        ];
        for (command, expected) in cases {
            let t = run(format!("{HELLO}MAIL FROM:<>\r\n{command}\r\n").as_bytes());
            let reply = after_ehlo(&t)[1];
            assert!(reply.starts_with(expected), "{command}: {reply}");
        }
        let t = run(format!("{HELLO}RCPT TO:<u@d.example>\r\n").as_bytes());
        assert_eq!(after_ehlo(&t), ["503 5.5.1 Error: need MAIL command"]);
    }

    #[test]
    fn recipient_limit() {
        let mut lines = String::from(HELLO);
        lines.push_str("MAIL FROM:<a@b.example>\r\n");
        for i in 0..=RECIPIENTS_MIN {
            lines.push_str(&format!("RCPT TO:<u{i}@d.example>\r\n"));
        }
        lines.push_str("DATA\r\nx\r\n.\r\n");
        let t = run(lines.as_bytes());
        let replies = after_ehlo(&t);
        assert_eq!(replies[RECIPIENTS_MIN], "250 2.1.5 Ok");
        assert_eq!(
            replies[RECIPIENTS_MIN + 1],
            "452 4.5.3 Error: too many recipients"
        );
        assert_eq!(t.messages.len(), 1);
        assert_eq!(t.messages[0].envelope.recipients.len(), RECIPIENTS_MIN);
    }

    #[test]
    fn full_transaction_builds_the_envelope() {
        let t = run(&script(&[
            HELLO,
            "MAIL FROM:<@r.example:a@b.example> SIZE=20 BODY=8BITMIME RET=HDRS ENVID=id+2B1\r\n",
            "RCPT TO:<u@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;u+2Bx@d.example\r\n",
            "RCPT TO:<Postmaster>\r\n",
            "DATA\r\n",
            "Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n",
            "QUIT\r\n",
        ]));
        assert_eq!(
            after_ehlo(&t),
            [
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok: queued as Q1",
                "221 2.0.0 Bye",
            ]
        );
        assert!(t.closed);
        let message = &t.messages[0];
        assert_eq!(message.data, b"Subject: hi\r\n\r\n.dot\r\nbody\r\n");
        let envelope = &message.envelope;
        assert_eq!(envelope.sender, "a@b.example");
        assert_eq!(envelope.body, BodyType::EightBitMime);
        assert_eq!(envelope.ret, Some(DsnRet::Headers));
        assert_eq!(envelope.envid.as_deref(), Some("id+1"));
        assert_eq!(envelope.declared_size, Some(20));
        assert!(!envelope.smtputf8);
        assert_eq!(envelope.received_at_ms, 0);
        assert_eq!(
            envelope.recipients,
            [
                Recipient {
                    address: "u@d.example".into(),
                    notify: Notify {
                        explicit: true,
                        success: true,
                        failure: true,
                        delay: false
                    },
                    orcpt: Some("rfc822;u+x@d.example".into()),
                },
                Recipient {
                    address: "Postmaster".into(),
                    notify: Notify::default(),
                    orcpt: None,
                },
            ]
        );
        assert_eq!(
            envelope.client,
            ClientInfo {
                ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
                helo: "client.example".into(),
                esmtp: true,
                tls: false,
                auth: None,
            }
        );
    }

    #[test]
    fn null_sender_and_empty_message() {
        let t = run(&script(&[
            HELLO,
            "MAIL FROM:<>\r\nRCPT TO:<u@d.example>\r\nDATA\r\n.\r\n",
        ]));
        assert_eq!(t.messages.len(), 1);
        assert_eq!(t.messages[0].envelope.sender, "");
        assert!(t.messages[0].data.is_empty());
    }

    #[test]
    fn data_sequence_errors() {
        let t = run(&script(&[
            HELLO,
            "DATA\r\n",
            "MAIL FROM:<>\r\n",
            "DATA\r\n",
            "DATA now\r\n",
        ]));
        assert_eq!(
            after_ehlo(&t),
            [
                "503 5.5.1 Error: need MAIL command",
                "250 2.1.0 Ok",
                "554 5.5.1 Error: no valid recipients",
                "501 5.5.4 Error: DATA takes no argument",
            ]
        );
    }

    #[test]
    fn pipelined_batch_gets_all_replies_in_one_poll() {
        let mut session = new_session(false, false);
        session.consume_output(usize::MAX);
        session.receive(
            b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@d.example>\r\n\
              RCPT TO:<v@d.example>\r\nDATA\r\n",
        );
        assert!(matches!(session.poll(), SessionEvent::NeedInput));
        let output = String::from_utf8_lossy(session.output()).into_owned();
        assert!(output.ends_with(
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
        ));
        assert_eq!(session.read_timeout(), DATA_TIMEOUT_DEFAULT);
    }

    #[test]
    fn message_waits_for_store_and_replies_stay_in_order() {
        let mut session = new_session(false, false);
        session.receive(
            b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<u@d.example>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n",
        );
        let SessionEvent::Message(message) = session.poll() else {
            panic!("expected a message");
        };
        assert_eq!(message.data, b"x\r\n");
        assert!(matches!(session.poll(), SessionEvent::NeedInput));
        assert!(!String::from_utf8_lossy(session.output()).contains("2.0.0 Ok"));
        session.message_stored(Ok("ABC".into()));
        assert!(matches!(session.poll(), SessionEvent::NeedInput));
        assert!(String::from_utf8_lossy(session.output())
            .ends_with("250 2.0.0 Ok: queued as ABC\r\n250 2.0.0 Ok\r\n"));
    }

    #[test]
    fn refused_message_gets_the_reply_and_the_transaction_resets() {
        let mut session = new_session(false, false);
        session.receive(
            b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@d.example>\r\nDATA\r\nx\r\n.\r\nRCPT TO:<u@d.example>\r\n",
        );
        assert!(matches!(session.poll(), SessionEvent::Message(_)));
        session.consume_output(usize::MAX);
        session.message_refused(&Reply::new(550, status(5, 7, 23), "SPF check failed"));
        assert!(matches!(session.poll(), SessionEvent::NeedInput));
        assert_eq!(
            String::from_utf8_lossy(session.output()),
            "550 5.7.23 SPF check failed\r\n503 5.5.1 Error: need MAIL command\r\n"
        );
        // Outside a stored-message wait it does nothing.
        session.consume_output(usize::MAX);
        session.message_refused(&Reply::new(550, status(5, 7, 1), "late"));
        assert!(session.output().is_empty());
    }

    #[test]
    fn storage_failures() {
        let transaction = b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<u@d.example>\r\nDATA\r\nx\r\n.\r\n";
        let full = SpoolError::Full { used: 1, limit: 1 };
        let too_large = SpoolError::TooLarge {
            len: 1,
            segment_size: 1,
        };
        for (error, expected) in [
            (full, "452 4.3.1 Error: insufficient system storage\r\n"),
            (
                too_large,
                "552 5.3.4 Error: message too large for the spool\r\n",
            ),
        ] {
            let mut session = new_session(false, false);
            session.receive(transaction);
            assert!(matches!(session.poll(), SessionEvent::Message(_)));
            session.message_stored(Err(&error));
            session.receive(b"RCPT TO:<u@d.example>\r\n");
            assert!(matches!(session.poll(), SessionEvent::NeedInput));
            let output = String::from_utf8_lossy(session.output()).into_owned();
            assert!(
                output.ends_with(&format!("{expected}503 5.5.1 Error: need MAIL command\r\n")),
                "{output}"
            );
        }
    }

    #[test]
    fn message_over_the_size_limit_is_read_to_the_end_and_refused() {
        let body = "x".repeat(900);
        let mut lines = String::from(HELLO);
        lines.push_str("MAIL FROM:<>\r\nRCPT TO:<u@d.example>\r\nDATA\r\n");
        for _ in 0..12 {
            lines.push_str(&body);
            lines.push_str("\r\n");
        }
        lines.push_str(".\r\nMAIL FROM:<>\r\n");
        let t = run(lines.as_bytes());
        assert!(t.messages.is_empty());
        assert_eq!(
            after_ehlo(&t)[3..],
            [
                "552 5.3.4 Error: message size exceeds fixed maximum message size",
                "250 2.1.0 Ok",
            ]
        );
    }

    #[test]
    fn smuggling_variants_never_yield_a_message_or_a_second_transaction() {
        for smuggled in ["\n.\n", "\r.\n", "\n.\r\n", "\r\n.\r", "\r"] {
            let t = run(&script(&[
                HELLO,
                "MAIL FROM:<a@b.example>\r\nRCPT TO:<u@d.example>\r\nDATA\r\n",
                "Subject: x\r\n\r\nhello",
                smuggled,
                "MAIL FROM:<evil@b.example>\r\nRCPT TO:<victim@d.example>\r\nDATA\r\nforged\r\n",
                ".\r\n",
                "RCPT TO:<u@d.example>\r\n",
                "NOOP\r\n",
            ]));
            assert!(t.messages.is_empty(), "{smuggled:?}");
            let replies = after_ehlo(&t);
            assert_eq!(
                replies[3..],
                [
                    "550 5.6.0 Error: bare <CR> or <LF> not allowed, lines must end with <CR><LF> (RFC 5321 2.3.8)",
                    "503 5.5.1 Error: need MAIL command",
                    "250 2.0.0 Ok",
                ],
                "{smuggled:?}"
            );
        }
    }

    #[test]
    fn long_text_line_is_refused_after_the_terminator() {
        let long = "y".repeat(999);
        let t = run(&script(&[
            HELLO,
            "MAIL FROM:<>\r\nRCPT TO:<u@d.example>\r\nDATA\r\n",
            &long,
            "\r\n.\r\nNOOP\r\n",
        ]));
        assert!(t.messages.is_empty());
        assert_eq!(
            after_ehlo(&t)[3..],
            [
                "550 5.6.0 Error: text line longer than 1000 octets (RFC 5321 4.5.3.1.6)",
                "250 2.0.0 Ok",
            ]
        );
    }

    #[test]
    fn command_line_too_long_discards_to_the_next_lf() {
        let long = format!("NOOP {}QUIT\r\nNOOP\r\n", "x".repeat(COMMAND_LINE_MAX));
        let t = run(long.as_bytes());
        assert_eq!(
            t.replies()[1..],
            [
                "500 5.5.2 Error: line too long (RFC 5321 4.5.3.1.4: 512 octets)",
                "250 2.0.0 Ok",
            ]
        );
        assert!(!t.closed);
        // Exactly 512 octets including CRLF is still fine.
        let fits = format!("NOOP {}\r\n", "x".repeat(COMMAND_LINE_MAX - 7));
        assert_eq!(fits.len(), COMMAND_LINE_MAX);
        assert_eq!(run(fits.as_bytes()).codes()[1..], ["250"]);
        let over = format!("NOOP {}\r\n", "x".repeat(COMMAND_LINE_MAX - 6));
        assert_eq!(run(over.as_bytes()).codes()[1..], ["500"]);
    }

    #[test]
    fn long_line_without_lf_does_not_grow_the_buffer() {
        let mut session = new_session(false, false);
        for _ in 0..100 {
            session.receive(&[b'x'; 1000]);
            assert!(matches!(session.poll(), SessionEvent::NeedInput));
            assert!(session.input.len() - session.input_pos < COMMAND_LINE_MAX);
        }
        session.receive(b"\r\nNOOP\r\n");
        session.poll();
        let output = String::from_utf8_lossy(session.output()).into_owned();
        assert_eq!(output.matches("500 5.5.2").count(), 1);
        assert!(output.ends_with("250 2.0.0 Ok\r\n"));
    }

    #[test]
    fn control_characters_and_bare_lf_commands() {
        let t = run(b"NO\0OP\r\nNOOP\nHELO\x01x\r\nFOO\r\n\r\n");
        assert_eq!(
            t.replies()[1..],
            [
                "500 5.5.2 Error: control character or invalid UTF-8 in command",
                "250 2.0.0 Ok",
                "500 5.5.2 Error: control character or invalid UTF-8 in command",
                "500 5.5.2 Error: command unrecognized",
                "500 5.5.2 Error: command unrecognized",
            ]
        );
    }

    #[test]
    fn simple_commands() {
        let t =
            run(b"RSET\r\nnoop\r\nVRFY root\r\nEXPN staff\r\nHELP\r\nRSET x\r\nquit\r\nNOOP\r\n");
        assert_eq!(
            t.replies()[1..],
            [
                "250 2.0.0 Ok",
                "250 2.0.0 Ok",
                "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                "502 5.5.1 Error: EXPN not supported",
                "214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT",
                "214-2.0.0 RSET NOOP QUIT VRFY HELP STARTTLS",
                "214 2.0.0 See RFC 5321",
                "501 5.5.4 Error: RSET takes no argument",
                "221 2.0.0 Bye",
            ]
        );
        assert!(t.closed);
    }

    #[test]
    fn rset_drops_the_transaction() {
        let t = run(&script(&[
            HELLO,
            "MAIL FROM:<>\r\nRSET\r\nRCPT TO:<u@d.example>\r\n",
        ]));
        assert_eq!(after_ehlo(&t)[2], "503 5.5.1 Error: need MAIL command");
    }

    #[test]
    fn input_after_quit_or_timeout_is_ignored() {
        let mut session = new_session(false, false);
        session.receive(b"QUIT\r\n");
        assert!(matches!(session.poll(), SessionEvent::Close));
        session.receive(b"NOOP\r\n");
        assert!(matches!(session.poll(), SessionEvent::Close));
        assert!(String::from_utf8_lossy(session.output()).ends_with("221 2.0.0 Bye\r\n"));

        let mut session = new_session(false, false);
        assert_eq!(session.read_timeout(), COMMAND_TIMEOUT_DEFAULT);
        session.timed_out();
        session.receive(b"NOOP\r\n");
        assert!(matches!(session.poll(), SessionEvent::Close));
        assert!(matches!(session.poll(), SessionEvent::Close));
        session.timed_out();
        let output = String::from_utf8_lossy(session.output()).into_owned();
        assert!(output.ends_with("421 4.4.2 mx.test.example Error: timeout exceeded\r\n"));
        assert_eq!(output.matches("421").count(), 1);
    }

    #[test]
    fn starttls_replies_when_unavailable_active_or_with_arguments() {
        let t = run_with(&mut new_session(false, false), b"STARTTLS\r\n");
        assert_eq!(t.replies()[1], "502 5.5.1 Error: STARTTLS not available");
        let t = run_with(&mut new_session(true, true), b"STARTTLS\r\n");
        assert_eq!(t.replies()[1], "503 5.5.1 Error: TLS already active");
        let t = run_with(&mut new_session(true, false), b"STARTTLS now\r\n");
        assert_eq!(
            t.replies()[1],
            "501 5.5.4 Error: STARTTLS takes no argument"
        );
        assert_eq!(t.starttls, 0);
    }

    #[test]
    fn starttls_discards_pipelined_plaintext() {
        let mut session = new_session(true, false);
        session.receive(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@b.example>\r\n");
        assert!(matches!(session.poll(), SessionEvent::StartTls));
        assert!(
            String::from_utf8_lossy(session.output()).ends_with("220 2.0.0 Ready to start TLS\r\n")
        );
        // Plaintext arriving before the handshake completes is dropped too.
        session.receive(b"RCPT TO:<u@d.example>\r\n");
        session.consume_output(usize::MAX);
        session.tls_started();
        let t = run_with(
            &mut session,
            b"MAIL FROM:<a@b.example>\r\nEHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@d.example>\r\nDATA\r\nx\r\n.\r\n",
        );
        let replies = t.replies();
        assert_eq!(replies[0], "503 5.5.1 Error: send HELO/EHLO first");
        assert!(!t.output.contains("STARTTLS"));
        assert!(t.output.contains("250 DSN\r\n"));
        assert_eq!(t.messages.len(), 1);
        assert!(t.messages[0].envelope.client.tls);
    }

    #[test]
    fn bdat_multi_chunk() {
        let t = run(&script(&[
            HELLO,
            "MAIL FROM:<a@b.example>\r\nRCPT TO:<u@d.example>\r\n",
            "BDAT 10\r\nSubject: x",
            "BDAT 11\r\n\r\n\r\n.body\r\n",
            "BDAT 0 LAST\r\n",
            "NOOP\r\n",
        ]));
        assert_eq!(
            after_ehlo(&t),
            [
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "250 2.0.0 10 octets received",
                "250 2.0.0 11 octets received",
                "250 2.0.0 Ok: queued as Q1",
                "250 2.0.0 Ok",
            ]
        );
        assert_eq!(t.messages[0].data, b"Subject: x\r\n\r\n.body\r\n");
    }

    #[test]
    fn bdat_last_with_content_and_bdat_0_last_alone() {
        let t = run(&script(&[
            HELLO,
            "MAIL FROM:<>\r\nRCPT TO:<u@d.example>\r\nBDAT 3 LAST\r\na\r\n",
            "MAIL FROM:<>\r\nRCPT TO:<u@d.example>\r\nBDAT 0 LAST\r\n",
        ]));
        assert_eq!(t.messages.len(), 2);
        assert_eq!(t.messages[0].data, b"a\r\n");
        assert!(t.messages[1].data.is_empty());
    }

    #[test]
    fn bdat_without_transaction_consumes_its_octets() {
        let t = run(&script(&[
            HELLO,
            "BDAT 6\r\nQUIT\r\n",
            "MAIL FROM:<>\r\nBDAT 6 LAST\r\nRSET\r\n",
            "NOOP\r\n",
        ]));
        assert!(!t.closed);
        assert_eq!(
            after_ehlo(&t),
            [
                "503 5.5.1 Error: need MAIL command",
                "250 2.1.0 Ok",
                "503 5.5.1 Error: need RCPT command",
                "250 2.0.0 Ok",
            ]
        );
    }

    #[test]
    fn data_after_bdat_and_rcpt_after_bdat() {
        let t = run(&script(&[
            HELLO,
            "MAIL FROM:<>\r\nRCPT TO:<u@d.example>\r\nBDAT 3\r\na\r\n",
            "DATA\r\nRCPT TO:<v@d.example>\r\nBDAT 0 LAST\r\n",
        ]));
        assert_eq!(
            after_ehlo(&t)[3..],
            [
                "503 5.5.1 Error: DATA after BDAT",
                "503 5.5.1 Error: RCPT after BDAT",
                "250 2.0.0 Ok: queued as Q1",
            ]
        );
        assert_eq!(t.messages[0].envelope.recipients.len(), 1);
    }

    #[test]
    fn bdat_content_rules() {
        // Bare LF in a chunk: refused at that chunk, transaction dropped.
        let t = run(&script(&[
            HELLO,
            "MAIL FROM:<>\r\nRCPT TO:<u@d.example>\r\nBDAT 4\r\na\nb\r",
            "BDAT 1 LAST\r\n\n",
        ]));
        assert!(t.messages.is_empty());
        assert_eq!(
            after_ehlo(&t)[2..]
                .iter()
                .map(|r| &r[..9])
                .collect::<Vec<_>>(),
            ["550 5.6.0", "503 5.5.1"]
        );
        // Trailing bare CR at the end of the last chunk.
        let t = run(&script(&[
            HELLO,
            "MAIL FROM:<>\r\nRCPT TO:<u@d.example>\r\nBDAT 2 LAST\r\na\r",
        ]));
        assert!(t.messages.is_empty());
        assert!(after_ehlo(&t)[2].starts_with("550 5.6.0"));
        // Over the size limit across chunks.
        let chunk = "z".repeat(998) + "\r\n";
        let mut lines = format!("{HELLO}MAIL FROM:<>\r\nRCPT TO:<u@d.example>\r\n");
        for _ in 0..11 {
            lines.push_str(&format!("BDAT 1000\r\n{chunk}"));
        }
        lines.push_str("BDAT 0 LAST\r\n");
        let t = run(lines.as_bytes());
        assert!(t.messages.is_empty());
        let replies = after_ehlo(&t);
        assert_eq!(replies[11], "250 2.0.0 1000 octets received");
        assert!(replies[12].starts_with("552 5.3.4"));
        assert_eq!(replies[13], "503 5.5.1 Error: need MAIL command");
    }

    #[test]
    fn bdat_bad_size_reads_on_as_commands() {
        let t = run(&script(&[
            HELLO,
            "MAIL FROM:<>\r\nRCPT TO:<u@d.example>\r\nBDAT 1x\r\nRCPT TO:<v@d.example>\r\n",
        ]));
        assert_eq!(
            after_ehlo(&t)[2..],
            [
                "501 5.5.4 Error: invalid BDAT chunk size",
                "503 5.5.1 Error: need MAIL command",
            ]
        );
    }

    #[test]
    fn read_timeout_follows_the_phase() {
        let mut session = new_session(false, false);
        session.receive(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<u@d.example>\r\nBDAT 5\r\nab");
        session.poll();
        assert_eq!(session.read_timeout(), DATA_TIMEOUT_DEFAULT);
        session.receive(b"cde");
        session.poll();
        assert_eq!(session.read_timeout(), COMMAND_TIMEOUT_DEFAULT);
    }

    #[test]
    fn consume_output_partially_and_beyond() {
        let mut session = new_session(false, false);
        session.consume_output(4);
        assert_eq!(session.output(), b"mx.test.example ESMTP tern\r\n");
        session.consume_output(10_000);
        assert!(session.output().is_empty());
    }

    #[test]
    fn data_consumed_is_not_kept() {
        let mut session = new_session(false, false);
        session.receive(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<u@d.example>\r\nDATA\r\n");
        session.poll();
        for _ in 0..5 {
            session.receive(&b"line\r\n".repeat(100));
            session.poll();
        }
        session.receive(b"x");
        assert_eq!(session.input.len(), 1);
    }

    #[test]
    fn byte_at_a_time_matches_whole_for_a_mixed_script() {
        let t = run(&script(&[
            HELLO,
            "MAIL FROM:<a@b.example> SIZE=100\r\nRCPT TO:<u@d.example>\r\nDATA\r\n",
            "..x\r\n.y\r\n\r\n.\r\n",
            "MAIL FROM:<a@b.example>\r\nRCPT TO:<u@d.example>\r\n",
            "BDAT 4\r\n.\r\n\r",
            "BDAT 1 LAST\r\n\n",
            "MAIL FROM:<a@b.example>\r\nRCPT TO:<u@d.example>\r\nDATA\r\nbad\n.\nstill\r\n.\r\n",
            "QUIT\r\n",
        ]));
        assert_eq!(t.messages.len(), 2);
        assert_eq!(t.messages[0].data, b".x\r\ny\r\n\r\n");
        assert_eq!(t.messages[1].data, b".\r\n\r\n");
        assert_eq!(t.codes().last(), Some(&"221"));
        assert!(t.output.contains("550 5.6.0"));
    }

    #[test]
    fn random_scripts_never_panic_and_split_reads_agree() {
        let fragments: [&[u8]; 22] = [
            b"EHLO c\r\n",
            b"HELO c\n",
            b"MAIL FROM:<a@b.example>\r\n",
            b"MAIL FROM:<> SIZE=5\r\n",
            b"RCPT TO:<u@d.example>\r\n",
            b"RCPT TO:<Postmaster>\r\n",
            b"DATA\r\n",
            b"BDAT 3\r\n",
            b"BDAT 0 LAST\r\n",
            b"BDAT 2 LAST\r\n",
            b"x\r\n",
            b".\r\n",
            b"..\r\n",
            b"\r",
            b"\n",
            b"\n.\n",
            b"RSET\r\n",
            b"NOOP\r\n",
            b"\0",
            b"STARTTLS\r\n",
            b"QUIT\r\n",
            &[b'q'; 300],
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300 {
            let mut script = Vec::new();
            for _ in 0..30 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let pick = usize::try_from(seed % 22).unwrap_or(0);
                script.extend_from_slice(fragments[pick]);
            }
            let t = run(&script);
            assert!(t.output.ends_with("\r\n"));
            for line in t.replies() {
                let bytes = line.as_bytes();
                assert!(
                    bytes.len() >= 4
                        && bytes[..3].iter().all(u8::is_ascii_digit)
                        && (bytes[3] == b' ' || bytes[3] == b'-'),
                    "malformed reply line {line:?}"
                );
            }
        }
    }

    #[test]
    fn strangers_cannot_relay() {
        let mut s = ServerSession::new(
            config(false),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)),
            false,
        );
        s.receive(
            b"EHLO c.example\r\nMAIL FROM:<a@remote.example>\r\n\
              RCPT TO:<victim@elsewhere.example>\r\nRCPT TO:<user@local.example>\r\n\
              RCPT TO:<Postmaster>\r\n",
        );
        assert!(matches!(s.poll(), SessionEvent::NeedInput));
        let out = String::from_utf8_lossy(s.output()).to_string();
        assert!(
            out.contains("554 5.7.1 <victim@elsewhere.example>: Relay access denied"),
            "{out}"
        );
        assert_eq!(out.matches("250 2.1.5").count(), 2, "{out}");
    }

    #[test]
    fn shutdown_closes_between_commands_but_not_inside_data() {
        let mut s = new_session(false, false);
        s.receive(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: x\r\n");
        assert!(matches!(s.poll(), SessionEvent::NeedInput));
        assert!(!s.shutting_down(), "must let the message finish");
        s.receive(b"\r\nbody\r\n.\r\n");
        assert!(matches!(s.poll(), SessionEvent::Message(_)));
        assert!(!s.shutting_down(), "store result pending");
        s.message_stored(Ok("ID1".into()));
        assert!(matches!(s.poll(), SessionEvent::NeedInput));
        assert!(s.shutting_down());
        assert!(matches!(s.poll(), SessionEvent::Close));
        let out = String::from_utf8_lossy(s.output()).to_string();
        assert!(out.contains("250 2.0.0 Ok: queued as ID1"), "{out}");
        assert!(
            out.ends_with(
                "421 4.3.2 mx.test.example Service shutting down, closing transmission channel\r\n"
            ),
            "{out}"
        );
    }

    /// Refuses every domain that ends in `nullmx.example` (any case) the way
    /// the relay refuses a null MX, and records what it was asked.
    #[derive(Default)]
    struct NullMxHook {
        seen: std::cell::RefCell<Vec<(String, String)>>,
    }

    impl RecipientHook for NullMxHook {
        fn check_recipient(&self, address: &str, domain: &str) -> Option<Reply> {
            self.seen
                .borrow_mut()
                .push((address.to_owned(), domain.to_owned()));
            domain
                .to_ascii_lowercase()
                .ends_with("nullmx.example")
                .then(|| {
                    Reply::new(
                        556,
                        status(5, 1, 10),
                        format!("<{address}>: Recipient address has null MX"),
                    )
                })
        }
    }

    /// Runs `script` whole and byte by byte through sessions with a fresh
    /// [`NullMxHook`] each; returns the whole run and what its hook saw.
    fn run_hooked(script: &[u8]) -> (Transcript, Vec<(String, String)>) {
        let hooked = || {
            let hook = Rc::new(NullMxHook::default());
            let session = new_session(false, false).with_recipient_hook(hook.clone());
            (session, hook)
        };
        let (mut session, hook) = hooked();
        let whole = run_with(&mut session, script);
        let (mut bytewise_session, _) = hooked();
        let bytewise = drive(&mut bytewise_session, script.chunks(1));
        assert_eq!(whole, bytewise, "byte-at-a-time differs for {script:?}");
        let seen = hook.seen.borrow().clone();
        (whole, seen)
    }

    #[test]
    fn recipient_hook_refusal_is_passed_through_verbatim() {
        let (t, seen) = run_hooked(&script(&[
            HELLO,
            "MAIL FROM:<a@b.example>\r\nRCPT TO:<u@NullMX.example>\r\n",
        ]));
        assert_eq!(
            after_ehlo(&t)[1],
            "556 5.1.10 <u@NullMX.example>: Recipient address has null MX"
        );
        assert_eq!(
            seen,
            [("u@NullMX.example".to_owned(), "NullMX.example".to_owned())]
        );
    }

    #[test]
    fn recipient_hook_accepts_and_sees_domain_as_received() {
        let (t, seen) = run_hooked(&script(&[
            HELLO,
            "MAIL FROM:<a@b.example>\r\nRCPT TO:<User@D.Example>\r\n",
            "RCPT TO:<x@[192.0.2.1]>\r\nRCPT TO:<\"q@r\"@e.example>\r\n",
            "DATA\r\nx\r\n.\r\n",
        ]));
        assert_eq!(
            after_ehlo(&t),
            [
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "250 2.1.5 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok: queued as Q1",
            ]
        );
        let domains: Vec<&str> = seen.iter().map(|(_, domain)| domain.as_str()).collect();
        assert_eq!(domains, ["D.Example", "[192.0.2.1]", "e.example"]);
        let addresses: Vec<&str> = t.messages[0]
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(
            addresses,
            ["User@D.Example", "x@[192.0.2.1]", "\"q@r\"@e.example"]
        );
    }

    #[test]
    fn recipient_hook_pipelined_mix_keeps_only_accepted_recipients() {
        let (t, seen) = run_hooked(&script(&[
            HELLO,
            "MAIL FROM:<a@b.example>\r\nRCPT TO:<a@nullmx.example>\r\n\
             RCPT TO:<b@d.example>\r\nRCPT TO:<c@sub.nullmx.example>\r\n\
             RCPT TO:<Postmaster>\r\nRCPT TO:<e@d.example>\r\nDATA\r\nx\r\n.\r\n",
        ]));
        assert_eq!(
            after_ehlo(&t)
                .iter()
                .map(|r| r.get(..10).unwrap_or(r))
                .collect::<Vec<_>>(),
            [
                "250 2.1.0 ",
                "556 5.1.10",
                "250 2.1.5 ",
                "556 5.1.10",
                "250 2.1.5 ",
                "250 2.1.5 ",
                "354 End da",
                "250 2.0.0 ",
            ]
        );
        let addresses: Vec<&str> = t.messages[0]
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(addresses, ["b@d.example", "Postmaster", "e@d.example"]);
        // The domainless Postmaster reaches the hook with an empty domain.
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[3], ("Postmaster".to_owned(), String::new()));
    }

    #[test]
    fn all_recipients_refused_gives_no_valid_recipients() {
        let (t, _) = run_hooked(&script(&[
            HELLO,
            "MAIL FROM:<a@b.example>\r\nRCPT TO:<a@nullmx.example>\r\nDATA\r\n",
            "RSET\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<a@nullmx.example>\r\nBDAT 3 LAST\r\nabc",
            "RSET\r\nMAIL FROM:<a@b.example>\r\nBDAT 3 LAST\r\nabc",
        ]));
        assert!(t.messages.is_empty());
        assert_eq!(
            after_ehlo(&t),
            [
                "250 2.1.0 Ok",
                "556 5.1.10 <a@nullmx.example>: Recipient address has null MX",
                "554 5.5.1 Error: no valid recipients",
                "250 2.0.0 Ok",
                "250 2.1.0 Ok",
                "556 5.1.10 <a@nullmx.example>: Recipient address has null MX",
                "554 5.5.1 Error: no valid recipients",
                "250 2.0.0 Ok",
                "250 2.1.0 Ok",
                "503 5.5.1 Error: need RCPT command",
            ]
        );
    }

    #[test]
    fn recipient_hook_is_not_asked_about_relay_denied_recipients() {
        let hook = Rc::new(NullMxHook::default());
        let mut session = ServerSession::new(
            config(false),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)),
            false,
        )
        .with_recipient_hook(hook.clone());
        let t = run_with(
            &mut session,
            b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<v@elsewhere.example>\r\n\
              RCPT TO:<u@local.example>\r\n",
        );
        assert!(after_ehlo(&t)[1].starts_with("554 5.7.1"));
        assert_eq!(after_ehlo(&t)[2], "250 2.1.5 Ok");
        assert_eq!(
            *hook.seen.borrow(),
            [("u@local.example".to_owned(), "local.example".to_owned())]
        );
    }

    /// A message with `hops` Received fields.
    fn looping_message(hops: usize) -> String {
        format!(
            "{}Subject: x\r\n\r\nReceived: in the body\r\n",
            "Received: from a.example\r\n\tby b.example; Mon, 23 Nov 2026 17:55:06 +0000\r\n"
                .repeat(hops)
        )
    }

    #[test]
    fn too_many_hops_is_refused_after_data_and_the_session_goes_on() {
        let allowed = looping_message(RECEIVED_HOPS_MAX);
        let looping = looping_message(RECEIVED_HOPS_MAX + 1);
        let t = run(&script(&[
            HELLO,
            "MAIL FROM:<a@b.example>\r\nRCPT TO:<u@d.example>\r\nDATA\r\n",
            &looping,
            ".\r\nNOOP\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@d.example>\r\nDATA\r\n",
            &allowed,
            ".\r\n",
        ]));
        assert_eq!(
            after_ehlo(&t)[3..],
            [
                "554 5.4.6 Too many hops (mail loop?)",
                "250 2.0.0 Ok",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok: queued as Q1",
            ]
        );
        assert_eq!(t.messages.len(), 1);
        assert_eq!(t.messages[0].data, allowed.as_bytes());
    }

    #[test]
    fn too_many_hops_is_refused_after_bdat_last() {
        let looping = looping_message(RECEIVED_HOPS_MAX + 1);
        let (first, second) = looping.split_at(looping.len() / 2);
        let t = run(&script(&[
            HELLO,
            "MAIL FROM:<a@b.example>\r\nRCPT TO:<u@d.example>\r\n",
            &format!("BDAT {}\r\n{first}", first.len()),
            &format!("BDAT {} LAST\r\n{second}", second.len()),
            "RCPT TO:<u@d.example>\r\n",
        ]));
        assert!(t.messages.is_empty());
        assert_eq!(
            after_ehlo(&t)[3..],
            [
                "554 5.4.6 Too many hops (mail loop?)",
                "503 5.5.1 Error: need MAIL command",
            ]
        );
    }

    // AUTH (RFC 4954) and the submission rules (RFC 6409).

    const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));
    const TRUSTED: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    /// `\0alice\0secret`
    const PLAIN_ALICE: &str = "AGFsaWNlAHNlY3JldA==";
    /// `\0alice\0wrong`
    const PLAIN_WRONG: &str = "AGFsaWNlAHdyb25n";

    fn submission_config(allow_plaintext_auth: bool, any_sender: bool) -> Arc<SessionConfig> {
        let mut config = SessionConfig::clone(&config(true));
        config.submission = Some(SubmissionPolicy {
            allow_plaintext_auth,
            any_sender,
        });
        Arc::new(config)
    }

    /// A session on a submission listener, TLS active, from a stranger.
    fn submission(tls_active: bool) -> ServerSession {
        ServerSession::new(submission_config(false, false), STRANGER, tls_active)
    }

    /// Runs `script` whole and byte at a time on two sessions made by `make`.
    fn run_on(make: impl Fn() -> ServerSession, script: &[u8]) -> Transcript {
        let whole = run_with(&mut make(), script);
        let bytewise = drive(&mut make(), script.chunks(1));
        assert_eq!(whole, bytewise, "byte-at-a-time differs for {script:?}");
        whole
    }

    /// Replies after the EHLO block (whatever extensions it listed).
    fn after_ehlo_block(t: &Transcript) -> Vec<&str> {
        let replies = t.replies();
        let end = replies
            .iter()
            .position(|l| l.starts_with("250 "))
            .map_or(replies.len(), |i| i + 1);
        replies[end..].to_vec()
    }

    fn ehlo_lines(t: &Transcript) -> Vec<&str> {
        t.replies()
            .into_iter()
            .filter(|l| l.starts_with("250"))
            .map(|l| &l[4..])
            .collect()
    }

    #[test]
    fn auth_is_advertised_only_on_submission_under_tls_or_when_allowed_in_clear() {
        let t = run_on(|| submission(true), HELLO.as_bytes());
        assert_eq!(ehlo_lines(&t).last(), Some(&"AUTH PLAIN LOGIN"));
        let t = run_on(|| submission(false), HELLO.as_bytes());
        assert!(!ehlo_lines(&t).iter().any(|l| l.starts_with("AUTH")));
        assert_eq!(ehlo_lines(&t).last(), Some(&"STARTTLS"));
        let clear = || ServerSession::new(submission_config(true, false), STRANGER, false);
        let t = run_on(clear, HELLO.as_bytes());
        assert!(ehlo_lines(&t).contains(&"AUTH PLAIN LOGIN"));
        let relay = || ServerSession::new(config(true), STRANGER, true);
        let t = run_on(relay, HELLO.as_bytes());
        assert!(!ehlo_lines(&t).iter().any(|l| l.starts_with("AUTH")));
    }

    #[test]
    fn auth_refusals_before_the_exchange() {
        // Before TLS on submission: encryption required.
        let t = run_on(
            || submission(false),
            format!("{HELLO}AUTH PLAIN {PLAIN_ALICE}\r\n").as_bytes(),
        );
        assert_eq!(
            after_ehlo_block(&t)[0],
            "538 5.7.11 Error: encryption required for requested authentication mechanism, use STARTTLS first"
        );
        assert_eq!(t.auth_checks, 0);
        // Relay listener: not enabled at all.
        let relay = || ServerSession::new(config(true), STRANGER, true);
        let t = run_on(
            relay,
            format!("{HELLO}AUTH PLAIN {PLAIN_ALICE}\r\n").as_bytes(),
        );
        assert_eq!(t.codes().last(), Some(&"502"));
        // Before EHLO, after HELO, unknown mechanism, during a transaction.
        let t = run_on(
            || ServerSession::new(submission_config(false, false), TRUSTED, true),
            format!(
                "AUTH PLAIN\r\nHELO c\r\nAUTH PLAIN\r\n{HELLO}AUTH CRAM-MD5\r\n\
                 MAIL FROM:<a@b.example>\r\nAUTH PLAIN {PLAIN_ALICE}\r\n"
            )
            .as_bytes(),
        );
        let replies = t.replies();
        assert_eq!(replies[1], "503 5.5.1 Error: send EHLO first");
        assert_eq!(replies[3], "503 5.5.1 Error: send EHLO first");
        let tail = &replies[replies.len() - 3..];
        assert_eq!(
            tail,
            [
                "504 5.5.4 Error: unrecognized authentication mechanism",
                "250 2.1.0 Ok",
                "503 5.5.1 Error: AUTH not permitted during a mail transaction",
            ]
        );
        assert_eq!(t.auth_checks, 0);
    }

    #[test]
    fn auth_plain_with_initial_response_then_again_is_refused() {
        let t = run_on(
            || submission(true),
            format!("{HELLO}AUTH PLAIN {PLAIN_ALICE}\r\nAUTH PLAIN {PLAIN_ALICE}\r\n").as_bytes(),
        );
        let replies = t.replies();
        assert_eq!(
            &replies[replies.len() - 2..],
            [
                "235 2.7.0 Authentication successful",
                "503 5.5.1 Error: already authenticated",
            ]
        );
        assert_eq!(t.auth_checks, 1);
    }

    #[test]
    fn auth_plain_and_login_challenges() {
        let t = run_on(
            || submission(true),
            format!("{HELLO}auth plain\r\n{PLAIN_ALICE}\r\n").as_bytes(),
        );
        let replies = t.replies();
        assert_eq!(
            &replies[replies.len() - 2..],
            ["334 ", "235 2.7.0 Authentication successful"]
        );
        // LOGIN, the user by address; `=` is an empty initial response.
        let t = run_on(
            || submission(true),
            format!("{HELLO}AUTH LOGIN\r\nYWxpY2VAbG9jYWwuZXhhbXBsZQ==\r\nc2VjcmV0\r\n").as_bytes(),
        );
        let replies = t.replies();
        assert_eq!(
            &replies[replies.len() - 3..],
            [
                "334 VXNlcm5hbWU6",
                "334 UGFzc3dvcmQ6",
                "235 2.7.0 Authentication successful"
            ]
        );
        let t = run_on(
            || submission(true),
            format!("{HELLO}AUTH LOGIN =\r\nc2VjcmV0\r\n").as_bytes(),
        );
        let replies = t.replies();
        assert_eq!(
            &replies[replies.len() - 2..],
            [
                "334 UGFzc3dvcmQ6",
                "535 5.7.8 Error: authentication credentials invalid"
            ]
        );
    }

    #[test]
    fn cancel_bad_base64_and_long_responses_end_the_exchange_and_the_session_goes_on() {
        let long = "A".repeat(SASL_RESPONSE_MAX + 10);
        let t = run_on(
            || submission(true),
            format!(
                "{HELLO}AUTH PLAIN\r\n*\r\nAUTH LOGIN\r\n!!!\r\nAUTH PLAIN @@@@\r\n\
                 AUTH PLAIN\r\n{long}\r\nNOOP\r\nAUTH PLAIN {PLAIN_ALICE}\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(
            after_ehlo_block(&t),
            [
                "334 ",
                "501 5.7.0 Authentication cancelled",
                "334 VXNlcm5hbWU6",
                "501 5.5.2 Error: invalid base64 in AUTH response",
                "501 5.5.2 Error: invalid base64 in AUTH response",
                "334 ",
                "500 5.5.6 Error: authentication exchange line is too long",
                "250 2.0.0 Ok",
                "235 2.7.0 Authentication successful",
            ]
        );
        assert!(!t.closed);
        assert_eq!(t.auth_checks, 1);
    }

    #[test]
    fn the_longest_plain_response_fits_and_one_more_octet_does_not() {
        // Zeros in base64: a message of NULs, read to the end and refused
        // as malformed (not as too long).
        let longest = "A".repeat(SASL_RESPONSE_MAX - 2);
        let t = run_on(
            || submission(true),
            format!("{HELLO}AUTH PLAIN\r\n{longest}\r\nAUTH PLAIN\r\n{longest}A\r\n").as_bytes(),
        );
        assert_eq!(
            after_ehlo_block(&t),
            [
                "334 ",
                "501 5.5.2 Error: malformed PLAIN message in AUTH response",
                "334 ",
                "500 5.5.6 Error: authentication exchange line is too long",
            ]
        );
    }

    #[test]
    fn wrong_passwords_get_535_and_the_third_closes_with_421() {
        let t = run_on(
            || submission(true),
            format!(
                "{HELLO}AUTH PLAIN {PLAIN_WRONG}\r\nAUTH PLAIN {PLAIN_WRONG}\r\n\
                 AUTH PLAIN {PLAIN_ALICE}\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(
            after_ehlo_block(&t),
            [
                "535 5.7.8 Error: authentication credentials invalid",
                "535 5.7.8 Error: authentication credentials invalid",
                "235 2.7.0 Authentication successful",
            ]
        );
        let t = run_on(
            || submission(true),
            format!(
                "{HELLO}{}NOOP\r\n",
                format!("AUTH PLAIN {PLAIN_WRONG}\r\n").repeat(4)
            )
            .as_bytes(),
        );
        assert_eq!(
            after_ehlo_block(&t),
            [
                "535 5.7.8 Error: authentication credentials invalid",
                "535 5.7.8 Error: authentication credentials invalid",
                "535 5.7.8 Error: authentication credentials invalid",
                "421 4.7.0 mx.test.example Error: too many failed authentication attempts",
            ]
        );
        assert!(t.closed);
        assert_eq!(t.auth_checks, 3);
    }

    #[test]
    fn authzid_may_only_name_the_user() {
        // `sales\0alice\0secret`, then `alice\0alice@local.example\0secret`.
        let t = run_on(
            || submission(true),
            format!(
                "{HELLO}AUTH PLAIN c2FsZXMAYWxpY2UAc2VjcmV0\r\n\
                 AUTH PLAIN YWxpY2UAYWxpY2VAbG9jYWwuZXhhbXBsZQBzZWNyZXQ=\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(
            after_ehlo_block(&t),
            [
                "535 5.7.8 Error: authentication credentials invalid",
                "235 2.7.0 Authentication successful",
            ]
        );
    }

    #[test]
    fn submission_needs_auth_unless_the_client_is_trusted() {
        let mail = format!("{HELLO}MAIL FROM:<x@elsewhere.example>\r\n");
        let t = run_on(|| submission(true), mail.as_bytes());
        assert_eq!(
            after_ehlo_block(&t),
            ["530 5.7.0 Error: authentication required"]
        );
        let trusted = || ServerSession::new(submission_config(false, false), TRUSTED, false);
        let t = run_on(
            trusted,
            format!("{mail}RCPT TO:<u@far.example>\r\n").as_bytes(),
        );
        assert_eq!(after_ehlo_block(&t), ["250 2.1.0 Ok", "250 2.1.5 Ok"]);
    }

    #[test]
    fn authenticated_user_relays_anywhere_with_own_sender_only() {
        let script = format!(
            "{HELLO}AUTH PLAIN {PLAIN_ALICE}\r\n\
             MAIL FROM:<bob@local.example>\r\n\
             MAIL FROM:<sales@LOCAL.example> AUTH=<>\r\nRCPT TO:<u@far.example>\r\n\
             DATA\r\nhi\r\n.\r\n\
             MAIL FROM:<>\r\nRSET\r\n"
        );
        let t = run_on(|| submission(true), script.as_bytes());
        assert_eq!(
            after_ehlo_block(&t),
            [
                "235 2.7.0 Authentication successful",
                "553 5.7.1 Error: <bob@local.example>: sender address not owned by the authenticated user",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok: queued as Q1",
                "250 2.1.0 Ok",
                "250 2.0.0 Ok",
            ]
        );
        let client = &t.messages[0].envelope.client;
        assert_eq!(client.auth.as_deref(), Some("alice"));
        assert!(client.tls);
        // The setting lets any sender through.
        let any = || ServerSession::new(submission_config(false, true), STRANGER, true);
        let t = run_on(
            any,
            format!("{HELLO}AUTH PLAIN {PLAIN_ALICE}\r\nMAIL FROM:<bob@else.example>\r\n")
                .as_bytes(),
        );
        assert_eq!(after_ehlo_block(&t)[1], "250 2.1.0 Ok");
    }

    #[test]
    fn strangers_still_cannot_relay_without_auth_on_the_relay_listener() {
        let relay = || ServerSession::new(config(true), STRANGER, true);
        let t = run_on(
            relay,
            format!("{HELLO}MAIL FROM:<a@b.example>\r\nRCPT TO:<u@far.example>\r\n").as_bytes(),
        );
        assert_eq!(
            after_ehlo_block(&t),
            [
                "250 2.1.0 Ok",
                "554 5.7.1 <u@far.example>: Relay access denied"
            ]
        );
    }

    #[test]
    fn mail_auth_parameter_needs_the_extension() {
        let relay = || ServerSession::new(config(true), TRUSTED, false);
        let t = run_on(
            relay,
            format!("{HELLO}MAIL FROM:<a@b.example> AUTH=<>\r\n").as_bytes(),
        );
        assert_eq!(
            after_ehlo_block(&t),
            ["555 5.5.4 Error: parameter AUTH not supported"]
        );
        let trusted = || ServerSession::new(submission_config(false, false), TRUSTED, false);
        let t = run_on(
            trusted,
            format!("{HELLO}MAIL FROM:<a@b.example> AUTH=<a+2Bb@b.example>\r\n").as_bytes(),
        );
        assert_eq!(after_ehlo_block(&t), ["250 2.1.0 Ok"]);
    }

    #[test]
    fn starttls_forgets_an_authentication_made_in_clear() {
        let clear = || ServerSession::new(submission_config(true, false), STRANGER, false);
        let t = run_on(
            clear,
            format!("{HELLO}AUTH PLAIN {PLAIN_ALICE}\r\nSTARTTLS\r\n").as_bytes(),
        );
        assert_eq!(t.starttls, 1);
        let mut session = ServerSession::new(submission_config(true, false), STRANGER, false);
        let t = run_with(
            &mut session,
            format!("{HELLO}AUTH PLAIN {PLAIN_ALICE}\r\nSTARTTLS\r\n").as_bytes(),
        );
        assert_eq!(t.codes()[t.codes().len() - 2..], ["235", "220"]);
        assert_eq!(
            session.authenticated.as_ref().map(|u| u.name.as_str()),
            None
        );
        let t = run_with(
            &mut session,
            format!("{HELLO}MAIL FROM:<alice@local.example>\r\n").as_bytes(),
        );
        assert_eq!(
            after_ehlo_block(&t),
            ["530 5.7.0 Error: authentication required"]
        );
    }

    #[test]
    fn pipelined_commands_wait_for_the_password_check() {
        let mut session = submission(true);
        session.receive(
            format!("{HELLO}AUTH PLAIN {PLAIN_ALICE}\r\nMAIL FROM:<alice@local.example>\r\n")
                .as_bytes(),
        );
        let SessionEvent::Authenticate { login, password } = session.poll() else {
            panic!("no Authenticate event");
        };
        assert_eq!((login.as_str(), password.as_str()), ("alice", "secret"));
        // Until the answer comes, nothing else runs (and no second event).
        assert!(matches!(session.poll(), SessionEvent::NeedInput));
        assert!(!String::from_utf8_lossy(session.output()).contains("2.1.0"));
        assert_eq!(
            session.authenticated.as_ref().map(|u| u.name.as_str()),
            None
        );
        session.auth_done(check_password(&login, &password));
        assert!(matches!(session.poll(), SessionEvent::NeedInput));
        let output = String::from_utf8_lossy(session.output()).into_owned();
        assert!(output.ends_with("235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n"));
        assert_eq!(
            session.authenticated.as_ref().map(|u| u.name.as_str()),
            Some("alice")
        );
    }

    #[test]
    fn shutdown_during_an_exchange_says_goodbye() {
        let mut session = submission(true);
        let t = run_with(&mut session, format!("{HELLO}AUTH LOGIN\r\n").as_bytes());
        assert_eq!(t.codes().last(), Some(&"334"));
        assert!(session.shutting_down());
        let t = run_with(&mut session, b"");
        assert_eq!(t.codes(), ["421"]);
        assert!(t.closed);
    }

    #[test]
    fn random_auth_scripts_never_panic_and_split_reads_agree() {
        // No STARTTLS: bytes after it differ by design between one read
        // (discarded) and later reads (the TLS session's).
        let fragments: [&[u8]; 15] = [
            b"EHLO c\r\n",
            b"AUTH PLAIN\r\n",
            b"AUTH LOGIN\r\n",
            b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
            b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n",
            b"AUTH LOGIN YWxpY2U=\r\n",
            b"AGFsaWNlAHNlY3JldA==\r\n",
            b"c2VjcmV0\r\n",
            b"*\r\n",
            b"=\r\n",
            b"!!\r\n",
            b"MAIL FROM:<alice@local.example> AUTH=<>\r\n",
            b"RCPT TO:<u@far.example>\r\n",
            b"DATA\r\nx\r\n.\r\n",
            &[b'A'; 1100],
        ];
        let mut rng = fastrand::Rng::with_seed(4954);
        for _ in 0..300 {
            let mut script = Vec::new();
            for _ in 0..20 {
                script.extend_from_slice(fragments[rng.usize(..fragments.len())]);
            }
            let plaintext = rng.bool();
            let t = run_on(
                || ServerSession::new(submission_config(plaintext, false), STRANGER, false),
                &script,
            );
            for line in t.replies() {
                let bytes = line.as_bytes();
                assert!(
                    bytes.len() >= 4
                        && bytes[..3].iter().all(u8::is_ascii_digit)
                        && (bytes[3] == b' ' || bytes[3] == b'-'),
                    "malformed reply line {line:?}"
                );
            }
        }
    }

    #[test]
    fn hard_error_limit_ends_the_session_with_421() {
        let mut session = limited_session(3, 1000);
        let t = run_with(
            &mut session,
            b"EHLO c.example\r\nBOGUS\r\nRCPT TO:<u@d.example>\r\nMAIL FROM:<a\r\nNOOP\r\n",
        );
        assert!(t.closed);
        assert_eq!(
            after_ehlo(&t),
            [
                "500 5.5.2 Error: command unrecognized",
                "503 5.5.1 Error: need MAIL command",
                "501 5.5.2 Error: syntax: MAIL FROM:<address>",
                "421 4.7.0 mx.test.example Error: too many errors",
            ]
        );
        // Overlong lines and bare control bytes count as well.
        let mut session = limited_session(2, 1000);
        let mut input = vec![b'x'; 2000];
        input.extend_from_slice(b"\r\nNO\0OP\r\nNOOP\r\n");
        let t = run_with(&mut session, &input);
        assert!(t.closed);
        assert_eq!(t.codes(), ["220", "500", "500", "421"]);
        // Without a line end, the overlong line alone still closes at once.
        let mut session = limited_session(1, 1000);
        let t = run_with(&mut session, &[b'x'; 600]);
        assert!(t.closed);
        assert_eq!(t.codes(), ["220", "500", "421"]);
    }

    #[test]
    fn an_accepted_message_resets_the_error_count() {
        let mut session = limited_session(2, 1000);
        let t = run_with(
            &mut session,
            &script(&[
                HELLO,
                "BOGUS\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@d.example>\r\n",
                "DATA\r\nhi\r\n.\r\nBOGUS\r\nNOOP\r\nBOGUS\r\n",
            ]),
        );
        assert_eq!(t.messages.len(), 1);
        assert_eq!(
            after_ehlo(&t),
            [
                "500 5.5.2 Error: command unrecognized",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok: queued as Q1",
                "500 5.5.2 Error: command unrecognized",
                "250 2.0.0 Ok",
                "500 5.5.2 Error: command unrecognized",
                "421 4.7.0 mx.test.example Error: too many errors",
            ]
        );
    }

    #[test]
    fn storage_failures_and_timeouts_are_not_client_errors() {
        let mut session = limited_session(1, 1000);
        session.receive(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@d.example>\r\nDATA\r\nx\r\n.\r\n");
        assert!(matches!(session.poll(), SessionEvent::Message(_)));
        session.message_stored(Err(&SpoolError::Full { used: 1, limit: 1 }));
        assert!(matches!(session.poll(), SessionEvent::NeedInput));
    }

    #[test]
    fn junk_commands_beyond_the_free_ones_count_as_errors() {
        let mut session = limited_session(2, 1000);
        let mut script = "NOOP\r\n".repeat(JUNK_COMMANDS_FREE as usize);
        script.push_str("RSET\r\n");
        let t = run_with(&mut session, script.as_bytes());
        assert!(!t.closed);
        let t = run_with(&mut session, b"HELP\r\n");
        assert!(t.closed);
        assert_eq!(
            t.replies().last().copied(),
            Some("421 4.7.0 mx.test.example Error: too many errors")
        );
    }

    #[test]
    fn messages_per_connection_limit_answers_mail_with_421() {
        let mut session = limited_session(20, 2);
        let one = "MAIL FROM:<a@b.example>\r\nRCPT TO:<u@d.example>\r\nDATA\r\nx\r\n.\r\n";
        let t = run_with(&mut session, &script(&[HELLO, one, one, one, "NOOP\r\n"]));
        assert_eq!(t.messages.len(), 2);
        assert!(t.closed);
        assert_eq!(
            after_ehlo(&t).last().copied(),
            Some(
                "421 4.7.0 mx.test.example Error: too many messages in one connection, reconnect to send more"
            )
        );
        assert_eq!(t.codes().iter().filter(|c| **c == "421").count(), 1);
    }

    #[test]
    fn deadline_restarts_per_command_and_paces_content() {
        let mut session = new_session(false, false);
        let start = session.deadline();
        assert_eq!(start.within, COMMAND_TIMEOUT_DEFAULT);
        // A partial command line is not progress: the clock keeps running.
        session.receive(b"NO");
        assert!(matches!(session.poll(), SessionEvent::NeedInput));
        assert_eq!(session.deadline(), start);
        session.receive(b"OP\r\n");
        assert!(matches!(session.poll(), SessionEvent::NeedInput));
        let after_noop = session.deadline();
        assert_ne!(after_noop.unit, start.unit);
        session.receive(
            b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@d.example>\r\nDATA\r\n",
        );
        assert!(matches!(session.poll(), SessionEvent::NeedInput));
        let data = session.deadline();
        assert_eq!(data.within, DATA_TIMEOUT_DEFAULT);
        // Content buys time at the minimum rate (500 bytes/s here).
        session.receive(format!("{}\r\n", "a".repeat(98)).repeat(10).as_bytes());
        assert!(matches!(session.poll(), SessionEvent::NeedInput));
        let later = session.deadline();
        assert_eq!(later.unit, data.unit);
        assert_eq!(later.within, DATA_TIMEOUT_DEFAULT + Duration::from_secs(2));
        session.receive(b".\r\n");
        assert!(matches!(session.poll(), SessionEvent::Message(_)));
        session.message_stored(Ok("Q1".into()));
        let next = session.deadline();
        assert_ne!(next.unit, later.unit);
        assert_eq!(next.within, COMMAND_TIMEOUT_DEFAULT);
    }
}
