//! A configured next hop (`[relay] smarthost`, `[relay.routes]`): the text
//! an operator writes ("mx.example.net:2525", "[192.0.2.1]", "[::1]:25")
//! turned into a host and a port.
//!
//! It must never resolve anything: names are looked up (A/AAAA, never MX,
//! as with Postfix's bracketed relayhost) when mail is delivered.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Where a configured next hop points.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HopHost {
    /// Lower case, no trailing dot; resolved to A/AAAA at delivery time.
    Name(String),
    Ip(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NextHop {
    pub host: HopHost,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NextHopError {
    #[error("empty next hop")]
    Empty,
    #[error("{0:?}: the port must be a number from 1 to 65535")]
    BadPort(String),
    #[error("{0:?} is not a host name, an IP address or [address]")]
    BadHost(String),
}

impl NextHop {
    /// `default_port` applies when the text has none.
    pub fn parse(text: &str, default_port: u16) -> Result<NextHop, NextHopError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(NextHopError::Empty);
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return checked_port(addr.port(), text).map(|port| NextHop {
                host: HopHost::Ip(addr.ip()),
                port,
            });
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(NextHop {
                host: HopHost::Ip(ip),
                port: default_port,
            });
        }
        let (host, port) = match text.strip_prefix('[') {
            Some(rest) => {
                let (inside, after) = rest
                    .split_once(']')
                    .ok_or_else(|| NextHopError::BadHost(text.to_owned()))?;
                let port = match after {
                    "" => default_port,
                    _ => parse_port(after.strip_prefix(':').unwrap_or(after), text)?,
                };
                (inside, port)
            }
            None => match text.rsplit_once(':') {
                Some((host, port)) => (host, parse_port(port, text)?),
                None => (text, default_port),
            },
        };
        let literal = host
            .get(..5)
            .filter(|tag| tag.eq_ignore_ascii_case("IPv6:"))
            .map_or(host, |_| &host[5..]);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(NextHop {
                host: HopHost::Ip(ip),
                port,
            });
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63 // RFC 1035 2.3.4
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(NextHopError::BadHost(text.to_owned()));
        }
        Ok(NextHop {
            host: HopHost::Name(name),
            port,
        })
    }
}

fn parse_port(text: &str, whole: &str) -> Result<u16, NextHopError> {
    let port = text
        .parse::<u16>()
        .map_err(|_| NextHopError::BadPort(whole.to_owned()))?;
    checked_port(port, whole)
}

fn checked_port(port: u16, whole: &str) -> Result<u16, NextHopError> {
    if port == 0 {
        return Err(NextHopError::BadPort(whole.to_owned()));
    }
    Ok(port)
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HopHost::Name(name) => write!(f, "{name}:{}", self.port),
            HopHost::Ip(ip) => write!(f, "{}", SocketAddr::new(*ip, self.port)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(text: &str) -> NextHop {
        NextHop::parse(text, 25).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn name(n: &str, port: u16) -> NextHop {
        NextHop {
            host: HopHost::Name(n.into()),
            port,
        }
    }

    fn ip(text: &str, port: u16) -> NextHop {
        NextHop {
            host: HopHost::Ip(text.parse().unwrap()),
            port,
        }
    }

    #[test]
    fn names_with_and_without_port() {
        assert_eq!(hop("Relay.Example.NET"), name("relay.example.net", 25));
        assert_eq!(
            hop("relay.example.net.:2525"),
            name("relay.example.net", 2525)
        );
        assert_eq!(
            hop("[relay.example.net]:587"),
            name("relay.example.net", 587)
        );
        assert_eq!(hop("localhost"), name("localhost", 25));
    }

    #[test]
    fn addresses_in_every_spelling() {
        assert_eq!(hop("192.0.2.1"), ip("192.0.2.1", 25));
        assert_eq!(hop("192.0.2.1:2600"), ip("192.0.2.1", 2600));
        assert_eq!(hop("[192.0.2.1]"), ip("192.0.2.1", 25));
        assert_eq!(hop("[192.0.2.1]:26"), ip("192.0.2.1", 26));
        assert_eq!(hop("[::1]:2600"), ip("::1", 2600));
        assert_eq!(hop("::1"), ip("::1", 25));
        assert_eq!(hop("[IPv6:2001:db8::1]:25"), ip("2001:db8::1", 25));
    }

    #[test]
    fn bad_next_hops_are_named() {
        assert_eq!(NextHop::parse(" ", 25), Err(NextHopError::Empty));
        for bad in [
            "host:0",
            "host:x",
            "host:70000",
            "[192.0.2.1]:",
            "127.0.0.1:0",
        ] {
            assert!(
                matches!(NextHop::parse(bad, 25), Err(NextHopError::BadPort(_))),
                "{bad}"
            );
        }
        for bad in ["a b", "[192.0.2.1", "a..b", "-:25x", "é.example", "host/x"] {
            assert!(NextHop::parse(bad, 25).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["relay.example.net:2525", "192.0.2.1:25", "[::1]:2600"] {
            assert_eq!(hop(text).to_string(), text);
        }
    }
}
