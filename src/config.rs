//! Configuration: the TOML file format, its embedded defaults, and the checks
//! that turn a bad setting into a start-up error naming the key and the file.
//!
//! This module only parses and validates. It must never bind sockets, open
//! the spool or start threads: `check-config` runs it without side effects
//! beyond probing that the spool folder is writable.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::relay::next_hop::NextHop;

/// RFC 5321 4.5.3.1.8: a server must accept at least 100 recipients.
pub const RCPT_MIN_RFC5321: usize = 100;
/// RFC 5321 4.5.3.2.7: the server waits at least 5 minutes for a command.
pub const COMMAND_TIMEOUT_RFC5321: Duration = Duration::from_secs(5 * 60);
/// RFC 5321 4.5.3.2.5-6: data blocks are waited for 3 minutes.
pub const DATA_TIMEOUT_RFC5321: Duration = Duration::from_secs(3 * 60);
/// RFC 1870 does not set a size; 25 MiB matches what large providers accept.
pub const MAX_MESSAGE_SIZE_DEFAULT: u64 = 25 * 1024 * 1024;
/// Spool segment size: big enough for the largest message plus its envelope.
pub const SEGMENT_SIZE_DEFAULT: u64 = 64 * 1024 * 1024;
/// Compact a segment once its mailbox records take under a quarter of it:
/// copying a quarter segment frees a whole one.
pub const COMPACT_BELOW_DEFAULT: f64 = 0.25;
/// Above this, compaction copies more than half a segment to free one.
const COMPACT_BELOW_MAX: f64 = 0.5;
/// A pass scans every live message; once a minute keeps that negligible.
pub const COMPACT_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerSection,
    pub smtp: SmtpSection,
    pub spool: SpoolSection,
    pub tls: TlsSection,
    pub relay: RelaySection,
    pub users: UsersSection,
    pub pop3: Pop3Section,
    pub imap: ImapSection,
    pub submission: SubmissionSection,
    pub metrics: MetricsSection,
    pub log: LogSection,
    pub mail_auth: MailAuthSection,
    pub limits: LimitsSection,
}

/// `[limits]`: admission caps, per-client rates and per-session limits
/// against abusive or broken clients, with Postfix-like defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Open connections over every listener (SMTP, submission, POP3, IMAP).
    pub max_connections: usize,
    /// Open connections from one client address (an IPv6 client: its /64).
    pub max_connections_per_ip: usize,
    /// New connections per minute from one client address; 0 = no limit.
    pub max_connection_rate_per_ip: u32,
    /// Clients in `[relay] mynetworks` skip the two per-IP limits (Postfix's
    /// `smtpd_client_event_limit_exceptions = $mynetworks`).
    pub mynetworks_exempt: bool,
    /// Bad commands before the session is closed (SMTP: since the last
    /// accepted message; POP3 and IMAP: in a row).
    pub hard_error_limit: u32,
    /// SMTP messages accepted over one connection; MAIL after that gets
    /// 421 4.7.0 and the connection is closed.
    pub max_messages_per_connection: usize,
    /// Bytes per second that DATA/BDAT content and IMAP literals must at
    /// least arrive at, on top of the phase's timeout.
    pub data_min_rate: u64,
    /// POP3 autologout (RFC 1939 3: at least 10 minutes): time for the next
    /// complete command.
    #[serde(with = "duration_text")]
    pub pop3_autologout: Duration,
    /// IMAP autologout (RFC 3501 5.4: at least 30 minutes): time for the
    /// next complete command; it bounds an IDLE too (RFC 2177 3).
    #[serde(with = "duration_text")]
    pub imap_autologout: Duration,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_connections: 10_000,
            max_connections_per_ip: 50,
            max_connection_rate_per_ip: 300,
            mynetworks_exempt: true,
            hard_error_limit: crate::limits::HARD_ERROR_LIMIT_DEFAULT,
            max_messages_per_connection: 1000,
            data_min_rate: crate::limits::DATA_MIN_RATE_DEFAULT,
            pop3_autologout: Duration::from_secs(10 * 60),
            imap_autologout: Duration::from_secs(30 * 60),
        }
    }
}

impl LimitsSection {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, value) in [
            ("[limits] max_connections", self.max_connections as u64),
            (
                "[limits] max_connections_per_ip",
                self.max_connections_per_ip as u64,
            ),
            (
                "[limits] hard_error_limit",
                u64::from(self.hard_error_limit),
            ),
            (
                "[limits] max_messages_per_connection",
                self.max_messages_per_connection as u64,
            ),
            ("[limits] data_min_rate", self.data_min_rate),
        ] {
            if value == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        for (key, value) in [
            ("[limits] pop3_autologout", self.pop3_autologout),
            ("[limits] imap_autologout", self.imap_autologout),
        ] {
            if value.is_zero() {
                return Err((key, "must be greater than zero".into()));
            }
        }
        Ok(())
    }
}

/// Where local users (mailbox owners and, later, submission accounts) live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsersSection {
    /// The users file `tern user` edits (argon2id hashes, addresses).
    pub file: PathBuf,
}

impl Default for UsersSection {
    fn default() -> Self {
        UsersSection {
            file: PathBuf::from("var/users.toml"),
        }
    }
}

/// Defines a mailbox retrieval protocol's section (`[pop3]`, `[imap]`):
/// the same keys, a different default port (serde has no const generics).
macro_rules! retrieval_section {
    ($(#[$doc:meta])* $name:ident, $port:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            /// Plain listeners (STLS / STARTTLS offered when [tls] is set).
            pub listen: Vec<SocketAddr>,
            /// Implicit-TLS listeners (995 / 993 in production); need [tls].
            pub tls_listen: Vec<SocketAddr>,
            /// Allow passwords before TLS. The embedded default (loopback
            /// only) allows it so any client works at once; production
            /// sets false.
            pub allow_plaintext_auth: bool,
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    listen: vec![SocketAddr::from(([127, 0, 0, 1], $port))],
                    tls_listen: Vec::new(),
                    allow_plaintext_auth: true,
                }
            }
        }
    };
}

retrieval_section!(
    /// `[pop3]`: RFC 1939 on 127.0.0.1:2110 by default.
    Pop3Section,
    2110
);
retrieval_section!(
    /// `[imap]`: RFC 3501 / 9051 on 127.0.0.1:2143 by default.
    ImapSection,
    2143
);

/// `[submission]`: the rules of the submission listeners (`[smtp]
/// submission` and `submissions`, RFC 6409), which offer AUTH PLAIN and
/// LOGIN against the users file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmissionSection {
    /// Offer AUTH before TLS. For tests only: passwords cross the network
    /// in clear, and the start-up log warns.
    pub allow_plaintext_auth: bool,
    /// Let an authenticated user give any MAIL FROM; off, it must be one
    /// of the user's addresses (or `<>`).
    pub any_sender: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// The driver chosen by measurement (see README): epoll today.
    Auto,
    /// io_uring through tokio-uring.
    Uring,
    /// Plain tokio (epoll/kqueue).
    Epoll,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Core threads; 0 = one per available core.
    pub workers: usize,
    pub io: IoMode,
    /// Name in the greeting, EHLO reply and trace headers; empty = system host name.
    pub hostname: String,
    /// How long SIGTERM waits for open sessions before closing them.
    #[serde(with = "duration_text")]
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSection {
    /// Relay (MX) listeners, port 25 in production.
    pub listen: Vec<SocketAddr>,
    /// Submission listeners with STARTTLS, port 587 in production.
    pub submission: Vec<SocketAddr>,
    /// Submission over implicit TLS ("submissions", RFC 8314 3.3), port
    /// 465 in production; needs [tls].
    pub submissions: Vec<SocketAddr>,
    #[serde(with = "size_text")]
    pub max_message_size: u64,
    pub max_recipients: usize,
    #[serde(with = "duration_text")]
    pub command_timeout: Duration,
    #[serde(with = "duration_text")]
    pub data_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    pub dir: PathBuf,
    #[serde(with = "size_text")]
    pub segment_size: u64,
    /// Upper bound of all segment files together; 0 = only the disk limits it.
    #[serde(with = "size_text")]
    pub max_size: u64,
    /// A sealed segment whose live records (all held by mailboxes) take
    /// less than this fraction of it is compacted; 0 = never.
    pub compact_below: f64,
    /// How often the compactor looks for such segments.
    #[serde(with = "duration_text")]
    pub compact_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    /// Clients that may send to any domain (CIDRs or single addresses).
    /// Everyone else may only send to local and relay domains.
    #[serde(with = "networks_text")]
    pub mynetworks: Vec<ipnet::IpNet>,
    /// Domains whose mail tern delivers itself.
    pub local_domains: Vec<String>,
    /// Domains tern accepts from anyone and relays onward (backup MX).
    /// A leading dot (".example.org") means every subdomain.
    pub relay_domains: Vec<String>,
    /// The user (of the users file) whose INBOX gets mail for postmaster at
    /// every local domain and for the domainless `<Postmaster>`, unless a
    /// user owns that address itself (RFC 5321 4.5.1). While there is no
    /// such user, that mail waits in the queue.
    pub postmaster: String,
    /// Keep every accepted message queued until `tern queue release`.
    pub hold: bool,
    /// Next hop for all mail that has no static route: "host", "host:port",
    /// "[192.0.2.1]:port". Unset = MX lookup.
    pub smarthost: Option<String>,
    /// Port of MX hosts, and of routes and the smarthost without a port.
    pub remote_port: u16,
    /// DNS servers (UDP) for MX lookups; empty = the system resolver.
    #[serde(with = "addr_list")]
    pub nameservers: Vec<SocketAddr>,
    /// STARTTLS policy for delivery, unless a route sets its own.
    pub tls: OutboundTls,
    /// PEM file of CAs that `tls = "verify"` trusts instead of the system store.
    pub tls_ca_file: Option<PathBuf>,
    /// Concurrent connections to one destination host, summed over cores.
    pub max_connections_per_destination: usize,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: usize,
    /// An unused pooled connection is closed after this.
    #[serde(with = "duration_text")]
    pub connection_idle_timeout: Duration,
    /// TCP connect deadline per address.
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// Wait after the first temporary failure; doubles per attempt.
    #[serde(with = "duration_text")]
    pub first_retry: Duration,
    /// Longest wait between two attempts.
    #[serde(with = "duration_text")]
    pub max_retry: Duration,
    /// Age after which a recipient still deferred bounces.
    #[serde(with = "duration_text")]
    pub lifetime: Duration,
    /// Static routes by recipient domain (leading dot = subdomains).
    pub routes: std::collections::BTreeMap<String, RouteSpec>,
}

/// When delivery uses STARTTLS (RFC 3207).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundTls {
    /// Never.
    Off,
    /// When offered, with any certificate (RFC 7435); clear otherwise.
    Opportunistic,
    /// Always, with any certificate; no STARTTLS = no delivery.
    Required,
    /// Always, with the certificate verified for the host name.
    Verify,
}

/// A static route: `"example.com" = "host:port"` or
/// `"example.com" = { to = "host:port", tls = "verify" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RouteSpec {
    To(String),
    Table {
        to: String,
        #[serde(default)]
        tls: Option<OutboundTls>,
    },
}

impl RouteSpec {
    pub fn to(&self) -> &str {
        match self {
            RouteSpec::To(to) | RouteSpec::Table { to, .. } => to,
        }
    }

    pub fn tls(&self) -> Option<OutboundTls> {
        match self {
            RouteSpec::To(_) => None,
            RouteSpec::Table { tls, .. } => *tls,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain; STARTTLS is offered when cert and key are set.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Prometheus scrape address (`/metrics`); empty string disables it.
    #[serde(with = "optional_addr")]
    pub listen: Option<SocketAddr>,
}

/// `[mail_auth]`: SPF, DKIM and DMARC checks of inbound mail (from clients
/// outside `[relay] mynetworks` that did not authenticate) and DKIM signing
/// of mail that leaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailAuthSection {
    /// Check SPF (HELO, then MAIL FROM) and record the result.
    pub verify_spf: bool,
    /// Verify DKIM signatures and record the results.
    pub verify_dkim: bool,
    /// Evaluate DMARC (needs verify_spf and verify_dkim) and record it.
    pub verify_dmarc: bool,
    /// Refuse a message whose SPF result is `fail` (550 5.7.23).
    pub spf_reject_fail: bool,
    /// Refuse a message that fails DMARC when its domain publishes
    /// `p=reject` (550 5.7.1).
    pub dmarc_reject: bool,
    /// authserv-id of `Authentication-Results:` (RFC 8601 2.5); empty =
    /// `[server] hostname`.
    pub authserv_id: String,
    /// Longest wait for each check (SPF, DKIM, DMARC); past it the check
    /// counts as `temperror`.
    #[serde(with = "duration_text")]
    pub check_timeout: Duration,
    /// DKIM keys for outbound signing, one per signing domain.
    pub signing: Vec<DkimSigningEntry>,
}

/// One `[[mail_auth.signing]]` entry: mail whose From: domain (or, without
/// one, envelope sender domain) is `domain` is signed with this key (with
/// every key of that domain: RSA and Ed25519 side by side, RFC 8463 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSigningEntry {
    pub domain: String,
    pub selector: String,
    /// PEM private key: PKCS#8 or PKCS#1 for RSA, PKCS#8 for Ed25519.
    pub key_file: PathBuf,
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
    /// Header fields to sign when present; From is always signed.
    #[serde(default = "default_signed_headers")]
    pub headers: Vec<String>,
}

/// DKIM signing algorithms (RFC 6376 3.3, RFC 8463).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DkimAlgorithm {
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

/// The fields RFC 6376 5.4.1 recommends signing, those a reader sees.
pub fn default_signed_headers() -> Vec<String> {
    [
        "From",
        "Reply-To",
        "Subject",
        "Date",
        "To",
        "Cc",
        "Message-ID",
        "In-Reply-To",
        "References",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "List-Id",
        "List-Unsubscribe",
    ]
    .map(String::from)
    .to_vec()
}

impl Default for MailAuthSection {
    fn default() -> Self {
        MailAuthSection {
            verify_spf: true,
            verify_dkim: true,
            verify_dmarc: true,
            spf_reject_fail: false,
            dmarc_reject: false,
            authserv_id: String::new(),
            check_timeout: Duration::from_secs(10),
            signing: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// tracing filter, e.g. `info` or `tern=debug`; RUST_LOG overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            workers: 0,
            io: IoMode::Auto,
            hostname: String::new(),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for SmtpSection {
    fn default() -> Self {
        SmtpSection {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            submission: vec![SocketAddr::from(([127, 0, 0, 1], 2587))],
            submissions: Vec::new(),
            max_message_size: MAX_MESSAGE_SIZE_DEFAULT,
            max_recipients: 1000,
            command_timeout: COMMAND_TIMEOUT_RFC5321,
            data_timeout: DATA_TIMEOUT_RFC5321,
        }
    }
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            dir: PathBuf::from("var/spool"),
            segment_size: SEGMENT_SIZE_DEFAULT,
            max_size: 0,
            compact_below: COMPACT_BELOW_DEFAULT,
            compact_interval: COMPACT_INTERVAL_DEFAULT,
        }
    }
}

impl Default for RelaySection {
    fn default() -> Self {
        RelaySection {
            mynetworks: vec![
                "127.0.0.0/8".parse().expect("literal CIDR"),
                "::1/128".parse().expect("literal CIDR"),
            ],
            local_domains: vec!["localhost".to_string()],
            relay_domains: Vec::new(),
            postmaster: "postmaster".to_string(),
            hold: false,
            smarthost: None,
            remote_port: 25,
            nameservers: Vec::new(),
            tls: OutboundTls::Opportunistic,
            tls_ca_file: None,
            max_connections_per_destination: 20,
            max_messages_per_connection: 1000,
            connection_idle_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            first_retry: Duration::from_secs(300),
            max_retry: Duration::from_secs(4000),
            lifetime: Duration::from_secs(5 * 24 * 3600),
            routes: std::collections::BTreeMap::new(),
        }
    }
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9925))),
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".to_string(),
            format: LogFormat::Human,
        }
    }
}

/// Where a configuration came from, for error messages.
#[derive(Debug, Clone)]
pub enum Source {
    Embedded,
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Embedded => f.write_str("<embedded default config>"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Config {
    /// Load `path`, or the embedded defaults when `path` is None, and validate.
    pub fn load(path: Option<&Path>) -> Result<(Config, Source), ConfigError> {
        let (config, source) = match path {
            None => (Config::default(), Source::Embedded),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    file: p.display().to_string(),
                    source,
                })?;
                let source = Source::File(p.to_path_buf());
                (Config::parse(&text, &source)?, source)
            }
        };
        config.validate(&source)?;
        Ok((config, source))
    }

    /// Parse TOML text; `source` names it in errors.
    pub fn parse(text: &str, source: &Source) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: source.to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Checks that need more than one field or the RFCs; the key named in
    /// each error is the one to change.
    pub fn validate(&self, source: &Source) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            file: source.to_string(),
            key,
            message,
        };
        if self.smtp.listen.is_empty()
            && self.smtp.submission.is_empty()
            && self.smtp.submissions.is_empty()
        {
            return Err(invalid(
                "[smtp] listen",
                "no SMTP listener: set [smtp] listen, submission or submissions".into(),
            ));
        }
        if self.smtp.max_recipients < RCPT_MIN_RFC5321 {
            return Err(invalid(
                "[smtp] max_recipients",
                format!(
                    "{} is below the {RCPT_MIN_RFC5321} that RFC 5321 4.5.3.1.8 requires",
                    self.smtp.max_recipients
                ),
            ));
        }
        if self.smtp.max_message_size < 64 * 1024 {
            return Err(invalid(
                "[smtp] max_message_size",
                format!(
                    "{} bytes is below the 64 KiB that RFC 5321 4.5.3.1.7 requires",
                    self.smtp.max_message_size
                ),
            ));
        }
        for (key, value) in [
            ("[smtp] command_timeout", self.smtp.command_timeout),
            ("[smtp] data_timeout", self.smtp.data_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than zero".into()));
            }
        }
        // A message record carries the envelope next to the data; leave room
        // for a full envelope of max_recipients addresses (256 octets each at
        // most, RFC 5321 4.5.3.1.3) plus headers.
        let envelope_room = (self.smtp.max_recipients as u64) * 600 + 64 * 1024;
        let needed = self.smtp.max_message_size + envelope_room;
        if self.spool.segment_size < needed {
            return Err(invalid(
                "[spool] segment_size",
                format!(
                    "{} bytes cannot hold a message of [smtp] max_message_size = {} plus its \
                     envelope; use at least {needed}",
                    self.spool.segment_size, self.smtp.max_message_size
                ),
            ));
        }
        if self.spool.segment_size > u32::MAX as u64 {
            return Err(invalid(
                "[spool] segment_size",
                format!("{} bytes is over the 4 GiB limit", self.spool.segment_size),
            ));
        }
        if self.spool.max_size != 0 && self.spool.max_size < 2 * self.spool.segment_size {
            return Err(invalid(
                "[spool] max_size",
                format!(
                    "{} bytes is less than two segments of [spool] segment_size = {}",
                    self.spool.max_size, self.spool.segment_size
                ),
            ));
        }
        if self.spool.dir.as_os_str().is_empty() {
            return Err(invalid("[spool] dir", "must not be empty".into()));
        }
        if !(0.0..=COMPACT_BELOW_MAX).contains(&self.spool.compact_below) {
            return Err(invalid(
                "[spool] compact_below",
                format!(
                    "{} is not a fraction from 0 (never compact) to {COMPACT_BELOW_MAX}",
                    self.spool.compact_below
                ),
            ));
        }
        if self.spool.compact_interval.is_zero() {
            return Err(invalid(
                "[spool] compact_interval",
                "must be greater than zero".into(),
            ));
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => {
                return Err(invalid(
                    "[tls] key",
                    "[tls] cert is set but key is not".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "[tls] cert",
                    "[tls] key is set but cert is not".into(),
                ))
            }
            _ => {}
        }
        for (key, domains) in [
            ("[relay] local_domains", &self.relay.local_domains),
            ("[relay] relay_domains", &self.relay.relay_domains),
        ] {
            for d in domains {
                let bare = d.strip_prefix('.').unwrap_or(d);
                if bare.is_empty()
                    || bare.starts_with('.')
                    || d.contains(|c: char| c.is_whitespace() || c == '@' || c.is_control())
                {
                    return Err(invalid(key, format!("{d:?} is not a domain")));
                }
            }
        }
        self.validate_delivery(source)?;
        for (key, tls_listen) in [
            ("[smtp] submissions", &self.smtp.submissions),
            ("[pop3] tls_listen", &self.pop3.tls_listen),
            ("[imap] tls_listen", &self.imap.tls_listen),
        ] {
            if !tls_listen.is_empty() && self.tls.cert.is_none() {
                return Err(invalid(
                    key,
                    "implicit-TLS listeners need [tls] cert and key".into(),
                ));
            }
        }
        if self.users.file.as_os_str().is_empty() {
            return Err(invalid("[users] file", "must not be empty".into()));
        }
        if self.log.level.trim().is_empty() {
            return Err(invalid("[log] level", "must not be empty".into()));
        }
        self.limits
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        self.validate_mail_auth(source)
    }

    /// The [mail_auth] keys and signing entries.
    fn validate_mail_auth(&self, source: &Source) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            file: source.to_string(),
            key,
            message,
        };
        let auth = &self.mail_auth;
        if auth.verify_dmarc && !(auth.verify_spf && auth.verify_dkim) {
            return Err(invalid(
                "[mail_auth] verify_dmarc",
                "DMARC needs verify_spf and verify_dkim".into(),
            ));
        }
        if auth.dmarc_reject && !auth.verify_dmarc {
            return Err(invalid(
                "[mail_auth] dmarc_reject",
                "needs verify_dmarc = true".into(),
            ));
        }
        if auth.spf_reject_fail && !auth.verify_spf {
            return Err(invalid(
                "[mail_auth] spf_reject_fail",
                "needs verify_spf = true".into(),
            ));
        }
        if auth.check_timeout.is_zero() {
            return Err(invalid(
                "[mail_auth] check_timeout",
                "must be greater than zero".into(),
            ));
        }
        if auth
            .authserv_id
            .contains(|c: char| c.is_whitespace() || c.is_control() || c == ';')
        {
            return Err(invalid(
                "[mail_auth] authserv_id",
                format!("{:?} is not a host name", auth.authserv_id),
            ));
        }
        let mut domains = std::collections::HashSet::new();
        for entry in &auth.signing {
            let domain = entry.domain.to_ascii_lowercase();
            if domain.is_empty()
                || domain.starts_with('.')
                || domain.contains(|c: char| c.is_whitespace() || c.is_control() || c == '@')
            {
                return Err(invalid(
                    "[[mail_auth.signing]] domain",
                    format!("{:?} is not a domain", entry.domain),
                ));
            }
            if !domains.insert((domain, entry.selector.to_ascii_lowercase())) {
                return Err(invalid(
                    "[[mail_auth.signing]] selector",
                    format!(
                        "{:?} has two entries with selector {:?}",
                        entry.domain, entry.selector
                    ),
                ));
            }
            if entry.selector.is_empty()
                || !entry
                    .selector
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
            {
                return Err(invalid(
                    "[[mail_auth.signing]] selector",
                    format!("{:?} is not a DKIM selector", entry.selector),
                ));
            }
            if entry.key_file.as_os_str().is_empty() {
                return Err(invalid(
                    "[[mail_auth.signing]] key_file",
                    format!("{}: must not be empty", entry.domain),
                ));
            }
            if let Some(bad) = entry.headers.iter().find(|name| {
                name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
            }) {
                return Err(invalid(
                    "[[mail_auth.signing]] headers",
                    format!("{}: {bad:?} is not a header field name", entry.domain),
                ));
            }
        }
        Ok(())
    }

    /// The [relay] keys that steer delivery.
    fn validate_delivery(&self, source: &Source) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            file: source.to_string(),
            key,
            message,
        };
        let relay = &self.relay;
        crate::users::check_name(&relay.postmaster).map_err(|e| {
            invalid(
                "[relay] postmaster",
                format!("{:?} is not a user name: {e}", relay.postmaster),
            )
        })?;
        if let Some(smarthost) = &relay.smarthost {
            NextHop::parse(smarthost, relay.remote_port)
                .map_err(|e| invalid("[relay] smarthost", e.to_string()))?;
        }
        for (domain, spec) in &relay.routes {
            let bare = domain.strip_prefix('.').unwrap_or(domain);
            if bare.is_empty() || domain.contains(|c: char| c.is_whitespace() || c == '@') {
                return Err(invalid(
                    "[relay.routes]",
                    format!("{domain:?} is not a domain"),
                ));
            }
            NextHop::parse(spec.to(), relay.remote_port)
                .map_err(|e| invalid("[relay.routes]", format!("{domain:?}: {e}")))?;
        }
        if relay.remote_port == 0 {
            return Err(invalid("[relay] remote_port", "must not be 0".into()));
        }
        if relay.max_connections_per_destination == 0 {
            return Err(invalid(
                "[relay] max_connections_per_destination",
                "must be at least 1".into(),
            ));
        }
        if relay.max_messages_per_connection == 0 {
            return Err(invalid(
                "[relay] max_messages_per_connection",
                "must be at least 1".into(),
            ));
        }
        for (key, value) in [
            (
                "[relay] connection_idle_timeout",
                relay.connection_idle_timeout,
            ),
            ("[relay] connect_timeout", relay.connect_timeout),
            ("[relay] first_retry", relay.first_retry),
            ("[relay] max_retry", relay.max_retry),
            ("[relay] lifetime", relay.lifetime),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than zero".into()));
            }
        }
        if relay.max_retry < relay.first_retry {
            return Err(invalid(
                "[relay] max_retry",
                format!(
                    "{} is shorter than [relay] first_retry = {}",
                    humantime::format_duration(relay.max_retry),
                    humantime::format_duration(relay.first_retry)
                ),
            ));
        }
        Ok(())
    }

    /// Create the spool folder if needed and prove it is writable, so an
    /// unwritable folder stops start-up instead of failing the first message.
    pub fn check_spool_dir(&self, source: &Source) -> Result<(), ConfigError> {
        let dir = &self.spool.dir;
        let fail = |what: &str, e: std::io::Error| ConfigError::Invalid {
            file: source.to_string(),
            key: "[spool] dir",
            message: format!("{}: {what}: {e}", dir.display()),
        };
        std::fs::create_dir_all(dir).map_err(|e| fail("cannot create", e))?;
        let probe = dir.join(format!(".tern-write-probe-{}", std::process::id()));
        std::fs::write(&probe, b"probe").map_err(|e| fail("not writable", e))?;
        std::fs::remove_file(&probe).map_err(|e| fail("not writable", e))?;
        Ok(())
    }

    /// The host name to announce: the configured one or the system's.
    pub fn hostname(&self) -> String {
        if !self.server.hostname.is_empty() {
            return self.server.hostname.clone();
        }
        system_hostname().unwrap_or_else(|| "localhost".to_string())
    }

    /// The authserv-id of `Authentication-Results:`: the configured one or
    /// the host name.
    pub fn authserv_id(&self) -> String {
        if self.mail_auth.authserv_id.is_empty() {
            self.hostname()
        } else {
            self.mail_auth.authserv_id.clone()
        }
    }

    /// Core threads to run: the configured number or one per core.
    pub fn worker_count(&self) -> usize {
        if self.server.workers > 0 {
            return self.server.workers;
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

fn system_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most
    // that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Parse a size: a plain number of bytes or a number with a binary unit
/// (`KiB`, `MiB`, `GiB`). Decimal units are refused rather than guessed.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let number: u64 = digits.parse().map_err(|_| {
        format!("`{text}` is not a size (examples: 1048576, \"512KiB\", \"64MiB\")")
    })?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{text}`: unknown size unit `{other}` (use B, KiB, MiB or GiB)"
            ))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

mod size_text {
    use super::*;

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum SizeValue {
            Number(u64),
            Text(String),
        }
        match SizeValue::deserialize(d)? {
            SizeValue::Number(n) => Ok(n),
            SizeValue::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
        }
    }
}

mod duration_text {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}; examples: \"30s\", \"5m\", \"1h 30m\")"
            ))
        })
    }
}

mod networks_text {
    use super::*;
    use ipnet::IpNet;

    pub fn serialize<S: Serializer>(v: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|n| n.to_string()))
    }

    /// CIDRs, or bare addresses meaning a single host (as Postfix allows).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| {
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        serde::de::Error::custom(format!(
                            "`{text}` is not a network (examples: \"192.0.2.0/24\", \"2001:db8::/32\", \"198.51.100.7\")"
                        ))
                    })
            })
            .collect()
    }
}

mod addr_list {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[SocketAddr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|a| a.to_string()))
    }

    /// "127.0.0.1:5353", or a bare address meaning port 53.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| {
                text.parse::<SocketAddr>()
                    .or_else(|_| {
                        text.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| {
                        serde::de::Error::custom(format!(
                            "`{text}` is not an address (examples: \"192.0.2.53\", \"127.0.0.1:5353\", \"[::1]:53\")"
                        ))
                    })
            })
            .collect()
    }
}

mod optional_addr {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.serialize_str(&a.to_string()),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not an address:port ({e}); use \"\" to disable"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let source = Source::File(PathBuf::from("t.toml"));
        let c = Config::parse(text, &source)?;
        c.validate(&source)?;
        Ok(c)
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.smtp.listen[0].port(), 2525);
        assert_eq!(c.smtp.submission[0].port(), 2587);
        assert_eq!(c.spool.dir, PathBuf::from("var/spool"));
        assert_eq!(c.metrics.listen.unwrap().port(), 9925);
    }

    #[test]
    fn sizes_and_durations_parse() {
        let c = parse(
            "[smtp]\nmax_message_size = \"10MiB\"\ncommand_timeout = \"2m\"\n\
             [spool]\nsegment_size = 33554432\n",
        )
        .unwrap();
        assert_eq!(c.smtp.max_message_size, 10 << 20);
        assert_eq!(c.smtp.command_timeout, Duration::from_secs(120));
        assert_eq!(c.spool.segment_size, 32 << 20);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[smtp]\nlisten_typo = []\n").unwrap_err().to_string();
        assert!(e.contains("t.toml"), "{e}");
        assert!(e.contains("listen_typo"), "{e}");
    }

    #[test]
    fn unknown_section_is_named() {
        let e = parse("[smpt]\n").unwrap_err().to_string();
        assert!(e.contains("smpt"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse("[server]\nio = \"kqueue\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kqueue") && e.contains("io"), "{e}");
        let e = parse("[smtp]\nlisten = [\"nope\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
        let e = parse("[smtp]\nmax_message_size = \"10MB\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("MB") && e.contains("max_message_size"), "{e}");
        let e = parse("[smtp]\ndata_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn rfc_minimums_are_enforced() {
        let e = parse("[smtp]\nmax_recipients = 10\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[smtp] max_recipients") && e.contains("4.5.3.1.8"),
            "{e}"
        );
        let e = parse("[smtp]\nmax_message_size = 1000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[smtp] max_message_size"), "{e}");
        let e = parse("[smtp]\ncommand_timeout = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[smtp] command_timeout"), "{e}");
    }

    #[test]
    fn mail_auth_keys_are_checked_and_named() {
        let c = parse("").unwrap();
        assert!(c.mail_auth.verify_spf && c.mail_auth.verify_dkim && c.mail_auth.verify_dmarc);
        assert!(!c.mail_auth.spf_reject_fail && !c.mail_auth.dmarc_reject);
        assert!(c.mail_auth.signing.is_empty());
        for (text, key) in [
            ("[mail_auth]\nverify_dkim = false\n", "[mail_auth] verify_dmarc"),
            (
                "[mail_auth]\nverify_dmarc = false\ndmarc_reject = true\n",
                "[mail_auth] dmarc_reject",
            ),
            (
                "[mail_auth]\nverify_spf = false\nverify_dmarc = false\nspf_reject_fail = true\n",
                "[mail_auth] spf_reject_fail",
            ),
            ("[mail_auth]\ncheck_timeout = \"0s\"\n", "[mail_auth] check_timeout"),
            ("[mail_auth]\nauthserv_id = \"a b\"\n", "[mail_auth] authserv_id"),
            (
                "[[mail_auth.signing]]\ndomain = \"a@b\"\nselector = \"s\"\nkey_file = \"k\"\n",
                "[[mail_auth.signing]] domain",
            ),
            (
                "[[mail_auth.signing]]\ndomain = \"b.example\"\nselector = \"s 1\"\nkey_file = \"k\"\n",
                "[[mail_auth.signing]] selector",
            ),
            (
                "[[mail_auth.signing]]\ndomain = \"b.example\"\nselector = \"s\"\nkey_file = \"k\"\n\
                 [[mail_auth.signing]]\ndomain = \"B.example\"\nselector = \"s\"\nkey_file = \"k2\"\n",
                "[[mail_auth.signing]] selector",
            ),
            (
                "[[mail_auth.signing]]\ndomain = \"b.example\"\nselector = \"s\"\nkey_file = \"k\"\n\
                 headers = [\"Subject:\"]\n",
                "[[mail_auth.signing]] headers",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = parse("[[mail_auth.signing]]\ndomain = \"b.example\"\nselector = \"s\"\nkey_file = \"k\"\nalgorithm = \"rsa-sha1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rsa-sha1"), "{e}");
        let c = parse(
            "[[mail_auth.signing]]\ndomain = \"b.example\"\nselector = \"s\"\nkey_file = \"k\"\n\
             [[mail_auth.signing]]\ndomain = \"b.example\"\nselector = \"e\"\nkey_file = \"k2\"\n\
             algorithm = \"ed25519-sha256\"\n",
        )
        .unwrap();
        assert_eq!(c.mail_auth.signing[0].algorithm, DkimAlgorithm::RsaSha256);
        assert_eq!(c.mail_auth.signing[0].headers, default_signed_headers());
        assert_eq!(
            c.mail_auth.signing[1].algorithm,
            DkimAlgorithm::Ed25519Sha256
        );
    }

    #[test]
    fn segment_must_hold_largest_message() {
        let e = parse("[smtp]\nmax_message_size = \"64MiB\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[spool] segment_size"), "{e}");
        parse("[smtp]\nmax_message_size = \"64MiB\"\n[spool]\nsegment_size = \"80MiB\"\n").unwrap();
    }

    #[test]
    fn compaction_settings_are_checked() {
        let c = parse("[spool]\ncompact_below = 0\ncompact_interval = \"10s\"\n").unwrap();
        assert_eq!(c.spool.compact_below, 0.0);
        assert_eq!(c.spool.compact_interval, Duration::from_secs(10));
        for bad in ["compact_below = 0.75", "compact_below = -0.1"] {
            let e = parse(&format!("[spool]\n{bad}\n")).unwrap_err().to_string();
            assert!(e.contains("[spool] compact_below"), "{e}");
        }
        let e = parse("[spool]\ncompact_interval = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[spool] compact_interval"), "{e}");
    }

    #[test]
    fn tls_needs_both_halves() {
        let e = parse("[tls]\ncert = \"c.pem\"\n").unwrap_err().to_string();
        assert!(e.contains("[tls] key"), "{e}");
    }

    #[test]
    fn relay_networks_and_domains() {
        let c = parse(
            "[relay]\nmynetworks = [\"192.0.2.0/24\", \"198.51.100.7\", \"2001:db8::/32\"]\n\
             relay_domains = [\".example.org\"]\n",
        )
        .unwrap();
        assert_eq!(c.relay.mynetworks.len(), 3);
        assert_eq!(c.relay.mynetworks[1].to_string(), "198.51.100.7/32");
        let e = parse("[relay]\nmynetworks = [\"10.0.0.0/33\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mynetworks") && e.contains("10.0.0.0/33"), "{e}");
        let e = parse("[relay]\nlocal_domains = [\"a b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[relay] local_domains"), "{e}");
        assert_eq!(Config::default().relay.mynetworks.len(), 2);
    }

    #[test]
    fn delivery_keys_parse_and_bad_ones_are_named() {
        let c = parse(
            "[relay]\nhold = true\nsmarthost = \"[192.0.2.1]:2525\"\nnameservers = [\"127.0.0.1:5353\", \"::1\"]\n\
             tls = \"verify\"\nfirst_retry = \"1s\"\nmax_retry = \"4s\"\nlifetime = \"10s\"\n\
             [relay.routes]\n\"a.example\" = \"mx.a.example:26\"\n\".b.example\" = { to = \"[::1]\", tls = \"off\" }\n",
        )
        .unwrap();
        assert!(c.relay.hold);
        assert_eq!(c.relay.nameservers[1].to_string(), "[::1]:53");
        assert_eq!(c.relay.tls, OutboundTls::Verify);
        assert_eq!(c.relay.routes["a.example"].to(), "mx.a.example:26");
        assert_eq!(c.relay.routes[".b.example"].tls(), Some(OutboundTls::Off));
        for (text, key) in [
            ("[relay]\nsmarthost = \"host:0\"\n", "[relay] smarthost"),
            (
                "[relay.routes]\n\"a.example\" = \"a b\"\n",
                "[relay.routes]",
            ),
            ("[relay]\nremote_port = 0\n", "[relay] remote_port"),
            (
                "[relay]\nmax_connections_per_destination = 0\n",
                "[relay] max_connections_per_destination",
            ),
            (
                "[relay]\nfirst_retry = \"10m\"\nmax_retry = \"1m\"\n",
                "[relay] max_retry",
            ),
            ("[relay]\nlifetime = \"0s\"\n", "[relay] lifetime"),
            (
                "[relay]\npostmaster = \"post master\"\n",
                "[relay] postmaster",
            ),
            ("[relay]\npostmaster = \"\"\n", "[relay] postmaster"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = parse("[relay]\ntls = \"maybe\"\n").unwrap_err().to_string();
        assert!(e.contains("tls"), "{e}");
        let e = parse("[relay]\nnameservers = [\"dns.example\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dns.example"), "{e}");
    }

    #[test]
    fn retrieval_sections_have_their_own_ports_and_tls_needs_a_certificate() {
        let c = Config::default();
        assert_eq!(c.pop3.listen[0].port(), 2110);
        assert_eq!(c.imap.listen[0].port(), 2143);
        assert!(c.pop3.allow_plaintext_auth && c.imap.allow_plaintext_auth);
        let c = parse("[imap]\nallow_plaintext_auth = false\n").unwrap();
        assert_eq!(c.imap.listen[0].port(), 2143);
        assert!(!c.imap.allow_plaintext_auth);
        let e = parse("[pop3]\ntls_listen = [\"127.0.0.1:995\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[pop3] tls_listen"), "{e}");
        let e = parse("[users]\nfile = \"\"\n").unwrap_err().to_string();
        assert!(e.contains("[users] file"), "{e}");
    }

    #[test]
    fn submission_keys() {
        let c = Config::default();
        assert!(c.smtp.submissions.is_empty());
        assert!(!c.submission.allow_plaintext_auth && !c.submission.any_sender);
        let e = parse("[smtp]\nsubmissions = [\"127.0.0.1:465\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[smtp] submissions") && e.contains("[tls]"),
            "{e}"
        );
        let c = parse(
            "[smtp]\nlisten = []\nsubmission = []\nsubmissions = [\"127.0.0.1:465\"]\n\
             [tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
             [submission]\nallow_plaintext_auth = true\nany_sender = true\n",
        )
        .unwrap();
        assert_eq!(c.smtp.submissions[0].port(), 465);
        assert!(c.submission.allow_plaintext_auth && c.submission.any_sender);
        let e = parse("[submission]\nplaintext = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("plaintext"), "{e}");
    }

    #[test]
    fn limits_parse_and_zero_values_are_named() {
        let c = parse(
            "[limits]\nmax_connections_per_ip = 3\nmax_connection_rate_per_ip = 0\n\
             pop3_autologout = \"2s\"\nmynetworks_exempt = false\n",
        )
        .unwrap();
        assert_eq!(c.limits.max_connections_per_ip, 3);
        assert_eq!(c.limits.max_connection_rate_per_ip, 0);
        assert_eq!(c.limits.pop3_autologout, Duration::from_secs(2));
        assert!(!c.limits.mynetworks_exempt);
        for key in [
            "max_connections",
            "max_connections_per_ip",
            "hard_error_limit",
            "max_messages_per_connection",
            "data_min_rate",
        ] {
            let e = parse(&format!("[limits]\n{key} = 0\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("[limits] {key}")), "{e}");
        }
        let e = parse("[limits]\nimap_autologout = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[limits] imap_autologout"), "{e}");
    }

    #[test]
    fn metrics_can_be_disabled() {
        let c = parse("[metrics]\nlisten = \"\"\n").unwrap();
        assert_eq!(c.metrics.listen, None);
    }

    #[test]
    fn size_parser_rejects_garbage() {
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("7"), Ok(7));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("5 TB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert!(parse_size("18446744073709551615GiB").is_err());
    }

    #[test]
    fn example_config_documents_every_key() {
        let text = include_str!("../config/tern.toml");
        let example: toml::Table = toml::from_str(text).unwrap();
        Config::parse(text, &Source::Embedded).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, keys) in &defaults {
            let documented = example
                .get(section)
                .and_then(|v| v.as_table())
                .unwrap_or_else(|| panic!("config/tern.toml lacks [{section}]"));
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    documented.contains_key(key),
                    "config/tern.toml lacks [{section}] {key}"
                );
            }
        }
    }

    #[test]
    fn unwritable_spool_dir_is_named() {
        let c = Config {
            spool: SpoolSection {
                dir: PathBuf::from("/proc/tern-cannot-exist/spool"),
                ..SpoolSection::default()
            },
            ..Config::default()
        };
        let e = c
            .check_spool_dir(&Source::Embedded)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[spool] dir") && e.contains("/proc/tern-cannot-exist"),
            "{e}"
        );
    }
}
