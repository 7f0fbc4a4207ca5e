//! Delivery status notifications: turns per-recipient failures and delays of
//! one message into the single bounce (RFC 3464 multipart/report, RFC 6522)
//! owed to its envelope sender, honouring RET, NOTIFY, ENVID and ORCPT
//! (RFC 3461).
//!
//! This module only builds the notification. It must never send it, touch
//! the spool, read the clock (the caller passes `now_ms`), or bounce a
//! message whose sender is null (RFC 3461 6.2, RFC 5321 4.5.5).

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

/// Display name and local part of the From: address (RFC 3464 appendix
/// and common practice: the postmaster's automaton, not a person).
const FROM_DISPLAY_NAME: &str = "Mail Delivery System";
const FROM_LOCAL_PART: &str = "MAILER-DAEMON";

/// Used for Message-ID and From: when the configured host name has no
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
/// null sender (never bounce a bounce, RFC 3461 6.2 / RFC 5321 4.5.5), or
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
    let human = human_explanation(request, &host, &wanted, any_failed);
    let status = delivery_status(request, &host, &wanted);
    let original = to_crlf(request.original);
    let returned = returned_part(request.envelope.ret, any_failed, original.len());
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
    request: &BounceRequest<'_>,
    host: &str,
    wanted: &[(&RecipientReport<'_>, &Recipient)],
    any_failed: bool,
) -> String {
    let mut text = format!("This is the mail system at host {host}.\r\n\r\n");
    if any_failed {
        text.push_str(
            "I'm sorry to have to inform you that your message could not\r\n\
             be delivered to one or more recipients. It's attached below.\r\n",
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
    if request.envelope.envid.is_some() {
        text.push_str("The original envelope id is in the delivery report below.\r\n");
    }
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
        format!("{}; {}", ascii_field(addr_type), ascii_field(address))
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
/// literal, so the value is safe in From:, Message-ID and Reporting-MTA.
fn host_name(host: &str) -> String {
    let cleaned: String = host
        .chars()
        .filter(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '[' | ']' | ':'))
        .collect();
    if cleaned.is_empty() {
        FALLBACK_HOST.to_string()
    } else {
        cleaned
    }
}

/// Unique per process and millisecond thanks to the sequence, and across
/// restarts and hosts thanks to the random part.
fn message_id(now_ms: u64, domain: &str) -> String {
    let sequence = MESSAGE_ID_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!(
        "{now_ms}.{sequence}.{:016x}@{}",
        fastrand::u64(..),
        host_name(domain)
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
