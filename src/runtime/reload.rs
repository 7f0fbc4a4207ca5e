//! Configuration reload (SIGHUP): what a running server can take from a
//! new config file, built once and handed to every core, and the names of
//! the settings that only a restart applies.
//!
//! Each core keeps its own snapshot (an `Rc` in a `RefCell`, read once
//! per accepted connection) and swaps it when its reload channel brings a
//! new `LiveSettings`: the accept path takes no lock and shares no cache
//! line with other cores, as everything on it must (see the runtime's
//! module comment); a reload is rare, a connection is not. A session
//! keeps the snapshot it started with, so a new certificate serves new
//! handshakes while open sessions carry on with theirs.
//!
//! It must never leave a core half-reloaded: everything is built and
//! checked here, on the signal thread, before any core is told, and a
//! config that fails is only logged (the old one stays in force).

use std::sync::Arc;

use crate::config::{Config, OutboundTls, RelaySection};
use crate::imap::ImapConfig;
use crate::limits::SessionLimits;
use crate::mailauth::{DkimSigners, InboundSettings, RejectPolicy};
use crate::pop3::Pop3Config;
use crate::queue::retry::RetryPolicy;
use crate::relay::routing::RouteTable;
use crate::smtp::{RelayAccess, SessionConfig, SubmissionPolicy};

use super::admission::AdmissionConfig;
use super::tls;
use super::StartError;

/// Settings a reload replaces ("[section] key", a whole table for routes;
/// `[log] level` is applied by the binary, which owns the logger). Any
/// other change is logged as needing a restart.
pub const LIVE_KEYS: [&str; 39] = [
    "[tls] cert",
    "[tls] key",
    "[smtp] max_message_size",
    "[smtp] max_recipients",
    "[smtp] command_timeout",
    "[smtp] data_timeout",
    "[relay] hold",
    "[relay] mynetworks",
    "[relay] local_domains",
    "[relay] relay_domains",
    "[relay] postmaster",
    "[relay] smarthost",
    "[relay] remote_port",
    "[relay] first_retry",
    "[relay] max_retry",
    "[relay] lifetime",
    "[relay.routes]",
    "[submission] allow_plaintext_auth",
    "[submission] any_sender",
    "[pop3] allow_plaintext_auth",
    "[imap] allow_plaintext_auth",
    "[limits] max_connections",
    "[limits] max_connections_per_ip",
    "[limits] max_connection_rate_per_ip",
    "[limits] mynetworks_exempt",
    "[limits] hard_error_limit",
    "[limits] max_messages_per_connection",
    "[limits] data_min_rate",
    "[limits] pop3_autologout",
    "[limits] imap_autologout",
    "[mail_auth] verify_spf",
    "[mail_auth] verify_dkim",
    "[mail_auth] verify_dmarc",
    "[mail_auth] spf_reject_fail",
    "[mail_auth] dmarc_reject",
    "[mail_auth] authserv_id",
    "[mail_auth] check_timeout",
    "[mail_auth] signing",
    "[log] level",
];

/// What one core serves new connections and deliveries with.
pub struct LiveSettings {
    pub session_config: Arc<SessionConfig>,
    /// The same session on submission listeners, with RFC 6409's rules.
    pub submission_config: Arc<SessionConfig>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub pop3_config: Arc<Pop3Config>,
    pub imap_config: Arc<ImapConfig>,
    pub routes: RouteTable,
    pub retry: RetryPolicy,
    pub hold: bool,
    pub admission: Arc<AdmissionConfig>,
    /// Checks of inbound mail; None when `[mail_auth]` verifies nothing.
    pub inbound_auth: Option<InboundSettings>,
    /// DKIM keys of outbound mail; None without `[[mail_auth.signing]]`.
    pub dkim: Option<Arc<DkimSigners>>,
}

/// Whether a `[relay]` table asks for verified STARTTLS anywhere.
pub fn verify_wanted(relay: &RelaySection) -> bool {
    relay.tls == OutboundTls::Verify
        || relay
            .routes
            .values()
            .any(|r| r.tls() == Some(OutboundTls::Verify))
}

impl LiveSettings {
    /// Build from `config`; TLS is read from the files when `[tls]` names
    /// them (a reload reads them again even if the paths did not change:
    /// a renewed certificate usually keeps its path).
    pub fn from_config(config: &Config) -> Result<LiveSettings, StartError> {
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => Some(tls::load_server_config(cert, key)?),
            _ => None,
        };
        let routes = RouteTable::new(&config.relay).map_err(|e| StartError::Setting {
            key: "[relay.routes]",
            message: e.to_string(),
        })?;
        let session_limits = SessionLimits {
            hard_error_limit: config.limits.hard_error_limit,
            data_min_rate: config.limits.data_min_rate,
        };
        let session_config = Arc::new(SessionConfig {
            hostname: config.hostname(),
            max_message_size: config.smtp.max_message_size,
            max_recipients: config.smtp.max_recipients,
            starttls_available: tls.is_some(),
            command_timeout: config.smtp.command_timeout,
            data_timeout: config.smtp.data_timeout,
            relay_access: RelayAccess::new(
                &config.relay.mynetworks,
                &config.relay.local_domains,
                &config.relay.relay_domains,
            ),
            submission: None,
            limits: session_limits,
            max_messages_per_connection: config.limits.max_messages_per_connection,
        });
        let submission_config = Arc::new(SessionConfig {
            submission: Some(SubmissionPolicy {
                allow_plaintext_auth: config.submission.allow_plaintext_auth,
                any_sender: config.submission.any_sender,
            }),
            ..SessionConfig::clone(&session_config)
        });
        let imap_config = Arc::new(ImapConfig {
            hostname: config.hostname(),
            starttls_available: tls.is_some(),
            allow_plaintext_auth: config.imap.allow_plaintext_auth,
            literal_max: config.smtp.max_message_size,
            autologout: config.limits.imap_autologout,
            limits: session_limits,
        });
        let pop3_config = Arc::new(Pop3Config {
            hostname: config.hostname(),
            stls_available: tls.is_some(),
            allow_plaintext_auth: config.pop3.allow_plaintext_auth,
            autologout: config.limits.pop3_autologout,
            limits: session_limits,
        });
        Ok(LiveSettings {
            session_config,
            submission_config,
            tls,
            pop3_config,
            imap_config,
            routes,
            retry: RetryPolicy {
                first_retry: config.relay.first_retry,
                max_retry: config.relay.max_retry,
                lifetime: config.relay.lifetime,
            },
            hold: config.relay.hold,
            admission: Arc::new(AdmissionConfig::of(config)),
            inbound_auth: inbound_auth_settings(config),
            dkim: dkim_signers(config)?,
        })
    }
}

/// What `[mail_auth]` asks of inbound mail, or None when it verifies nothing.
fn inbound_auth_settings(config: &Config) -> Option<InboundSettings> {
    let auth = &config.mail_auth;
    (auth.verify_spf || auth.verify_dkim).then(|| InboundSettings {
        verify_spf: auth.verify_spf,
        verify_dkim: auth.verify_dkim,
        verify_dmarc: auth.verify_dmarc,
        reject: RejectPolicy {
            spf_fail: auth.spf_reject_fail,
            dmarc_reject: auth.dmarc_reject,
        },
        authserv_id: config.authserv_id(),
        hostname: config.hostname(),
        check_timeout: auth.check_timeout,
        access: mynetworks_access(config),
    })
}

/// The DKIM keys, read from their files (again on every reload, so a
/// rotated key is picked up), or None when none is configured.
fn dkim_signers(config: &Config) -> Result<Option<Arc<DkimSigners>>, StartError> {
    if config.mail_auth.signing.is_empty() {
        return Ok(None);
    }
    let signers = DkimSigners::load(&config.mail_auth.signing, mynetworks_access(config))?;
    Ok(Some(Arc::new(signers)))
}

/// Who is trusted for mail authentication: `[relay] mynetworks`.
fn mynetworks_access(config: &Config) -> RelayAccess {
    RelayAccess::new(&config.relay.mynetworks, &[], &[])
}

/// Every setting whose value differs between `old` and `new`, as
/// "[section] key" ("[relay.routes]" for the routes table).
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(old), Ok(new)) = (toml::Table::try_from(old), toml::Table::try_from(new)) else {
        return vec!["(configuration not comparable)".into()];
    };
    let mut changed = Vec::new();
    let sections: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for section in sections {
        let empty = toml::Table::new();
        let old_table = old
            .get(section)
            .and_then(|v| v.as_table())
            .unwrap_or(&empty);
        let new_table = new
            .get(section)
            .and_then(|v| v.as_table())
            .unwrap_or(&empty);
        let keys: std::collections::BTreeSet<&String> =
            old_table.keys().chain(new_table.keys()).collect();
        for key in keys {
            if old_table.get(key) == new_table.get(key) {
                continue;
            }
            let is_table = old_table.get(key).is_some_and(|v| v.is_table())
                || new_table.get(key).is_some_and(|v| v.is_table());
            changed.push(if is_table {
                format!("[{section}.{key}]")
            } else {
                format!("[{section}] {key}")
            });
        }
    }
    changed
}

/// The outcome of comparing a new config with the one in force.
#[derive(Debug)]
pub struct Merged {
    /// `old` with every live setting of `new`: what is in force next.
    pub config: Config,
    /// Changed settings the reload applies.
    pub applied: Vec<String>,
    /// Changed settings that wait for a restart (still the old value).
    pub restart_needed: Vec<String>,
}

/// Take the live settings of `new` into `old`. Turning TLS on or off
/// changes what every listener offers, so it waits for a restart.
pub fn merge_live(old: &Config, new: &Config) -> Result<Merged, String> {
    let tls_on = |c: &Config| c.tls.cert.is_some() && c.tls.key.is_some();
    let tls_switched = tls_on(old) != tls_on(new);
    let (applied, restart_needed): (Vec<String>, Vec<String>) = changed_keys(old, new)
        .into_iter()
        .partition(|key| is_live(key) && !(tls_switched && key.starts_with("[tls]")));
    let mut merged = toml::Table::try_from(old).map_err(|e| e.to_string())?;
    let new_table = toml::Table::try_from(new).map_err(|e| e.to_string())?;
    for key in &applied {
        let (section, name) = match key.strip_prefix('[').and_then(|k| k.split_once(']')) {
            Some((section, "")) => match section.split_once('.') {
                Some((section, table)) => (section, table),
                None => continue,
            },
            Some((section, name)) => (section, name.trim()),
            None => continue,
        };
        let value = new_table
            .get(section)
            .and_then(|t| t.as_table())
            .and_then(|t| t.get(name))
            .cloned();
        let Some(table) = merged
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
        else {
            continue;
        };
        match value {
            Some(value) => table.insert(name.to_string(), value),
            None => table.remove(name),
        };
    }
    let config: Config = merged
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())?;
    Ok(Merged {
        config,
        applied,
        restart_needed,
    })
}

/// Whether a reload applies the change of `key`.
pub fn is_live(key: &str) -> bool {
    LIVE_KEYS.contains(&key)
}

/// The reload series at start-up: the configuration in force loaded fine
/// now, nothing waits for a restart (named like Prometheus's own
/// `prometheus_config_last_reload_*`, so the usual alerts carry over).
pub fn register_metrics() {
    for result in ["ok", "error"] {
        metrics::counter!("tern_config_reloads_total", "result" => result).increment(0);
    }
    metrics::gauge!("tern_config_last_reload_successful").set(1.0);
    metrics::gauge!("tern_config_last_reload_success_timestamp_seconds").set(unix_seconds());
    metrics::gauge!("tern_config_restart_pending_settings").set(0.0);
}

/// Records a reload that took effect; `restart_pending` changed settings
/// wait for a restart.
pub fn record_reload_applied(restart_pending: usize) {
    metrics::counter!("tern_config_reloads_total", "result" => "ok").increment(1);
    metrics::gauge!("tern_config_last_reload_successful").set(1.0);
    metrics::gauge!("tern_config_last_reload_success_timestamp_seconds").set(unix_seconds());
    metrics::gauge!("tern_config_restart_pending_settings").set(restart_pending as f64);
}

/// Records a reload refused (the file, or a setting in it, did not load):
/// the configuration in force stays.
pub fn record_reload_failed() {
    metrics::counter!("tern_config_reloads_total", "result" => "error").increment(1);
    metrics::gauge!("tern_config_last_reload_successful").set(0.0);
}

fn unix_seconds() -> f64 {
    crate::clock::now_ms() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_name_section_and_key() {
        let old = Config::default();
        let mut new = Config::default();
        assert!(changed_keys(&old, &new).is_empty());
        new.relay.hold = !old.relay.hold;
        new.server.workers = 7;
        new.relay.routes.insert(
            "example.org".into(),
            crate::config::RouteSpec::To("[192.0.2.1]".into()),
        );
        new.tls.cert = Some("/etc/tern/cert.pem".into());
        let changed = changed_keys(&old, &new);
        assert_eq!(
            changed,
            [
                "[relay] hold",
                "[relay.routes]",
                "[server] workers",
                "[tls] cert"
            ]
        );
        let restart: Vec<&String> = changed.iter().filter(|k| !is_live(k)).collect();
        assert_eq!(restart, ["[server] workers"]);
    }

    #[test]
    fn merge_takes_live_settings_and_leaves_the_rest() {
        let old = Config::default();
        let mut new = Config::default();
        new.relay.hold = true;
        new.relay.routes.insert(
            "example.org".into(),
            crate::config::RouteSpec::To("[192.0.2.1]".into()),
        );
        new.server.workers = 9;
        new.tls.cert = Some("/etc/tern/cert.pem".into());
        new.tls.key = Some("/etc/tern/key.pem".into());
        let merged = merge_live(&old, &new).unwrap();
        assert!(merged.config.relay.hold);
        assert_eq!(merged.config.relay.routes, new.relay.routes);
        assert_eq!(merged.config.server.workers, old.server.workers);
        // TLS switched on: a restart is needed.
        assert_eq!(merged.config.tls, old.tls);
        assert_eq!(
            merged.restart_needed,
            ["[server] workers", "[tls] cert", "[tls] key"]
        );
        assert_eq!(merged.applied, ["[relay] hold", "[relay.routes]"]);
        // Removing every route is a change too.
        let back = merge_live(&merged.config, &old).unwrap();
        assert!(back.config.relay.routes.is_empty());
    }

    #[test]
    fn live_settings_follow_the_config() {
        let mut config = Config::default();
        config.relay.hold = true;
        config.relay.first_retry = std::time::Duration::from_secs(7);
        let live = LiveSettings::from_config(&config).unwrap();
        assert!(live.hold);
        assert!(live.tls.is_none());
        assert!(!live.session_config.starttls_available);
        assert_eq!(live.retry.first_retry.as_secs(), 7);
        config.tls.cert = Some("/nonexistent/cert.pem".into());
        config.tls.key = Some("/nonexistent/key.pem".into());
        let err = LiveSettings::from_config(&config)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("[tls] cert"), "{err}");
    }
}
