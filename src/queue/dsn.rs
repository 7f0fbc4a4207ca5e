//! Delivery status notifications: turns per-recipient failures and delays of
//! one message into the single bounce (RFC 3464 multipart/report, RFC 6522)
//! owed to its envelope sender, honouring RET, NOTIFY, ENVID and ORCPT
//! (RFC 3461).
//!
//! This module only builds the notification. It must never send it, touch
//! the spool, read the clock (the caller passes `now_ms`), or bounce a
//! message whose sender is null (RFC 5321 4.5.5).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};

use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;

use crate::envelope::{BodyType, ClientInfo, DsnRet, Envelope, Notify, Recipient};

/// When the sender gave no `RET=`, the original is returned in full only up
/// to this size, and as headers only above it. RFC 3461 4.3 leaves the
/// choice to the MTA; this is Postfix's `bounce_size_limit` default.
pub const RETURN_FULL_DEFAULT_MAX_BYTES: usize = 50_000;

/// Longest value written into a delivery-status field, so that with its
/// field name the line stays under the 998-octet limit of RFC 5322 2.1.1.
const STATUS_FIELD_VALUE_MAX: usize = 900; // RFC 5322 2.1.1

/// Display name and local part of the From: address, as Postfix and Exim
/// use them: replies reach the postmaster's automaton, not a person.
const FROM_DISPLAY_NAME: &str = "Mail Delivery System";
const FROM_LOCAL_PART: &str = "MAILER-DAEMON";

/// Used in From:, Message-ID, HELO and Reporting-MTA when the configured name has no
/// usable characters left after sanitising (RFC 2606 reserves `.invalid`).
const FALLBACK_HOST: &str = "tern.invalid";

const SUBJECT_FAILED: &str = "Undelivered Mail Returned to Sender";
const SUBJECT_DELAYED: &str = "Delayed Mail (still being retried)";

/// Makes Message-IDs built in the same millisecond distinct.
static MESSAGE_ID_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// What happened to one recipient (RFC 3464 2.3.3); only the actions that
/// produce a non-delivery or delay report are represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    Failed,
    Delayed,
}

impl DsnAction {
    fn field_value(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
        }
    }
}

/// The outcome for one recipient of the original message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport<'a> {
    /// Index into `envelope.recipients`; reports with an index out of range
    /// are ignored.
    pub index: usize,
    pub action: DsnAction,
    /// RFC 3463 status code, e.g. `5.1.1`.
    pub status: &'a str,
    /// e.g. `smtp; 550 5.1.1 <u@example.net>: user unknown` (RFC 3464 2.3.6).
    pub diagnostic: Option<&'a str>,
    /// e.g. `dns; mx.example.net` (RFC 3464 2.3.5).
    pub remote_mta: Option<&'a str>,
    pub last_attempt_ms: Option<u64>,
    /// Meaningful for `Delayed` only (RFC 3464 2.3.9).
    pub will_retry_until_ms: Option<u64>,
}

/// Everything needed to build one notification for one message.
#[derive(Debug, Clone)]
pub struct BounceRequest<'a> {
    /// Our host name, as used in `Reporting-MTA: dns; ...`.
    pub reporting_mta: &'a str,
    pub envelope: &'a Envelope,
    /// The original message bytes as spooled.
    pub original: &'a [u8],
    pub reports: Vec<RecipientReport<'a>>,
    /// Milliseconds since the Unix epoch; the caller owns the clock.
    pub now_ms: u64,
    pub message_id_domain: &'a str,
}

/// A notification ready to be queued like any other message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// The original envelope sender, to whom the notification goes.
    pub recipient: String,
    /// Null sender, one recipient with NOTIFY=NEVER, and client info naming
    /// tern itself (127.0.0.1, HELO = reporting MTA).
    pub envelope: Envelope,
    /// The full RFC 5322 message with CRLF line ends.
    pub data: Vec<u8>,
}

/// Which part of the original goes back to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Returned {
    Full,
    Headers,
}

/// Builds the notification owed for `request`, or `None` when none is owed:
/// null sender (never bounce a bounce, RFC 3461, RFC 5321 4.5.5), or
/// every report filtered out by NOTIFY (NEVER; FAILURE not requested for
/// Failed; DELAY not requested for Delayed; without NOTIFY the RFC 3461 4.1
/// default is FAILURE,DELAY).
pub fn build_dsn(request: &BounceRequest<'_>) -> Option<Dsn> {
    let recipient = single_line(&request.envelope.sender).trim().to_string();
    if recipient.is_empty() {
        metrics::counter!("tern_dsn_suppressed_total", "reason" => "null_sender").increment(1);
        return None;
    }
    let wanted: Vec<(&RecipientReport<'_>, &Recipient)> = request
        .reports
        .iter()
        .filter_map(|report| {
            let rcpt = request.envelope.recipients.get(report.index)?;
            notify_wants(rcpt.notify, report.action).then_some((report, rcpt))
        })
        .collect();
    if wanted.is_empty() {
        metrics::counter!("tern_dsn_suppressed_total", "reason" => "notify").increment(1);
        return None;
    }
    let any_failed = wanted
        .iter()
        .any(|(report, _)| report.action == DsnAction::Failed);

    let host = host_name(request.reporting_mta);
    let original = to_crlf(request.original);
    let returned = returned_part(request.envelope.ret, any_failed, original.len());
    let human = human_explanation(&host, &wanted, any_failed, returned);
    let status = delivery_status(request, &host, &wanted);
    let returned_bytes = match returned {
        Returned::Full => original,
        Returned::Headers => header_section(&original),
    };
    let boundary = unique_boundary(&[human.as_bytes(), status.as_bytes(), &returned_bytes]);
    let returned_cte = transfer_encoding(&returned_bytes);
    let returned_type = match returned {
        Returned::Full => "message/rfc822",
        Returned::Headers => "text/rfc822-headers",
    };

    let body = MimePart::new(
        ContentType::new("multipart/report")
            .attribute("report-type", "delivery-status")
            .attribute("boundary", boundary),
        vec![
            MimePart::new("text/plain", human),
            MimePart::new(
                ContentType::new("message/delivery-status"),
                status.into_bytes(),
            )
            .transfer_encoding("7bit"),
            MimePart::new(ContentType::new(returned_type), returned_bytes)
                .transfer_encoding(returned_cte),
        ],
    );
    let subject = if any_failed {
        SUBJECT_FAILED
    } else {
        SUBJECT_DELAYED
    };
    let message = MessageBuilder::new()
        .from(Address::new_address(
            Some(FROM_DISPLAY_NAME),
            format!("{FROM_LOCAL_PART}@{host}"),
        ))
        .to(Address::new_address(None::<&str>, recipient.as_str()))
        .subject(subject)
        .date(Date::new(epoch_seconds(request.now_ms)))
        .message_id(MessageId::new(message_id(
            request.now_ms,
            request.message_id_domain,
        )))
        .header("Auto-Submitted", Raw::new("auto-replied")) // RFC 3834 5
        .header("MIME-Version", Raw::new("1.0"))
        .body(body);
    let mut data = Vec::new();
    // Writing into a Vec<u8> cannot fail, and every Content-Type above is a
    // ContentType value, the only kind mail-builder accepts for multiparts.
    message
        .write_to(&mut data)
        .expect("writing a message into a Vec cannot fail");

    let action = if any_failed { "failed" } else { "delayed" };
    metrics::counter!("tern_dsn_built_total", "action" => action).increment(1);

    let envelope = Envelope {
        sender: String::new(),
        body: if data.is_ascii() {
            BodyType::SevenBit
        } else {
            BodyType::EightBitMime
        },
        smtputf8: request.envelope.smtputf8 && (!recipient.is_ascii() || !data.is_ascii()),
        ret: None,
        envid: None,
        declared_size: u64::try_from(data.len()).ok(),
        recipients: vec![Recipient {
            address: recipient.clone(),
            // NOTIFY=NEVER: a notification about a notification is never owed.
            notify: Notify {
                explicit: true,
                success: false,
                failure: false,
                delay: false,
            },
            orcpt: None,
        }],
        client: ClientInfo {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            helo: host,
            esmtp: true,
            tls: false,
            auth: None,
        },
        received_at_ms: request.now_ms,
    };
    Some(Dsn {
        recipient,
        envelope,
        data,
    })
}

/// RFC 3461 4.1: NEVER (explicit, empty set) suppresses everything; with no
/// NOTIFY at all the default is FAILURE,DELAY.
fn notify_wants(notify: Notify, action: DsnAction) -> bool {
    let (failure, delay) = if notify.explicit {
        (notify.failure, notify.delay)
    } else {
        (true, true)
    };
    match action {
        DsnAction::Failed => failure,
        DsnAction::Delayed => delay,
    }
}

/// RET applies to failure reports only (RFC 3461 4.3); a delay-only report
/// returns headers. Without RET, small messages come back whole.
fn returned_part(ret: Option<DsnRet>, any_failed: bool, original_len: usize) -> Returned {
    if !any_failed {
        return Returned::Headers;
    }
    match ret {
        Some(DsnRet::Full) => Returned::Full,
        Some(DsnRet::Headers) => Returned::Headers,
        None if original_len <= RETURN_FULL_DEFAULT_MAX_BYTES => Returned::Full,
        None => Returned::Headers,
    }
}

/// The text/plain part for people (RFC 3464 2, first part of the report).
fn human_explanation(
    host: &str,
    wanted: &[(&RecipientReport<'_>, &Recipient)],
    any_failed: bool,
    returned: Returned,
) -> String {
    let mut text = format!("This is the mail system at host {host}.\r\n\r\n");
    if any_failed {
        text.push_str(
            "I'm sorry to have to inform you that your message could not\r\n\
             be delivered to one or more recipients.\r\n",
        );
    } else {
        text.push_str(
            "Your message could not be delivered yet to one or more recipients.\r\n\
             The mail system will keep trying; no action is needed from you.\r\n",
        );
    }
    text.push_str("\r\n");
    for (report, rcpt) in wanted {
        let outcome = match report.action {
            DsnAction::Failed => "delivery failed",
            DsnAction::Delayed => "delivery delayed",
        };
        text.push_str(&format!(
            "<{}>: {outcome} ({})",
            single_line(&rcpt.address),
            single_line(report.status)
        ));
        if let Some(diagnostic) = report.diagnostic {
            text.push_str(&format!("\r\n    {}", single_line(diagnostic)));
        }
        if let (DsnAction::Delayed, Some(until)) = (report.action, report.will_retry_until_ms) {
            text.push_str(&format!("\r\n    will retry until {}", rfc5322_date(until)));
        }
        text.push_str("\r\n\r\n");
    }
    text.push_str(match returned {
        Returned::Full => "Your message is attached below.\r\n",
        Returned::Headers => "The headers of your message are attached below.\r\n",
    });
    text
}

/// The message/delivery-status part (RFC 3464 2.2 and 2.3), pure ASCII.
fn delivery_status(
    request: &BounceRequest<'_>,
    host: &str,
    wanted: &[(&RecipientReport<'_>, &Recipient)],
) -> String {
    let mut status = format!("Reporting-MTA: dns; {host}\r\n");
    if let Some(envid) = &request.envelope.envid {
        push_field(&mut status, "Original-Envelope-Id", &ascii_field(envid));
    }
    push_field(
        &mut status,
        "Arrival-Date",
        &rfc5322_date(request.envelope.received_at_ms),
    );
    for (report, rcpt) in wanted {
        status.push_str("\r\n");
        if let Some(orcpt) = &rcpt.orcpt {
            push_field(
                &mut status,
                "Original-Recipient",
                &original_recipient(orcpt),
            );
        }
        push_field(
            &mut status,
            "Final-Recipient",
            &typed_address(&rcpt.address),
        );
        push_field(&mut status, "Action", report.action.field_value());
        push_field(&mut status, "Status", &ascii_field(report.status));
        if let Some(remote) = report.remote_mta {
            push_field(&mut status, "Remote-MTA", &ascii_field(remote));
        }
        if let Some(diagnostic) = report.diagnostic {
            push_field(&mut status, "Diagnostic-Code", &ascii_field(diagnostic));
        }
        if let Some(at) = report.last_attempt_ms {
            push_field(&mut status, "Last-Attempt-Date", &rfc5322_date(at));
        }
        if let (DsnAction::Delayed, Some(until)) = (report.action, report.will_retry_until_ms) {
            push_field(&mut status, "Will-Retry-Until", &rfc5322_date(until));
        }
    }
    status
}

fn push_field(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    out.push_str(value);
    out.push_str("\r\n");
}

/// `rfc822; addr` for ASCII addresses, `utf-8; addr-xtext` otherwise
/// (RFC 3464 2.3.2, RFC 6533 3).
fn typed_address(address: &str) -> String {
    let address = single_line(address);
    if address.is_ascii() {
        format!("rfc822; {}", ascii_field(&address))
    } else {
        format!("utf-8; {}", utf8_addr_xtext(&address))
    }
}

/// ORCPT as stored (`type;address`, xtext already decoded) becomes
/// `type; address` (RFC 3464 2.3.1); a non-ASCII address is rewritten to
/// the RFC 6533 `utf-8` type.
fn original_recipient(orcpt: &str) -> String {
    let orcpt = single_line(orcpt);
    let (addr_type, address) = match orcpt.split_once(';') {
        Some((addr_type, address)) => (addr_type.trim(), address.trim()),
        None => ("rfc822", orcpt.trim()),
    };
    if address.is_ascii() && addr_type.is_ascii() && !addr_type.is_empty() {
        ascii_field(&format!("{addr_type}; {address}"))
    } else {
        format!("utf-8; {}", utf8_addr_xtext(address))
    }
}

/// RFC 6533 3 `utf-8-addr-xtext`: QCHAR as is, anything else as `\x{HEX}`.
fn utf8_addr_xtext(address: &str) -> String {
    let mut out = String::with_capacity(address.len());
    for ch in address.chars() {
        let qchar =
            matches!(ch, '\x21'..='\x2a' | '\x2c'..='\x3c' | '\x3e'..='\x5b' | '\x5d'..='\x7e');
        if qchar {
            out.push(ch);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", u32::from(ch)));
        }
    }
    truncate_ascii(out)
}

/// A value for a delivery-status field: one line, printable ASCII only
/// (non-ASCII as RFC 6533 `\x{HEX}`), at most `STATUS_FIELD_VALUE_MAX`.
fn ascii_field(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in single_line(value).chars() {
        if ch.is_ascii() {
            out.push(ch);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", u32::from(ch)));
        }
    }
    truncate_ascii(out)
}

fn truncate_ascii(mut value: String) -> String {
    if value.len() > STATUS_FIELD_VALUE_MAX {
        // Callers only pass ASCII, so every index is a char boundary.
        value.truncate(STATUS_FIELD_VALUE_MAX);
    }
    value
}

/// Strips what could start a new header line or field: CR, LF and tabs
/// become spaces, other control characters are dropped.
fn single_line(value: &str) -> String {
    value
        .chars()
        .filter_map(|ch| match ch {
            '\r' | '\n' | '\t' => Some(' '),
            ch if ch.is_control() => None,
            ch => Some(ch),
        })
        .collect()
}

/// Keeps only characters that may appear in a host name or address
/// literal, so the value is safe in From:, HELO and Reporting-MTA.
fn host_name(host: &str) -> String {
    keep_or_fallback(host, |ch| {
        ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '[' | ']' | ':')
    })
}

/// Keeps only dot-atom host name characters, valid as the right side of a
/// Message-ID (RFC 5322 3.6.4).
fn message_id_domain(domain: &str) -> String {
    keep_or_fallback(domain, |ch| {
        ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-')
    })
}

fn keep_or_fallback(value: &str, keep: impl Fn(char) -> bool) -> String {
    let kept: String = value.chars().filter(|&ch| keep(ch)).collect();
    if kept.is_empty() {
        FALLBACK_HOST.to_string()
    } else {
        kept
    }
}

/// Unique per process and millisecond thanks to the sequence, and across
/// restarts and hosts thanks to the random part.
fn message_id(now_ms: u64, domain: &str) -> String {
    let sequence = MESSAGE_ID_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!(
        "{now_ms}.{sequence}.{:016x}@{}",
        fastrand::u64(..),
        message_id_domain(domain)
    )
}

fn epoch_seconds(ms: u64) -> i64 {
    // u64::MAX / 1000 is below i64::MAX, so this never saturates.
    i64::try_from(ms / 1000).unwrap_or(i64::MAX)
}

fn rfc5322_date(ms: u64) -> String {
    Date::new(epoch_seconds(ms)).to_rfc822()
}

/// Every bare CR or LF becomes CRLF, so the returned original cannot break
/// the CRLF framing of the report.
fn to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut iter = bytes.iter().copied().peekable();
    while let Some(byte) = iter.next() {
        match byte {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if iter.peek() == Some(&b'\n') {
                    iter.next();
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            other => out.push(other),
        }
    }
    out
}

/// The header section of a CRLF-normalised message, ending with CRLF and
/// without the blank separator line. A message without a separator is all
/// header (RFC 5322 2.1 makes the body optional).
fn header_section(message: &[u8]) -> Vec<u8> {
    if message.starts_with(b"\r\n") {
        return Vec::new();
    }
    let mut headers = match memchr::memmem::find(message, b"\r\n\r\n") {
        Some(pos) => message.get(..pos + 2).unwrap_or(message).to_vec(),
        None => message.to_vec(),
    };
    if !headers.is_empty() && !headers.ends_with(b"\r\n") {
        headers.extend_from_slice(b"\r\n");
    }
    headers
}

/// RFC 2046 5.2.1: message/* parts may only be 7bit, 8bit or binary.
fn transfer_encoding(bytes: &[u8]) -> &'static str {
    if bytes.is_ascii() {
        "7bit"
    } else {
        "8bit"
    }
}

/// A boundary that occurs in none of the parts (RFC 2046 5.1.1), so no
/// content, however hostile, can close a part early.
fn unique_boundary(parts: &[&[u8]]) -> String {
    loop {
        let candidate = format!("tern-dsn-{:032x}", fastrand::u128(..));
        let clash = parts
            .iter()
            .any(|part| memchr::memmem::find(part, candidate.as_bytes()).is_some());
        if !clash {
            return candidate;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MessagePart, MimeHeaders, PartType};

    const ORIGINAL: &[u8] = b"From: alice@example.org\r\n\
        To: bob@example.net\r\n\
        Subject: quarterly figures\r\n\
        Message-ID: <orig-1@example.org>\r\n\
        \r\n\
        The figures are attached.\r\n\
        BODY-MARKER line\r\n";

    const RECEIVED_AT_MS: u64 = 1_700_000_000_000;
    const NOW_MS: u64 = 1_700_000_600_000;

    fn rcpt(address: &str, notify: Notify, orcpt: Option<&str>) -> Recipient {
        Recipient {
            address: address.to_string(),
            notify,
            orcpt: orcpt.map(str::to_string),
        }
    }

    fn notify(success: bool, failure: bool, delay: bool) -> Notify {
        Notify {
            explicit: true,
            success,
            failure,
            delay,
        }
    }

    fn envelope(sender: &str, recipients: Vec<Recipient>) -> Envelope {
        Envelope {
            sender: sender.to_string(),
            body: BodyType::SevenBit,
            smtputf8: false,
            ret: None,
            envid: None,
            declared_size: None,
            recipients,
            client: ClientInfo {
                ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
                helo: "client.example.org".to_string(),
                esmtp: true,
                tls: false,
                auth: None,
            },
            received_at_ms: RECEIVED_AT_MS,
        }
    }

    fn three_recipients() -> Envelope {
        envelope(
            "alice@example.org",
            vec![
                rcpt(
                    "bob@example.net",
                    Notify::default(),
                    Some("rfc822;bob@example.net"),
                ),
                rcpt("carol@example.net", Notify::default(), None),
                rcpt("dave@example.net", Notify::default(), None),
            ],
        )
    }

    fn failed(index: usize) -> RecipientReport<'static> {
        RecipientReport {
            index,
            action: DsnAction::Failed,
            status: "5.1.1",
            diagnostic: Some("smtp; 550 5.1.1 <bob@example.net>: user unknown"),
            remote_mta: Some("dns; mx.example.net"),
            last_attempt_ms: Some(NOW_MS - 1_000),
            will_retry_until_ms: None,
        }
    }

    fn delayed(index: usize) -> RecipientReport<'static> {
        RecipientReport {
            index,
            action: DsnAction::Delayed,
            status: "4.4.1",
            diagnostic: Some("smtp; 421 4.4.1 try later"),
            remote_mta: Some("dns; mx.example.net"),
            last_attempt_ms: Some(NOW_MS - 2_000),
            will_retry_until_ms: Some(RECEIVED_AT_MS + 5 * 86_400_000),
        }
    }

    fn request<'a>(
        envelope: &'a Envelope,
        original: &'a [u8],
        reports: Vec<RecipientReport<'a>>,
    ) -> BounceRequest<'a> {
        BounceRequest {
            reporting_mta: "relay.example.com",
            envelope,
            original,
            reports,
            now_ms: NOW_MS,
            message_id_domain: "relay.example.com",
        }
    }

    /// The three parts of the report: human text, delivery status, original.
    fn report_parts<'m>(
        message: &'m mail_parser::Message<'m>,
    ) -> (
        &'m MessagePart<'m>,
        &'m MessagePart<'m>,
        &'m MessagePart<'m>,
    ) {
        let root = message.root_part();
        let ids = match &root.body {
            PartType::Multipart(ids) => ids.clone(),
            other => panic!("root is not multipart: {other:?}"),
        };
        assert_eq!(ids.len(), 3, "multipart/report has three parts");
        let part = |i: usize| message.part(ids[i]).expect("part exists");
        (part(0), part(1), part(2))
    }

    fn content_type(part: &MessagePart<'_>) -> String {
        let ct = part.content_type().expect("content type");
        format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
    }

    fn status_text(part: &MessagePart<'_>) -> String {
        String::from_utf8(part.contents().to_vec()).expect("delivery-status is ASCII")
    }

    /// Field groups of a delivery-status body: per-message first.
    fn status_groups(status: &str) -> Vec<Vec<(String, String)>> {
        status
            .split("\r\n\r\n")
            .filter(|group| !group.trim().is_empty())
            .map(|group| {
                group
                    .split("\r\n")
                    .filter(|line| !line.is_empty())
                    .map(|line| {
                        let (name, value) = line.split_once(": ").expect("field line");
                        (name.to_string(), value.to_string())
                    })
                    .collect()
            })
            .collect()
    }

    fn field<'g>(group: &'g [(String, String)], name: &str) -> Option<&'g str> {
        group
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn assert_crlf_only(data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            if byte == b'\n' {
                assert_eq!(data.get(i.wrapping_sub(1)), Some(&b'\r'), "bare LF at {i}");
            }
            if byte == b'\r' {
                assert_eq!(data.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
        }
    }

    #[test]
    fn failure_report_has_multipart_report_structure_and_headers() {
        let env = three_recipients();
        let dsn = build_dsn(&request(&env, ORIGINAL, vec![failed(0)])).expect("dsn owed");
        let message = MessageParser::default().parse(&dsn.data).expect("parses");

        let ct = message.root_part().content_type().expect("content type");
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));

        let from = message.from().and_then(|a| a.first()).expect("from");
        assert_eq!(from.address(), Some("MAILER-DAEMON@relay.example.com"));
        assert_eq!(from.name(), Some("Mail Delivery System"));
        let to = message.to().and_then(|a| a.first()).expect("to");
        assert_eq!(to.address(), Some("alice@example.org"));
        assert_eq!(message.subject(), Some(SUBJECT_FAILED));
        let date = message.date().expect("date");
        assert_eq!(date.to_timestamp(), i64::try_from(NOW_MS / 1000).unwrap());
        let id = message.message_id().expect("message id");
        assert!(id.ends_with("@relay.example.com"), "{id}");
        assert_eq!(
            message.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert_eq!(
            message.header_raw("MIME-Version").map(str::trim),
            Some("1.0")
        );

        let (human, status, returned) = report_parts(&message);
        assert_eq!(content_type(human), "text/plain");
        assert_eq!(content_type(status), "message/delivery-status");
        assert_eq!(content_type(returned), "message/rfc822");
        let text = human.text_contents().expect("text");
        assert!(text.contains("<bob@example.net>"), "{text}");
        assert!(text.contains("550 5.1.1"), "{text}");
        assert_eq!(dsn.recipient, "alice@example.org");
    }

    #[test]
    fn delivery_status_carries_every_field() {
        let mut env = three_recipients();
        env.envid = Some("QQ314159".to_string());
        let dsn = build_dsn(&request(&env, ORIGINAL, vec![failed(0), delayed(1)])).expect("dsn");
        let message = MessageParser::default().parse(&dsn.data).expect("parses");
        let (_, status, _) = report_parts(&message);
        let groups = status_groups(&status_text(status));
        assert_eq!(groups.len(), 3, "per-message group and one per report");

        let per_message = &groups[0];
        assert_eq!(
            field(per_message, "Reporting-MTA"),
            Some("dns; relay.example.com")
        );
        assert_eq!(field(per_message, "Original-Envelope-Id"), Some("QQ314159"));
        assert_eq!(
            field(per_message, "Arrival-Date"),
            Some(rfc5322_date(RECEIVED_AT_MS).as_str())
        );

        let bob = &groups[1];
        assert_eq!(
            field(bob, "Original-Recipient"),
            Some("rfc822; bob@example.net")
        );
        assert_eq!(
            field(bob, "Final-Recipient"),
            Some("rfc822; bob@example.net")
        );
        assert_eq!(field(bob, "Action"), Some("failed"));
        assert_eq!(field(bob, "Status"), Some("5.1.1"));
        assert_eq!(field(bob, "Remote-MTA"), Some("dns; mx.example.net"));
        assert_eq!(
            field(bob, "Diagnostic-Code"),
            Some("smtp; 550 5.1.1 <bob@example.net>: user unknown")
        );
        assert_eq!(
            field(bob, "Last-Attempt-Date"),
            Some(rfc5322_date(NOW_MS - 1_000).as_str())
        );
        assert_eq!(field(bob, "Will-Retry-Until"), None);

        let carol = &groups[2];
        assert_eq!(field(carol, "Original-Recipient"), None);
        assert_eq!(
            field(carol, "Final-Recipient"),
            Some("rfc822; carol@example.net")
        );
        assert_eq!(field(carol, "Action"), Some("delayed"));
        assert_eq!(field(carol, "Status"), Some("4.4.1"));
        assert_eq!(
            field(carol, "Will-Retry-Until"),
            Some(rfc5322_date(RECEIVED_AT_MS + 5 * 86_400_000).as_str())
        );
        // Failed and delayed together: the failure subject wins.
        assert_eq!(message.subject(), Some(SUBJECT_FAILED));
    }

    #[test]
    fn without_envid_there_is_no_original_envelope_id() {
        let env = three_recipients();
        let dsn = build_dsn(&request(&env, ORIGINAL, vec![failed(1)])).expect("dsn");
        let message = MessageParser::default().parse(&dsn.data).expect("parses");
        let (_, status, _) = report_parts(&message);
        let groups = status_groups(&status_text(status));
        assert_eq!(field(&groups[0], "Original-Envelope-Id"), None);
    }

    #[test]
    fn ret_full_returns_the_original_bytes_as_message_rfc822() {
        let mut env = three_recipients();
        env.ret = Some(DsnRet::Full);
        let dsn = build_dsn(&request(&env, ORIGINAL, vec![failed(0)])).expect("dsn");
        let message = MessageParser::default().parse(&dsn.data).expect("parses");
        let (_, _, returned) = report_parts(&message);
        assert_eq!(content_type(returned), "message/rfc822");
        let inner = returned.message().expect("nested message");
        assert_eq!(inner.subject(), Some("quarterly figures"));
        let start = returned.raw_body_offset() as usize;
        let end = returned.raw_end_offset() as usize;
        assert_eq!(&dsn.data[start..end], ORIGINAL);
    }

    #[test]
    fn ret_hdrs_returns_only_the_headers() {
        let mut env = three_recipients();
        env.ret = Some(DsnRet::Headers);
        let dsn = build_dsn(&request(&env, ORIGINAL, vec![failed(0)])).expect("dsn");
        let message = MessageParser::default().parse(&dsn.data).expect("parses");
        let (human, _, returned) = report_parts(&message);
        let text = human.text_contents().expect("text");
        assert!(text.contains("The headers of your message"), "{text}");
        assert_eq!(content_type(returned), "text/rfc822-headers");
        let headers = returned.text_contents().expect("text");
        assert!(
            headers.contains("Subject: quarterly figures\r\n"),
            "{headers}"
        );
        assert!(
            headers.contains("Message-ID: <orig-1@example.org>"),
            "{headers}"
        );
        assert!(!headers.contains("BODY-MARKER"), "{headers}");
        assert!(!find(&dsn.data, b"BODY-MARKER"));
    }

    fn find(haystack: &[u8], needle: &[u8]) -> bool {
        memchr::memmem::find(haystack, needle).is_some()
    }

    #[test]
    fn without_ret_small_messages_return_in_full_and_large_ones_as_headers() {
        let env = three_recipients();
        let dsn = build_dsn(&request(&env, ORIGINAL, vec![failed(0)])).expect("dsn");
        assert!(find(&dsn.data, b"BODY-MARKER"));

        let mut large = ORIGINAL.to_vec();
        while large.len() <= RETURN_FULL_DEFAULT_MAX_BYTES {
            large.extend_from_slice(b"padding padding padding padding padding padding\r\n");
        }
        let dsn = build_dsn(&request(&env, &large, vec![failed(0)])).expect("dsn");
        let message = MessageParser::default().parse(&dsn.data).expect("parses");
        let (_, _, returned) = report_parts(&message);
        assert_eq!(content_type(returned), "text/rfc822-headers");
        assert!(!find(&dsn.data, b"BODY-MARKER"));
        assert!(dsn.data.len() < RETURN_FULL_DEFAULT_MAX_BYTES);
    }

    #[test]
    fn delay_only_report_returns_headers_even_with_ret_full() {
        let mut env = three_recipients();
        env.ret = Some(DsnRet::Full);
        let dsn = build_dsn(&request(&env, ORIGINAL, vec![delayed(2)])).expect("dsn");
        let message = MessageParser::default().parse(&dsn.data).expect("parses");
        assert_eq!(message.subject(), Some(SUBJECT_DELAYED));
        let (_, _, returned) = report_parts(&message);
        assert_eq!(content_type(returned), "text/rfc822-headers");
        assert!(!find(&dsn.data, b"BODY-MARKER"));
    }

    #[test]
    fn null_sender_is_never_bounced() {
        let mut env = three_recipients();
        env.sender = String::new();
        assert_eq!(build_dsn(&request(&env, ORIGINAL, vec![failed(0)])), None);
        // A sender made only of line breaks is as null as an empty one.
        env.sender = "\r\n".to_string();
        assert_eq!(build_dsn(&request(&env, ORIGINAL, vec![failed(0)])), None);
    }

    #[test]
    fn notify_never_and_success_only_suppress_the_dsn() {
        for wanted in [notify(false, false, false), notify(true, false, false)] {
            let env = envelope(
                "alice@example.org",
                vec![rcpt("bob@example.net", wanted, None)],
            );
            assert_eq!(build_dsn(&request(&env, ORIGINAL, vec![failed(0)])), None);
            assert_eq!(build_dsn(&request(&env, ORIGINAL, vec![delayed(0)])), None);
        }
    }

    #[test]
    fn notify_filters_failed_and_delayed_separately() {
        let failure_only = envelope(
            "alice@example.org",
            vec![rcpt("bob@example.net", notify(false, true, false), None)],
        );
        assert!(build_dsn(&request(&failure_only, ORIGINAL, vec![failed(0)])).is_some());
        assert_eq!(
            build_dsn(&request(&failure_only, ORIGINAL, vec![delayed(0)])),
            None
        );

        let delay_only = envelope(
            "alice@example.org",
            vec![rcpt("bob@example.net", notify(false, false, true), None)],
        );
        assert_eq!(
            build_dsn(&request(&delay_only, ORIGINAL, vec![failed(0)])),
            None
        );
        assert!(build_dsn(&request(&delay_only, ORIGINAL, vec![delayed(0)])).is_some());

        let default = envelope(
            "alice@example.org",
            vec![rcpt("bob@example.net", Notify::default(), None)],
        );
        assert!(build_dsn(&request(&default, ORIGINAL, vec![failed(0)])).is_some());
        assert!(build_dsn(&request(&default, ORIGINAL, vec![delayed(0)])).is_some());
    }

    #[test]
    fn mixed_reports_keep_only_the_wanted_recipients() {
        let env = envelope(
            "alice@example.org",
            vec![
                rcpt("bob@example.net", notify(false, true, false), None),
                rcpt("carol@example.net", notify(false, false, false), None),
                rcpt("dave@example.net", notify(true, true, false), None),
                rcpt("erin@example.net", notify(false, true, false), None),
            ],
        );
        let reports = vec![failed(0), failed(1), failed(2), delayed(3), failed(99)];
        let dsn = build_dsn(&request(&env, ORIGINAL, reports)).expect("dsn");
        let message = MessageParser::default().parse(&dsn.data).expect("parses");
        let (human, status, _) = report_parts(&message);
        let groups = status_groups(&status_text(status));
        let finals: Vec<_> = groups[1..]
            .iter()
            .map(|g| field(g, "Final-Recipient").unwrap_or_default().to_string())
            .collect();
        assert_eq!(
            finals,
            ["rfc822; bob@example.net", "rfc822; dave@example.net"]
        );
        let text = human.text_contents().expect("text");
        assert!(!text.contains("carol@"), "{text}");
        assert!(!text.contains("erin@"), "{text}");
    }

    #[test]
    fn out_of_range_reports_alone_owe_nothing() {
        let env = three_recipients();
        assert_eq!(build_dsn(&request(&env, ORIGINAL, vec![failed(3)])), None);
        assert_eq!(build_dsn(&request(&env, ORIGINAL, vec![])), None);
    }

    #[test]
    fn output_uses_crlf_throughout_even_for_bare_lf_originals() {
        let mut env = three_recipients();
        env.ret = Some(DsnRet::Full);
        let lf_original = b"Subject: lf only\nFrom: a@example.org\n\nbody\rline\n";
        let dsn = build_dsn(&request(&env, lf_original, vec![failed(0), delayed(1)])).expect("dsn");
        assert_crlf_only(&dsn.data);
        let message = MessageParser::default().parse(&dsn.data).expect("parses");
        let (_, _, returned) = report_parts(&message);
        let inner = returned.message().expect("nested message");
        assert_eq!(inner.subject(), Some("lf only"));
    }

    #[test]
    fn line_breaks_in_sender_and_envid_cannot_inject_headers_or_fields() {
        let mut env = three_recipients();
        env.sender = "alice@example.org\r\nBcc: victim@example.com".to_string();
        env.envid =
            Some("ID1\r\nAction: delivered\r\n\r\nFinal-Recipient: rfc822; x@y".to_string());
        env.recipients[0].orcpt = Some("rfc822;bob@example.net\r\nStatus: 2.0.0".to_string());
        let mut report = failed(0);
        report.diagnostic = Some("smtp; 550 no\r\n\r\n--boundary\r\nX-Evil: 1");
        let dsn = build_dsn(&request(&env, ORIGINAL, vec![report])).expect("dsn");
        assert_crlf_only(&dsn.data);
        let message = MessageParser::default().parse(&dsn.data).expect("parses");
        assert!(message.header_raw("Bcc").is_none());
        assert!(message.header_raw("X-Evil").is_none());
        let (_, status, _) = report_parts(&message);
        let groups = status_groups(&status_text(status));
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert_eq!(field(&groups[1], "Action"), Some("failed"));
        assert_eq!(field(&groups[1], "Status"), Some("5.1.1"));
        assert_eq!(
            field(&groups[0], "Original-Envelope-Id"),
            Some("ID1  Action: delivered    Final-Recipient: rfc822; x@y")
        );
        assert!(!dsn.recipient.contains('\r') && !dsn.recipient.contains('\n'));
    }

    #[test]
    fn eight_bit_junk_original_keeps_the_structure() {
        let mut junk = b"Subject: \xff\xfe bad\r\nX: \x80\x81\r\n\r\n".to_vec();
        junk.extend((0u8..=255).cycle().take(4096));
        for ret in [Some(DsnRet::Full), Some(DsnRet::Headers), None] {
            let mut env = three_recipients();
            env.ret = ret;
            let dsn = build_dsn(&request(&env, &junk, vec![failed(0)])).expect("dsn");
            assert_crlf_only(&dsn.data);
            assert_eq!(dsn.envelope.body, BodyType::EightBitMime);
            let message = MessageParser::default().parse(&dsn.data).expect("parses");
            let (_, status, returned) = report_parts(&message);
            assert_eq!(status_groups(&status_text(status)).len(), 2);
            assert_eq!(returned.content_transfer_encoding(), Some("8bit"));
        }
    }

    #[test]
    fn empty_and_separatorless_originals_do_not_panic() {
        for (original, ret) in [
            (&b""[..], DsnRet::Full),
            (&b""[..], DsnRet::Headers),
            (&b"Subject: no body, no separator"[..], DsnRet::Headers),
            (&b"\r\n\r\njust a body"[..], DsnRet::Headers),
            (&b"\n"[..], DsnRet::Full),
        ] {
            let mut env = three_recipients();
            env.ret = Some(ret);
            let dsn = build_dsn(&request(&env, original, vec![failed(0)])).expect("dsn");
            assert_crlf_only(&dsn.data);
            let message = MessageParser::default().parse(&dsn.data).expect("parses");
            let (_, status, _) = report_parts(&message);
            assert_eq!(status_groups(&status_text(status)).len(), 2);
        }
    }

    #[test]
    fn utf8_addresses_use_the_rfc6533_utf8_type() {
        let mut env = envelope(
            "élodie@exemple.fr",
            vec![rcpt(
                "bjørn@eksempel.no",
                Notify::default(),
                Some("rfc822;bjørn@eksempel.no"),
            )],
        );
        env.smtputf8 = true;
        let dsn = build_dsn(&request(&env, ORIGINAL, vec![failed(0)])).expect("dsn");
        let message = MessageParser::default().parse(&dsn.data).expect("parses");
        let (_, status, _) = report_parts(&message);
        let text = status_text(status);
        assert!(text.is_ascii());
        let groups = status_groups(&text);
        assert_eq!(
            field(&groups[1], "Final-Recipient"),
            Some("utf-8; bj\\x{F8}rn@eksempel.no")
        );
        assert_eq!(
            field(&groups[1], "Original-Recipient"),
            Some("utf-8; bj\\x{F8}rn@eksempel.no")
        );
        assert_eq!(dsn.recipient, "élodie@exemple.fr");
        assert!(dsn.envelope.smtputf8);
    }

    #[test]
    fn dsn_envelope_is_a_null_sender_message_from_tern() {
        let env = three_recipients();
        let dsn = build_dsn(&request(&env, ORIGINAL, vec![failed(0)])).expect("dsn");
        let out = &dsn.envelope;
        assert_eq!(out.sender, "");
        assert_eq!(out.recipients.len(), 1);
        assert_eq!(out.recipients[0].address, "alice@example.org");
        assert_eq!(out.recipients[0].notify, notify(false, false, false));
        assert_eq!(out.client.ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(out.client.helo, "relay.example.com");
        assert_eq!(out.received_at_ms, NOW_MS);
        assert_eq!(out.body, BodyType::SevenBit);
        assert!(!out.smtputf8);
        assert_eq!(out.ret, None);
        assert_eq!(out.envid, None);
    }

    #[test]
    fn message_ids_differ_within_one_millisecond() {
        let env = three_recipients();
        let first = build_dsn(&request(&env, ORIGINAL, vec![failed(0)])).expect("dsn");
        let second = build_dsn(&request(&env, ORIGINAL, vec![failed(0)])).expect("dsn");
        let id = |data: &[u8]| {
            MessageParser::default()
                .parse(data)
                .and_then(|m| m.message_id().map(str::to_string))
                .expect("message id")
        };
        assert_ne!(id(&first.data), id(&second.data));
    }

    #[test]
    fn boundary_avoids_content_that_contains_it() {
        fastrand::seed(7);
        let predicted = format!("tern-dsn-{:032x}", fastrand::u128(..));
        fastrand::seed(7);
        let hostile = format!("\r\n--{predicted}--\r\n");
        let boundary = unique_boundary(&[hostile.as_bytes()]);
        assert_ne!(boundary, predicted);
        assert!(!hostile.contains(&boundary));
    }

    #[test]
    fn crlf_normalisation_handles_every_line_end() {
        assert_eq!(to_crlf(b"a\nb\rc\r\nd"), b"a\r\nb\r\nc\r\nd");
        assert_eq!(to_crlf(b"\r\r\n\n"), b"\r\n\r\n\r\n");
        assert_eq!(to_crlf(b""), b"");
    }

    #[test]
    fn header_section_stops_at_the_blank_line() {
        assert_eq!(
            header_section(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_section(b"A: 1"), b"A: 1\r\n");
        assert_eq!(header_section(b"\r\nbody"), b"");
        assert_eq!(header_section(b""), b"");
    }

    #[test]
    fn field_values_are_single_line_ascii_and_bounded() {
        assert_eq!(ascii_field("a\r\nb\tc\u{7}d"), "a  b cd");
        assert_eq!(ascii_field("café"), "caf\\x{E9}");
        assert_eq!(ascii_field(&"x".repeat(5000)).len(), STATUS_FIELD_VALUE_MAX);
        assert_eq!(
            utf8_addr_xtext("a+b=c\\d@é"),
            "a\\x{2B}b\\x{3D}c\\x{5C}d@\\x{E9}"
        );
        let long = format!("rfc822;{}", "o".repeat(2000));
        assert_eq!(original_recipient(&long).len(), STATUS_FIELD_VALUE_MAX);
    }

    #[test]
    fn host_names_are_sanitised() {
        assert_eq!(host_name("mx.example.com"), "mx.example.com");
        assert_eq!(host_name("evil>\r\nX y"), "evilXy");
        assert_eq!(host_name("\r\n"), FALLBACK_HOST);
        assert_eq!(host_name("[IPv6:2001:db8::1]"), "[IPv6:2001:db8::1]");
        assert_eq!(message_id_domain("a:b>[c] d.example"), "abcd.example");
        assert_eq!(message_id_domain("<>"), FALLBACK_HOST);
    }

    #[test]
    fn notify_defaults_to_failure_and_delay() {
        assert!(notify_wants(Notify::default(), DsnAction::Failed));
        assert!(notify_wants(Notify::default(), DsnAction::Delayed));
        assert!(!notify_wants(
            notify(false, false, false),
            DsnAction::Failed
        ));
        assert!(!notify_wants(
            notify(true, false, false),
            DsnAction::Delayed
        ));
        assert!(notify_wants(notify(false, true, false), DsnAction::Failed));
        assert!(!notify_wants(
            notify(false, true, false),
            DsnAction::Delayed
        ));
    }
}
