//! The checks of one inbound message: SPF of the HELO and MAIL FROM
//! identities, every DKIM signature, and DMARC over both, each bounded by
//! `[mail_auth] check_timeout`, on the core's relay resolver. Their results
//! go on top of the message as `Received-SPF:` (RFC 7208 9.1) and
//! `Authentication-Results:` (RFC 8601), after our own authserv-id has
//! been struck from what the client sent; or the message is refused when
//! the policy says so.
//!
//! It must never refuse for a temporary error, never wait on DNS past the
//! timeout, and never check mail from a trusted client.

use std::net::IpAddr;
use std::time::Duration;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DmarcOutput, DmarcResult, DnsError,
    Error, MessageAuthenticator, ReceivedSpf, SpfOutput, SpfResult,
};
use tracing::debug;

use super::fields::without_forged_results;
use super::is_trusted;
use super::lookup_cache::LookupCache;
use super::policy::{dkim_label, dmarc_label, spf_label, RejectPolicy};
use crate::envelope::Envelope;
use crate::smtp::{IncomingMessage, RelayAccess, Reply};

/// What `[mail_auth]` asks of inbound mail.
#[derive(Debug, Clone)]
pub struct InboundSettings {
    pub verify_spf: bool,
    pub verify_dkim: bool,
    pub verify_dmarc: bool,
    pub reject: RejectPolicy,
    /// Names us in `Authentication-Results:`.
    pub authserv_id: String,
    /// Names us in `Received-SPF:` (`receiver=`) and SPF's `%{r}` macro.
    pub hostname: String,
    /// Bound of each check (SPF per identity, DKIM, DMARC).
    pub check_timeout: Duration,
    /// Tells trusted clients, whose mail is not checked.
    pub access: RelayAccess,
}

/// One core's checker (the resolver is the core's, like the relay's).
pub struct InboundAuth {
    authenticator: MessageAuthenticator,
    cache: LookupCache,
    settings: InboundSettings,
}

/// The SPF result that counts and the identity it is about.
struct SpfCheck {
    output: SpfOutput,
    /// The HELO identity decided: it failed, or MAIL FROM was `<>`
    /// (RFC 7208 2.4: then MAIL FROM is postmaster@HELO, the same check).
    helo_identity: bool,
}

fn timed_out() -> Error {
    Error::Dns(DnsError::Resolver("check timed out".into()))
}

/// An IPv4 client on a dual-stack socket is checked as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl InboundAuth {
    /// `resolver` is the core's relay resolver (same servers, timeouts
    /// and attempts as MX lookups).
    pub fn new(resolver: TokioResolver, settings: InboundSettings) -> InboundAuth {
        InboundAuth {
            authenticator: MessageAuthenticator(resolver),
            cache: LookupCache::new(),
            settings,
        }
    }

    /// Mail from this client is to be checked.
    pub fn applies_to(&self, envelope: &Envelope) -> bool {
        (self.settings.verify_spf || self.settings.verify_dkim)
            && !is_trusted(&envelope.client, &self.settings.access)
    }

    /// Check `message`. Ok: its data now starts with the result fields.
    /// Err: the reply that refuses it (nothing is to be queued).
    pub async fn check(&self, message: &mut IncomingMessage) -> Result<(), Reply> {
        let settings = &self.settings;
        let envelope = &message.envelope;
        let ip = canonical(envelope.client.ip);
        let helo = envelope.client.helo.as_str();
        let sender = envelope.sender.as_str();
        let parsed = AuthenticatedMessage::parse(&message.data);
        let spf = async {
            match settings.verify_spf {
                true => Some(self.spf(ip, helo, sender).await),
                false => None,
            }
        };
        let dkim = async {
            match (&parsed, settings.verify_dkim) {
                (Some(parsed), true) => Some(
                    tokio::time::timeout(
                        settings.check_timeout,
                        self.authenticator.verify_dkim(self.cache.params(parsed)),
                    )
                    .await
                    .unwrap_or_else(|_| vec![DkimOutput::temp_err(timed_out())]),
                ),
                (None, true) => Some(Vec::new()),
                (_, false) => None,
            }
        };
        let (spf, dkim) = tokio::join!(spf, dkim);
        let dmarc = match (&parsed, &spf, &dkim, settings.verify_dmarc) {
            (Some(parsed), Some(spf), Some(dkim), true) => {
                let mail_from_domain = match sender.rsplit_once('@') {
                    Some((_, domain)) => domain,
                    None => helo,
                };
                let params = DmarcParameters::new(parsed, dkim, mail_from_domain, &spf.output);
                Some(
                    tokio::time::timeout(
                        settings.check_timeout,
                        self.authenticator.verify_dmarc(self.cache.params(params)),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        DmarcOutput::new(parsed.from().rsplit('@').next().unwrap_or("").into())
                            .with_spf_result(DmarcResult::TempError(timed_out()))
                            .with_dkim_result(DmarcResult::TempError(timed_out()))
                    }),
                )
            }
            _ => None,
        };
        count(spf.as_ref(), dkim.as_deref(), dmarc.as_ref());
        let spf_decision = spf
            .as_ref()
            .map(|spf| (spf.output.result(), spf.output.domain()));
        let dmarc_result = dmarc.as_ref().map(DmarcOutput::result);
        let dmarc_decision = dmarc
            .as_ref()
            .zip(dmarc_result.as_ref())
            .map(|(dmarc, result)| (result, dmarc.policy(), dmarc.domain()));
        if let Some((reason, reply)) = settings.reject.refusal(
            spf_decision
                .as_ref()
                .map(|(result, domain)| (result, *domain)),
            dmarc_decision,
        ) {
            metrics::counter!("tern_mailauth_rejected_total", "reason" => reason).increment(1);
            return Err(reply);
        }
        let mut results = AuthenticationResults::new(&settings.authserv_id);
        let mut recorded = String::new();
        if let Some(spf) = &spf {
            results = match spf.helo_identity {
                true => results.with_spf_ehlo_result(&spf.output, ip, helo),
                false => results.with_spf_mailfrom_result(&spf.output, ip, sender, helo),
            };
            recorded.push_str(
                &ReceivedSpf::new(&spf.output, ip, helo, sender, &settings.hostname).to_header(),
            );
        }
        let author = parsed.as_ref().map_or("", |parsed| parsed.from());
        if let Some(dkim) = &dkim {
            results = results.with_dkim_results(dkim, author);
        }
        recorded.push_str("Authentication-Results: ");
        recorded.push_str(&results.to_string());
        // RFC 8601 2.7.1: "none" for a message without a signature;
        // mail-auth writes an entry per signature only.
        if dkim.as_ref().is_some_and(|dkim| dkim.is_empty()) {
            recorded.push_str(";\r\n\tdkim=none (no signature)");
        }
        if let Some(dmarc) = &dmarc {
            // An empty authserv-id makes mail-auth write the entry alone.
            recorded.push_str(
                &AuthenticationResults::new("")
                    .with_dmarc_result(dmarc)
                    .to_string(),
            );
        }
        recorded.push_str("\r\n");
        debug!(client = %ip, results = %recorded.trim_end(), "mail authentication");
        let mut stamped = recorded.into_bytes();
        match without_forged_results(&message.data, &settings.authserv_id) {
            Some(kept) => stamped.extend_from_slice(&kept),
            None => stamped.extend_from_slice(&message.data),
        }
        drop(parsed);
        message.data = stamped;
        Ok(())
    }

    /// SPF of the HELO identity, then (unless it failed or MAIL FROM is
    /// `<>`) of the MAIL FROM identity (RFC 7208 2.3, 2.4).
    async fn spf(&self, ip: IpAddr, helo: &str, sender: &str) -> SpfCheck {
        let host = self.settings.hostname.as_str();
        let helo_output = self
            .bounded_spf(SpfParameters::verify_ehlo(ip, helo, host), helo)
            .await;
        if sender.is_empty() || helo_output.result() == SpfResult::Fail {
            return SpfCheck {
                output: helo_output,
                helo_identity: true,
            };
        }
        let domain = sender.rsplit_once('@').map_or(helo, |(_, domain)| domain);
        let output = self
            .bounded_spf(
                SpfParameters::verify_mail_from(ip, helo, host, sender),
                domain,
            )
            .await;
        SpfCheck {
            output,
            helo_identity: false,
        }
    }

    async fn bounded_spf(&self, params: SpfParameters<'_>, domain: &str) -> SpfOutput {
        tokio::time::timeout(
            self.settings.check_timeout,
            self.authenticator.verify_spf(self.cache.params(params)),
        )
        .await
        .unwrap_or_else(|_| SpfOutput::new(domain.to_string()).with_result(SpfResult::TempError))
    }
}

/// `tern_mailauth_results_total` for one message.
fn count(spf: Option<&SpfCheck>, dkim: Option<&[DkimOutput<'_>]>, dmarc: Option<&DmarcOutput>) {
    let mut counted = Vec::with_capacity(4);
    if let Some(spf) = spf {
        counted.push(("spf", spf_label(&spf.output.result())));
    }
    match dkim {
        Some([]) => counted.push(("dkim", "none")),
        Some(outputs) => counted.extend(
            outputs
                .iter()
                .map(|output| ("dkim", dkim_label(output.result()))),
        ),
        None => {}
    }
    if let Some(dmarc) = dmarc {
        counted.push(("dmarc", dmarc_label(&dmarc.result())));
    }
    for (method, result) in counted {
        metrics::counter!("tern_mailauth_results_total", "method" => method, "result" => result)
            .increment(1);
    }
}
