//! Parser for one POP3 command line (RFC 1939 with the RFC 2449 CAPA, the
//! RFC 2595 STLS and the RFC 5034 AUTH commands) into a typed [`Command`].
//!
//! The parser sees one line without its line ending and knows nothing about
//! session state, configuration or SASL continuation lines (those are the
//! session's). It must never panic or allocate in proportion to anything but
//! the line, which the session bounds to [`COMMAND_LINE_MAX`].

/// Longest command line including CRLF (RFC 2449 4).
pub const COMMAND_LINE_MAX: usize = 255;

/// One parsed POP3 command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `USER name` (RFC 1939 7): the rest of the line.
    User(String),
    /// `PASS string` (RFC 1939 7): the rest of the line, spaces included,
    /// since passwords may contain them.
    Pass(String),
    /// `AUTH [mechanism [initial-response]]` (RFC 5034 4); a bare `AUTH`
    /// lists the mechanisms, as clients predating CAPA probe with it.
    Auth {
        mechanism: Option<String>,
        initial_response: Option<String>,
    },
    Capa,
    Stls,
    Stat,
    /// `LIST [msg]`: the message number as sent (not yet checked).
    List(Option<u64>),
    /// `UIDL [msg]`.
    Uidl(Option<u64>),
    Retr(u64),
    /// `TOP msg n`: message number and body line count.
    Top(u64, u64),
    Dele(u64),
    Rset,
    Noop,
    Quit,
}

impl Command {
    /// The command's verb, lowercase.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::User(_) => "user",
            Command::Pass(_) => "pass",
            Command::Auth { .. } => "auth",
            Command::Capa => "capa",
            Command::Stls => "stls",
            Command::Stat => "stat",
            Command::List(_) => "list",
            Command::Uidl(_) => "uidl",
            Command::Retr(_) => "retr",
            Command::Top(..) => "top",
            Command::Dele(_) => "dele",
            Command::Rset => "rset",
            Command::Noop => "noop",
            Command::Quit => "quit",
        }
    }
}

/// Every value of the `command` label of `tern_pop3_commands_total`.
pub const VERB_LABELS: [&str; 15] = [
    "user", "pass", "auth", "capa", "stls", "stat", "list", "uidl", "retr", "top", "dele", "rset",
    "noop", "quit", "other",
];

/// The metric label for a command line's verb: the lowercase verb when
/// it is one we know, else `other`, so the label set stays bounded
/// whatever clients send.
pub fn verb_label(line: &[u8]) -> &'static str {
    let verb = line.split(|&b| b == b' ').next().unwrap_or_default();
    VERB_LABELS[..VERB_LABELS.len() - 1]
        .iter()
        .copied()
        .find(|known| known.as_bytes().eq_ignore_ascii_case(verb))
        .unwrap_or("other")
}

/// Why a command line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command")]
    Unknown,
    #[error("control character or invalid UTF-8 in command")]
    BadCharacters,
    #[error("{0} requires an argument")]
    MissingArgument(&'static str),
    #[error("{0} takes no argument")]
    UnexpectedArgument(&'static str),
    #[error("syntax: {0}")]
    Syntax(&'static str),
}

/// Parse one command line (without CRLF). Verbs are case-insensitive
/// (RFC 1939 3); arguments are separated by single spaces.
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::BadCharacters)?;
    if line.chars().any(char::is_control) {
        return Err(CommandError::BadCharacters);
    }
    let (verb, rest) = match line.split_once(' ') {
        Some((verb, rest)) => (verb, Some(rest)),
        None => (line, None),
    };
    let verb = verb.to_ascii_uppercase();
    match verb.as_str() {
        "USER" => Ok(Command::User(required_text("USER", rest)?)),
        "PASS" => Ok(Command::Pass(required_text("PASS", rest)?)),
        "AUTH" => auth(rest),
        "CAPA" => no_argument("CAPA", rest, Command::Capa),
        "STLS" => no_argument("STLS", rest, Command::Stls),
        "STAT" => no_argument("STAT", rest, Command::Stat),
        "RSET" => no_argument("RSET", rest, Command::Rset),
        "NOOP" => no_argument("NOOP", rest, Command::Noop),
        "QUIT" => no_argument("QUIT", rest, Command::Quit),
        "LIST" => Ok(Command::List(optional_number(rest)?)),
        "UIDL" => Ok(Command::Uidl(optional_number(rest)?)),
        "RETR" => Ok(Command::Retr(one_number("RETR", rest)?)),
        "DELE" => Ok(Command::Dele(one_number("DELE", rest)?)),
        "TOP" => top(rest),
        _ => Err(CommandError::Unknown),
    }
}

fn no_argument(
    verb: &'static str,
    rest: Option<&str>,
    command: Command,
) -> Result<Command, CommandError> {
    match rest {
        None => Ok(command),
        Some(_) => Err(CommandError::UnexpectedArgument(verb)),
    }
}

fn required_text(verb: &'static str, rest: Option<&str>) -> Result<String, CommandError> {
    match rest {
        Some(text) if !text.is_empty() => Ok(text.to_owned()),
        _ => Err(CommandError::MissingArgument(verb)),
    }
}

fn auth(rest: Option<&str>) -> Result<Command, CommandError> {
    let Some(rest) = rest else {
        return Ok(Command::Auth {
            mechanism: None,
            initial_response: None,
        });
    };
    let mut words = rest.split(' ');
    let mechanism = words.next().filter(|m| !m.is_empty());
    let initial_response = words.next();
    if words.next().is_some() || initial_response == Some("") {
        return Err(CommandError::Syntax("AUTH mechanism [initial-response]"));
    }
    let Some(mechanism) = mechanism else {
        return Err(CommandError::Syntax("AUTH mechanism [initial-response]"));
    };
    Ok(Command::Auth {
        mechanism: Some(mechanism.to_ascii_uppercase()),
        initial_response: initial_response.map(str::to_owned),
    })
}

fn top(rest: Option<&str>) -> Result<Command, CommandError> {
    let rest = rest.ok_or(CommandError::MissingArgument("TOP"))?;
    let Some((message, lines)) = rest.split_once(' ') else {
        return Err(CommandError::Syntax("TOP msg n"));
    };
    Ok(Command::Top(number(message)?, number(lines)?))
}

fn optional_number(rest: Option<&str>) -> Result<Option<u64>, CommandError> {
    rest.map(number).transpose()
}

fn one_number(verb: &'static str, rest: Option<&str>) -> Result<u64, CommandError> {
    number(rest.ok_or(CommandError::MissingArgument(verb))?)
}

/// A non-negative decimal number; values beyond u64 saturate (they name no
/// message, and as a line count they mean every line).
fn number(text: &str) -> Result<u64, CommandError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Syntax("expected a decimal number"));
    }
    let digits = text.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(0);
    }
    // Only digits: the one failure left is overflow.
    Ok(digits.parse::<u64>().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, CommandError> {
        parse_command(line.as_bytes())
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(parse("stat"), Ok(Command::Stat));
        assert_eq!(parse("CaPa"), Ok(Command::Capa));
        assert_eq!(parse("noop"), Ok(Command::Noop));
        assert_eq!(parse("QUIT"), Ok(Command::Quit));
        assert_eq!(parse("rset"), Ok(Command::Rset));
        assert_eq!(parse("stls"), Ok(Command::Stls));
    }

    #[test]
    fn argumentless_verbs_refuse_arguments() {
        for verb in ["STAT", "CAPA", "RSET", "NOOP", "QUIT", "STLS"] {
            assert!(
                matches!(
                    parse(&format!("{verb} x")),
                    Err(CommandError::UnexpectedArgument(_))
                ),
                "{verb}"
            );
        }
    }

    #[test]
    fn user_and_pass_keep_the_rest_of_the_line() {
        assert_eq!(
            parse("USER alice@example.org"),
            Ok(Command::User("alice@example.org".into()))
        );
        assert_eq!(
            parse("PASS two words "),
            Ok(Command::Pass("two words ".into()))
        );
        assert_eq!(parse("USER"), Err(CommandError::MissingArgument("USER")));
        assert_eq!(parse("PASS "), Err(CommandError::MissingArgument("PASS")));
    }

    #[test]
    fn message_numbers() {
        assert_eq!(parse("LIST"), Ok(Command::List(None)));
        assert_eq!(parse("LIST 2"), Ok(Command::List(Some(2))));
        assert_eq!(parse("UIDL 007"), Ok(Command::Uidl(Some(7))));
        assert_eq!(parse("RETR 1"), Ok(Command::Retr(1)));
        assert_eq!(parse("DELE 0"), Ok(Command::Dele(0)));
        assert_eq!(parse("DELE 000"), Ok(Command::Dele(0)));
        assert_eq!(
            parse("RETR 18446744073709551616"),
            Ok(Command::Retr(u64::MAX))
        );
        assert_eq!(
            parse("RETR 99999999999999999999999999"),
            Ok(Command::Retr(u64::MAX))
        );
        assert_eq!(parse("RETR"), Err(CommandError::MissingArgument("RETR")));
        assert!(matches!(parse("RETR -1"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("LIST 1 2"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("LIST "), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("DELE x"), Err(CommandError::Syntax(_))));
    }

    #[test]
    fn top_needs_two_numbers() {
        assert_eq!(parse("TOP 1 0"), Ok(Command::Top(1, 0)));
        assert_eq!(parse("top 3 10"), Ok(Command::Top(3, 10)));
        assert_eq!(parse("TOP"), Err(CommandError::MissingArgument("TOP")));
        assert!(matches!(parse("TOP 1"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("TOP 1 -1"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("TOP 1 2 3"), Err(CommandError::Syntax(_))));
    }

    #[test]
    fn auth_forms() {
        assert_eq!(
            parse("AUTH"),
            Ok(Command::Auth {
                mechanism: None,
                initial_response: None
            })
        );
        assert_eq!(
            parse("auth plain"),
            Ok(Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial_response: None
            })
        );
        assert_eq!(
            parse("AUTH PLAIN AGFsaWNlAHNlY3JldA=="),
            Ok(Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial_response: Some("AGFsaWNlAHNlY3JldA==".into())
            })
        );
        assert!(matches!(parse("AUTH "), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("AUTH PLAIN "), Err(CommandError::Syntax(_))));
        assert!(matches!(
            parse("AUTH PLAIN a b"),
            Err(CommandError::Syntax(_))
        ));
    }

    #[test]
    fn unknown_and_bad_characters() {
        assert_eq!(parse("APOP alice digest"), Err(CommandError::Unknown));
        assert_eq!(parse(""), Err(CommandError::Unknown));
        assert_eq!(parse("XYZZY"), Err(CommandError::Unknown));
        assert_eq!(parse("NOOP\0"), Err(CommandError::BadCharacters));
        assert_eq!(parse("PASS a\tb"), Err(CommandError::BadCharacters));
        assert_eq!(
            parse_command(b"USER \xff"),
            Err(CommandError::BadCharacters)
        );
    }

    #[test]
    fn verbs_and_metric_labels() {
        assert_eq!(parse("TOP 1 1").map(|c| c.verb()), Ok("top"));
        assert_eq!(parse("PASS x").map(|c| c.verb()), Ok("pass"));
        assert_eq!(verb_label(b"RETR 1"), "retr");
        assert_eq!(verb_label(b"retr x"), "retr");
        assert_eq!(verb_label(b"Uidl"), "uidl");
        assert_eq!(verb_label(b"APOP a b"), "other");
        assert_eq!(verb_label(b""), "other");
        assert_eq!(verb_label(b"\xff\x00"), "other");
    }
}
