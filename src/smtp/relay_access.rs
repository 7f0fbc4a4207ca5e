//! Who may relay: the RCPT-time rule that keeps tern from being an open
//! relay. A client in `[relay] mynetworks` may send anywhere; any other
//! client only to `[relay] local_domains` and `[relay] relay_domains`
//! (and to the domainless `<Postmaster>`, which RFC 5321 4.5.1 requires).
//!
//! This module must never do I/O or DNS: it decides from the client
//! address and the recipient text alone, so the session stays sans-IO.

use std::net::IpAddr;

use ipnet::IpNet;

/// A domain entry: `example.org` matches that domain only, `.example.org`
/// every subdomain of it (not the domain itself), as Postfix lists do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DomainPattern {
    Exact(String),
    Subdomains(String),
}

impl DomainPattern {
    pub(crate) fn parse(text: &str) -> DomainPattern {
        let lower = text.trim().trim_end_matches('.').to_ascii_lowercase();
        match lower.strip_prefix('.') {
            Some(parent) => DomainPattern::Subdomains(format!(".{parent}")),
            None => DomainPattern::Exact(lower),
        }
    }

    /// `domain` in lower case without a trailing dot.
    pub(crate) fn matches(&self, domain: &str) -> bool {
        match self {
            DomainPattern::Exact(d) => d == domain,
            DomainPattern::Subdomains(suffix) => domain.ends_with(suffix.as_str()),
        }
    }
}

/// The relay access rule of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAccess {
    mynetworks: Vec<IpNet>,
    local_domains: Vec<DomainPattern>,
    relay_domains: Vec<DomainPattern>,
}

impl RelayAccess {
    pub fn new(mynetworks: &[IpNet], local_domains: &[String], relay_domains: &[String]) -> Self {
        RelayAccess {
            mynetworks: mynetworks.to_vec(),
            local_domains: local_domains
                .iter()
                .map(|d| DomainPattern::parse(d))
                .collect(),
            relay_domains: relay_domains
                .iter()
                .map(|d| DomainPattern::parse(d))
                .collect(),
        }
    }

    /// The client may send to any domain.
    pub fn client_is_trusted(&self, client: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(client),
            v4 => v4,
        };
        self.mynetworks.iter().any(|net| net.contains(&client))
    }

    /// May `client` hand us mail for `recipient` (a forward-path without
    /// brackets, or `Postmaster`)?
    pub fn may_accept(&self, client: IpAddr, recipient: &str) -> bool {
        if self.client_is_trusted(client) {
            return true;
        }
        let Some((_, domain)) = recipient.rsplit_once('@') else {
            // Only the domainless <Postmaster> parses without a domain.
            return true;
        };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.local_domains
            .iter()
            .chain(&self.relay_domains)
            .any(|pattern| pattern.matches(&domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> RelayAccess {
        RelayAccess::new(
            &[
                "127.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            &["Example.ORG".into()],
            &[".relay.example".into(), "other.example.".into()],
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn trusted_networks_relay_anywhere() {
        let a = access();
        assert!(a.may_accept(ip("127.0.0.1"), "x@anywhere.example"));
        assert!(a.may_accept(ip("2001:db8::5"), "x@anywhere.example"));
        assert!(a.may_accept(ip("::ffff:127.0.0.9"), "x@anywhere.example"));
    }

    #[test]
    fn strangers_only_reach_our_domains() {
        let a = access();
        let stranger = ip("198.51.100.4");
        assert!(a.may_accept(stranger, "user@example.org"));
        assert!(a.may_accept(stranger, "user@EXAMPLE.org."));
        assert!(a.may_accept(stranger, "user@other.example"));
        assert!(a.may_accept(stranger, "user@mx.relay.example"));
        assert!(!a.may_accept(stranger, "user@relay.example"));
        assert!(!a.may_accept(stranger, "user@sub.example.org"));
        assert!(!a.may_accept(stranger, "user@evil.example"));
        assert!(!a.may_accept(stranger, "user@notexample.org"));
        assert!(!a.may_accept(stranger, "user@[127.0.0.1]"));
        assert!(!a.may_accept(ip("::ffff:198.51.100.4"), "user@evil.example"));
    }

    #[test]
    fn quoted_local_part_with_at_sign_uses_the_real_domain() {
        let a = access();
        let stranger = ip("198.51.100.4");
        assert!(!a.may_accept(stranger, "\"a@example.org\"@evil.example"));
        assert!(a.may_accept(stranger, "\"a@evil.example\"@example.org"));
    }

    #[test]
    fn postmaster_is_always_accepted() {
        assert!(access().may_accept(ip("198.51.100.4"), "Postmaster"));
    }

    #[test]
    fn empty_lists_trust_nobody() {
        let closed = RelayAccess::new(&[], &[], &[]);
        assert!(!closed.may_accept(ip("127.0.0.1"), "a@example.org"));
        assert!(!closed.client_is_trusted(ip("127.0.0.1")));
    }
}
