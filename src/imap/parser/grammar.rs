//! The command grammar (RFC 3501 9 `command`, with the extensions tern
//! announces: RFC 2177 IDLE, 2342 NAMESPACE, 2971 ID, 4315 UIDPLUS, 4959
//! SASL-IR, 5161 ENABLE, 5258/6154 LIST options, 6851 MOVE, 9051 UNSELECT
//! and STATUS items): tag, name, and the arguments of every command.
//!
//! It turns one framed command buffer into a [`Command`] or a reason; it
//! holds no state and must never panic on any input.

use super::cursor::{bad, is_astring_char, Cursor, ParseResult};
use super::fetch::fetch_attributes;
use super::search::search;
use super::values::{date_time, decode_name, flag, flag_list, mailbox, sequence_set};
use crate::base64;
use crate::imap::command::{
    Command, CommandBody, IdParameters, ListCommand, StatusItem, StoreAction,
};

/// Most field/value pairs in an ID command (RFC 2971 3.3).
const ID_PAIRS_MAX: usize = 30;
/// Longest ID field name (RFC 2971 3.3).
const ID_FIELD_MAX: usize = 30;
/// Longest ID value (RFC 2971 3.3).
const ID_VALUE_MAX: usize = 1024;

/// RFC 3501 9 `tag`: 1*<any ASTRING-CHAR except "+">.
pub(super) fn tag(c: &mut Cursor<'_>) -> Option<String> {
    let tag = c.take_while(|b| is_astring_char(b) && b != b'+');
    (!tag.is_empty() && matches!(c.peek(), Some(b' ') | None))
        .then(|| String::from_utf8_lossy(tag).into_owned())
}

/// A whole command: tag SP name arguments.
pub(super) fn command(c: &mut Cursor<'_>, tag: String) -> ParseResult<Command> {
    c.space("command")?;
    let name = c.keyword("command name")?;
    let body = if name == "UID" {
        c.space("UID")?;
        let sub = c.keyword("UID command")?;
        match sub.as_str() {
            "FETCH" | "STORE" | "COPY" | "MOVE" | "SEARCH" => body(c, &sub, true)?,
            "EXPUNGE" => {
                c.space("UID EXPUNGE")?;
                CommandBody::UidExpunge {
                    set: sequence_set(c)?,
                }
            }
            _ => return bad(format!("Unknown command UID {sub}")),
        }
    } else {
        body(c, &name, false)?
    };
    c.end(&name)?;
    Ok(Command { tag, body })
}

fn body(c: &mut Cursor<'_>, name: &str, uid: bool) -> ParseResult<CommandBody> {
    let body = match name {
        "CAPABILITY" => CommandBody::Capability,
        "NOOP" => CommandBody::Noop,
        "LOGOUT" => CommandBody::Logout,
        "STARTTLS" => CommandBody::StartTls,
        "NAMESPACE" => CommandBody::Namespace,
        "CHECK" => CommandBody::Check,
        "CLOSE" => CommandBody::Close,
        "UNSELECT" => CommandBody::Unselect,
        "EXPUNGE" => CommandBody::Expunge,
        "IDLE" => CommandBody::Idle,
        "LOGIN" => {
            c.space(name)?;
            let user = c.astring_utf8("LOGIN user name")?;
            c.space(name)?;
            let password = c.astring("LOGIN password")?.into_owned();
            CommandBody::Login { user, password }
        }
        "AUTHENTICATE" => authenticate(c)?,
        "ENABLE" => {
            let mut capabilities = Vec::new();
            while c.peek().is_some() {
                c.space(name)?;
                capabilities.push(c.keyword("capability name")?);
            }
            if capabilities.is_empty() {
                return bad("Missing argument to ENABLE");
            }
            CommandBody::Enable { capabilities }
        }
        "ID" => CommandBody::Id {
            parameters: id_parameters(c)?,
        },
        "SELECT" | "EXAMINE" | "CREATE" | "DELETE" | "SUBSCRIBE" | "UNSUBSCRIBE" => {
            c.space(name)?;
            let mailbox = mailbox(c, "mailbox name")?;
            match name {
                "SELECT" => CommandBody::Select { mailbox },
                "EXAMINE" => CommandBody::Examine { mailbox },
                "CREATE" => CommandBody::Create { mailbox },
                "DELETE" => CommandBody::Delete { mailbox },
                "SUBSCRIBE" => CommandBody::Subscribe { mailbox },
                _ => CommandBody::Unsubscribe { mailbox },
            }
        }
        "RENAME" => {
            c.space(name)?;
            let from = mailbox(c, "mailbox name")?;
            c.space(name)?;
            let to = mailbox(c, "new mailbox name")?;
            CommandBody::Rename { from, to }
        }
        "LIST" => CommandBody::List(list(c)?),
        "LSUB" => {
            c.space(name)?;
            let reference = decode_name(&c.astring("LSUB reference")?, "LSUB reference")?;
            c.space(name)?;
            let pattern = decode_name(&c.list_mailbox("LSUB pattern")?, "LSUB pattern")?;
            CommandBody::Lsub { reference, pattern }
        }
        "STATUS" => {
            c.space(name)?;
            let mailbox = mailbox(c, "mailbox name")?;
            c.space(name)?;
            CommandBody::Status {
                mailbox,
                items: status_items(c)?,
            }
        }
        "APPEND" => append(c)?,
        "SEARCH" => {
            c.space(name)?;
            CommandBody::Search(search(c, uid)?)
        }
        "FETCH" => {
            c.space(name)?;
            let set = sequence_set(c)?;
            c.space(name)?;
            CommandBody::Fetch {
                uid,
                set,
                attributes: fetch_attributes(c)?,
            }
        }
        "STORE" => store(c, uid)?,
        "COPY" | "MOVE" => {
            c.space(name)?;
            let set = sequence_set(c)?;
            c.space(name)?;
            let mailbox = mailbox(c, "mailbox name")?;
            if name == "COPY" {
                CommandBody::Copy { uid, set, mailbox }
            } else {
                CommandBody::Move { uid, set, mailbox }
            }
        }
        _ => return bad(format!("Unknown command {name}")),
    };
    Ok(body)
}

/// `AUTHENTICATE SP auth-type [SP (base64 / "=")]` (RFC 4959 3).
fn authenticate(c: &mut Cursor<'_>) -> ParseResult<CommandBody> {
    c.space("AUTHENTICATE")?;
    let mechanism = c.keyword("SASL mechanism")?;
    let initial_response = if c.eat(b' ') {
        if c.eat(b'=') {
            Some(Vec::new())
        } else {
            let text = c.take_while(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
            match base64::decode(text) {
                Some(decoded) if !text.is_empty() => Some(decoded),
                _ => return bad("Invalid base64 in AUTHENTICATE initial response"),
            }
        }
    } else {
        None
    };
    Ok(CommandBody::Authenticate {
        mechanism,
        initial_response,
    })
}

/// `ID SP (NIL / "(" string SP nstring *(SP string SP nstring) ")")`.
fn id_parameters(c: &mut Cursor<'_>) -> ParseResult<Option<IdParameters>> {
    c.space("ID")?;
    if c.eat_word("NIL") {
        return Ok(None);
    }
    c.expect(b'(', "Expected ( or NIL after ID")?;
    let mut pairs = Vec::new();
    loop {
        let field = c.string("ID field")?;
        c.space("ID")?;
        let value = c.nstring("ID value")?;
        if field.len() > ID_FIELD_MAX || value.as_ref().is_some_and(|v| v.len() > ID_VALUE_MAX) {
            return bad("ID field or value too long");
        }
        if pairs.len() == ID_PAIRS_MAX {
            return bad(format!("ID has more than {ID_PAIRS_MAX} fields"));
        }
        pairs.push((
            String::from_utf8_lossy(&field).into_owned(),
            value.map(|v| String::from_utf8_lossy(&v).into_owned()),
        ));
        if c.eat(b')') {
            return Ok(Some(pairs));
        }
        if !c.eat(b' ') {
            return bad("Missing ) in ID parameter list");
        }
    }
}

/// A parenthesised, space-separated list of upper-cased option words,
/// each handed to `each`, which also parses an option's own argument
/// (`STATUS (...)` in LIST RETURN).
fn option_list(
    c: &mut Cursor<'_>,
    what: &str,
    mut each: impl FnMut(&mut Cursor<'_>, &str) -> ParseResult<()>,
) -> ParseResult<()> {
    c.expect(b'(', &format!("Expected ( before {what}"))?;
    if c.eat(b')') {
        return Ok(());
    }
    loop {
        let option = c.keyword(what)?;
        each(c, &option)?;
        if c.eat(b')') {
            return Ok(());
        }
        if !c.eat(b' ') {
            return bad(format!("Missing ) in {what}"));
        }
    }
}

/// `LIST [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]`
/// (RFC 5258 6 with the RFC 6154 and RFC 5819 options).
fn list(c: &mut Cursor<'_>) -> ParseResult<ListCommand> {
    let mut list = ListCommand::default();
    c.space("LIST")?;
    if c.peek() == Some(b'(') {
        option_list(c, "LIST selection options", |_, option| {
            match option {
                "SUBSCRIBED" => list.select_subscribed = true,
                "REMOTE" => list.select_remote = true,
                "RECURSIVEMATCH" => list.select_recursive_match = true,
                "SPECIAL-USE" => list.select_special_use = true,
                _ => return bad(format!("Unknown LIST selection option {option}")),
            }
            Ok(())
        })?;
        // RFC 5258 3.1: RECURSIVEMATCH alone is an error.
        if list.select_recursive_match && !list.select_subscribed && !list.select_special_use {
            return bad("RECURSIVEMATCH needs another LIST selection option");
        }
        c.space("LIST")?;
    }
    list.reference = decode_name(&c.astring("LIST reference")?, "LIST reference")?;
    c.space("LIST")?;
    if c.eat(b'(') {
        loop {
            let pattern = c.list_mailbox("LIST pattern")?;
            list.patterns.push(decode_name(&pattern, "LIST pattern")?);
            if c.eat(b')') {
                break;
            }
            if !c.eat(b' ') {
                return bad("Missing ) in LIST patterns");
            }
        }
    } else {
        let pattern = c.list_mailbox("LIST pattern")?;
        list.patterns.push(decode_name(&pattern, "LIST pattern")?);
    }
    if c.eat(b' ') {
        if !c.eat_word("RETURN ") {
            return bad("Expected RETURN after LIST patterns");
        }
        option_list(c, "LIST return options", |c, option| {
            match option {
                "SUBSCRIBED" => list.return_subscribed = true,
                "CHILDREN" => list.return_children = true,
                "SPECIAL-USE" => list.return_special_use = true,
                "STATUS" => {
                    c.space("LIST RETURN STATUS")?;
                    list.return_status = Some(status_items(c)?);
                }
                _ => return bad(format!("Unknown LIST return option {option}")),
            }
            Ok(())
        })?;
    }
    Ok(list)
}

/// `"(" status-att *(SP status-att) ")"`.
fn status_items(c: &mut Cursor<'_>) -> ParseResult<Vec<StatusItem>> {
    let mut items = Vec::new();
    option_list(c, "STATUS items", |_, item| {
        items.push(match item {
            "MESSAGES" => StatusItem::Messages,
            "RECENT" => StatusItem::Recent,
            "UIDNEXT" => StatusItem::UidNext,
            "UIDVALIDITY" => StatusItem::UidValidity,
            "UNSEEN" => StatusItem::Unseen,
            "DELETED" => StatusItem::Deleted,
            "SIZE" => StatusItem::Size,
            _ => return bad(format!("Unknown STATUS item {item}")),
        });
        Ok(())
    })?;
    if items.is_empty() {
        return bad("Empty STATUS item list");
    }
    Ok(items)
}

/// `APPEND SP mailbox [SP flag-list] [SP date-time] SP literal`.
fn append(c: &mut Cursor<'_>) -> ParseResult<CommandBody> {
    c.space("APPEND")?;
    let mailbox = mailbox(c, "mailbox name")?;
    c.space("APPEND")?;
    let mut flags = Vec::new();
    if c.peek() == Some(b'(') {
        flags = flag_list(c)?;
        c.space("APPEND")?;
    }
    let mut internal_date = None;
    if c.peek() == Some(b'"') {
        internal_date = Some(date_time(c)?);
        c.space("APPEND")?;
    }
    if c.peek() != Some(b'{') {
        return bad("Expected message literal in APPEND");
    }
    let message = c.string("APPEND message")?.into_owned();
    Ok(CommandBody::Append {
        mailbox,
        flags,
        internal_date,
        message,
    })
}

/// `STORE SP sequence-set SP store-att-flags`.
fn store(c: &mut Cursor<'_>, uid: bool) -> ParseResult<CommandBody> {
    c.space("STORE")?;
    let set = sequence_set(c)?;
    c.space("STORE")?;
    let action = if c.eat(b'+') {
        StoreAction::Add
    } else if c.eat(b'-') {
        StoreAction::Remove
    } else {
        StoreAction::Replace
    };
    if !c.eat_word("FLAGS") {
        return bad("Expected FLAGS, +FLAGS or -FLAGS in STORE");
    }
    let silent = c.eat_word(".SILENT");
    c.space("STORE")?;
    let flags = if c.peek() == Some(b'(') {
        flag_list(c)?
    } else {
        let mut flags = vec![flag(c)?];
        while c.eat(b' ') {
            flags.push(flag(c)?);
        }
        flags
    };
    Ok(CommandBody::Store {
        uid,
        set,
        action,
        silent,
        flags,
    })
}
