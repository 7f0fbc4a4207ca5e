//! The service extensions a remote server announced in its EHLO reply
//! (RFC 5321 4.1.1.1), as far as the client uses them.
//!
//! This module only reads keywords. It must never decide how a transaction
//! is sent, and must never fail on an odd line: unknown or malformed
//! keywords are ignored.

use super::reply::ReceivedReply;

/// What the peer offers. `Default` is plain SMTP (HELO, or EHLO with no
/// keywords).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870: `None` when SIZE is not offered, `Some(0)` when offered
    /// without a fixed limit, else the limit in octets.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eightbitmime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3030.
    pub chunking: bool,
    /// RFC 3461.
    pub dsn: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 2034.
    pub enhanced_status_codes: bool,
}

impl Extensions {
    /// Reads the keyword lines of a 250 EHLO reply (every line but the
    /// first, which names the server). Keywords are case-insensitive.
    pub fn from_ehlo_reply(reply: &ReceivedReply) -> Self {
        let mut extensions = Self::default();
        for line in reply.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => extensions.pipelining = true,
                // A missing or unreadable limit is read as "no fixed limit":
                // refusing to relay over a typo would be worse.
                "SIZE" => {
                    let limit = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    extensions.size = Some(limit);
                }
                "8BITMIME" => extensions.eightbitmime = true,
                "SMTPUTF8" => extensions.smtputf8 = true,
                "CHUNKING" => extensions.chunking = true,
                "DSN" => extensions.dsn = true,
                "STARTTLS" => extensions.starttls = true,
                "ENHANCEDSTATUSCODES" => extensions.enhanced_status_codes = true,
                _ => {}
            }
        }
        extensions
    }

    /// The largest message the peer accepts, if it announced a limit.
    pub fn size_limit(&self) -> Option<u64> {
        self.size.filter(|&limit| limit > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ehlo(text: &str) -> ReceivedReply {
        ReceivedReply {
            code: 250,
            enhanced: None,
            text: text.into(),
        }
    }

    #[test]
    fn reads_every_keyword_case_insensitively() {
        let reply = ehlo(
            "mx.example greets you\npipelining\nSize 1000\n8BITMIME\nsmtputf8\nCHUNKING\nDSN\nSTARTTLS\nEnhancedStatusCodes",
        );
        assert_eq!(
            Extensions::from_ehlo_reply(&reply),
            Extensions {
                pipelining: true,
                size: Some(1000),
                eightbitmime: true,
                smtputf8: true,
                chunking: true,
                dsn: true,
                starttls: true,
                enhanced_status_codes: true,
            }
        );
    }

    #[test]
    fn first_line_is_not_a_keyword() {
        let extensions = Extensions::from_ehlo_reply(&ehlo("PIPELINING"));
        assert_eq!(extensions, Extensions::default());
    }

    #[test]
    fn size_without_number_has_no_limit() {
        for text in ["mx\nSIZE", "mx\nSIZE abc", "mx\nSIZE 0"] {
            let extensions = Extensions::from_ehlo_reply(&ehlo(text));
            assert_eq!(extensions.size, Some(0), "{text}");
            assert_eq!(extensions.size_limit(), None);
        }
        assert_eq!(Extensions::from_ehlo_reply(&ehlo("mx")).size, None);
    }

    #[test]
    fn unknown_and_empty_lines_ignored() {
        let extensions = Extensions::from_ehlo_reply(&ehlo("mx\n\nAUTH PLAIN\nXFOO\nDSN"));
        assert_eq!(
            extensions,
            Extensions {
                dsn: true,
                ..Extensions::default()
            }
        );
    }
}
