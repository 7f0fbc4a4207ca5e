//! The SMTP envelope of one accepted message: what the SMTP session hands over
//! and what the spool stores next to the message bytes.
//!
//! This module only describes data. It must never do I/O or know about the
//! wire format of either SMTP or the spool: both translate to and from it.

use std::net::IpAddr;

/// `BODY=` parameter of MAIL FROM (RFC 6152). BINARYMIME is not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

/// `RET=` parameter of MAIL FROM (RFC 3461 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DsnRet {
    Full,
    Headers,
}

/// `NOTIFY=` parameter of RCPT TO (RFC 3461 4.1), as a bit set.
/// `NEVER` is the empty set with `explicit` true; no parameter at all is
/// `Notify::default()` (explicit false: the relay applies the RFC default
/// of FAILURE,DELAY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Notify {
    pub explicit: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

/// One `RCPT TO` as accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recipient {
    /// Forward-path without angle brackets and without a source route,
    /// e.g. `user@example.org`. UTF-8 only when the sender used SMTPUTF8.
    pub address: String,
    pub notify: Notify,
    /// `ORCPT=` as sent: address type and the xtext-decoded address,
    /// e.g. `rfc822;user@example.org`.
    pub orcpt: Option<String>,
}

/// Who handed us the message, for trace headers and logs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientInfo {
    pub ip: IpAddr,
    /// Argument of EHLO/HELO as sent.
    pub helo: String,
    /// EHLO was used (ESMTP) rather than HELO.
    pub esmtp: bool,
    /// The session was under TLS when the message was accepted.
    pub tls: bool,
    /// Authenticated SASL identity, if any.
    pub auth: Option<String>,
}

/// Everything about a message except its bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Envelope {
    /// Reverse-path without angle brackets; empty for the null sender `<>`.
    pub sender: String,
    pub body: BodyType,
    pub smtputf8: bool,
    pub ret: Option<DsnRet>,
    /// `ENVID=` xtext-decoded.
    pub envid: Option<String>,
    /// `SIZE=` as declared by the client, if it did.
    pub declared_size: Option<u64>,
    pub recipients: Vec<Recipient>,
    pub client: ClientInfo,
    /// Arrival time, milliseconds since the Unix epoch (set by the runtime,
    /// which owns the clock).
    pub received_at_ms: u64,
}
