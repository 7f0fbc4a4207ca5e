//! One outbound mail transaction (RFC 5321 3.3): the MAIL, RCPT and
//! DATA/BDAT commands it sends, lock-step or pipelined (RFC 2920), and the
//! outcome it records for each recipient from the replies.
//!
//! This module must never write anything it did not build from a checked
//! envelope (no CR, LF or other control byte from an address reaches the
//! wire), must never send message content after MAIL failed or every RCPT
//! failed when it still can hold it back, and must never panic on a reply.

use std::collections::VecDeque;

use memchr::memmem;

use super::extensions::Extensions;
use super::reply::ReceivedReply;
use super::xtext;
use crate::envelope::{BodyType, DsnRet, Envelope, Recipient};

/// A message to send over this connection.
#[derive(Debug)]
pub struct OutboundTransaction<'a> {
    pub envelope: &'a Envelope,
    /// Which of `envelope.recipients` to send in this transaction (indexes).
    pub recipients: Vec<usize>,
    /// Header fields put in front of `data` on the wire (the relay's
    /// `Received:` line): complete CRLF-ended lines, none starting with a dot.
    pub trace: &'a [u8],
    /// Message bytes as stored (CRLF lines, not dot-stuffed).
    pub data: &'a [u8],
}

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientOutcome {
    /// The final reply after DATA or BDAT LAST.
    Delivered(ReceivedReply),
    /// A 4xx at any stage that affects the recipient.
    TempFailed(ReceivedReply),
    /// A 5xx at any stage that affects the recipient.
    PermFailed(ReceivedReply),
}

impl RecipientOutcome {
    /// The outcome a reply means: 2xx delivered, 4xx temporary, anything
    /// else permanent.
    fn from_reply(reply: &ReceivedReply) -> Self {
        match reply.class() {
            2 => Self::Delivered(reply.clone()),
            4 => Self::TempFailed(reply.clone()),
            _ => Self::PermFailed(reply.clone()),
        }
    }

    /// The reply behind the outcome.
    pub fn reply(&self) -> &ReceivedReply {
        match self {
            Self::Delivered(reply) | Self::TempFailed(reply) | Self::PermFailed(reply) => reply,
        }
    }
}

/// Outcome of every recipient of one transaction, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransactionResult {
    pub outcomes: Vec<(usize, RecipientOutcome)>,
}

impl TransactionResult {
    /// The same outcome for every recipient.
    pub(super) fn all(recipients: &[usize], outcome: &RecipientOutcome) -> Self {
        Self {
            outcomes: recipients
                .iter()
                .map(|&index| (index, outcome.clone()))
                .collect(),
        }
    }
}

/// Which reply the peer owes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    Mail,
    /// RCPT of the recipient at this position of `sent`.
    Rcpt(usize),
    /// The 354 to DATA.
    Data,
    /// The reply after the content and its terminating dot.
    DataEnd,
    /// The reply after a lone dot sent because the peer gave 354 although
    /// no recipient was accepted; it decides nothing.
    DataEndIgnored,
    /// The reply to `BDAT <n> LAST` and its chunk.
    Bdat,
    Rset,
}

/// Where the transaction stands after a reply.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// More replies are owed.
    Pending,
    /// Every reply is in; the connection is ready for the next transaction.
    Done,
    /// The connection cannot be used any more.
    Fatal(Fatal),
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fatal {
    /// A reply that makes no sense at this point.
    Protocol(String),
    /// RSET refused: the peer's state is unknown.
    RsetRefused(ReceivedReply),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MailState {
    Pending,
    Accepted,
    Refused,
}

/// A transaction on the wire.
#[derive(Debug)]
pub(super) struct ActiveTransaction {
    /// Every recipient index given, in order, with its outcome once known.
    slots: Vec<(usize, Option<RecipientOutcome>)>,
    /// Positions in `slots` of the recipients sent, in RCPT order.
    sent: Vec<usize>,
    /// One RCPT command per entry of `sent` (kept for lock-step sending).
    rcpt_commands: Vec<Vec<u8>>,
    /// RCPT accepted, per entry of `sent`.
    accepted: Vec<bool>,
    /// What follows an accepted DATA (dot-stuffed content and terminator),
    /// or the whole `BDAT <n> LAST` command with its chunk.
    content: Vec<u8>,
    chunking: bool,
    pipelined: bool,
    mail: MailState,
    expects: VecDeque<Expect>,
}

const LONE_DOT: &[u8] = b".\r\n";
const RSET: &[u8] = b"RSET\r\n";
const DATA: &[u8] = b"DATA\r\n";

impl ActiveTransaction {
    /// Checks the transaction against the peer's extensions and writes its
    /// first commands to `out`. Refuses with the outcome of every recipient
    /// when nothing can be sent (see `ClientSession::start_transaction`).
    pub(super) fn start(
        tx: &OutboundTransaction<'_>,
        extensions: &Extensions,
        out: &mut Vec<u8>,
    ) -> Result<Self, TransactionResult> {
        if let Some(limit) = extensions.size_limit() {
            if (tx.trace.len() + tx.data.len()) as u64 > limit {
                let reply = ReceivedReply::local(
                    552,
                    (5, 3, 4),
                    &format!("message size exceeds the peer's fixed maximum of {limit} octets"),
                );
                return Err(TransactionResult::all(
                    &tx.recipients,
                    &RecipientOutcome::PermFailed(reply),
                ));
            }
        }
        // RFC 6531 3.5: never downgrade a message that needs SMTPUTF8.
        if tx.envelope.smtputf8 && !extensions.smtputf8 {
            let reply =
                ReceivedReply::local(553, (5, 6, 7), "peer does not support SMTPUTF8 (RFC 6531)");
            return Err(TransactionResult::all(
                &tx.recipients,
                &RecipientOutcome::PermFailed(reply),
            ));
        }
        if !wire_safe(&tx.envelope.sender) {
            let reply =
                ReceivedReply::local(501, (5, 1, 7), "sender address has control characters");
            return Err(TransactionResult::all(
                &tx.recipients,
                &RecipientOutcome::PermFailed(reply),
            ));
        }

        let mut slots = Vec::with_capacity(tx.recipients.len());
        let mut sent = Vec::new();
        let mut rcpt_commands = Vec::new();
        for &index in &tx.recipients {
            let outcome = match tx.envelope.recipients.get(index) {
                None => Some(RecipientOutcome::PermFailed(ReceivedReply::local(
                    554,
                    (5, 3, 0),
                    "no such recipient in the envelope",
                ))),
                Some(recipient) if !recipient_wire_safe(recipient) => {
                    Some(RecipientOutcome::PermFailed(ReceivedReply::local(
                        553,
                        (5, 1, 3),
                        "recipient address has control characters",
                    )))
                }
                Some(recipient) => {
                    sent.push(slots.len());
                    rcpt_commands.push(rcpt_command(recipient, extensions));
                    None
                }
            };
            slots.push((index, outcome));
        }
        if sent.is_empty() {
            return Err(TransactionResult {
                outcomes: slots
                    .into_iter()
                    .filter_map(|(index, outcome)| outcome.map(|outcome| (index, outcome)))
                    .collect(),
            });
        }

        let size = tx.trace.len() + tx.data.len();
        // Room for the BDAT command, or for the CRLF, the final dot and a
        // few stuffed dots: the content is built once, in place.
        let mut content = Vec::with_capacity(size + 64);
        if extensions.chunking {
            content.extend_from_slice(format!("BDAT {size} LAST\r\n").as_bytes());
            content.extend_from_slice(tx.trace);
            content.extend_from_slice(tx.data);
        } else {
            content.extend_from_slice(tx.trace);
            dot_stuff_into(tx.data, &mut content);
        }
        let mut active = Self {
            accepted: vec![false; sent.len()],
            slots,
            sent,
            rcpt_commands,
            content,
            chunking: extensions.chunking,
            pipelined: extensions.pipelining,
            mail: MailState::Pending,
            expects: VecDeque::new(),
        };
        out.extend_from_slice(&mail_command(
            tx.envelope,
            tx.trace.len() + tx.data.len(),
            extensions,
        ));
        active.expects.push_back(Expect::Mail);
        if active.pipelined {
            // RFC 2920: MAIL, every RCPT and DATA (or BDAT) go in one write.
            for position in 0..active.rcpt_commands.len() {
                active.send_rcpt(position, out);
            }
            active.send_data_or_bdat(out);
        }
        Ok(active)
    }

    /// The reply the peer owes next, if any.
    pub(super) fn expecting(&self) -> Option<Expect> {
        self.expects.front().copied()
    }

    /// Takes the next reply of the peer; writes whatever must follow to `out`.
    pub(super) fn on_reply(&mut self, reply: &ReceivedReply, out: &mut Vec<u8>) -> Step {
        let Some(expect) = self.expects.pop_front() else {
            return Step::Fatal(Fatal::Protocol(format!(
                "reply {} when none was due",
                reply.code
            )));
        };
        let class = reply.class();
        let final_class = matches!(class, 2 | 4 | 5);
        match expect {
            Expect::Mail if final_class => {
                if class == 2 {
                    self.mail = MailState::Accepted;
                    if !self.pipelined {
                        self.send_rcpt(0, out);
                    }
                } else {
                    self.mail = MailState::Refused;
                    let outcome = RecipientOutcome::from_reply(reply);
                    for &slot in &self.sent {
                        set_outcome(&mut self.slots, slot, &outcome);
                    }
                }
            }
            Expect::Rcpt(position) if final_class => {
                if self.mail == MailState::Accepted {
                    if class == 2 {
                        if let Some(accepted) = self.accepted.get_mut(position) {
                            *accepted = true;
                        }
                    } else if let Some(&slot) = self.sent.get(position) {
                        set_outcome(&mut self.slots, slot, &RecipientOutcome::from_reply(reply));
                    }
                }
                if !self.pipelined {
                    if position + 1 < self.rcpt_commands.len() {
                        self.send_rcpt(position + 1, out);
                    } else if self.any_accepted() {
                        self.send_data_or_bdat(out);
                    } else {
                        self.send_rset(out);
                    }
                }
            }
            Expect::Data if class == 3 => {
                if self.any_accepted() {
                    hand_over(&mut self.content, out);
                    self.expects.push_back(Expect::DataEnd);
                } else {
                    // The peer wants content nobody will receive: end it at once.
                    out.extend_from_slice(LONE_DOT);
                    self.expects.push_back(Expect::DataEndIgnored);
                }
            }
            // A 2xx to DATA itself would mean content nobody asked for.
            Expect::Data if matches!(class, 4 | 5) => self.content_reply(reply, out),
            Expect::Bdat if final_class => self.content_reply(reply, out),
            Expect::DataEnd if final_class => self.set_accepted_outcomes(reply),
            Expect::DataEndIgnored if final_class => {}
            Expect::Rset if class == 2 => {}
            Expect::Rset if final_class => {
                return Step::Fatal(Fatal::RsetRefused(reply.clone()));
            }
            _ => {
                return Step::Fatal(Fatal::Protocol(format!(
                    "unexpected reply {} to {expect:?}",
                    reply.code
                )));
            }
        }
        if self.expects.is_empty() {
            Step::Done
        } else {
            Step::Pending
        }
    }

    /// The result, with `pending` for every recipient still without an
    /// outcome (the connection ended before its reply).
    pub(super) fn finish(self, pending: &RecipientOutcome) -> TransactionResult {
        TransactionResult {
            outcomes: self
                .slots
                .into_iter()
                .map(|(index, outcome)| (index, outcome.unwrap_or_else(|| pending.clone())))
                .collect(),
        }
    }

    /// The final reply to DATA (a refusal) or to BDAT LAST goes to every
    /// accepted recipient.
    fn content_reply(&mut self, reply: &ReceivedReply, out: &mut Vec<u8>) {
        self.set_accepted_outcomes(reply);
        // After a refused DATA/BDAT the peer still holds the transaction;
        // RSET makes the connection reusable.
        if reply.class() != 2 && self.mail == MailState::Accepted {
            self.send_rset(out);
        }
    }

    fn any_accepted(&self) -> bool {
        self.mail == MailState::Accepted && self.accepted.contains(&true)
    }

    /// Gives the final reply to every accepted recipient still open.
    fn set_accepted_outcomes(&mut self, reply: &ReceivedReply) {
        if !self.any_accepted() {
            return;
        }
        let outcome = RecipientOutcome::from_reply(reply);
        for (&slot, _) in self.sent.iter().zip(&self.accepted).filter(|(_, &ok)| ok) {
            set_outcome(&mut self.slots, slot, &outcome);
        }
    }

    fn send_rcpt(&mut self, position: usize, out: &mut Vec<u8>) {
        if let Some(command) = self.rcpt_commands.get(position) {
            out.extend_from_slice(command);
            self.expects.push_back(Expect::Rcpt(position));
        }
    }

    fn send_data_or_bdat(&mut self, out: &mut Vec<u8>) {
        if self.chunking {
            // BDAT carries its chunk right behind the command (RFC 3030 2).
            hand_over(&mut self.content, out);
            self.expects.push_back(Expect::Bdat);
        } else {
            out.extend_from_slice(DATA);
            self.expects.push_back(Expect::Data);
        }
    }

    fn send_rset(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(RSET);
        self.expects.push_back(Expect::Rset);
    }
}

/// Records an outcome unless the recipient already has one.
fn set_outcome(
    slots: &mut [(usize, Option<RecipientOutcome>)],
    slot: usize,
    outcome: &RecipientOutcome,
) {
    if let Some((_, current @ None)) = slots.get_mut(slot) {
        *current = Some(outcome.clone());
    }
}

/// No control character may reach a command line.
fn wire_safe(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

fn recipient_wire_safe(recipient: &Recipient) -> bool {
    wire_safe(&recipient.address)
}

/// `MAIL FROM:<sender>` with the parameters the peer understands.
fn mail_command(envelope: &Envelope, size: usize, extensions: &Extensions) -> Vec<u8> {
    let mut command = format!("MAIL FROM:<{}>", envelope.sender);
    if extensions.size.is_some() {
        command.push_str(&format!(" SIZE={size}"));
    }
    // Without 8BITMIME at the peer the message goes without BODY=, as
    // Postfix does by default: most such peers pass 8-bit data anyway.
    if envelope.body == BodyType::EightBitMime && extensions.eightbitmime {
        command.push_str(" BODY=8BITMIME");
    }
    if envelope.smtputf8 {
        command.push_str(" SMTPUTF8");
    }
    if extensions.dsn {
        match envelope.ret {
            Some(DsnRet::Full) => command.push_str(" RET=FULL"),
            Some(DsnRet::Headers) => command.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &envelope.envid {
            command.push_str(" ENVID=");
            command.push_str(&xtext::encode(envid));
        }
    }
    command.push_str("\r\n");
    command.into_bytes()
}

/// `RCPT TO:<address>` with NOTIFY/ORCPT when the peer has DSN.
fn rcpt_command(recipient: &Recipient, extensions: &Extensions) -> Vec<u8> {
    let mut command = format!("RCPT TO:<{}>", recipient.address);
    if extensions.dsn {
        let notify = recipient.notify;
        if notify.explicit {
            let kinds: Vec<&str> = [
                (notify.success, "SUCCESS"),
                (notify.failure, "FAILURE"),
                (notify.delay, "DELAY"),
            ]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
            command.push_str(" NOTIFY=");
            if kinds.is_empty() {
                command.push_str("NEVER");
            } else {
                command.push_str(&kinds.join(","));
            }
        }
        if let Some(orcpt) = &recipient.orcpt {
            command.push_str(" ORCPT=");
            command.push_str(&xtext::encode(orcpt));
        }
    }
    command.push_str("\r\n");
    command.into_bytes()
}

/// Moves `content` to the end of `out`; when `out` is empty (the usual
/// case: everything before it was written) the buffer itself changes hands
/// and no byte is copied.
fn hand_over(content: &mut Vec<u8>, out: &mut Vec<u8>) {
    if out.is_empty() {
        std::mem::swap(content, out);
    } else {
        out.append(content);
    }
}

/// DATA content for the wire (RFC 5321 4.5.2), appended to `out`: a `.`
/// doubled at the start of every line, a CRLF added when the data does not
/// end in one, then the terminating `.` line. One SIMD scan for LF-dot
/// pairs finds every line that needs stuffing; the runs between are copied
/// whole.
fn dot_stuff_into(data: &[u8], out: &mut Vec<u8>) {
    let mut run_start = 0;
    if data.first() == Some(&b'.') {
        out.push(b'.');
    }
    for lf in memmem::find_iter(data, b"\n.") {
        let dot = lf + 1;
        out.extend_from_slice(data.get(run_start..dot).unwrap_or_default());
        out.push(b'.');
        run_start = dot;
    }
    out.extend_from_slice(data.get(run_start..).unwrap_or_default());
    if !data.is_empty() && !data.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(LONE_DOT);
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::envelope::{ClientInfo, Notify};
    use std::net::{IpAddr, Ipv4Addr};

    /// An envelope from alice@a.example to the given addresses.
    pub(in crate::smtp::client) fn envelope(recipients: &[&str]) -> Envelope {
        Envelope {
            sender: "alice@a.example".into(),
            body: BodyType::SevenBit,
            smtputf8: false,
            ret: None,
            envid: None,
            declared_size: None,
            recipients: recipients
                .iter()
                .map(|address| Recipient {
                    address: (*address).into(),
                    notify: Notify::default(),
                    orcpt: None,
                })
                .collect(),
            client: ClientInfo {
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                helo: "client.example".into(),
                esmtp: true,
                tls: false,
                auth: None,
            },
            received_at_ms: 0,
        }
    }

    fn dot_stuff(data: &[u8]) -> Vec<u8> {
        let mut out = b"trace\r\n".to_vec();
        dot_stuff_into(data, &mut out);
        out.split_off(b"trace\r\n".len())
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots() {
        assert_eq!(
            dot_stuff(b".a\r\nb\r\n.\r\n..c\r\n"),
            b"..a\r\nb\r\n..\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b"a.b\r\n"), b"a.b\r\n.\r\n");
    }

    #[test]
    fn dot_stuffing_agrees_with_a_line_by_line_reference() {
        fn reference(data: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let mut at_line_start = true;
            for &byte in data {
                if at_line_start && byte == b'.' {
                    out.push(b'.');
                }
                out.push(byte);
                at_line_start = byte == b'\n';
            }
            if !data.is_empty() && !data.ends_with(b"\r\n") {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            out
        }
        for data in crate::test_util::every_string(b".\r\na", 6) {
            assert_eq!(dot_stuff(&data), reference(&data), "{data:?}");
        }
    }

    #[test]
    fn dot_stuffing_ends_data_with_crlf() {
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"x\r\n"), b"x\r\n.\r\n");
    }

    #[test]
    fn mail_command_parameters_follow_extensions() {
        let mut env = envelope(&["b@b.example"]);
        env.body = BodyType::EightBitMime;
        env.smtputf8 = true;
        env.ret = Some(DsnRet::Headers);
        env.envid = Some("id+1=x y".into());
        let none = Extensions::default();
        assert_eq!(
            mail_command(&env, 10, &none),
            b"MAIL FROM:<alice@a.example> SMTPUTF8\r\n"
        );
        let all = Extensions {
            size: Some(0),
            eightbitmime: true,
            dsn: true,
            ..Extensions::default()
        };
        assert_eq!(
            String::from_utf8(mail_command(&env, 10, &all)).unwrap(),
            "MAIL FROM:<alice@a.example> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+3Dx+20y\r\n"
        );
        env.sender.clear();
        assert!(mail_command(&env, 0, &none).starts_with(b"MAIL FROM:<> "));
    }

    #[test]
    fn rcpt_command_dsn_parameters() {
        let recipient = Recipient {
            address: "b@b.example".into(),
            notify: Notify {
                explicit: true,
                success: true,
                failure: false,
                delay: true,
            },
            orcpt: Some("rfc822;b+x=y@b.example\u{1}é".into()),
        };
        let dsn = Extensions {
            dsn: true,
            ..Extensions::default()
        };
        assert_eq!(
            String::from_utf8(rcpt_command(&recipient, &dsn)).unwrap(),
            "RCPT TO:<b@b.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+2Bx+3Dy@b.example+01+C3+A9\r\n"
        );
        assert_eq!(
            rcpt_command(&recipient, &Extensions::default()),
            b"RCPT TO:<b@b.example>\r\n"
        );
        let never = Recipient {
            notify: Notify {
                explicit: true,
                ..Notify::default()
            },
            orcpt: None,
            ..recipient
        };
        assert_eq!(
            rcpt_command(&never, &dsn),
            b"RCPT TO:<b@b.example> NOTIFY=NEVER\r\n"
        );
    }

    #[test]
    fn control_characters_in_addresses_refused_locally() {
        let mut env = envelope(&["ok@b.example", "bad\r\nRSET@b.example"]);
        let mut out = Vec::new();
        let tx = OutboundTransaction {
            trace: &[],
            envelope: &env,
            recipients: vec![0, 1, 7],
            data: b"x\r\n",
        };
        let active = ActiveTransaction::start(&tx, &Extensions::default(), &mut out).unwrap();
        assert_eq!(out, b"MAIL FROM:<alice@a.example>\r\n");
        let result = active.finish(&RecipientOutcome::TempFailed(ReceivedReply::local(
            451,
            (4, 4, 2),
            "test",
        )));
        let codes: Vec<(usize, u16)> = result
            .outcomes
            .iter()
            .map(|(index, outcome)| (*index, outcome.reply().code))
            .collect();
        assert_eq!(codes, [(0, 451), (1, 553), (7, 554)]);

        env.sender = "a\n@a.example".into();
        let tx = OutboundTransaction {
            trace: &[],
            envelope: &env,
            recipients: vec![0],
            data: b"x\r\n",
        };
        let refused = ActiveTransaction::start(&tx, &Extensions::default(), &mut out).unwrap_err();
        assert_eq!(refused.outcomes[0].1.reply().code, 501);
    }

    #[test]
    fn trace_header_goes_first_and_counts_towards_size() {
        let env = envelope(&["b@b.example"]);
        let trace = b"Received: from x\r\n";
        let extensions = Extensions {
            pipelining: true,
            size: Some(1000),
            ..Extensions::default()
        };
        let tx = OutboundTransaction {
            trace,
            envelope: &env,
            recipients: vec![0],
            data: b".dot\r\n",
        };
        let mut out = Vec::new();
        let active = ActiveTransaction::start(&tx, &extensions, &mut out).unwrap();
        let sent = String::from_utf8(out).unwrap();
        assert!(
            sent.starts_with("MAIL FROM:<alice@a.example> SIZE=24\r\n"),
            "{sent}"
        );
        assert_eq!(active.content, b"Received: from x\r\n..dot\r\n.\r\n");

        let chunked = Extensions {
            chunking: true,
            ..extensions
        };
        let mut out = Vec::new();
        ActiveTransaction::start(&tx, &chunked, &mut out).unwrap();
        // Pipelined BDAT goes out with MAIL and RCPT.
        assert!(
            out.ends_with(b"BDAT 24 LAST\r\nReceived: from x\r\n.dot\r\n"),
            "{}",
            String::from_utf8_lossy(&out)
        );

        let small = Extensions {
            size: Some(20),
            ..Extensions::default()
        };
        let refused = ActiveTransaction::start(&tx, &small, &mut Vec::new()).unwrap_err();
        assert_eq!(refused.outcomes[0].1.reply().code, 552);
    }
}
