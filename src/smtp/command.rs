//! Parser for one SMTP command line (RFC 5321 4.1) into a typed [`Command`]:
//! verb, reverse- and forward-path syntax (source routes, `<Postmaster>`,
//! domains, address literals, SMTPUTF8 addresses), ESMTP parameters of
//! SIZE, BODY, SMTPUTF8, DSN and AUTH (RFC 4954 5), the AUTH command
//! (RFC 4954 4), and xtext decoding (RFC 3461 4).
//!
//! The parser sees one line without its line ending and knows nothing about
//! session state or configuration (limits such as the maximum message size
//! are the session's). It must never panic or allocate in proportion to
//! anything but the line, which the session bounds to [`COMMAND_LINE_MAX`].

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::envelope::{BodyType, DsnRet, Notify};

/// Longest command line including CRLF (RFC 5321 4.5.3.1.4).
pub const COMMAND_LINE_MAX: usize = 512;
/// Longest domain (RFC 5321 4.5.3.1.2).
const DOMAIN_MAX: usize = 255;
/// Longest label of a domain (RFC 1035 2.3.4).
const DOMAIN_LABEL_MAX: usize = 63;
/// Longest reverse- or forward-path including the angle brackets
/// (RFC 5321 4.5.3.1.3).
const PATH_MAX: usize = 256;
/// Longest `ENVID=` value (RFC 3461 4.4).
const ENVID_MAX: usize = 100;
/// Longest `ORCPT=` value (RFC 3461 4.2).
const ORCPT_MAX: usize = 500;
/// Longest decimal number accepted for SIZE= and BDAT (fits u64).
const DECIMAL_DIGITS_MAX: usize = 20;
/// Longest SASL mechanism name (RFC 4422 3.1).
const MECHANISM_MAX: usize = 20;

/// One parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO <domain>`: the argument as sent.
    Ehlo(String),
    /// `HELO <domain>`: the argument as sent.
    Helo(String),
    Mail(MailFrom),
    Rcpt(RcptTo),
    Data,
    /// `BDAT <size> [LAST]` (RFC 3030 2).
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    /// `AUTH <mechanism> [initial-response]` (RFC 4954 4): the mechanism
    /// upper-cased; the initial response as sent (base64 or `=`).
    Auth {
        mechanism: String,
        initial_response: Option<String>,
    },
}

/// `MAIL FROM:<reverse-path> [params]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailFrom {
    /// Reverse-path without brackets or source route; empty for `<>`.
    pub sender: String,
    /// `SIZE=` (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152).
    pub body: Option<BodyType>,
    /// `SMTPUTF8` (RFC 6531 3.4).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461 4.3).
    pub ret: Option<DsnRet>,
    /// `ENVID=`, xtext-decoded (RFC 3461 4.4).
    pub envid: Option<String>,
    /// `AUTH=` (RFC 4954 5), xtext-decoded without its brackets: the
    /// mailbox that originally submitted the message, empty for `<>`.
    pub auth: Option<String>,
    /// Any ESMTP parameter was given (not allowed after HELO).
    pub has_parameters: bool,
}

/// `RCPT TO:<forward-path> [params]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptTo {
    /// Forward-path without brackets or source route, or `Postmaster`
    /// (as written) for the domainless postmaster form.
    pub recipient: String,
    /// `NOTIFY=` (RFC 3461 4.1).
    pub notify: Notify,
    /// `ORCPT=` as `addr-type;decoded-address` (RFC 3461 4.2).
    pub orcpt: Option<String>,
    /// Any ESMTP parameter was given (not allowed after HELO).
    pub has_parameters: bool,
}

/// Why a command line could not be parsed. The session maps each variant
/// to a reply code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command unrecognized")]
    UnknownCommand,
    #[error("control character or invalid UTF-8 in command")]
    InvalidCharacter,
    #[error("{0} requires an argument")]
    MissingArgument(&'static str),
    #[error("{0} takes no argument")]
    UnexpectedArgument(&'static str),
    #[error("syntax: {0}")]
    Syntax(&'static str),
    #[error("bad sender address syntax")]
    BadSender,
    #[error("bad recipient address syntax")]
    BadRecipient,
    #[error("parameter {0} not supported")]
    UnknownParameter(String),
    #[error("parameter {0} given twice")]
    DuplicateParameter(&'static str),
    #[error("BODY type not supported")]
    UnsupportedBody,
    #[error("invalid value for parameter {0}")]
    BadParameterValue(&'static str),
    #[error("malformed ESMTP parameter")]
    ParameterSyntax,
    #[error("NOTIFY=NEVER cannot be combined with other values")]
    NotifyNeverCombined,
    #[error("invalid BDAT chunk size")]
    BadChunkSize,
}

/// Which side of the envelope a path is on: decides whether `<>` and
/// `<Postmaster>` are allowed and which error a bad address gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Reverse,
    Forward,
}

impl PathKind {
    fn bad_address(self) -> CommandError {
        match self {
            PathKind::Reverse => CommandError::BadSender,
            PathKind::Forward => CommandError::BadRecipient,
        }
    }
}

/// Parses one command line given without its CRLF (or bare LF).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    if line.iter().any(|&byte| byte < 0x20 || byte == 0x7f) {
        return Err(CommandError::InvalidCharacter);
    }
    let (verb, argument) = match memchr::memchr(b' ', line) {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &line[line.len()..]),
    };
    let argument = std::str::from_utf8(argument)
        .map_err(|_| CommandError::InvalidCharacter)?
        .trim_matches(' ');
    let is = |name: &str| verb.eq_ignore_ascii_case(name.as_bytes());
    if is("MAIL") {
        parse_mail(argument).map(Command::Mail)
    } else if is("RCPT") {
        parse_rcpt(argument).map(Command::Rcpt)
    } else if is("DATA") {
        no_argument("DATA", argument, Command::Data)
    } else if is("BDAT") {
        parse_bdat(argument)
    } else if is("EHLO") {
        required_argument("EHLO", argument).map(|name| Command::Ehlo(name.to_owned()))
    } else if is("HELO") {
        required_argument("HELO", argument).map(|name| Command::Helo(name.to_owned()))
    } else if is("RSET") {
        no_argument("RSET", argument, Command::Rset)
    } else if is("NOOP") {
        // RFC 5321 4.1.1.9: NOOP may carry a string, which is ignored.
        Ok(Command::Noop)
    } else if is("QUIT") {
        no_argument("QUIT", argument, Command::Quit)
    } else if is("VRFY") {
        required_argument("VRFY", argument).map(|_| Command::Vrfy)
    } else if is("EXPN") {
        Ok(Command::Expn)
    } else if is("HELP") {
        Ok(Command::Help)
    } else if is("STARTTLS") {
        no_argument("STARTTLS", argument, Command::StartTls)
    } else if is("AUTH") {
        parse_auth(argument)
    } else {
        Err(CommandError::UnknownCommand)
    }
}

fn no_argument(
    verb: &'static str,
    argument: &str,
    command: Command,
) -> Result<Command, CommandError> {
    if argument.is_empty() {
        Ok(command)
    } else {
        Err(CommandError::UnexpectedArgument(verb))
    }
}

fn required_argument<'a>(verb: &'static str, argument: &'a str) -> Result<&'a str, CommandError> {
    if argument.is_empty() {
        Err(CommandError::MissingArgument(verb))
    } else {
        Ok(argument)
    }
}

/// Strips a case-insensitive prefix such as `FROM:`.
fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn parse_mail(argument: &str) -> Result<MailFrom, CommandError> {
    const USAGE: &str = "MAIL FROM:<address>";
    let path = strip_prefix_ignore_case(argument, "FROM:").ok_or(CommandError::Syntax(USAGE))?;
    // RFC 5321 has no space after the colon, but many clients send one.
    let (sender, rest) = parse_path(path.trim_start_matches(' '), PathKind::Reverse, USAGE)?;
    let mut mail = MailFrom {
        sender,
        ..MailFrom::default()
    };
    let mut seen_smtputf8 = false;
    for parameter in parameters(rest) {
        let (keyword, value) = parameter?;
        mail.has_parameters = true;
        if keyword.eq_ignore_ascii_case("SIZE") {
            if mail.size.is_some() {
                return Err(CommandError::DuplicateParameter("SIZE"));
            }
            let digits = value.ok_or(CommandError::BadParameterValue("SIZE"))?;
            mail.size =
                Some(parse_declared_size(digits).ok_or(CommandError::BadParameterValue("SIZE"))?);
        } else if keyword.eq_ignore_ascii_case("BODY") {
            if mail.body.is_some() {
                return Err(CommandError::DuplicateParameter("BODY"));
            }
            mail.body = Some(match value {
                Some(v) if v.eq_ignore_ascii_case("7BIT") => BodyType::SevenBit,
                Some(v) if v.eq_ignore_ascii_case("8BITMIME") => BodyType::EightBitMime,
                _ => return Err(CommandError::UnsupportedBody),
            });
        } else if keyword.eq_ignore_ascii_case("SMTPUTF8") {
            if seen_smtputf8 {
                return Err(CommandError::DuplicateParameter("SMTPUTF8"));
            }
            if value.is_some() {
                return Err(CommandError::BadParameterValue("SMTPUTF8"));
            }
            seen_smtputf8 = true;
            mail.smtputf8 = true;
        } else if keyword.eq_ignore_ascii_case("RET") {
            if mail.ret.is_some() {
                return Err(CommandError::DuplicateParameter("RET"));
            }
            mail.ret = Some(match value {
                Some(v) if v.eq_ignore_ascii_case("FULL") => DsnRet::Full,
                Some(v) if v.eq_ignore_ascii_case("HDRS") => DsnRet::Headers,
                _ => return Err(CommandError::BadParameterValue("RET")),
            });
        } else if keyword.eq_ignore_ascii_case("ENVID") {
            if mail.envid.is_some() {
                return Err(CommandError::DuplicateParameter("ENVID"));
            }
            let encoded = value.ok_or(CommandError::BadParameterValue("ENVID"))?;
            // The limit applies to the value before xtext encoding.
            let decoded = decode_xtext(encoded)
                .ok()
                .filter(|v| v.len() <= ENVID_MAX)
                .ok_or(CommandError::BadParameterValue("ENVID"))?;
            mail.envid = Some(decoded);
        } else if keyword.eq_ignore_ascii_case("AUTH") {
            if mail.auth.is_some() {
                return Err(CommandError::DuplicateParameter("AUTH"));
            }
            let value = value.ok_or(CommandError::BadParameterValue("AUTH"))?;
            mail.auth = Some(parse_auth_parameter(value)?);
        } else {
            return Err(CommandError::UnknownParameter(keyword.to_owned()));
        }
    }
    Ok(mail)
}

/// `AUTH mechanism [initial-response]` (RFC 4954 4).
fn parse_auth(argument: &str) -> Result<Command, CommandError> {
    let mut words = required_argument("AUTH", argument)?
        .split(' ')
        .filter(|word| !word.is_empty());
    let mechanism = words.next().ok_or(CommandError::MissingArgument("AUTH"))?;
    // RFC 4422 3.1: 1 to 20 of upper-case letters, digits, `-` and `_`
    // (clients may send it in lower case).
    if mechanism.len() > MECHANISM_MAX
        || !mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CommandError::Syntax("AUTH mechanism [initial-response]"));
    }
    let initial_response = words.next().map(str::to_owned);
    if words.next().is_some() {
        return Err(CommandError::Syntax("AUTH mechanism [initial-response]"));
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial_response,
    })
}

/// `AUTH=` value of MAIL (RFC 4954 5): xtext of `<>` or `<mailbox>`.
fn parse_auth_parameter(value: &str) -> Result<String, CommandError> {
    let bad = CommandError::BadParameterValue("AUTH");
    let decoded = decode_xtext(value).map_err(|_| bad.clone())?;
    if decoded.len() > PATH_MAX {
        return Err(bad);
    }
    let mailbox = decoded
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .ok_or(bad.clone())?;
    if !mailbox.is_empty() && !is_mailbox(mailbox) {
        return Err(bad);
    }
    Ok(mailbox.to_owned())
}

fn parse_rcpt(argument: &str) -> Result<RcptTo, CommandError> {
    const USAGE: &str = "RCPT TO:<address>";
    let path = strip_prefix_ignore_case(argument, "TO:").ok_or(CommandError::Syntax(USAGE))?;
    let (recipient, rest) = parse_path(path.trim_start_matches(' '), PathKind::Forward, USAGE)?;
    let mut rcpt = RcptTo {
        recipient,
        ..RcptTo::default()
    };
    for parameter in parameters(rest) {
        let (keyword, value) = parameter?;
        rcpt.has_parameters = true;
        if keyword.eq_ignore_ascii_case("NOTIFY") {
            if rcpt.notify.explicit {
                return Err(CommandError::DuplicateParameter("NOTIFY"));
            }
            rcpt.notify = parse_notify(value.ok_or(CommandError::BadParameterValue("NOTIFY"))?)?;
        } else if keyword.eq_ignore_ascii_case("ORCPT") {
            if rcpt.orcpt.is_some() {
                return Err(CommandError::DuplicateParameter("ORCPT"));
            }
            rcpt.orcpt = Some(parse_orcpt(
                value.ok_or(CommandError::BadParameterValue("ORCPT"))?,
            )?);
        } else {
            return Err(CommandError::UnknownParameter(keyword.to_owned()));
        }
    }
    Ok(rcpt)
}

fn parse_notify(value: &str) -> Result<Notify, CommandError> {
    let mut notify = Notify {
        explicit: true,
        ..Notify::default()
    };
    let mut never = false;
    for item in value.split(',') {
        if item.eq_ignore_ascii_case("NEVER") {
            never = true;
        } else if item.eq_ignore_ascii_case("SUCCESS") {
            notify.success = true;
        } else if item.eq_ignore_ascii_case("FAILURE") {
            notify.failure = true;
        } else if item.eq_ignore_ascii_case("DELAY") {
            notify.delay = true;
        } else {
            return Err(CommandError::BadParameterValue("NOTIFY"));
        }
    }
    if never && (notify.success || notify.failure || notify.delay) {
        return Err(CommandError::NotifyNeverCombined);
    }
    Ok(notify)
}

/// `ORCPT=addr-type;xtext` (RFC 3461 4.2), returned as `addr-type;decoded`.
fn parse_orcpt(value: &str) -> Result<String, CommandError> {
    let bad = CommandError::BadParameterValue("ORCPT");
    let (address_type, encoded) = value.split_once(';').ok_or(bad.clone())?;
    if address_type.is_empty() || !address_type.bytes().all(is_atext) {
        return Err(bad);
    }
    let address = decode_xtext(encoded).map_err(|_| bad.clone())?;
    // The limit applies to the address before xtext encoding.
    if address.is_empty() || address.len() > ORCPT_MAX {
        return Err(bad);
    }
    Ok(format!("{address_type};{address}"))
}

fn parse_bdat(argument: &str) -> Result<Command, CommandError> {
    let mut words = argument.split(' ').filter(|word| !word.is_empty());
    let size = words
        .next()
        .and_then(parse_decimal)
        .ok_or(CommandError::BadChunkSize)?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::BadChunkSize),
    };
    if words.next().is_some() {
        return Err(CommandError::BadChunkSize);
    }
    Ok(Command::Bdat { size, last })
}

/// `SIZE=` value: any run of digits; a number past u64 saturates so the
/// session answers "too large" (552 5.3.4) rather than "bad syntax".
fn parse_declared_size(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

/// A run of 1 to 20 ASCII digits that fits in a u64.
fn parse_decimal(digits: &str) -> Option<u64> {
    if digits.is_empty()
        || digits.len() > DECIMAL_DIGITS_MAX
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    digits.parse().ok()
}

/// Splits `SP`-separated `keyword[=value]` parameters (RFC 5321 4.1.2,
/// values widened to UTF-8 by RFC 6531 3.3).
fn parameters(rest: &str) -> impl Iterator<Item = Result<(&str, Option<&str>), CommandError>> {
    rest.split(' ').filter(|word| !word.is_empty()).map(|word| {
        let (keyword, value) = match word.split_once('=') {
            Some((keyword, value)) => (keyword, Some(value)),
            None => (word, None),
        };
        let keyword_ok = keyword
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && keyword
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let value_ok = value.is_none_or(|v| !v.is_empty() && !v.contains('='));
        if keyword_ok && value_ok {
            Ok((keyword, value))
        } else {
            Err(CommandError::ParameterSyntax)
        }
    })
}

/// Parses `<...>` at the start of `text`; returns the mailbox (route
/// dropped) and what follows the closing bracket.
fn parse_path<'a>(
    text: &'a str,
    kind: PathKind,
    usage: &'static str,
) -> Result<(String, &'a str), CommandError> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'<') {
        return Err(CommandError::Syntax(usage));
    }
    let close = closing_bracket(bytes).ok_or(CommandError::Syntax(usage))?;
    let inner = &text[1..close];
    let rest = &text[close + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(CommandError::Syntax(usage));
    }
    if close + 1 > PATH_MAX {
        return Err(kind.bad_address());
    }
    if inner.is_empty() {
        return match kind {
            PathKind::Reverse => Ok((String::new(), rest)),
            PathKind::Forward => Err(kind.bad_address()),
        };
    }
    // RFC 5321 4.1.1.3: `<Postmaster>` without a domain must be accepted.
    if kind == PathKind::Forward && inner.eq_ignore_ascii_case("Postmaster") {
        return Ok((inner.to_owned(), rest));
    }
    let mailbox = strip_source_route(inner).ok_or(kind.bad_address())?;
    if !is_mailbox(mailbox) {
        return Err(kind.bad_address());
    }
    Ok((mailbox.to_owned(), rest))
}

/// Index of the `>` that closes the path, skipping quoted strings (a
/// quoted local part may contain `>`).
fn closing_bracket(bytes: &[u8]) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (index, &byte) in bytes.iter().enumerate().skip(1) {
        if escaped {
            escaped = false;
        } else if quoted {
            match byte {
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => quoted = true,
                b'>' => return Some(index),
                _ => {}
            }
        }
    }
    None
}

/// Drops an `@a,@b:` source route (RFC 5321 4.1.2, C), checking its
/// domains; returns the mailbox after it.
fn strip_source_route(inner: &str) -> Option<&str> {
    if !inner.starts_with('@') {
        return Some(inner);
    }
    let (route, mailbox) = inner.split_once(':')?;
    route
        .split(',')
        .all(|hop| hop.strip_prefix('@').is_some_and(is_domain))
        .then_some(mailbox)
}

/// `Local-part "@" ( Domain / address-literal )` (RFC 5321 4.1.2).
fn is_mailbox(mailbox: &str) -> bool {
    let Some(at) = mailbox.rfind('@') else {
        return false;
    };
    let (local, domain) = (&mailbox[..at], &mailbox[at + 1..]);
    is_local_part(local) && (is_domain(domain) || is_address_literal(domain))
}

fn is_local_part(local: &str) -> bool {
    // RFC 5321 4.5.3.1.1 sets 64 octets as the least a server must accept
    // and asks servers to avoid hard limits (SRS/VERP addresses run longer);
    // the 256-octet path limit still bounds it.
    if local.is_empty() {
        return false;
    }
    match local.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
        Some(quoted) => is_quoted_content(quoted.as_bytes()),
        None => local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext)),
    }
}

/// `*QcontentSMTP` (RFC 5321 4.1.2; UTF-8 allowed by RFC 6531 3.3).
fn is_quoted_content(bytes: &[u8]) -> bool {
    let mut iter = bytes.iter();
    while let Some(&byte) = iter.next() {
        match byte {
            b'\\' => {
                if !iter.next().is_some_and(|&next| (32..=126).contains(&next)) {
                    return false;
                }
            }
            b'"' => return false,
            32..=126 | 0x80..=0xff => {}
            _ => return false,
        }
    }
    true
}

/// `atext` (RFC 5322 3.2.3) plus UTF-8 (RFC 6531 3.3). Non-ASCII bytes come
/// from a `&str`, so they are parts of valid UTF-8 characters.
fn is_atext(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&byte) || byte >= 0x80
}

/// `sub-domain *("." sub-domain)` with U-labels allowed (RFC 6531 3.3).
fn is_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= DOMAIN_MAX
        && domain.split('.').all(|label| {
            let bytes = label.as_bytes();
            let let_dig = |b: &u8| b.is_ascii_alphanumeric() || *b >= 0x80;
            !bytes.is_empty()
                && bytes.len() <= DOMAIN_LABEL_MAX
                && bytes.first().is_some_and(let_dig)
                && bytes.last().is_some_and(let_dig)
                && bytes.iter().all(|b| let_dig(b) || *b == b'-')
        })
}

/// `[IPv4]` or `[IPv6:...]` (RFC 5321 4.1.3). General address literals
/// (`[tag:...]`) are refused: no tag is registered that could be delivered to.
fn is_address_literal(literal: &str) -> bool {
    let Some(content) = literal.strip_prefix('[').and_then(|l| l.strip_suffix(']')) else {
        return false;
    };
    match strip_prefix_ignore_case(content, "IPv6:") {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => content.parse::<Ipv4Addr>().is_ok(),
    }
}

/// Why an xtext value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XtextError {
    #[error("character not allowed in xtext")]
    InvalidCharacter,
    #[error("'+' not followed by two hex digits")]
    BadHexChar,
    #[error("decoded value is not printable US-ASCII")]
    NotPrintable,
}

/// Decodes xtext (RFC 3461 4): `+HH` is the octet 0xHH, other characters
/// stand for themselves. ENVID and ORCPT values must decode to printable
/// US-ASCII (RFC 3461 4.2, 4.4), so anything else is refused; this also
/// keeps CR and LF out of the DSN headers later built from them.
pub fn decode_xtext(encoded: &str) -> Result<String, XtextError> {
    let mut decoded = String::with_capacity(encoded.len());
    let mut bytes = encoded.bytes();
    while let Some(byte) = bytes.next() {
        let octet = match byte {
            b'+' => {
                let high = bytes.next().and_then(hex_value);
                let low = bytes.next().and_then(hex_value);
                match (high, low) {
                    (Some(high), Some(low)) => high << 4 | low,
                    _ => return Err(XtextError::BadHexChar),
                }
            }
            b'=' => return Err(XtextError::InvalidCharacter),
            33..=126 => byte,
            _ => return Err(XtextError::InvalidCharacter),
        };
        if !(32..=126).contains(&octet) {
            return Err(XtextError::NotPrintable);
        }
        decoded.push(char::from(octet));
    }
    Ok(decoded)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, CommandError> {
        parse_command(line.as_bytes())
    }

    fn mail(line: &str) -> MailFrom {
        match parse(line) {
            Ok(Command::Mail(mail)) => mail,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn rcpt(line: &str) -> RcptTo {
        match parse(line) {
            Ok(Command::Rcpt(rcpt)) => rcpt,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn simple_verbs_case_insensitive() {
        assert_eq!(parse("DATA"), Ok(Command::Data));
        assert_eq!(parse("data"), Ok(Command::Data));
        assert_eq!(parse("RsEt"), Ok(Command::Rset));
        assert_eq!(parse("NOOP"), Ok(Command::Noop));
        assert_eq!(parse("NOOP anything goes"), Ok(Command::Noop));
        assert_eq!(parse("QUIT"), Ok(Command::Quit));
        assert_eq!(parse("HELP"), Ok(Command::Help));
        assert_eq!(parse("HELP MAIL"), Ok(Command::Help));
        assert_eq!(parse("EXPN list"), Ok(Command::Expn));
        assert_eq!(parse("VRFY user"), Ok(Command::Vrfy));
        assert_eq!(parse("starttls"), Ok(Command::StartTls));
        assert_eq!(parse("DATA "), Ok(Command::Data));
    }

    #[test]
    fn unknown_and_invalid_commands() {
        assert_eq!(parse("FOO"), Err(CommandError::UnknownCommand));
        assert_eq!(parse(""), Err(CommandError::UnknownCommand));
        assert_eq!(parse("MAILX FROM:<>"), Err(CommandError::UnknownCommand));
        assert_eq!(
            parse_command(b"NOOP\0"),
            Err(CommandError::InvalidCharacter)
        );
        assert_eq!(
            parse_command(b"NO\rOP"),
            Err(CommandError::InvalidCharacter)
        );
        assert_eq!(
            parse_command(b"EHLO \xff\xfe"),
            Err(CommandError::InvalidCharacter)
        );
        assert_eq!(
            parse_command(b"EHLO\tx"),
            Err(CommandError::InvalidCharacter)
        );
    }

    #[test]
    fn argument_rules() {
        assert_eq!(
            parse("DATA now"),
            Err(CommandError::UnexpectedArgument("DATA"))
        );
        assert_eq!(
            parse("STARTTLS x"),
            Err(CommandError::UnexpectedArgument("STARTTLS"))
        );
        assert_eq!(
            parse("QUIT x"),
            Err(CommandError::UnexpectedArgument("QUIT"))
        );
        assert_eq!(
            parse("RSET x"),
            Err(CommandError::UnexpectedArgument("RSET"))
        );
        assert_eq!(parse("EHLO"), Err(CommandError::MissingArgument("EHLO")));
        assert_eq!(parse("HELO  "), Err(CommandError::MissingArgument("HELO")));
        assert_eq!(parse("VRFY"), Err(CommandError::MissingArgument("VRFY")));
        assert_eq!(
            parse("EHLO client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(
            parse("helo [192.0.2.1]"),
            Ok(Command::Helo("[192.0.2.1]".into()))
        );
    }

    #[test]
    fn mail_paths() {
        assert_eq!(mail("MAIL FROM:<>").sender, "");
        assert_eq!(mail("MAIL FROM:<a@b.example>").sender, "a@b.example");
        assert_eq!(mail("mail from: <a@b.example>").sender, "a@b.example");
        assert_eq!(
            mail("MAIL FROM:<@relay.example,@r2.example:a@b.example>").sender,
            "a@b.example"
        );
        assert_eq!(
            mail("MAIL FROM:<\"john doe>\"@b.example>").sender,
            "\"john doe>\"@b.example"
        );
        assert_eq!(mail("MAIL FROM:<a@[192.0.2.1]>").sender, "a@[192.0.2.1]");
        assert_eq!(
            mail("MAIL FROM:<a@[IPv6:2001:db8::1]>").sender,
            "a@[IPv6:2001:db8::1]"
        );
        assert_eq!(
            mail("MAIL FROM:<δοκιμή@παράδειγμα.δοκιμή>").sender,
            "δοκιμή@παράδειγμα.δοκιμή"
        );
    }

    #[test]
    fn mail_path_errors() {
        let usage = CommandError::Syntax("MAIL FROM:<address>");
        assert_eq!(parse("MAIL"), Err(usage.clone()));
        assert_eq!(parse("MAIL TO:<a@b>"), Err(usage.clone()));
        assert_eq!(parse("MAIL FROM:a@b.example"), Err(usage.clone()));
        assert_eq!(parse("MAIL FROM:<a@b.example"), Err(usage.clone()));
        assert_eq!(parse("MAIL FROM:<a@b.example>x"), Err(usage));
        for bad in [
            "MAIL FROM:<a>",
            "MAIL FROM:<@b.example>",
            "MAIL FROM:<a@>",
            "MAIL FROM:<a..b@c.example>",
            "MAIL FROM:<a@-b.example>",
            "MAIL FROM:<a@b-.example>",
            "MAIL FROM:<a@b..example>",
            "MAIL FROM:<a b@c.example>",
            "MAIL FROM:<a@[300.1.1.1]>",
            "MAIL FROM:<a@[IPv6:zz::1]>",
            "MAIL FROM:<a@[tag:stuff]>",
            "MAIL FROM:<@bad_domain:a@b.example>",
            "MAIL FROM:<@a.example a@b.example>",
            "MAIL FROM:<Postmaster>",
        ] {
            assert_eq!(parse(bad), Err(CommandError::BadSender), "{bad}");
        }
        let too_long_local = format!("MAIL FROM:<{}@b.example>", "a".repeat(250));
        assert_eq!(parse(&too_long_local), Err(CommandError::BadSender));
        let long_path = format!("MAIL FROM:<a@{}.example>", "b.".repeat(130));
        assert_eq!(parse(&long_path), Err(CommandError::BadSender));
    }

    #[test]
    fn mail_parameters() {
        let m =
            mail("MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2Bx");
        assert_eq!(m.size, Some(1000));
        assert_eq!(m.body, Some(BodyType::EightBitMime));
        assert!(m.smtputf8);
        assert_eq!(m.ret, Some(DsnRet::Headers));
        assert_eq!(m.envid.as_deref(), Some("QQ+x"));
        assert!(m.has_parameters);
        let m = mail("MAIL FROM:<> body=7bit ret=full");
        assert_eq!(m.body, Some(BodyType::SevenBit));
        assert_eq!(m.ret, Some(DsnRet::Full));
        assert!(!mail("MAIL FROM:<>").has_parameters);
    }

    #[test]
    fn auth_command() {
        assert_eq!(
            parse("auth plain AGFsaWNlAHNlY3JldA=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some("AGFsaWNlAHNlY3JldA==".into()),
            })
        );
        assert_eq!(
            parse("AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial_response: None,
            })
        );
        assert_eq!(
            parse("AUTH PLAIN ="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some("=".into()),
            })
        );
        assert_eq!(
            parse("AUTH SCRAM-SHA-256"),
            Ok(Command::Auth {
                mechanism: "SCRAM-SHA-256".into(),
                initial_response: None,
            })
        );
        assert_eq!(parse("AUTH"), Err(CommandError::MissingArgument("AUTH")));
        assert_eq!(parse("AUTH  "), Err(CommandError::MissingArgument("AUTH")));
        for bad in [
            "AUTH PL@IN",
            "AUTH PLAIN a b",
            "AUTH ABCDEFGHIJKLMNOPQRSTU",
            "AUTH PLAIN=",
        ] {
            assert!(
                matches!(parse(bad), Err(CommandError::Syntax(_))),
                "{bad}: {:?}",
                parse(bad)
            );
        }
    }

    #[test]
    fn mail_auth_parameter() {
        assert_eq!(
            mail("MAIL FROM:<a@b.example> AUTH=<>").auth,
            Some(String::new())
        );
        assert_eq!(
            mail("MAIL FROM:<a@b.example> AUTH=<e+3Dmc2@example.com>").auth,
            Some("e=mc2@example.com".into())
        );
        assert_eq!(mail("MAIL FROM:<a@b.example>").auth, None);
        for bad in [
            "MAIL FROM:<> AUTH",
            "MAIL FROM:<> AUTH=a@b.example",
            "MAIL FROM:<> AUTH=<not-an-address>",
            "MAIL FROM:<> AUTH=<a@b.example",
            "MAIL FROM:<> AUTH=<a+ZZ@b.example>",
        ] {
            assert_eq!(
                parse(bad),
                Err(CommandError::BadParameterValue("AUTH")),
                "{bad}"
            );
        }
        assert_eq!(
            parse("MAIL FROM:<> AUTH=<> AUTH=<>"),
            Err(CommandError::DuplicateParameter("AUTH"))
        );
        let long = format!("MAIL FROM:<> AUTH=<{}@b.example>", "a".repeat(250));
        assert_eq!(parse(&long), Err(CommandError::BadParameterValue("AUTH")));
    }

    #[test]
    fn mail_parameter_errors() {
        assert_eq!(
            parse("MAIL FROM:<> BODY=BINARYMIME"),
            Err(CommandError::UnsupportedBody)
        );
        assert_eq!(
            parse("MAIL FROM:<> FOO=bar"),
            Err(CommandError::UnknownParameter("FOO".into()))
        );
        assert_eq!(
            parse("MAIL FROM:<> SIZE=1 SIZE=2"),
            Err(CommandError::DuplicateParameter("SIZE"))
        );
        assert_eq!(
            parse("MAIL FROM:<> SMTPUTF8 SMTPUTF8"),
            Err(CommandError::DuplicateParameter("SMTPUTF8"))
        );
        assert_eq!(
            parse("MAIL FROM:<> SIZE=abc"),
            Err(CommandError::BadParameterValue("SIZE"))
        );
        assert_eq!(
            parse("MAIL FROM:<> SIZE=999999999999999999999").map(|c| match c {
                Command::Mail(m) => m.size,
                _ => None,
            }),
            Ok(Some(u64::MAX))
        );
        assert_eq!(
            parse("MAIL FROM:<> RET=ALL"),
            Err(CommandError::BadParameterValue("RET"))
        );
        assert_eq!(
            parse("MAIL FROM:<> SMTPUTF8=yes"),
            Err(CommandError::BadParameterValue("SMTPUTF8"))
        );
        let long_envid = format!("MAIL FROM:<> ENVID={}", "x".repeat(101));
        assert_eq!(
            parse(&long_envid),
            Err(CommandError::BadParameterValue("ENVID"))
        );
        let max_envid = format!("MAIL FROM:<> ENVID={}", "x".repeat(100));
        assert!(parse(&max_envid).is_ok());
        // 100 characters once decoded, 300 as xtext: within the limit.
        let encoded_envid = format!("MAIL FROM:<> ENVID={}", "+41".repeat(100));
        assert!(parse(&encoded_envid).is_ok());
        // Local parts past 64 octets (SRS, VERP) are accepted.
        let srs = format!("MAIL FROM:<SRS0={}@relay.example>", "a".repeat(120));
        assert!(parse(&srs).is_ok());
        assert_eq!(
            parse("MAIL FROM:<> ENVID=a+0Db"),
            Err(CommandError::BadParameterValue("ENVID"))
        );
        assert_eq!(parse("MAIL FROM:<> =x"), Err(CommandError::ParameterSyntax));
        assert_eq!(
            parse("MAIL FROM:<> SIZE="),
            Err(CommandError::ParameterSyntax)
        );
    }

    #[test]
    fn rcpt_paths() {
        assert_eq!(rcpt("RCPT TO:<u@d.example>").recipient, "u@d.example");
        assert_eq!(rcpt("rcpt to:<postmaster>").recipient, "postmaster");
        assert_eq!(
            rcpt("RCPT TO:<@a.example,@b.example:u@d.example>").recipient,
            "u@d.example"
        );
        assert_eq!(
            rcpt("RCPT TO:<Postmaster@d.example>").recipient,
            "Postmaster@d.example"
        );
        assert_eq!(parse("RCPT TO:<>"), Err(CommandError::BadRecipient));
        assert_eq!(parse("RCPT TO:<user>"), Err(CommandError::BadRecipient));
        assert_eq!(
            parse("RCPT FROM:<u@d.example>"),
            Err(CommandError::Syntax("RCPT TO:<address>"))
        );
        assert_eq!(
            parse("RCPT TO:u@d.example"),
            Err(CommandError::Syntax("RCPT TO:<address>"))
        );
    }

    #[test]
    fn rcpt_dsn_parameters() {
        let r = rcpt("RCPT TO:<u@d.example> NOTIFY=SUCCESS,delay ORCPT=rfc822;u+2Bx@d.example");
        assert_eq!(
            r.notify,
            Notify {
                explicit: true,
                success: true,
                failure: false,
                delay: true
            }
        );
        assert_eq!(r.orcpt.as_deref(), Some("rfc822;u+x@d.example"));
        let r = rcpt("RCPT TO:<u@d.example> NOTIFY=NEVER");
        assert_eq!(
            r.notify,
            Notify {
                explicit: true,
                ..Notify::default()
            }
        );
        assert_eq!(rcpt("RCPT TO:<u@d.example>").notify, Notify::default());
        assert_eq!(
            parse("RCPT TO:<u@d.example> NOTIFY=NEVER,SUCCESS"),
            Err(CommandError::NotifyNeverCombined)
        );
        assert_eq!(
            parse("RCPT TO:<u@d.example> NOTIFY=SOMETIMES"),
            Err(CommandError::BadParameterValue("NOTIFY"))
        );
        assert_eq!(
            parse("RCPT TO:<u@d.example> NOTIFY=SUCCESS NOTIFY=DELAY"),
            Err(CommandError::DuplicateParameter("NOTIFY"))
        );
        assert_eq!(
            parse("RCPT TO:<u@d.example> ORCPT=u@d.example"),
            Err(CommandError::BadParameterValue("ORCPT"))
        );
        assert_eq!(
            parse("RCPT TO:<u@d.example> ORCPT=rfc822;"),
            Err(CommandError::BadParameterValue("ORCPT"))
        );
        assert_eq!(
            parse("RCPT TO:<u@d.example> SIZE=1"),
            Err(CommandError::UnknownParameter("SIZE".into()))
        );
    }

    #[test]
    fn bdat_arguments() {
        assert_eq!(
            parse("BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            parse("bdat 0 last"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        for bad in [
            "BDAT",
            "BDAT x",
            "BDAT -1",
            "BDAT 1 FIRST",
            "BDAT 1 LAST x",
            "BDAT 99999999999999999999999",
        ] {
            assert_eq!(parse(bad), Err(CommandError::BadChunkSize), "{bad}");
        }
    }

    #[test]
    fn xtext_decoding() {
        assert_eq!(decode_xtext("abc"), Ok("abc".into()));
        assert_eq!(decode_xtext("a+2Bb+3d"), Ok("a+b=".into()));
        assert_eq!(decode_xtext(""), Ok(String::new()));
        assert_eq!(decode_xtext("a+2"), Err(XtextError::BadHexChar));
        assert_eq!(decode_xtext("a+zz"), Err(XtextError::BadHexChar));
        assert_eq!(decode_xtext("a=b"), Err(XtextError::InvalidCharacter));
        assert_eq!(decode_xtext("a b"), Err(XtextError::InvalidCharacter));
        assert_eq!(decode_xtext("é"), Err(XtextError::InvalidCharacter));
        assert_eq!(decode_xtext("+0A"), Err(XtextError::NotPrintable));
        assert_eq!(decode_xtext("+C3"), Err(XtextError::NotPrintable));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let alphabet = b"MAIL FROM:<>@.\"\\,=+;RCPT TO BDAT 0123 \xce\xb4[]IPv6";
            let line: Vec<u8> = (0..len)
                .map(|i| alphabet[((seed >> (i % 50)) as usize + i * 7) % alphabet.len()])
                .collect();
            let _ = parse_command(&line);
        }
    }
}
