//! The SASL exchange of the SMTP AUTH command (RFC 4954 4) for the PLAIN
//! (RFC 4616) and LOGIN mechanisms: from the AUTH line and the client's
//! `334` responses to either the next challenge, the credentials to check,
//! or the reply that ends a malformed or cancelled exchange.
//!
//! Pure: it must never check a password (the runtime does, off the event
//! loop), never keep a password beyond the step that completes it, and
//! never panic on any response.

use super::reply::{EnhancedStatus, Reply};
use crate::sasl::{
    decode_response, parse_login_field, parse_plain, SaslError, LOGIN_PASSWORD_PROMPT,
    LOGIN_USERNAME_PROMPT,
};

/// The mechanisms tern offers, as advertised in EHLO (RFC 4954 3).
pub const MECHANISMS_ADVERTISED: &str = "AUTH PLAIN LOGIN";

/// A SASL mechanism tern implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// Every mechanism, for metrics registration.
    pub const ALL: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

    /// `name` upper-cased, as the parser hands it over.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "LOGIN" => Some(Mechanism::Login),
            _ => None,
        }
    }

    /// The `mechanism` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Mechanism::Plain => "plain",
            Mechanism::Login => "login",
        }
    }
}

/// What the exchange waits for after a `334` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// PLAIN's whole message (after an AUTH PLAIN without initial response).
    Plain,
    /// LOGIN's user name.
    LoginUsername,
    /// LOGIN's password, for this user name.
    LoginPassword { username: String },
}

impl Exchange {
    pub fn mechanism(&self) -> Mechanism {
        match self {
            Exchange::Plain => Mechanism::Plain,
            Exchange::LoginUsername | Exchange::LoginPassword { .. } => Mechanism::Login,
        }
    }
}

/// Credentials a client completed; the runtime checks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity: a user name or one of its addresses.
    pub login: String,
    pub password: String,
    /// PLAIN's authorization identity; empty when not given (and for LOGIN).
    pub authzid: String,
}

/// Where one step of the exchange leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Send `334 <challenge>` and read the next response into `Exchange`.
    Challenge(&'static str, Exchange),
    /// The client is done: check these credentials.
    Credentials(Credentials),
    /// The exchange ends with this reply (cancelled or malformed).
    Refused(Reply),
}

/// The AUTH command for `mechanism`, with its initial response if any
/// (`=` is an empty one, RFC 4954 4).
pub fn start(mechanism: Mechanism, initial_response: Option<&str>) -> Progress {
    let exchange = match mechanism {
        Mechanism::Plain => Exchange::Plain,
        Mechanism::Login => Exchange::LoginUsername,
    };
    match initial_response {
        None => challenge_for(exchange),
        Some("=") => respond_decoded(exchange, Vec::new()),
        Some(response) => respond(exchange, response.as_bytes()),
    }
}

/// One response line (without CRLF) to the challenge of `exchange`.
pub fn respond(exchange: Exchange, line: &[u8]) -> Progress {
    if line == b"*" {
        // RFC 4954 4: the client cancels; the server answers 501.
        return Progress::Refused(Reply::new(
            501,
            EnhancedStatus::new(5, 7, 0),
            "Authentication cancelled",
        ));
    }
    match decode_response(line) {
        Ok(decoded) => respond_decoded(exchange, decoded),
        Err(error) => refused(&error),
    }
}

fn challenge_for(exchange: Exchange) -> Progress {
    let prompt = match &exchange {
        // RFC 4616 2: PLAIN's server challenge is empty.
        Exchange::Plain => "",
        Exchange::LoginUsername => LOGIN_USERNAME_PROMPT,
        Exchange::LoginPassword { .. } => LOGIN_PASSWORD_PROMPT,
    };
    Progress::Challenge(prompt, exchange)
}

fn respond_decoded(exchange: Exchange, decoded: Vec<u8>) -> Progress {
    match exchange {
        Exchange::Plain => match parse_plain(&decoded) {
            Ok(plain) => Progress::Credentials(Credentials {
                login: plain.authcid,
                password: plain.password,
                authzid: plain.authzid,
            }),
            Err(error) => refused(&error),
        },
        Exchange::LoginUsername => match parse_login_field(decoded) {
            Ok(username) => challenge_for(Exchange::LoginPassword { username }),
            Err(error) => refused(&error),
        },
        Exchange::LoginPassword { username } => match parse_login_field(decoded) {
            Ok(password) => Progress::Credentials(Credentials {
                login: username,
                password,
                authzid: String::new(),
            }),
            Err(error) => refused(&error),
        },
    }
}

/// RFC 4954 4: an undecodable response gets 501 with 5.5.2; a decodable
/// one that the mechanism cannot read is the same kind of syntax error.
fn refused(error: &SaslError) -> Progress {
    Progress::Refused(Reply::new(
        501,
        EnhancedStatus::new(5, 5, 2),
        format!("Error: {error} in AUTH response"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(progress: &Progress) -> String {
        match progress {
            Progress::Refused(reply) => String::from_utf8(reply.to_bytes()).unwrap(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn mechanism_names() {
        assert_eq!(Mechanism::from_name("PLAIN"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::from_name("LOGIN"), Some(Mechanism::Login));
        assert_eq!(Mechanism::from_name("CRAM-MD5"), None);
        assert_eq!(Mechanism::from_name("plain"), None);
    }

    #[test]
    fn plain_with_and_without_initial_response() {
        let expected = Progress::Credentials(Credentials {
            login: "alice".into(),
            password: "secret".into(),
            authzid: String::new(),
        });
        assert_eq!(
            start(Mechanism::Plain, Some("AGFsaWNlAHNlY3JldA==")),
            expected
        );
        assert_eq!(
            start(Mechanism::Plain, None),
            Progress::Challenge("", Exchange::Plain)
        );
        assert_eq!(respond(Exchange::Plain, b"AGFsaWNlAHNlY3JldA=="), expected);
    }

    #[test]
    fn login_asks_for_user_then_password() {
        let Progress::Challenge(prompt, exchange) = start(Mechanism::Login, None) else {
            panic!("no challenge");
        };
        assert_eq!(prompt, LOGIN_USERNAME_PROMPT);
        let Progress::Challenge(prompt, exchange) = respond(exchange, b"YWxpY2U=") else {
            panic!("no password challenge");
        };
        assert_eq!(prompt, LOGIN_PASSWORD_PROMPT);
        assert_eq!(
            respond(exchange, b"c2VjcmV0"),
            Progress::Credentials(Credentials {
                login: "alice".into(),
                password: "secret".into(),
                authzid: String::new(),
            })
        );
        // An initial response is the user name.
        assert_eq!(
            start(Mechanism::Login, Some("YWxpY2U=")),
            Progress::Challenge(
                LOGIN_PASSWORD_PROMPT,
                Exchange::LoginPassword {
                    username: "alice".into()
                }
            )
        );
    }

    #[test]
    fn cancel_bad_base64_and_malformed_messages_are_refused() {
        assert_eq!(
            refusal(&respond(Exchange::Plain, b"*")),
            "501 5.7.0 Authentication cancelled\r\n"
        );
        assert_eq!(
            refusal(&respond(Exchange::LoginUsername, b"not base64!")),
            "501 5.5.2 Error: invalid base64 in AUTH response\r\n"
        );
        assert_eq!(
            refusal(&start(Mechanism::Plain, Some("%%%%"))),
            "501 5.5.2 Error: invalid base64 in AUTH response\r\n"
        );
        // `=` is an empty PLAIN message: no authcid, no password.
        assert_eq!(
            refusal(&start(Mechanism::Plain, Some("="))),
            "501 5.5.2 Error: malformed PLAIN message in AUTH response\r\n"
        );
        assert_eq!(
            refusal(&respond(
                Exchange::LoginPassword {
                    username: "a".into()
                },
                b"/w=="
            )),
            "501 5.5.2 Error: LOGIN response is not UTF-8 in AUTH response\r\n"
        );
    }

    #[test]
    fn arbitrary_responses_never_panic() {
        let mut rng = fastrand::Rng::with_seed(4954);
        for _ in 0..2000 {
            let len = rng.usize(0..40);
            let line: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            for exchange in [
                Exchange::Plain,
                Exchange::LoginUsername,
                Exchange::LoginPassword {
                    username: "u".into(),
                },
            ] {
                let _ = respond(exchange, &line);
            }
        }
    }
}
