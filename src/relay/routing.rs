//! The routing table: for a recipient domain, whether tern keeps the mail
//! (a local domain), sends it to a configured next hop (`[relay.routes]`,
//! then `[relay] smarthost`) or looks up its MX, and with which STARTTLS
//! policy.
//!
//! It must never do I/O: it is built once from the configuration and
//! answers from memory.

use crate::config::{OutboundTls, RelaySection};
use crate::smtp::relay_access::DomainPattern;

use super::next_hop::{NextHop, NextHopError};

/// How the mail for one recipient domain leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// A local domain (or the domainless Postmaster): not relayed; it waits
    /// for local delivery.
    Local,
    /// A configured next hop, resolved by A/AAAA only.
    Static { next_hop: NextHop, tls: OutboundTls },
    /// The domain's MX hosts (or its implicit MX) on `port`.
    Mx { port: u16, tls: OutboundTls },
}

#[derive(Debug, Clone)]
struct Route {
    pattern: DomainPattern,
    next_hop: NextHop,
    tls: OutboundTls,
}

#[derive(Debug, Clone)]
pub struct RouteTable {
    local_domains: Vec<DomainPattern>,
    postmaster: String,
    routes: Vec<Route>,
    smarthost: Option<NextHop>,
    remote_port: u16,
    tls: OutboundTls,
}

impl RouteTable {
    /// Fails only on a next hop that `Config::validate` would refuse too.
    pub fn new(relay: &RelaySection) -> Result<RouteTable, NextHopError> {
        // Exact names first, so "a.example" beats ".example" whatever the
        // order of the TOML table.
        let mut routes = relay
            .routes
            .iter()
            .map(|(domain, spec)| {
                Ok(Route {
                    pattern: DomainPattern::parse(domain),
                    next_hop: NextHop::parse(spec.to(), relay.remote_port)?,
                    tls: spec.tls().unwrap_or(relay.tls),
                })
            })
            .collect::<Result<Vec<_>, NextHopError>>()?;
        routes.sort_by_key(|route| !matches!(route.pattern, DomainPattern::Exact(_)));
        let smarthost = relay
            .smarthost
            .as_deref()
            .map(|text| NextHop::parse(text, relay.remote_port))
            .transpose()?;
        Ok(RouteTable {
            local_domains: relay
                .local_domains
                .iter()
                .map(|d| DomainPattern::parse(d))
                .collect(),
            postmaster: relay.postmaster.clone(),
            routes,
            smarthost,
            remote_port: relay.remote_port,
            tls: relay.tls,
        })
    }

    /// Where mail for `recipient` (an address without brackets) goes.
    pub fn hop_for(&self, recipient: &str) -> Hop {
        let Some((_, domain)) = recipient.rsplit_once('@') else {
            return Hop::Local;
        };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if self.local_domains.iter().any(|p| p.matches(&domain)) {
            return Hop::Local;
        }
        if let Some(route) = self.routes.iter().find(|r| r.pattern.matches(&domain)) {
            return Hop::Static {
                next_hop: route.next_hop.clone(),
                tls: route.tls,
            };
        }
        match &self.smarthost {
            Some(next_hop) => Hop::Static {
                next_hop: next_hop.clone(),
                tls: self.tls,
            },
            None => Hop::Mx {
                port: self.remote_port,
                tls: self.tls,
            },
        }
    }

    /// Whether `recipient` is postmaster (any case) at a local domain or
    /// without a domain: the mailbox RFC 5321 4.5.1 makes mandatory.
    pub fn is_postmaster(&self, recipient: &str) -> bool {
        let local_part = recipient
            .rsplit_once('@')
            .map_or(recipient, |(local_part, _)| local_part);
        local_part.eq_ignore_ascii_case("postmaster") && self.hop_for(recipient) == Hop::Local
    }

    /// The user `[relay] postmaster` names when `recipient` is postmaster.
    /// Only a fallback: a user who owns the address itself gets the mail.
    pub fn postmaster_for(&self, recipient: &str) -> Option<&str> {
        self.is_postmaster(recipient)
            .then_some(self.postmaster.as_str())
    }

    /// Whether recipients in `domain` are looked up in DNS (so an early
    /// MX lookup at RCPT time is worth starting).
    pub fn uses_mx(&self, recipient: &str) -> bool {
        matches!(self.hop_for(recipient), Hop::Mx { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteSpec;

    fn table(edit: impl FnOnce(&mut RelaySection)) -> RouteTable {
        let mut relay = RelaySection::default();
        edit(&mut relay);
        RouteTable::new(&relay).unwrap()
    }

    fn hop(text: &str) -> NextHop {
        NextHop::parse(text, 25).unwrap()
    }

    #[test]
    fn without_routes_everything_goes_by_mx() {
        let t = table(|_| {});
        assert_eq!(
            t.hop_for("u@Example.COM."),
            Hop::Mx {
                port: 25,
                tls: OutboundTls::Opportunistic
            }
        );
        assert!(t.uses_mx("u@example.com"));
    }

    #[test]
    fn postmaster_of_local_domains_and_the_domainless_one_go_to_the_named_user() {
        let t = table(|r| {
            r.local_domains = vec!["local.test".into(), ".sub.test".into()];
            r.postmaster = "admin".into();
        });
        for recipient in [
            "Postmaster",
            "postmaster",
            "postmaster@local.test",
            "POSTMASTER@Local.Test.",
            "postmaster@a.sub.test",
        ] {
            assert_eq!(t.postmaster_for(recipient), Some("admin"), "{recipient}");
        }
        for recipient in [
            "postmaster@remote.example",
            "webmaster@local.test",
            "postmaster2@local.test",
            "\"postmaster\"@remote.example",
            "abuse",
        ] {
            assert_eq!(t.postmaster_for(recipient), None, "{recipient}");
        }
        let default = table(|r| r.local_domains = vec!["local.test".into()]);
        assert_eq!(
            default.postmaster_for("postmaster@local.test"),
            Some("postmaster")
        );
        assert_eq!(default.postmaster_for("postmaster@remote.example"), None);
    }

    #[test]
    fn local_domains_and_postmaster_stay() {
        let t = table(|r| {
            r.local_domains = vec!["example.net".into(), ".local.example".into()];
            r.smarthost = Some("192.0.2.1".into());
        });
        assert_eq!(t.hop_for("u@EXAMPLE.net"), Hop::Local);
        assert_eq!(t.hop_for("u@a.local.example"), Hop::Local);
        assert_eq!(t.hop_for("Postmaster"), Hop::Local);
        assert!(!t.uses_mx("u@example.net"));
    }

    #[test]
    fn exact_route_beats_subdomain_route_beats_smarthost() {
        let t = table(|r| {
            r.remote_port = 2525;
            r.tls = OutboundTls::Off;
            r.smarthost = Some("smart.example:26".into());
            r.routes
                .insert(".example.org".into(), RouteSpec::To("[192.0.2.9]".into()));
            r.routes.insert(
                "a.example.org".into(),
                RouteSpec::Table {
                    to: "a-relay.example".into(),
                    tls: Some(OutboundTls::Verify),
                },
            );
        });
        assert_eq!(
            t.hop_for("u@a.example.org"),
            Hop::Static {
                next_hop: NextHop::parse("a-relay.example", 2525).unwrap(),
                tls: OutboundTls::Verify
            }
        );
        assert_eq!(
            t.hop_for("u@b.example.org"),
            Hop::Static {
                next_hop: NextHop::parse("192.0.2.9:2525", 25).unwrap(),
                tls: OutboundTls::Off
            }
        );
        assert_eq!(
            t.hop_for("u@elsewhere.example"),
            Hop::Static {
                next_hop: hop("smart.example:26"),
                tls: OutboundTls::Off
            }
        );
        assert!(!t.uses_mx("u@elsewhere.example"));
    }

    #[test]
    fn bad_next_hop_is_an_error() {
        let relay = RelaySection {
            smarthost: Some("host:0".into()),
            ..RelaySection::default()
        };
        assert!(RouteTable::new(&relay).is_err());
    }
}
