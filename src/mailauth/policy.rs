//! What the results of the checks mean: their names as counted and
//! recorded (RFC 8601 2.7), and whether a message is refused (RFC 7372 for
//! SPF, RFC 7489 6.7 for DMARC).
//!
//! This module only decides. It must never do I/O, and never refuse for a
//! temporary error or a result the configuration did not ask to refuse.

use mail_auth::dmarc::Policy;
use mail_auth::{DkimResult, DmarcResult, SpfResult};

use crate::smtp::{EnhancedStatus, Reply};

/// RFC 7372 3.2: X.7.23 SPF validation failed.
const SPF_FAILED: EnhancedStatus = EnhancedStatus::new(5, 7, 23);
/// RFC 3463 3.8: X.7.1 delivery not authorized, message refused (RFC 7372
/// registers X.7.1 for DMARC-based refusal too).
const DMARC_FAILED: EnhancedStatus = EnhancedStatus::new(5, 7, 1);

/// Which failures refuse a message (`[mail_auth] spf_reject_fail`,
/// `dmarc_reject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RejectPolicy {
    pub spf_fail: bool,
    /// Honour a DMARC failure when the domain publishes `p=reject`.
    pub dmarc_reject: bool,
}

impl RejectPolicy {
    /// The refusal owed for these results, if any. SPF is decided first:
    /// its refusal names the SPF domain, which the sender can act on.
    /// `spf`: the result and its domain; `dmarc`: the result, the policy
    /// the author domain publishes, and that domain.
    pub fn refusal(
        &self,
        spf: Option<(&SpfResult, &str)>,
        dmarc: Option<(&DmarcResult, Policy, &str)>,
    ) -> Option<(&'static str, Reply)> {
        if let Some((SpfResult::Fail, domain)) = spf {
            if self.spf_fail {
                return Some((
                    "spf",
                    Reply::new(
                        550,
                        SPF_FAILED,
                        format!(
                            "SPF check failed: {} does not designate this host as permitted sender",
                            printable(domain)
                        ),
                    ),
                ));
            }
        }
        let (result, policy, domain) = dmarc?;
        if self.dmarc_reject && matches!(result, DmarcResult::Fail(_)) && policy == Policy::Reject {
            return Some((
                "dmarc",
                Reply::new(
                    550,
                    DMARC_FAILED,
                    format!(
                        "DMARC policy of {} rejects this message (neither SPF nor DKIM aligned)",
                        printable(domain)
                    ),
                ),
            ));
        }
        None
    }
}

/// A domain from the message for a reply line: visible ASCII only, cut to
/// the longest domain (RFC 5321 4.5.3.1.2), so it cannot end the line.
fn printable(domain: &str) -> String {
    domain
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .take(255)
        .collect()
}

/// The RFC 8601 result name of an SPF result.
pub fn spf_label(result: &SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// The RFC 8601 result name of a DKIM result.
pub fn dkim_label(result: &DkimResult) -> &'static str {
    match result {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

/// The RFC 8601 result name of a DMARC result.
pub fn dmarc_label(result: &DmarcResult) -> &'static str {
    match result {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::Error;

    fn wire(reply: &Reply) -> String {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    const BOTH: RejectPolicy = RejectPolicy {
        spf_fail: true,
        dmarc_reject: true,
    };

    #[test]
    fn spf_fail_is_refused_only_when_configured() {
        let (reason, reply) = BOTH
            .refusal(Some((&SpfResult::Fail, "example.org")), None)
            .unwrap();
        assert_eq!(reason, "spf");
        assert_eq!(reply.code(), 550);
        assert!(wire(&reply).starts_with("550 5.7.23 "), "{reply:?}");
        assert!(wire(&reply).contains("example.org"));
        let (_, reply) = BOTH
            .refusal(Some((&SpfResult::Fail, "evil\r\n250 ok")), None)
            .unwrap();
        assert!(wire(&reply).contains("evil??250?ok"), "{}", wire(&reply));
        assert_eq!(
            RejectPolicy::default().refusal(Some((&SpfResult::Fail, "example.org")), None),
            None
        );
    }

    #[test]
    fn other_spf_results_never_refuse() {
        for result in [
            SpfResult::Pass,
            SpfResult::SoftFail,
            SpfResult::Neutral,
            SpfResult::None,
            SpfResult::TempError,
            SpfResult::PermError,
        ] {
            assert_eq!(
                BOTH.refusal(Some((&result, "example.org")), None),
                None,
                "{result:?}"
            );
        }
    }

    #[test]
    fn dmarc_fail_refuses_only_under_p_reject_and_when_configured() {
        let failed = DmarcResult::Fail(Error::NotAligned);
        let (reason, reply) = BOTH
            .refusal(None, Some((&failed, Policy::Reject, "example.org")))
            .unwrap();
        assert_eq!(reason, "dmarc");
        assert!(wire(&reply).starts_with("550 5.7.1 "), "{reply:?}");
        let only_spf = RejectPolicy {
            spf_fail: true,
            dmarc_reject: false,
        };
        assert_eq!(
            only_spf.refusal(None, Some((&failed, Policy::Reject, "example.org"))),
            None
        );
        for policy in [Policy::None, Policy::Quarantine, Policy::Unspecified] {
            let decided = BOTH.refusal(None, Some((&failed, policy, "example.org")));
            assert_eq!(decided, None, "{policy:?}");
        }
    }

    #[test]
    fn dmarc_temperror_and_pass_never_refuse() {
        let temp =
            DmarcResult::TempError(Error::Dns(mail_auth::DnsError::Resolver("timeout".into())));
        for result in [temp, DmarcResult::Pass, DmarcResult::None] {
            let decided = BOTH.refusal(None, Some((&result, Policy::Reject, "example.org")));
            assert_eq!(decided, None, "{result:?}");
        }
    }

    #[test]
    fn labels_are_rfc_8601_names() {
        assert_eq!(spf_label(&SpfResult::SoftFail), "softfail");
        assert_eq!(spf_label(&SpfResult::TempError), "temperror");
        assert_eq!(dkim_label(&DkimResult::Fail(Error::NotAligned)), "fail");
        assert_eq!(dkim_label(&DkimResult::None), "none");
        assert_eq!(
            dmarc_label(&DmarcResult::PermError(Error::ParseError)),
            "permerror"
        );
        for label in [
            spf_label(&SpfResult::Neutral),
            dkim_label(&DkimResult::Pass),
            dmarc_label(&DmarcResult::None),
        ] {
            assert!(super::super::RESULTS.contains(&label), "{label}");
        }
    }
}
