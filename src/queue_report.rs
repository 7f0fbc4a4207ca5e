//! How `tern queue` prints messages: one line for `list`, a JSON object for
//! `list --json`, a header block for `show`, a domains-by-age table for
//! `summary` (like Postfix's qshape). Shared by the CLI, the admin socket
//! (domain matching) and tests.
//!
//! This module only formats what it is given; it must never read or
//! change the spool, nor read the clock (callers pass `now_ms`).

use std::collections::BTreeMap;
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
    /// On the hold list (`tern queue hold`).
    pub held: bool,
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

/// Whether `address` is in `domain` (case-insensitive; a leading dot
/// means its subdomains).
pub fn recipient_in_domain(address: &str, domain: &str) -> bool {
    let Some((_, rcpt_domain)) = address.rsplit_once('@') else {
        return false;
    };
    let rcpt_domain = rcpt_domain.trim_end_matches('.').to_ascii_lowercase();
    let wanted = domain.trim_end_matches('.').to_ascii_lowercase();
    match wanted.strip_prefix('.') {
        Some(parent) => rcpt_domain.ends_with(&format!(".{parent}")),
        None => rcpt_domain == wanted,
    }
}

/// Whether one recipient of `m` is in `state` (when given) and in `domain`
/// (when given; case-insensitive, a leading dot means subdomains too).
pub fn matches(m: &MessageView, state: Option<&str>, domain: Option<&str>) -> bool {
    m.envelope.recipients.iter().enumerate().any(|(i, r)| {
        let in_state = state.is_none_or(|wanted| {
            let (name, _) = m
                .states
                .get(i)
                .map(state_parts)
                .unwrap_or(("pending", None));
            name == wanted
        });
        let in_domain = domain.is_none_or(|wanted| recipient_in_domain(&r.address, wanted));
        in_state && in_domain
    })
}

pub fn summary(m: &MessageView, held: bool) -> MessageReport<'_> {
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
        held,
    }
}

fn sender_text(sender: &str) -> &str {
    if sender.is_empty() {
        "<>"
    } else {
        sender
    }
}

/// `ID[!]  SIZE  ARRIVAL  SENDER -> rcpt (state), ...`; `!` marks a
/// held message (as `mailq` does).
pub fn line(m: &MessageView, held: bool) -> String {
    let report = summary(m, held);
    let mut out = format!(
        "{}{}  {:>9}  {}  {} ->",
        report.id,
        if held { "!" } else { " " },
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
pub fn details(m: &MessageView, held: bool) -> String {
    let report = summary(m, held);
    let e = &m.envelope;
    let mut out = String::new();
    let _ = writeln!(out, "*** ENVELOPE {} ***", report.id);
    if held {
        let _ = writeln!(out, "held: yes (tern queue release {})", report.id);
    }
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

/// `queue show --json`: the list entry, the envelope options and the
/// message's header fields in order (decoded where RFC 2047 applies).
#[derive(Debug, Serialize)]
pub struct ShowReport<'a> {
    #[serde(flatten)]
    pub message: MessageReport<'a>,
    pub body: String,
    pub smtputf8: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envid: Option<&'a str>,
    pub headers: Vec<(String, String)>,
}

pub fn show_json(m: &MessageView, held: bool) -> ShowReport<'_> {
    let headers = mail_parser::MessageParser::new()
        .parse_headers(m.data())
        .map(|parsed| {
            parsed
                .headers_raw()
                .map(|(name, value)| (name.to_string(), value.trim().to_string()))
                .collect()
        })
        .unwrap_or_default();
    ShowReport {
        message: summary(m, held),
        body: format!("{:?}", m.envelope.body),
        smtputf8: m.envelope.smtputf8,
        envid: m.envelope.envid.as_deref(),
        headers,
    }
}

/// Upper bounds of `summary`'s age buckets in minutes, as qshape's
/// default; the last column counts everything older.
pub const AGE_BUCKETS_MIN: [u64; 10] = [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560];

/// One row of `summary`: recipients still to deliver in one domain.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DomainShape {
    pub domain: String,
    pub total: usize,
    /// Counts per age bucket (`AGE_BUCKETS_MIN`, then older).
    pub by_age: Vec<usize>,
}

/// `queue summary`: pending and deferred recipients by domain and age,
/// the busiest domains first, with a total row.
#[derive(Debug, Serialize)]
pub struct QueueShape {
    pub buckets_min: Vec<u64>,
    pub total: DomainShape,
    pub domains: Vec<DomainShape>,
}

impl QueueShape {
    pub fn of(messages: &[MessageView], now_ms: u64) -> QueueShape {
        let columns = AGE_BUCKETS_MIN.len() + 1;
        let empty = |domain: &str| DomainShape {
            domain: domain.to_string(),
            total: 0,
            by_age: vec![0; columns],
        };
        let mut total = empty("TOTAL");
        let mut rows: BTreeMap<String, DomainShape> = BTreeMap::new();
        for m in messages {
            let age_min = now_ms.saturating_sub(m.envelope.received_at_ms) / 60_000;
            let bucket = AGE_BUCKETS_MIN
                .iter()
                .position(|limit| age_min < *limit)
                .unwrap_or(AGE_BUCKETS_MIN.len());
            for (i, r) in m.envelope.recipients.iter().enumerate() {
                let waiting = matches!(
                    m.states.get(i),
                    None | Some(RecipientState::Pending | RecipientState::Deferred { .. })
                );
                if !waiting {
                    continue;
                }
                let domain = r
                    .address
                    .rsplit_once('@')
                    .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
                    .unwrap_or_default();
                let row = rows.entry(domain.clone()).or_insert_with(|| empty(&domain));
                for shape in [row, &mut total] {
                    shape.total += 1;
                    shape.by_age[bucket] += 1;
                }
            }
        }
        let mut domains: Vec<DomainShape> = rows.into_values().collect();
        domains.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.domain.cmp(&b.domain)));
        QueueShape {
            buckets_min: AGE_BUCKETS_MIN.to_vec(),
            total,
            domains,
        }
    }

    /// qshape's layout: a column per age bucket (its upper bound in
    /// minutes), a row per domain.
    pub fn table(&self) -> String {
        let width = self
            .domains
            .iter()
            .map(|d| d.domain.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let mut out = format!("{:>width$} {:>6}", "", "T");
        for limit in &self.buckets_min {
            let _ = write!(out, " {limit:>5}");
        }
        let _ = writeln!(
            out,
            " {:>5}",
            format!("{}+", self.buckets_min.last().unwrap_or(&0))
        );
        for row in std::iter::once(&self.total).chain(&self.domains) {
            let _ = write!(out, "{:>width$} {:>6}", row.domain, row.total);
            for count in &row.by_age {
                let _ = write!(out, " {count:>5}");
            }
            let _ = writeln!(out);
        }
        out
    }
}
