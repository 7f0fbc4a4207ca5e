//! The client-side SMTP session state machine (RFC 5321 with EHLO/HELO
//! fallback, STARTTLS, PIPELINING, CHUNKING, SIZE, 8BITMIME, SMTPUTF8 and
//! DSN): it drives one outbound connection from the greeting through any
//! number of transactions to QUIT. Replies from the peer go in through
//! [`ClientSession::receive`], commands come out of
//! [`ClientSession::output`], and [`ClientSession::poll`] tells the
//! runtime what to do next.
//!
//! Sans-IO: this module must never touch a socket, a clock, a thread or an
//! async runtime, must never act on bytes received in clear after the `220`
//! to STARTTLS (RFC 3207 4.2), and must never panic on any reply.

use std::sync::Arc;
use std::time::Duration;

use super::extensions::Extensions;
use super::reply::{ReceivedReply, ReplyReader};
use super::transaction::{
    ActiveTransaction, Expect, Fatal, OutboundTransaction, RecipientOutcome, Step,
    TransactionResult,
};

/// Initial 220 message (RFC 5321 4.5.3.2.1).
pub const GREETING_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// MAIL command (RFC 5321 4.5.3.2.2).
pub const MAIL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// RCPT command (RFC 5321 4.5.3.2.3).
pub const RCPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// DATA initiation (RFC 5321 4.5.3.2.4).
pub const DATA_INIT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2 * 60);
/// Data block (RFC 5321 4.5.3.2.5).
pub const DATA_BLOCK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3 * 60);
/// DATA termination (RFC 5321 4.5.3.2.6).
pub const DATA_TERM_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10 * 60);

/// When to use STARTTLS (RFC 3207).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Use it when offered; go on in clear when not offered or refused.
    Opportunistic,
    /// Use it or give up on the connection.
    Required,
    /// Never.
    Off,
}

/// Settings shared by all outbound sessions of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    pub tls: TlsPolicy,
    /// RFC 5321 4.5.3.2.1; also used for the EHLO/HELO and STARTTLS replies,
    /// which RFC 5321 gives no timeout of their own.
    pub greeting_timeout: Duration,
    /// RFC 5321 4.5.3.2.2; also used for RSET and QUIT.
    pub mail_timeout: Duration,
    /// RFC 5321 4.5.3.2.3.
    pub rcpt_timeout: Duration,
    /// RFC 5321 4.5.3.2.4.
    pub data_init_timeout: Duration,
    /// RFC 5321 4.5.3.2.5, for each write of message content.
    pub data_block_timeout: Duration,
    /// RFC 5321 4.5.3.2.6, also for the reply to BDAT LAST.
    pub data_term_timeout: Duration,
}

impl ClientConfig {
    /// A config with the timeouts of RFC 5321 4.5.3.2.
    pub fn new(helo_name: String, tls: TlsPolicy) -> Self {
        Self {
            helo_name,
            tls,
            greeting_timeout: GREETING_TIMEOUT_DEFAULT,
            mail_timeout: MAIL_TIMEOUT_DEFAULT,
            rcpt_timeout: RCPT_TIMEOUT_DEFAULT,
            data_init_timeout: DATA_INIT_TIMEOUT_DEFAULT,
            data_block_timeout: DATA_BLOCK_TIMEOUT_DEFAULT,
            data_term_timeout: DATA_TERM_TIMEOUT_DEFAULT,
        }
    }
}

/// What the runtime must do after [`ClientSession::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Write `output()` if non-empty, then read and call `receive` (or
    /// `peer_closed` on EOF, `timed_out` after `read_timeout()`).
    NeedInput,
    /// Write `output()`, then run the TLS handshake and call `tls_started`.
    StartTls,
    /// Greeting and EHLO done, or the previous transaction done: call
    /// `start_transaction` or `quit`.
    Ready,
    /// Every recipient of the transaction has its outcome.
    TransactionDone(TransactionResult),
    /// The connection is finished; write `output()` first if non-empty.
    Closed(CloseReason),
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// After our QUIT (and its reply, or EOF).
    Quit,
    /// 4xx/5xx greeting (554: do not try this host again soon).
    GreetingRefused(ReceivedReply),
    /// EHLO and HELO refused with a reply that is not 421.
    HelloRefused(ReceivedReply),
    /// The peer sent 421: it is closing the connection (RFC 5321 3.8).
    ServiceClosing(ReceivedReply),
    /// Policy Required, and the peer lacks STARTTLS or refused it.
    TlsRequiredButUnavailable,
    /// Malformed or overlong reply, or a reply code that makes no sense.
    ProtocolError(String),
    TimedOut,
    /// EOF from the peer.
    PeerClosed,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the 220 greeting.
    Greeting,
    /// EHLO (`esmtp`) or HELO sent.
    Hello {
        esmtp: bool,
    },
    /// STARTTLS sent.
    StartTls,
    /// StartTls event out; waiting for `tls_started`.
    Handshake,
    /// Ready event out; waiting for `start_transaction` or `quit`.
    Idle,
    Transaction(ActiveTransaction),
    /// QUIT sent; the next reply, EOF or timeout closes with the reason.
    Quitting(CloseReason),
    Closed(CloseReason),
}

/// One outbound SMTP session.
#[derive(Debug)]
pub struct ClientSession {
    config: Arc<ClientConfig>,
    tls_active: bool,
    extensions: Extensions,
    phase: Phase,
    reader: ReplyReader,
    output: Vec<u8>,
    /// A finished transaction's result, handed out by the next poll.
    done: Option<TransactionResult>,
}

const QUIT: &[u8] = b"QUIT\r\n";
const STARTTLS: &[u8] = b"STARTTLS\r\n";

/// Codes to EHLO after which HELO is tried (RFC 5321 3.2; 550 from some
/// old servers).
const EHLO_UNSUPPORTED: [u16; 4] = [500, 502, 504, 550];

impl ClientSession {
    /// A session on a new connection, waiting for the greeting.
    /// `tls_active` is true on implicit-TLS connections: no STARTTLS then.
    pub fn new(config: Arc<ClientConfig>, tls_active: bool) -> Self {
        Self {
            config,
            tls_active,
            extensions: Extensions::default(),
            phase: Phase::Greeting,
            reader: ReplyReader::default(),
            output: Vec::new(),
            done: None,
        }
    }

    /// Appends bytes read from the peer. Never fails; may be called with any bytes.
    pub fn receive(&mut self, input: &[u8]) {
        match self.phase {
            // Cleartext after the 220 to STARTTLS is never used (RFC 3207 4.2).
            Phase::Handshake | Phase::Closed(_) => {}
            _ => self.reader.push(input),
        }
    }

    /// Advances the state machine over buffered replies until the runtime must act.
    pub fn poll(&mut self) -> ClientEvent {
        loop {
            if let Some(result) = self.done.take() {
                return ClientEvent::TransactionDone(result);
            }
            match &self.phase {
                Phase::Closed(reason) => return ClientEvent::Closed(reason.clone()),
                Phase::Handshake => return ClientEvent::StartTls,
                _ => {}
            }
            match self.reader.next_reply() {
                Ok(Some(reply)) => self.on_reply(reply),
                Ok(None) if matches!(self.phase, Phase::Idle) => return ClientEvent::Ready,
                Ok(None) => return ClientEvent::NeedInput,
                Err(error) => self.protocol_error(error.to_string()),
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

    /// The TLS handshake after StartTls finished: EHLO again, as RFC 3207 4.2
    /// requires, and forget what the peer said in clear.
    pub fn tls_started(&mut self) {
        if !matches!(self.phase, Phase::Handshake) {
            return;
        }
        self.tls_active = true;
        self.extensions = Extensions::default();
        self.reader.clear();
        self.send_hello(true);
    }

    /// What the peer offered in its last EHLO reply (nothing after HELO).
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Sends a transaction (only when `poll` returned Ready). Refuses, with
    /// the outcome to record for every recipient, when it cannot be sent to
    /// this peer: message larger than its SIZE -> PermFailed 552 5.3.4;
    /// SMTPUTF8 needed but not offered -> PermFailed 553 5.6.7 (RFC 6531
    /// 3.5); an address with control characters -> PermFailed 501 5.1.7 /
    /// 553 5.1.3; no session ready -> TempFailed 451 4.3.0. Locally made
    /// replies have a text starting with `local:`.
    pub fn start_transaction(
        &mut self,
        tx: OutboundTransaction<'_>,
    ) -> Result<(), TransactionResult> {
        if !matches!(self.phase, Phase::Idle) || self.done.is_some() {
            let reply =
                ReceivedReply::local(451, (4, 3, 0), "connection not ready for a transaction");
            return Err(TransactionResult::all(
                &tx.recipients,
                &RecipientOutcome::TempFailed(reply),
            ));
        }
        let active = ActiveTransaction::start(&tx, &self.extensions, &mut self.output)?;
        self.phase = Phase::Transaction(active);
        Ok(())
    }

    /// Ends the session with QUIT. A transaction still under way gives its
    /// open recipients TempFailed first.
    pub fn quit(&mut self) {
        match self.phase {
            Phase::Quitting(_) | Phase::Closed(_) => {}
            // No cleartext command may go into a TLS handshake.
            Phase::Handshake => self.phase = Phase::Closed(CloseReason::Quit),
            _ => {
                self.end_transaction(&ReceivedReply::local(
                    451,
                    (4, 3, 0),
                    "transaction abandoned at QUIT",
                ));
                self.send_quit(CloseReason::Quit);
            }
        }
    }

    /// The peer closed the connection (EOF).
    pub fn peer_closed(&mut self) {
        match &mut self.phase {
            Phase::Closed(_) => {}
            Phase::Quitting(reason) => {
                let reason = std::mem::replace(reason, CloseReason::Quit);
                self.close(reason);
            }
            _ => self.abort(
                CloseReason::PeerClosed,
                &ReceivedReply::local(451, (4, 4, 2), "connection closed by the peer"),
            ),
        }
    }

    /// The runtime's read timer (`read_timeout()`) expired.
    pub fn timed_out(&mut self) {
        match &mut self.phase {
            Phase::Closed(_) => {}
            Phase::Quitting(reason) => {
                let reason = std::mem::replace(reason, CloseReason::Quit);
                self.close(reason);
            }
            _ => {
                metrics::counter!("tern_smtp_client_timeouts_total").increment(1);
                self.abort(
                    CloseReason::TimedOut,
                    &ReceivedReply::local(451, (4, 4, 2), "timed out waiting for the peer's reply"),
                );
            }
        }
    }

    /// Which timeout the runtime must apply to the next read (RFC 5321 4.5.3.2).
    pub fn read_timeout(&self) -> Duration {
        let config = &self.config;
        match &self.phase {
            Phase::Greeting | Phase::Hello { .. } | Phase::StartTls => config.greeting_timeout,
            Phase::Transaction(tx) => match tx.expecting() {
                Some(Expect::Rcpt(_)) => config.rcpt_timeout,
                Some(Expect::Data) => config.data_init_timeout,
                Some(Expect::DataEnd | Expect::DataEndIgnored | Expect::Bdat) => {
                    config.data_term_timeout
                }
                Some(Expect::Mail | Expect::Rset) | None => config.mail_timeout,
            },
            Phase::Handshake | Phase::Idle | Phase::Quitting(_) | Phase::Closed(_) => {
                config.mail_timeout
            }
        }
    }

    /// Which timeout the runtime must apply to each write of `output()`:
    /// the data block timeout (RFC 5321 4.5.3.2.5), since content is what
    /// makes writes long.
    pub fn write_timeout(&self) -> Duration {
        self.config.data_block_timeout
    }

    fn on_reply(&mut self, reply: ReceivedReply) {
        let class = match reply.class() {
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        metrics::counter!("tern_smtp_client_replies_total", "class" => class).increment(1);
        if reply.code == 421 && !matches!(self.phase, Phase::Greeting | Phase::Quitting(_)) {
            self.abort(CloseReason::ServiceClosing(reply.clone()), &reply);
            return;
        }
        match &mut self.phase {
            Phase::Greeting => match reply.class() {
                2 if reply.code == 220 => self.send_hello(true),
                // 421: the peer is already closing; no QUIT.
                4 if reply.code == 421 => self.close(CloseReason::GreetingRefused(reply)),
                4 | 5 => self.send_quit(CloseReason::GreetingRefused(reply)),
                _ => self.protocol_error(format!("greeting with code {}", reply.code)),
            },
            Phase::Hello { esmtp } => {
                let esmtp = *esmtp;
                match reply.class() {
                    2 => {
                        self.extensions = if esmtp {
                            Extensions::from_ehlo_reply(&reply)
                        } else {
                            Extensions::default()
                        };
                        self.after_hello();
                    }
                    _ if esmtp && EHLO_UNSUPPORTED.contains(&reply.code) => self.send_hello(false),
                    4 | 5 => self.send_quit(CloseReason::HelloRefused(reply)),
                    _ => self.protocol_error(format!("reply {} to EHLO/HELO", reply.code)),
                }
            }
            Phase::StartTls => {
                if reply.code == 220 {
                    // Whatever follows the 220 in clear is an injection attempt
                    // or garbage; it must never be read as a reply (RFC 3207 4.2).
                    self.reader.clear();
                    self.phase = Phase::Handshake;
                } else if self.config.tls == TlsPolicy::Required {
                    self.send_quit(CloseReason::TlsRequiredButUnavailable);
                } else {
                    self.phase = Phase::Idle;
                }
            }
            Phase::Transaction(tx) => match tx.on_reply(&reply, &mut self.output) {
                Step::Pending => {}
                Step::Done => {
                    self.end_transaction(&ReceivedReply::local(
                        451,
                        (4, 5, 0),
                        "no reply from the peer for this recipient",
                    ));
                    self.phase = Phase::Idle;
                }
                Step::Fatal(Fatal::Protocol(detail)) => self.protocol_error(detail),
                Step::Fatal(Fatal::RsetRefused(refusal)) => {
                    self.end_transaction(&ReceivedReply::local(
                        451,
                        (4, 5, 0),
                        "peer refused RSET",
                    ));
                    self.send_quit(CloseReason::ProtocolError(format!(
                        "RSET refused with {} {}",
                        refusal.code, refusal.text
                    )));
                }
            },
            Phase::Quitting(reason) => {
                let reason = std::mem::replace(reason, CloseReason::Quit);
                self.close(reason);
            }
            Phase::Idle => self.protocol_error(format!("unsolicited reply {}", reply.code)),
            // `poll` reads no reply in these phases.
            Phase::Handshake | Phase::Closed(_) => {}
        }
    }

    /// EHLO/HELO accepted: STARTTLS if the policy and the peer allow, else ready.
    fn after_hello(&mut self) {
        let wanted = self.config.tls != TlsPolicy::Off && !self.tls_active;
        if wanted && self.extensions.starttls {
            self.output.extend_from_slice(STARTTLS);
            self.phase = Phase::StartTls;
        } else if wanted && self.config.tls == TlsPolicy::Required {
            self.send_quit(CloseReason::TlsRequiredButUnavailable);
        } else {
            self.phase = Phase::Idle;
        }
    }

    fn send_hello(&mut self, esmtp: bool) {
        let verb = if esmtp { "EHLO" } else { "HELO" };
        self.output
            .extend_from_slice(format!("{verb} {}\r\n", self.config.helo_name).as_bytes());
        self.phase = Phase::Hello { esmtp };
    }

    fn send_quit(&mut self, reason: CloseReason) {
        self.output.extend_from_slice(QUIT);
        self.phase = Phase::Quitting(reason);
    }

    /// Hands out the result of the transaction under way, if any, with
    /// `pending` (a 4xx) for every recipient still open.
    fn end_transaction(&mut self, pending: &ReceivedReply) {
        if let Phase::Transaction(_) = self.phase {
            if let Phase::Transaction(tx) = std::mem::replace(&mut self.phase, Phase::Idle) {
                self.done = Some(tx.finish(&RecipientOutcome::TempFailed(pending.clone())));
            }
        }
    }

    /// Ends the connection at once: nothing more is written or read.
    fn abort(&mut self, reason: CloseReason, pending: &ReceivedReply) {
        self.end_transaction(pending);
        self.output.clear();
        self.close(reason);
    }

    fn close(&mut self, reason: CloseReason) {
        self.reader.clear();
        self.phase = Phase::Closed(reason);
    }

    fn protocol_error(&mut self, detail: String) {
        metrics::counter!("tern_smtp_client_protocol_errors_total").increment(1);
        if let Phase::Quitting(reason) = &mut self.phase {
            // The QUIT reply is all that was due; the connection is over anyway.
            let reason = std::mem::replace(reason, CloseReason::Quit);
            self.close(reason);
            return;
        }
        let pending = ReceivedReply::local(451, (4, 5, 0), &format!("protocol error: {detail}"));
        self.abort(CloseReason::ProtocolError(detail), &pending);
    }
}
