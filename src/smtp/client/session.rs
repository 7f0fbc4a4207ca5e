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
use crate::smtp::reply::class_label;

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

    /// All bytes to send, as a buffer of their own: `spare` (emptied) takes
    /// the output's place, so a runtime that writes whole buffers swaps two
    /// buffers back and forth instead of copying message content.
    pub fn take_output(&mut self, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        std::mem::replace(&mut self.output, spare)
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
        if matches!(self.phase, Phase::Closed(_)) || self.close_if_quitting() {
            return;
        }
        self.abort(
            CloseReason::PeerClosed,
            &ReceivedReply::local(451, (4, 4, 2), "connection closed by the peer"),
        );
    }

    /// The runtime's read timer (`read_timeout()`) expired.
    pub fn timed_out(&mut self) {
        if matches!(self.phase, Phase::Closed(_)) || self.close_if_quitting() {
            return;
        }
        metrics::counter!("tern_smtp_client_timeouts_total").increment(1);
        self.abort(
            CloseReason::TimedOut,
            &ReceivedReply::local(451, (4, 4, 2), "timed out waiting for the peer's reply"),
        );
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
        metrics::counter!("tern_smtp_client_replies_total", "class" => class_label(reply.code))
            .increment(1);
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
            Phase::Quitting(_) => {
                self.close_if_quitting();
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

    /// After QUIT: closes with the reason QUIT was sent for. False in any
    /// other phase.
    fn close_if_quitting(&mut self) -> bool {
        let Phase::Quitting(reason) = &mut self.phase else {
            return false;
        };
        let reason = std::mem::replace(reason, CloseReason::Quit);
        self.close(reason);
        true
    }

    fn close(&mut self, reason: CloseReason) {
        self.reader.clear();
        self.phase = Phase::Closed(reason);
    }

    fn protocol_error(&mut self, detail: String) {
        metrics::counter!("tern_smtp_client_protocol_errors_total").increment(1);
        // After QUIT only its reply was due; the connection is over anyway.
        if self.close_if_quitting() {
            return;
        }
        let pending = ReceivedReply::local(451, (4, 5, 0), &format!("protocol error: {detail}"));
        self.abort(CloseReason::ProtocolError(detail), &pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{BodyType, Envelope};
    use crate::smtp::client::transaction::tests::envelope;

    const EHLO_PLAIN: &[u8] = b"250-mx.b.example\r\n250 8BITMIME\r\n";
    const EHLO_PIPELINING: &[u8] = b"250-mx.b.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n";

    fn session(tls: TlsPolicy) -> ClientSession {
        ClientSession::new(
            Arc::new(ClientConfig::new("relay.a.example".into(), tls)),
            false,
        )
    }

    /// Feeds `input`, polls until the session waits for the runtime, and
    /// returns what it wrote and every event.
    fn exchange(session: &mut ClientSession, input: &[u8]) -> (String, Vec<ClientEvent>) {
        session.receive(input);
        let mut events = Vec::new();
        loop {
            let event = session.poll();
            let more = matches!(event, ClientEvent::TransactionDone(_));
            events.push(event);
            if !more {
                break;
            }
        }
        (take_output(session), events)
    }

    fn take_output(session: &mut ClientSession) -> String {
        String::from_utf8_lossy(&session.take_output(Vec::new())).into_owned()
    }

    /// A session past greeting and EHLO with the given EHLO reply.
    fn ready(ehlo: &[u8]) -> ClientSession {
        let mut client = session(TlsPolicy::Off);
        assert_eq!(
            exchange(&mut client, b"220 mx.b.example ESMTP\r\n"),
            (
                "EHLO relay.a.example\r\n".into(),
                vec![ClientEvent::NeedInput]
            )
        );
        assert_eq!(
            exchange(&mut client, ehlo),
            (String::new(), vec![ClientEvent::Ready])
        );
        client
    }

    fn send(
        client: &mut ClientSession,
        env: &Envelope,
        recipients: &[usize],
        data: &[u8],
    ) -> String {
        client
            .start_transaction(OutboundTransaction {
                trace: &[],
                envelope: env,
                recipients: recipients.to_vec(),
                data,
            })
            .unwrap();
        take_output(client)
    }

    fn reply(code: u16, enhanced: (u8, u16, u16), text: &str) -> ReceivedReply {
        ReceivedReply {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    fn done(outcomes: Vec<(usize, RecipientOutcome)>) -> ClientEvent {
        ClientEvent::TransactionDone(TransactionResult { outcomes })
    }

    fn delivered() -> RecipientOutcome {
        RecipientOutcome::Delivered(reply(250, (2, 0, 0), "queued"))
    }

    #[test]
    fn happy_path_lock_step() {
        let mut client = ready(EHLO_PLAIN);
        let mut env = envelope(&["b@b.example"]);
        env.body = BodyType::EightBitMime;
        assert_eq!(
            send(&mut client, &env, &[0], b"Subject: x\r\n\r\nhi\r\n"),
            "MAIL FROM:<alice@a.example> BODY=8BITMIME\r\n"
        );
        assert_eq!(client.read_timeout(), MAIL_TIMEOUT_DEFAULT);
        assert_eq!(
            exchange(&mut client, b"250 2.1.0 ok\r\n"),
            (
                "RCPT TO:<b@b.example>\r\n".into(),
                vec![ClientEvent::NeedInput]
            )
        );
        assert_eq!(client.read_timeout(), RCPT_TIMEOUT_DEFAULT);
        assert_eq!(
            exchange(&mut client, b"250 2.1.5 ok\r\n"),
            ("DATA\r\n".into(), vec![ClientEvent::NeedInput])
        );
        assert_eq!(client.read_timeout(), DATA_INIT_TIMEOUT_DEFAULT);
        assert_eq!(
            exchange(&mut client, b"354 go ahead\r\n"),
            (
                "Subject: x\r\n\r\nhi\r\n.\r\n".into(),
                vec![ClientEvent::NeedInput]
            )
        );
        assert_eq!(client.read_timeout(), DATA_TERM_TIMEOUT_DEFAULT);
        assert_eq!(
            exchange(&mut client, b"250 2.0.0 queued\r\n"),
            (
                String::new(),
                vec![done(vec![(0, delivered())]), ClientEvent::Ready]
            )
        );
        client.quit();
        assert_eq!(
            exchange(&mut client, b""),
            ("QUIT\r\n".into(), vec![ClientEvent::NeedInput])
        );
        assert_eq!(
            exchange(&mut client, b"221 2.0.0 bye\r\n"),
            (String::new(), vec![ClientEvent::Closed(CloseReason::Quit)])
        );
    }

    #[test]
    fn happy_path_pipelined_in_one_write() {
        let mut client = ready(EHLO_PIPELINING);
        let env = envelope(&["b@b.example", "c@b.example"]);
        assert_eq!(
            send(&mut client, &env, &[0, 1], b"hi\r\n"),
            "MAIL FROM:<alice@a.example>\r\nRCPT TO:<b@b.example>\r\nRCPT TO:<c@b.example>\r\nDATA\r\n"
        );
        assert_eq!(
            exchange(&mut client, b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
            ("hi\r\n.\r\n".into(), vec![ClientEvent::NeedInput])
        );
        assert_eq!(
            exchange(&mut client, b"250 2.0.0 queued\r\n"),
            (
                String::new(),
                vec![
                    done(vec![(0, delivered()), (1, delivered())]),
                    ClientEvent::Ready
                ]
            )
        );
    }

    #[test]
    fn chunking_sends_raw_bytes_with_bdat() {
        let mut client = ready(b"250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SIZE 100\r\n");
        let env = envelope(&["b@b.example"]);
        let data = b".not stuffed\r\nend";
        assert_eq!(
            send(&mut client, &env, &[0], data),
            "MAIL FROM:<alice@a.example> SIZE=17\r\nRCPT TO:<b@b.example>\r\nBDAT 17 LAST\r\n.not stuffed\r\nend"
        );
        assert_eq!(client.read_timeout(), MAIL_TIMEOUT_DEFAULT);
        assert_eq!(
            exchange(&mut client, b"250 ok\r\n250 ok\r\n250 2.0.0 queued\r\n"),
            (
                String::new(),
                vec![done(vec![(0, delivered())]), ClientEvent::Ready]
            )
        );
    }

    #[test]
    fn chunking_lock_step_and_refused_chunk_resets() {
        let mut client = ready(b"250-mx\r\n250 CHUNKING\r\n");
        let env = envelope(&["b@b.example"]);
        send(&mut client, &env, &[0], b"x\r\n");
        exchange(&mut client, b"250 ok\r\n");
        assert_eq!(
            exchange(&mut client, b"250 ok\r\n"),
            ("BDAT 3 LAST\r\nx\r\n".into(), vec![ClientEvent::NeedInput])
        );
        assert_eq!(client.read_timeout(), DATA_TERM_TIMEOUT_DEFAULT);
        assert_eq!(
            exchange(&mut client, b"554 5.6.0 no\r\n"),
            ("RSET\r\n".into(), vec![ClientEvent::NeedInput])
        );
        let refused = RecipientOutcome::PermFailed(reply(554, (5, 6, 0), "no"));
        assert_eq!(
            exchange(&mut client, b"250 ok\r\n"),
            (
                String::new(),
                vec![done(vec![(0, refused)]), ClientEvent::Ready]
            )
        );
    }

    #[test]
    fn chunking_pipelined_all_rcpts_failed_resets() {
        let mut client = ready(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n");
        let env = envelope(&["x@b.example"]);
        // The chunk is already on its way with the pipelined BDAT.
        assert!(send(&mut client, &env, &[0], b"x\r\n").ends_with("BDAT 3 LAST\r\nx\r\n"));
        assert_eq!(
            exchange(
                &mut client,
                b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n"
            ),
            ("RSET\r\n".into(), vec![ClientEvent::NeedInput])
        );
        let refused = RecipientOutcome::PermFailed(reply(550, (5, 1, 1), "no"));
        assert_eq!(
            exchange(&mut client, b"250 ok\r\n").1,
            vec![done(vec![(0, refused)]), ClientEvent::Ready]
        );
    }

    #[test]
    fn helo_fallback() {
        for code in ["500", "502", "504", "550"] {
            let mut client = session(TlsPolicy::Opportunistic);
            exchange(&mut client, b"220 old.example\r\n");
            assert_eq!(
                exchange(&mut client, format!("{code} what?\r\n").as_bytes()),
                (
                    "HELO relay.a.example\r\n".into(),
                    vec![ClientEvent::NeedInput]
                )
            );
            assert_eq!(
                exchange(&mut client, b"250 old.example\r\n"),
                (String::new(), vec![ClientEvent::Ready])
            );
            assert_eq!(client.extensions(), &Extensions::default());
        }
    }

    #[test]
    fn helo_refused_quits() {
        let mut client = session(TlsPolicy::Off);
        exchange(&mut client, b"220 x\r\n");
        assert_eq!(
            exchange(&mut client, b"554 5.7.1 go away\r\n"),
            ("QUIT\r\n".into(), vec![ClientEvent::NeedInput])
        );
        client.peer_closed();
        assert_eq!(
            client.poll(),
            ClientEvent::Closed(CloseReason::HelloRefused(reply(554, (5, 7, 1), "go away")))
        );
        // HELO refused after the EHLO fallback.
        let mut client = session(TlsPolicy::Off);
        exchange(&mut client, b"220 x\r\n");
        exchange(&mut client, b"502 no\r\n");
        assert_eq!(
            exchange(&mut client, b"501 bad\r\n"),
            ("QUIT\r\n".into(), vec![ClientEvent::NeedInput])
        );
    }

    #[test]
    fn greeting_refused() {
        let mut client = session(TlsPolicy::Off);
        assert_eq!(client.read_timeout(), GREETING_TIMEOUT_DEFAULT);
        assert_eq!(
            exchange(&mut client, b"554 no mail here\r\n"),
            ("QUIT\r\n".into(), vec![ClientEvent::NeedInput])
        );
        let refusal = ReceivedReply {
            code: 554,
            enhanced: None,
            text: "no mail here".into(),
        };
        assert_eq!(
            exchange(&mut client, b"221 bye\r\n"),
            (
                String::new(),
                vec![ClientEvent::Closed(CloseReason::GreetingRefused(refusal))]
            )
        );
        let mut client = session(TlsPolicy::Off);
        assert_eq!(
            exchange(&mut client, b"421 busy\r\n").0,
            "",
            "no QUIT after a 421 greeting"
        );
        assert!(matches!(
            client.poll(),
            ClientEvent::Closed(CloseReason::GreetingRefused(_))
        ));
    }

    #[test]
    fn starttls_opportunistic_offered() {
        let mut client = session(TlsPolicy::Opportunistic);
        exchange(&mut client, b"220 mx\r\n");
        assert_eq!(
            exchange(&mut client, b"250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n"),
            ("STARTTLS\r\n".into(), vec![ClientEvent::NeedInput])
        );
        // A reply injected behind the 220 is dropped, not read after TLS.
        assert_eq!(
            exchange(&mut client, b"220 2.0.0 go\r\n250 injected\r\n"),
            (String::new(), vec![ClientEvent::StartTls])
        );
        client.receive(b"250 more injected\r\n");
        assert_eq!(client.poll(), ClientEvent::StartTls);
        client.tls_started();
        assert_eq!(client.extensions(), &Extensions::default());
        assert_eq!(
            exchange(&mut client, b""),
            (
                "EHLO relay.a.example\r\n".into(),
                vec![ClientEvent::NeedInput]
            )
        );
        // Under TLS, STARTTLS is not sent again even if offered.
        assert_eq!(
            exchange(&mut client, b"250-mx\r\n250-STARTTLS\r\n250 CHUNKING\r\n"),
            (String::new(), vec![ClientEvent::Ready])
        );
        assert!(client.extensions().chunking);
        assert!(!client.extensions().pipelining);
    }

    #[test]
    fn starttls_opportunistic_refused_or_not_offered_goes_on_in_clear() {
        let mut client = session(TlsPolicy::Opportunistic);
        exchange(&mut client, b"220 mx\r\n");
        exchange(&mut client, b"250-mx\r\n250 STARTTLS\r\n");
        assert_eq!(
            exchange(&mut client, b"454 4.7.0 TLS not available\r\n"),
            (String::new(), vec![ClientEvent::Ready])
        );
        let mut client = session(TlsPolicy::Opportunistic);
        exchange(&mut client, b"220 mx\r\n");
        assert_eq!(
            exchange(&mut client, EHLO_PLAIN),
            (String::new(), vec![ClientEvent::Ready])
        );
    }

    #[test]
    fn starttls_off_never_sent() {
        let mut client = session(TlsPolicy::Off);
        exchange(&mut client, b"220 mx\r\n");
        assert_eq!(
            exchange(&mut client, b"250-mx\r\n250 STARTTLS\r\n"),
            (String::new(), vec![ClientEvent::Ready])
        );
    }

    #[test]
    fn starttls_required() {
        // Not offered.
        let mut client = session(TlsPolicy::Required);
        exchange(&mut client, b"220 mx\r\n");
        assert_eq!(
            exchange(&mut client, EHLO_PLAIN),
            ("QUIT\r\n".into(), vec![ClientEvent::NeedInput])
        );
        assert_eq!(
            exchange(&mut client, b"221 bye\r\n").1,
            vec![ClientEvent::Closed(CloseReason::TlsRequiredButUnavailable)]
        );
        // Offered, refused.
        let mut client = session(TlsPolicy::Required);
        exchange(&mut client, b"220 mx\r\n");
        exchange(&mut client, b"250-mx\r\n250 STARTTLS\r\n");
        assert_eq!(
            exchange(&mut client, b"454 no\r\n"),
            ("QUIT\r\n".into(), vec![ClientEvent::NeedInput])
        );
        client.timed_out();
        assert_eq!(
            client.poll(),
            ClientEvent::Closed(CloseReason::TlsRequiredButUnavailable)
        );
        // Offered and accepted.
        let mut client = session(TlsPolicy::Required);
        exchange(&mut client, b"220 mx\r\n");
        exchange(&mut client, b"250-mx\r\n250 STARTTLS\r\n");
        assert_eq!(
            exchange(&mut client, b"220 go\r\n").1,
            vec![ClientEvent::StartTls]
        );
        client.tls_started();
        assert_eq!(exchange(&mut client, b"").0, "EHLO relay.a.example\r\n");
        assert_eq!(
            exchange(&mut client, EHLO_PLAIN).1,
            vec![ClientEvent::Ready]
        );
        // Implicit TLS: nothing to negotiate.
        let config = Arc::new(ClientConfig::new("r".into(), TlsPolicy::Required));
        let mut client = ClientSession::new(config, true);
        exchange(&mut client, b"220 mx\r\n");
        assert_eq!(
            exchange(&mut client, EHLO_PLAIN).1,
            vec![ClientEvent::Ready]
        );
    }

    #[test]
    fn size_refusal_is_local_and_keeps_connection() {
        let mut client = ready(b"250-mx\r\n250 SIZE 10\r\n");
        let env = envelope(&["b@b.example", "c@b.example"]);
        let refused = client
            .start_transaction(OutboundTransaction {
                trace: &[],
                envelope: &env,
                recipients: vec![0, 1],
                data: b"01234567890",
            })
            .unwrap_err();
        assert_eq!(refused.outcomes.len(), 2);
        for (_, outcome) in &refused.outcomes {
            let RecipientOutcome::PermFailed(reply) = outcome else {
                panic!("{outcome:?}");
            };
            assert_eq!((reply.code, reply.enhanced), (552, Some((5, 3, 4))));
            assert!(reply.text.starts_with("local: "));
        }
        assert_eq!(client.output(), b"");
        assert_eq!(client.poll(), ClientEvent::Ready);
        // Exactly the limit is fine.
        assert_eq!(
            send(&mut client, &env, &[0], b"0123456789"),
            "MAIL FROM:<alice@a.example> SIZE=10\r\n"
        );
    }

    #[test]
    fn smtputf8_refusal() {
        let mut client = ready(EHLO_PLAIN);
        let mut env = envelope(&["bö@b.example"]);
        env.smtputf8 = true;
        let refused = client
            .start_transaction(OutboundTransaction {
                trace: &[],
                envelope: &env,
                recipients: vec![0],
                data: b"x\r\n",
            })
            .unwrap_err();
        let RecipientOutcome::PermFailed(reply) = &refused.outcomes[0].1 else {
            panic!("{refused:?}");
        };
        assert_eq!((reply.code, reply.enhanced), (553, Some((5, 6, 7))));
        assert!(reply.text.starts_with("local: "));
        // Offered: sent with the SMTPUTF8 parameter.
        let mut client = ready(b"250-mx\r\n250 SMTPUTF8\r\n");
        assert_eq!(
            send(&mut client, &env, &[0], b"x\r\n"),
            "MAIL FROM:<alice@a.example> SMTPUTF8\r\n"
        );
    }

    #[test]
    fn mixed_rcpt_results() {
        let mut client = ready(EHLO_PIPELINING);
        let env = envelope(&["nobody@b.example", "b@b.example", "later@b.example"]);
        send(&mut client, &env, &[0, 1, 2], b"x\r\n");
        assert_eq!(
            exchange(
                &mut client,
                b"250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n451 4.2.0 later\r\n354 go\r\n"
            ),
            ("x\r\n.\r\n".into(), vec![ClientEvent::NeedInput])
        );
        assert_eq!(
            exchange(&mut client, b"250 2.0.0 queued\r\n").1,
            vec![
                done(vec![
                    (
                        0,
                        RecipientOutcome::PermFailed(reply(550, (5, 1, 1), "no such user"))
                    ),
                    (1, delivered()),
                    (
                        2,
                        RecipientOutcome::TempFailed(reply(451, (4, 2, 0), "later"))
                    ),
                ]),
                ClientEvent::Ready
            ]
        );
    }

    #[test]
    fn all_rcpts_failed_pipelined_sends_no_data_and_resets() {
        let mut client = ready(EHLO_PIPELINING);
        let env = envelope(&["x@b.example", "y@b.example"]);
        send(&mut client, &env, &[0, 1], b"secret\r\n");
        assert_eq!(
            exchange(
                &mut client,
                b"250 ok\r\n550 5.1.1 no\r\n450 4.2.1 busy\r\n554 5.5.1 no valid recipients\r\n"
            ),
            ("RSET\r\n".into(), vec![ClientEvent::NeedInput])
        );
        assert_eq!(
            exchange(&mut client, b"250 2.0.0 ok\r\n").1,
            vec![
                done(vec![
                    (0, RecipientOutcome::PermFailed(reply(550, (5, 1, 1), "no"))),
                    (
                        1,
                        RecipientOutcome::TempFailed(reply(450, (4, 2, 1), "busy"))
                    ),
                ]),
                ClientEvent::Ready
            ]
        );
        // Reusable.
        assert!(send(&mut client, &env, &[1], b"x\r\n").starts_with("MAIL FROM:"));
    }

    #[test]
    fn all_rcpts_failed_pipelined_but_peer_says_354() {
        let mut client = ready(EHLO_PIPELINING);
        let env = envelope(&["x@b.example"]);
        send(&mut client, &env, &[0], b"secret\r\n");
        assert_eq!(
            exchange(&mut client, b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n"),
            (".\r\n".into(), vec![ClientEvent::NeedInput])
        );
        assert_eq!(
            exchange(&mut client, b"554 5.5.1 no recipients\r\n").1,
            vec![
                done(vec![(
                    0,
                    RecipientOutcome::PermFailed(reply(550, (5, 1, 1), "no"))
                )]),
                ClientEvent::Ready
            ]
        );
    }

    #[test]
    fn all_rcpts_failed_lock_step_resets_without_data() {
        let mut client = ready(EHLO_PLAIN);
        let env = envelope(&["x@b.example"]);
        send(&mut client, &env, &[0], b"secret\r\n");
        exchange(&mut client, b"250 ok\r\n");
        assert_eq!(
            exchange(&mut client, b"550 5.1.1 no\r\n"),
            ("RSET\r\n".into(), vec![ClientEvent::NeedInput])
        );
        assert_eq!(exchange(&mut client, b"250 ok\r\n").1.len(), 2);
        assert_eq!(client.poll(), ClientEvent::Ready);
    }

    #[test]
    fn mail_451_fails_every_recipient() {
        let tempfail = RecipientOutcome::TempFailed(reply(451, (4, 3, 0), "try later"));
        // Lock-step: done at once, nothing more sent.
        let mut client = ready(EHLO_PLAIN);
        let env = envelope(&["x@b.example", "y@b.example"]);
        send(&mut client, &env, &[0, 1], b"x\r\n");
        assert_eq!(
            exchange(&mut client, b"451 4.3.0 try later\r\n"),
            (
                String::new(),
                vec![
                    done(vec![(0, tempfail.clone()), (1, tempfail.clone())]),
                    ClientEvent::Ready
                ]
            )
        );
        // Pipelined: the 503s to RCPT and DATA are expected; no RSET needed.
        let mut client = ready(EHLO_PIPELINING);
        send(&mut client, &env, &[0, 1], b"x\r\n");
        assert_eq!(
            exchange(
                &mut client,
                b"451 4.3.0 try later\r\n503 5.5.1 no\r\n503 5.5.1 no\r\n503 5.5.1 no\r\n"
            ),
            (
                String::new(),
                vec![
                    done(vec![(0, tempfail.clone()), (1, tempfail)]),
                    ClientEvent::Ready
                ]
            )
        );
    }

    #[test]
    fn data_554_fails_accepted_recipients() {
        // Refused after the content.
        let mut client = ready(EHLO_PIPELINING);
        let env = envelope(&["x@b.example"]);
        send(&mut client, &env, &[0], b"spam\r\n");
        exchange(&mut client, b"250 ok\r\n250 ok\r\n354 go\r\n");
        let refused = RecipientOutcome::PermFailed(reply(554, (5, 7, 1), "spam"));
        assert_eq!(
            exchange(&mut client, b"554 5.7.1 spam\r\n"),
            (
                String::new(),
                vec![done(vec![(0, refused.clone())]), ClientEvent::Ready]
            )
        );
        // Refused at the DATA command: RSET before the next transaction.
        send(&mut client, &env, &[0], b"spam\r\n");
        assert_eq!(
            exchange(&mut client, b"250 ok\r\n250 ok\r\n554 5.7.1 spam\r\n"),
            ("RSET\r\n".into(), vec![ClientEvent::NeedInput])
        );
        assert_eq!(
            exchange(&mut client, b"250 ok\r\n").1,
            vec![done(vec![(0, refused)]), ClientEvent::Ready]
        );
    }

    #[test]
    fn service_closing_mid_transaction() {
        let mut client = ready(EHLO_PLAIN);
        let env = envelope(&["x@b.example", "y@b.example"]);
        send(&mut client, &env, &[0, 1], b"x\r\n");
        exchange(&mut client, b"250 ok\r\n");
        exchange(&mut client, b"550 5.1.1 no\r\n");
        let closing = reply(421, (4, 3, 2), "shutting down");
        assert_eq!(
            exchange(&mut client, b"421 4.3.2 shutting down\r\n"),
            (
                String::new(),
                vec![
                    done(vec![
                        (0, RecipientOutcome::PermFailed(reply(550, (5, 1, 1), "no"))),
                        (1, RecipientOutcome::TempFailed(closing.clone())),
                    ]),
                    ClientEvent::Closed(CloseReason::ServiceClosing(closing))
                ]
            )
        );
        // Closed stays closed.
        client.receive(b"250 ok\r\n");
        assert!(matches!(client.poll(), ClientEvent::Closed(_)));
    }

    #[test]
    fn unsolicited_421_while_idle_closes() {
        let mut client = ready(EHLO_PLAIN);
        assert!(matches!(
            exchange(&mut client, b"421 4.4.2 idle too long\r\n").1[..],
            [ClientEvent::Closed(CloseReason::ServiceClosing(_))]
        ));
        let mut client = ready(EHLO_PLAIN);
        assert!(matches!(
            exchange(&mut client, b"250 what\r\n").1[..],
            [ClientEvent::Closed(CloseReason::ProtocolError(_))]
        ));
    }

    #[test]
    fn two_transactions_on_one_connection() {
        let mut client = ready(EHLO_PIPELINING);
        let env = envelope(&["x@b.example"]);
        for _ in 0..2 {
            assert!(send(&mut client, &env, &[0], b"x\r\n").ends_with("DATA\r\n"));
            exchange(&mut client, b"250 ok\r\n250 ok\r\n354 go\r\n");
            assert_eq!(
                exchange(&mut client, b"250 2.0.0 queued\r\n").1,
                vec![done(vec![(0, delivered())]), ClientEvent::Ready]
            );
        }
    }

    #[test]
    fn dot_stuffing_on_the_wire() {
        let mut client = ready(EHLO_PIPELINING);
        let env = envelope(&["x@b.example"]);
        send(&mut client, &env, &[0], b".hidden\r\nok\r\n.\r\nlast");
        assert_eq!(
            exchange(&mut client, b"250 ok\r\n250 ok\r\n354 go\r\n").0,
            "..hidden\r\nok\r\n..\r\nlast\r\n.\r\n"
        );
    }

    #[test]
    fn malformed_reply_closes_with_pending_tempfailed() {
        let mut client = ready(EHLO_PIPELINING);
        let env = envelope(&["x@b.example"]);
        send(&mut client, &env, &[0], b"x\r\n");
        let (written, events) = exchange(&mut client, b"250 ok\r\nHELLO\r\n");
        assert_eq!(written, "");
        let [ClientEvent::TransactionDone(result), ClientEvent::Closed(CloseReason::ProtocolError(_))] =
            &events[..]
        else {
            panic!("{events:?}");
        };
        let RecipientOutcome::TempFailed(reply) = &result.outcomes[0].1 else {
            panic!("{result:?}");
        };
        assert!(reply.text.starts_with("local: protocol error"));
    }

    #[test]
    fn overlong_and_unexpected_replies_are_protocol_errors() {
        let mut long = b"220 ".to_vec();
        long.extend_from_slice(&[b'x'; 600]);
        let mut client = session(TlsPolicy::Off);
        assert!(matches!(
            exchange(&mut client, &long).1[..],
            [ClientEvent::Closed(CloseReason::ProtocolError(_))]
        ));
        let mut client = session(TlsPolicy::Off);
        assert!(matches!(
            exchange(&mut client, b"354 what\r\n").1[..],
            [ClientEvent::Closed(CloseReason::ProtocolError(_))]
        ));
        let mut client = ready(EHLO_PLAIN);
        let env = envelope(&["x@b.example"]);
        send(&mut client, &env, &[0], b"x\r\n");
        assert!(matches!(
            exchange(&mut client, b"354 go\r\n").1[..],
            [
                ClientEvent::TransactionDone(_),
                ClientEvent::Closed(CloseReason::ProtocolError(_))
            ]
        ));
    }

    #[test]
    fn data_answered_with_2xx_is_protocol_error() {
        let mut client = ready(EHLO_PIPELINING);
        let env = envelope(&["x@b.example"]);
        send(&mut client, &env, &[0], b"x\r\n");
        let events = exchange(&mut client, b"250 ok\r\n250 ok\r\n250 ok\r\n").1;
        let [ClientEvent::TransactionDone(result), ClientEvent::Closed(CloseReason::ProtocolError(_))] =
            &events[..]
        else {
            panic!("{events:?}");
        };
        assert!(matches!(
            &result.outcomes[0].1,
            RecipientOutcome::TempFailed(_)
        ));
    }

    #[test]
    fn no_sendable_recipient_refused_locally() {
        let mut client = ready(EHLO_PIPELINING);
        let env = envelope(&["x@b.example"]);
        let refused = client
            .start_transaction(OutboundTransaction {
                trace: &[],
                envelope: &env,
                recipients: vec![3],
                data: b"x\r\n",
            })
            .unwrap_err();
        assert!(matches!(
            &refused.outcomes[..],
            [(3, RecipientOutcome::PermFailed(_))]
        ));
        assert_eq!(client.output(), b"");
        assert_eq!(client.poll(), ClientEvent::Ready);
    }

    #[test]
    fn timeout_mid_transaction() {
        let mut client = ready(EHLO_PIPELINING);
        let env = envelope(&["x@b.example", "y@b.example"]);
        send(&mut client, &env, &[0, 1], b"x\r\n");
        exchange(&mut client, b"250 ok\r\n250 ok\r\n");
        client.timed_out();
        let events = exchange(&mut client, b"").1;
        let [ClientEvent::TransactionDone(result), ClientEvent::Closed(CloseReason::TimedOut)] =
            &events[..]
        else {
            panic!("{events:?}");
        };
        for (_, outcome) in &result.outcomes {
            assert!(matches!(outcome, RecipientOutcome::TempFailed(reply) if reply.code == 451));
        }
    }

    #[test]
    fn peer_closed_mid_transaction() {
        let mut client = ready(EHLO_PLAIN);
        let env = envelope(&["x@b.example"]);
        send(&mut client, &env, &[0], b"x\r\n");
        client.peer_closed();
        assert!(matches!(client.poll(), ClientEvent::TransactionDone(_)));
        assert_eq!(client.poll(), ClientEvent::Closed(CloseReason::PeerClosed));
        assert_eq!(client.output(), b"");
    }

    #[test]
    fn rset_refused_closes_after_result() {
        let mut client = ready(EHLO_PLAIN);
        let env = envelope(&["x@b.example"]);
        send(&mut client, &env, &[0], b"x\r\n");
        exchange(&mut client, b"250 ok\r\n");
        exchange(&mut client, b"550 no\r\n");
        let (written, events) = exchange(&mut client, b"500 what\r\n");
        assert_eq!(written, "QUIT\r\n");
        assert!(matches!(
            events[..],
            [ClientEvent::TransactionDone(_), ClientEvent::NeedInput]
        ));
        assert!(matches!(
            exchange(&mut client, b"221 bye\r\n").1[..],
            [ClientEvent::Closed(CloseReason::ProtocolError(_))]
        ));
    }

    #[test]
    fn start_transaction_refused_when_not_ready() {
        let mut client = session(TlsPolicy::Off);
        let env = envelope(&["x@b.example"]);
        let refused = client
            .start_transaction(OutboundTransaction {
                trace: &[],
                envelope: &env,
                recipients: vec![0],
                data: b"x",
            })
            .unwrap_err();
        assert!(matches!(&refused.outcomes[0].1, RecipientOutcome::TempFailed(r) if r.code == 451));
        assert_eq!(client.output(), b"");
    }

    #[test]
    fn quit_mid_transaction_reports_first() {
        let mut client = ready(EHLO_PLAIN);
        let env = envelope(&["x@b.example"]);
        send(&mut client, &env, &[0], b"x\r\n");
        client.quit();
        let (written, events) = exchange(&mut client, b"");
        assert_eq!(written, "QUIT\r\n");
        assert!(matches!(
            events[..],
            [ClientEvent::TransactionDone(_), ClientEvent::NeedInput]
        ));
        client.peer_closed();
        assert_eq!(client.poll(), ClientEvent::Closed(CloseReason::Quit));
    }

    #[test]
    fn random_bytes_never_panic() {
        let env = envelope(&["x@b.example", "y@b.example"]);
        let mut rng = fastrand::Rng::with_seed(5321);
        let alphabet = b"0123459 -.\r\n\xffSTARTLS";
        for round in 0..500 {
            let mut client = session(TlsPolicy::Opportunistic);
            // Half the rounds start from a valid opening so later phases get garbage too.
            if round % 2 == 0 {
                exchange(
                    &mut client,
                    b"220 mx\r\n250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n",
                );
                let _ = client.start_transaction(OutboundTransaction {
                    trace: &[],
                    envelope: &env,
                    recipients: vec![0, 1],
                    data: b"x\r\n",
                });
            }
            for _ in 0..200 {
                let len = rng.usize(1..20);
                let piece: Vec<u8> = (0..len)
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect();
                client.receive(&piece);
                match client.poll() {
                    ClientEvent::Closed(_) => break,
                    ClientEvent::StartTls => client.tls_started(),
                    ClientEvent::Ready => client.quit(),
                    _ => {}
                }
                take_output(&mut client);
            }
        }
    }

    /// A whole conversation, one entry per turn of the server: greeting,
    /// EHLO, two pipelined transactions (one with a refused recipient), QUIT.
    const SCRIPT: [&[u8]; 7] = [
        b"220 mx ESMTP\r\n",
        b"250-mx\r\n250-PIPELINING\r\n250-SIZE\r\n250 ENHANCEDSTATUSCODES\r\n",
        b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no\r\n354 go\r\n",
        b"250 2.0.0 one\r\n",
        b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n",
        b"250 2.0.0 two\r\n",
        b"221 2.0.0 bye\r\n",
    ];

    /// Runs SCRIPT, each turn fed in pieces of at most `chunk` bytes;
    /// returns everything written and every event.
    fn run_script(chunk: usize) -> (String, Vec<ClientEvent>) {
        let env = envelope(&["x@b.example", "y@b.example"]);
        let mut client = session(TlsPolicy::Off);
        let mut written = String::new();
        let mut events = Vec::new();
        let mut sent = 0;
        let mut input = SCRIPT.iter().flat_map(|turn| turn.chunks(chunk));
        loop {
            let event = client.poll();
            written.push_str(&take_output(&mut client));
            match event {
                ClientEvent::NeedInput => match input.next() {
                    Some(piece) => client.receive(piece),
                    None => client.peer_closed(),
                },
                ClientEvent::Ready => {
                    events.push(ClientEvent::Ready);
                    if sent < 2 {
                        let recipients = if sent == 0 { vec![0, 1] } else { vec![0] };
                        sent += 1;
                        client
                            .start_transaction(OutboundTransaction {
                                trace: &[],
                                envelope: &env,
                                recipients,
                                data: b"x\r\n",
                            })
                            .unwrap();
                    } else {
                        client.quit();
                    }
                }
                ClientEvent::Closed(_) => {
                    events.push(event);
                    return (written, events);
                }
                other => events.push(other),
            }
        }
    }

    #[test]
    fn byte_at_a_time_equals_all_at_once() {
        let whole = run_script(usize::MAX);
        assert_eq!(whole, run_script(1));
        assert_eq!(whole, run_script(7));
        let (written, events) = whole;
        assert_eq!(
            written,
            "EHLO relay.a.example\r\n\
MAIL FROM:<alice@a.example> SIZE=3\r\nRCPT TO:<x@b.example>\r\nRCPT TO:<y@b.example>\r\nDATA\r\nx\r\n.\r\n\
MAIL FROM:<alice@a.example> SIZE=3\r\nRCPT TO:<x@b.example>\r\nDATA\r\nx\r\n.\r\n\
QUIT\r\n"
        );
        assert_eq!(events.len(), 6);
        assert_eq!(events[5], ClientEvent::Closed(CloseReason::Quit));
    }
}
