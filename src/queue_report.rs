//! How `tern queue` prints messages: one line for `list`, a JSON object for
//! `list --json`, a header block for `show`. Shared by the CLI and tests.
//!
//! This module only formats; it must never read or change the spool.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::spool::{MessageView, RecipientState};

/// One recipient and where it stands, as `queue list --json` prints it.
#[derive(Debug, Serialize)]
pub struct RecipientReport<'a> {
    pub address: &'a str,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One queued message as `queue list --json` prints it.
#[derive(Debug, Serialize)]
pub struct MessageReport<'a> {
    pub id: String,
    pub sender: &'a str,
    pub recipients: Vec<RecipientReport<'a>>,
    pub size: u64,
    /// RFC 3339, UTC.
    pub arrival: String,
    pub arrival_ms: u64,
    pub client_ip: String,
    pub helo: &'a str,
    pub tls: bool,
    /// The user who submitted it with SMTP AUTH; null otherwise.
    pub auth: Option<&'a str>,
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn state_parts(state: &RecipientState) -> (&'static str, Option<String>) {
    match state {
        RecipientState::Pending => ("pending", None),
        RecipientState::Deferred {
            until_ms,
            attempts,
            last_error,
        } => (
            "deferred",
            Some(format!(
                "attempts {attempts}, next {}, last error: {last_error}",
                rfc3339(*until_ms)
            )),
        ),
        RecipientState::Delivered => ("delivered", None),
        RecipientState::Bounced { reason } => ("bounced", Some(reason.clone())),
        RecipientState::InMailbox => ("in_mailbox", None),
    }
}

/// Every state name `queue list --state` accepts.
pub const STATE_NAMES: [&str; 5] = ["pending", "deferred", "delivered", "bounced", "in_mailbox"];

/// Whether one recipient of `m` is in `state` (when given) and in `domain`
/// (when given; case-insensitive, a leading dot means subdomains too).
pub fn matches(m: &MessageView, state: Option<&str>, domain: Option<&str>) -> bool {
    let domain = domain.map(|d| d.trim_end_matches('.').to_ascii_lowercase());
    m.envelope.recipients.iter().enumerate().any(|(i, r)| {
        let in_state = state.is_none_or(|wanted| {
            let (name, _) = m
                .states
                .get(i)
                .map(state_parts)
                .unwrap_or(("pending", None));
            name == wanted
        });
        let in_domain = domain.as_deref().is_none_or(|wanted| {
            let Some((_, rcpt_domain)) = r.address.rsplit_once('@') else {
                return false;
            };
            let rcpt_domain = rcpt_domain.trim_end_matches('.').to_ascii_lowercase();
            match wanted.strip_prefix('.') {
                Some(parent) => rcpt_domain.ends_with(&format!(".{parent}")),
                None => rcpt_domain == wanted,
            }
        });
        in_state && in_domain
    })
}

pub fn summary(m: &MessageView) -> MessageReport<'_> {
    let recipients = m
        .envelope
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (state, detail) = m
                .states
                .get(i)
                .map(state_parts)
                .unwrap_or(("pending", None));
            RecipientReport {
                address: &r.address,
                state,
                detail,
            }
        })
        .collect();
    MessageReport {
        id: m.id.to_string(),
        sender: &m.envelope.sender,
        recipients,
        size: m.size,
        arrival: rfc3339(m.envelope.received_at_ms),
        arrival_ms: m.envelope.received_at_ms,
        client_ip: m.envelope.client.ip.to_string(),
        helo: &m.envelope.client.helo,
        tls: m.envelope.client.tls,
        auth: m.envelope.client.auth.as_deref(),
    }
}

fn sender_text(sender: &str) -> &str {
    if sender.is_empty() {
        "<>"
    } else {
        sender
    }
}

/// `ID  SIZE  ARRIVAL  SENDER -> rcpt (state), ...`
pub fn line(m: &MessageView) -> String {
    let report = summary(m);
    let mut out = format!(
        "{}  {:>9}  {}  {} ->",
        report.id,
        report.size,
        report.arrival,
        sender_text(report.sender)
    );
    for (i, r) in report.recipients.iter().enumerate() {
        let sep = if i == 0 { " " } else { ", " };
        let _ = write!(out, "{sep}{} ({})", r.address, r.state);
    }
    out
}

/// Header block printed by `queue show` before the message bytes.
pub fn details(m: &MessageView) -> String {
    let report = summary(m);
    let e = &m.envelope;
    let mut out = String::new();
    let _ = writeln!(out, "*** ENVELOPE {} ***", report.id);
    let _ = writeln!(out, "arrival: {}", report.arrival);
    let _ = writeln!(out, "size: {}", report.size);
    let _ = writeln!(out, "sender: {}", sender_text(&e.sender));
    let _ = writeln!(
        out,
        "client: {} helo={} esmtp={} tls={} auth={}",
        e.client.ip,
        e.client.helo,
        e.client.esmtp,
        e.client.tls,
        e.client.auth.as_deref().unwrap_or("-")
    );
    let _ = writeln!(out, "body: {:?} smtputf8: {}", e.body, e.smtputf8);
    if let Some(ret) = e.ret {
        let _ = writeln!(out, "ret: {ret:?}");
    }
    if let Some(envid) = &e.envid {
        let _ = writeln!(out, "envid: {envid}");
    }
    for (r, envelope_rcpt) in report.recipients.iter().zip(&e.recipients) {
        let _ = write!(out, "recipient: {} ({})", r.address, r.state);
        if let Some(d) = &r.detail {
            let _ = write!(out, " {d}");
        }
        if let Some(orcpt) = &envelope_rcpt.orcpt {
            let _ = write!(out, " orcpt={orcpt}");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "*** MESSAGE ***");
    out
}
