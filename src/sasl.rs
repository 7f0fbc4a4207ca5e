//! The SASL pieces every AUTH command shares (SMTP RFC 4954, POP3 RFC 5034,
//! IMAP RFC 4959): decoding of base64 client responses, the PLAIN
//! mechanism's message (RFC 4616 2), the LOGIN mechanism's prompts, and the
//! rule for which authorization identity a user may ask for.
//!
//! Pure functions over one response: they must never panic, never allocate
//! beyond the size of their input, and never check a password (that is the
//! runtime's job, off the event loop).

use crate::base64;

/// Longest PLAIN message: three fields of up to 255 octets (RFC 4616 2)
/// and the two NULs between them.
const PLAIN_MESSAGE_MAX: usize = 3 * 255 + 2;
/// Longest SASL response line we read, CRLF included: the longest PLAIN
/// message in base64 (RFC 4648 4: 4 characters per 3 octets) fits. The
/// AUTH command line itself keeps the protocol's command limit
/// (RFC 4954 4: a client must then omit the initial response).
pub const SASL_RESPONSE_MAX: usize = PLAIN_MESSAGE_MAX.div_ceil(3) * 4 + 2;

/// The LOGIN mechanism's prompts, base64 of `Username:` and `Password:`
/// (draft-murchison-sasl-login-00 2, what every client expects).
pub const LOGIN_USERNAME_PROMPT: &str = "VXNlcm5hbWU6";
pub const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

/// Why a client response was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("invalid base64")]
    BadBase64,
    #[error("malformed PLAIN message")]
    MalformedPlain,
    #[error("LOGIN response is not UTF-8")]
    MalformedLogin,
}

/// The fields of a PLAIN message (RFC 4616 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    /// The identity to act as; empty when the client asks for its own.
    pub authzid: String,
    /// The identity whose password this is.
    pub authcid: String,
    pub password: String,
}

/// Decode one base64 client response (RFC 4648 4). A lone `=` (the
/// RFC 4954 4 / RFC 5034 4 spelling of an empty initial response) is the
/// caller's to recognise: it is not base64.
pub fn decode_response(text: &[u8]) -> Result<Vec<u8>, SaslError> {
    base64::decode(text).ok_or(SaslError::BadBase64)
}

/// Split a decoded PLAIN message `[authzid] NUL authcid NUL passwd`
/// (RFC 4616 2); all three must be UTF-8, authcid and passwd non-empty.
pub fn parse_plain(message: &[u8]) -> Result<PlainCredentials, SaslError> {
    let mut fields = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::MalformedPlain);
    };
    let text = |field: &[u8]| {
        std::str::from_utf8(field)
            .map(str::to_owned)
            .map_err(|_| SaslError::MalformedPlain)
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::MalformedPlain);
    }
    Ok(PlainCredentials {
        authzid: text(authzid)?,
        authcid: text(authcid)?,
        password: text(password)?,
    })
}

/// A decoded LOGIN response (user name or password): UTF-8 text.
pub fn parse_login_field(decoded: Vec<u8>) -> Result<String, SaslError> {
    String::from_utf8(decoded).map_err(|_| SaslError::MalformedLogin)
}

/// May a user who logged in as `login` (a name or an address) and whose
/// canonical name is `user` act as `authzid`? Only as itself: an empty
/// authzid, the login or the user's name (RFC 4616 2 leaves the rule to the
/// server; tern has no proxy users).
pub fn authzid_permitted(authzid: &str, login: &str, user: &str) -> bool {
    authzid.is_empty() || authzid == login || authzid == user
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_decode_strictly() {
        assert_eq!(
            decode_response(b"AGFsaWNlAHNlY3JldA=="),
            Ok(b"\0alice\0secret".to_vec())
        );
        assert_eq!(decode_response(b""), Ok(Vec::new()));
        for bad in [&b"="[..], b"*", b"Zg", b"Zm9v!", b"AGFsaWNl AHNlY3JldA=="] {
            assert_eq!(decode_response(bad), Err(SaslError::BadBase64), "{bad:?}");
        }
    }

    #[test]
    fn login_prompts_are_the_expected_words() {
        assert_eq!(
            decode_response(LOGIN_USERNAME_PROMPT.as_bytes()).unwrap(),
            b"Username:"
        );
        assert_eq!(
            decode_response(LOGIN_PASSWORD_PROMPT.as_bytes()).unwrap(),
            b"Password:"
        );
    }

    #[test]
    fn login_fields_must_be_utf8() {
        assert_eq!(parse_login_field(b"alice".to_vec()), Ok("alice".into()));
        assert_eq!(parse_login_field(Vec::new()), Ok(String::new()));
        assert_eq!(
            parse_login_field(b"al\xffice".to_vec()),
            Err(SaslError::MalformedLogin)
        );
    }

    #[test]
    fn plain_fields() {
        assert_eq!(
            parse_plain(b"\0alice\0secret"),
            Ok(PlainCredentials {
                authzid: String::new(),
                authcid: "alice".into(),
                password: "secret".into(),
            })
        );
        assert_eq!(
            parse_plain(b"bob\0alice\0pass word").map(|c| c.authzid),
            Ok("bob".into())
        );
    }

    #[test]
    fn plain_refusals() {
        for bad in [
            &b"alice\0secret"[..],
            b"\0alice\0secret\0",
            b"\0\0secret",
            b"\0alice\0",
            b"",
            b"\0al\xffice\0secret",
        ] {
            assert_eq!(parse_plain(bad), Err(SaslError::MalformedPlain));
        }
    }

    #[test]
    fn authzid_only_names_the_user_itself() {
        assert!(authzid_permitted("", "alice@example.org", "alice"));
        assert!(authzid_permitted("alice", "alice@example.org", "alice"));
        assert!(authzid_permitted(
            "alice@example.org",
            "alice@example.org",
            "alice"
        ));
        assert!(!authzid_permitted("bob", "alice@example.org", "alice"));
        assert!(!authzid_permitted("bob", "alice", "alice"));
    }
}
