//! Turns the domain part of a recipient address into what routing needs: a
//! normalised DNS name (lower case, no trailing dot) or an address literal
//! (RFC 5321 4.1.3).
//!
//! It must never query DNS or accept a name that DNS could not carry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_resolver::proto::rr::Name;

/// Tag of an IPv6 address literal, compared without regard to case
/// (RFC 5321 4.1.3 `IPv6-address-literal`).
const IPV6_LITERAL_TAG: &str = "IPv6:";

/// Where a recipient domain points before any DNS is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Destination {
    /// A domain name: `key` is the cache key (lower case, no trailing dot),
    /// `name` the fully qualified name to query, so no search list applies.
    Domain { key: String, name: Name },
    /// `[192.0.2.1]` or `[IPv6:2001:db8::1]`: deliver to that address.
    Literal(IpAddr),
}

/// Why a recipient domain cannot be routed at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DestinationError {
    #[error("empty domain")]
    Empty,
    #[error("unsupported or malformed address literal {0}")]
    BadLiteral(String),
    #[error("invalid domain name {0}")]
    BadName(String),
}

impl Destination {
    pub(crate) fn parse(input: &str) -> Result<Self, DestinationError> {
        let trimmed = input.trim();
        if let Some(inner) = trimmed.strip_prefix('[') {
            return parse_literal(inner)
                .map(Destination::Literal)
                .ok_or_else(|| DestinationError::BadLiteral(trimmed.to_owned()));
        }
        let without_root = trimmed.strip_suffix('.').unwrap_or(trimmed);
        if without_root.is_empty() {
            return Err(DestinationError::Empty);
        }
        let key = without_root.to_lowercase();
        // Name::from_utf8 applies IDNA (for SMTPUTF8 domains) and the length
        // limits of RFC 1035 2.3.4; the trailing dot makes it fully qualified.
        let name = Name::from_utf8(format!("{key}."))
            .map_err(|_| DestinationError::BadName(without_root.to_owned()))?;
        if key.starts_with('.') || key.contains("..") {
            return Err(DestinationError::BadName(without_root.to_owned()));
        }
        Ok(Destination::Domain { key, name })
    }
}

/// `inner` is what follows the opening bracket.
fn parse_literal(inner: &str) -> Option<IpAddr> {
    let body = inner.strip_suffix(']')?;
    let tag = body.get(..IPV6_LITERAL_TAG.len());
    match tag {
        Some(tag) if tag.eq_ignore_ascii_case(IPV6_LITERAL_TAG) => body
            .get(IPV6_LITERAL_TAG.len()..)?
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6),
        _ => body.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(input: &str) -> String {
        match Destination::parse(input) {
            Ok(Destination::Domain { key, name }) => {
                assert!(name.is_fqdn());
                key
            }
            other => panic!("{input}: expected a domain, got {other:?}"),
        }
    }

    #[test]
    fn domain_is_lower_cased_and_loses_its_trailing_dot() {
        assert_eq!(key_of("Example.ORG."), "example.org");
        assert_eq!(key_of(" example.org "), "example.org");
        assert_eq!(key_of("mail.example.org"), "mail.example.org");
    }

    #[test]
    fn unicode_domain_is_accepted() {
        assert_eq!(key_of("Bücher.example"), "bücher.example");
    }

    #[test]
    fn bad_domains_are_refused() {
        assert_eq!(Destination::parse(""), Err(DestinationError::Empty));
        assert_eq!(Destination::parse("."), Err(DestinationError::Empty));
        assert!(matches!(
            Destination::parse("a..example"),
            Err(DestinationError::BadName(_))
        ));
        let long_label = format!("{}.example", "a".repeat(64));
        assert!(matches!(
            Destination::parse(&long_label),
            Err(DestinationError::BadName(_))
        ));
    }

    #[test]
    fn ipv4_literal() {
        assert_eq!(
            Destination::parse("[192.0.2.1]"),
            Ok(Destination::Literal(IpAddr::V4(Ipv4Addr::new(
                192, 0, 2, 1
            ))))
        );
    }

    #[test]
    fn ipv6_literal_with_any_case_tag() {
        let expected = Ok(Destination::Literal("2001:db8::1".parse().unwrap()));
        assert_eq!(Destination::parse("[IPv6:2001:db8::1]"), expected);
        assert_eq!(Destination::parse("[ipv6:2001:DB8::1]"), expected);
    }

    #[test]
    fn malformed_literals_are_refused() {
        for input in [
            "[192.0.2.1",
            "[192.0.2.256]",
            "[2001:db8::1]",
            "[IPv6:192.0.2.1]",
            "[IPv6:]",
            "[]",
            "[x-tag:foo]",
            "[é]",
        ] {
            assert!(
                matches!(
                    Destination::parse(input),
                    Err(DestinationError::BadLiteral(_))
                ),
                "{input}"
            );
        }
    }
}
