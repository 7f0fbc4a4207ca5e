//! Names: folder names (validation, INBOX canonical form, hierarchy with
//! '/' as delimiter, SPECIAL-USE by name) and the journal file name of a
//! user.
//!
//! This module only judges and transforms strings; it must never look at
//! which folders exist or touch files.

use super::MailboxError;

/// The hierarchy delimiter announced to clients (RFC 3501 6.3.8 LIST).
pub const HIERARCHY_DELIMITER: char = '/';
/// Longest folder name in bytes. RFC 3501 sets no limit; 255 keeps names
/// within what every client and file system handles.
pub const FOLDER_NAME_MAX: usize = 255;
/// Longest user name in bytes: the journal file name is its hex form plus
/// a suffix, and file names are limited to 255 bytes (NAME_MAX).
pub const USER_NAME_MAX: usize = 120;
/// The case-insensitive primary mailbox name (RFC 3501 5.1).
pub const INBOX: &str = "INBOX";
/// Folders every user has from the first use on.
pub(crate) const DEFAULT_FOLDERS: [&str; 5] = [INBOX, "Sent", "Drafts", "Trash", "Junk"];

const JOURNAL_SUFFIX: &str = ".journal";
const TEMP_SUFFIX: &str = ".journal.tmp";

/// SPECIAL-USE attributes (RFC 6154) of the default folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialUse {
    Sent,
    Drafts,
    Trash,
    Junk,
}

impl SpecialUse {
    /// The attribute as LIST shows it (RFC 6154 2).
    pub fn attribute(self) -> &'static str {
        match self {
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Trash => "\\Trash",
            SpecialUse::Junk => "\\Junk",
        }
    }

    /// The attribute of a folder, decided by its exact name: a renamed
    /// Trash stops being the trash, a recreated one is it again.
    pub fn of(folder: &str) -> Option<SpecialUse> {
        match folder {
            "Sent" => Some(SpecialUse::Sent),
            "Drafts" => Some(SpecialUse::Drafts),
            "Trash" => Some(SpecialUse::Trash),
            "Junk" => Some(SpecialUse::Junk),
            _ => None,
        }
    }
}

fn invalid(name: &str, reason: &'static str) -> MailboxError {
    MailboxError::InvalidFolderName {
        name: name.to_owned(),
        reason,
    }
}

/// Validates a folder name and returns its canonical form: a first level
/// spelled INBOX in any case becomes `INBOX`, everything else is kept
/// as given (names are case-sensitive).
pub fn canonical_folder(name: &str) -> Result<String, MailboxError> {
    if name.is_empty() {
        return Err(invalid(name, "empty"));
    }
    if name.len() > FOLDER_NAME_MAX {
        return Err(invalid(name, "longer than 255 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(name, "control character"));
    }
    // RFC 3501 6.3.8: '*' and '%' are LIST wildcards; a name holding
    // them could not be listed unambiguously.
    if name.contains(['*', '%']) {
        return Err(invalid(name, "list wildcard '*' or '%'"));
    }
    if name.starts_with(HIERARCHY_DELIMITER) || name.ends_with(HIERARCHY_DELIMITER) {
        return Err(invalid(name, "leading or trailing hierarchy delimiter"));
    }
    if name.split(HIERARCHY_DELIMITER).any(str::is_empty) {
        return Err(invalid(name, "empty hierarchy level"));
    }
    let (first, rest) = match name.split_once(HIERARCHY_DELIMITER) {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    };
    if !first.eq_ignore_ascii_case(INBOX) {
        return Ok(name.to_owned());
    }
    Ok(match rest {
        Some(rest) => format!("{INBOX}{HIERARCHY_DELIMITER}{rest}"),
        None => INBOX.to_owned(),
    })
}

/// The superior names of a canonical folder name, outermost first
/// (`a/b/c` gives `a`, `a/b`).
pub(crate) fn superiors(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices(HIERARCHY_DELIMITER)
        .filter_map(move |(at, _)| name.get(..at))
}

/// Whether `name` lies strictly below `ancestor` in the hierarchy.
pub(crate) fn is_inferior(name: &str, ancestor: &str) -> bool {
    name.strip_prefix(ancestor)
        .is_some_and(|rest| rest.starts_with(HIERARCHY_DELIMITER))
}

/// `name` (inside `from`'s subtree, or `from` itself) moved under `to`.
pub(crate) fn reparent(name: &str, from: &str, to: &str) -> String {
    match name.strip_prefix(from) {
        Some(rest) => format!("{to}{rest}"),
        None => name.to_owned(),
    }
}

/// Validates a user name for use as a journal name.
pub(crate) fn check_user(name: &str) -> Result<(), MailboxError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > USER_NAME_MAX {
        "longer than 120 bytes"
    } else {
        return Ok(());
    };
    Err(MailboxError::InvalidUserName {
        name: name.to_owned(),
        reason,
    })
}

fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The journal file name of a user: lowercase hex of the name's bytes,
/// so any name (slashes, dots, NULs) is a safe, distinct file name.
pub(crate) fn journal_file(user: &str) -> String {
    format!("{}{JOURNAL_SUFFIX}", hex(user))
}

/// The file a compaction writes before renaming it over the journal.
pub(crate) fn journal_temp_file(user: &str) -> String {
    format!("{}{TEMP_SUFFIX}", hex(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_is_canonical_in_any_case_and_other_names_keep_theirs() {
        assert_eq!(canonical_folder("inbox").unwrap(), "INBOX");
        assert_eq!(canonical_folder("InBoX/Work").unwrap(), "INBOX/Work");
        assert_eq!(canonical_folder("Inboxes").unwrap(), "Inboxes");
        assert_eq!(canonical_folder("sent").unwrap(), "sent");
        assert_eq!(canonical_folder("Ärger/2026").unwrap(), "Ärger/2026");
    }

    #[test]
    fn bad_names_are_refused_with_reasons() {
        let long = "a".repeat(FOLDER_NAME_MAX + 1);
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a*",
            "b%",
            "x\ny",
            "nul\0",
            long.as_str(),
        ] {
            assert!(
                matches!(
                    canonical_folder(bad),
                    Err(MailboxError::InvalidFolderName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(canonical_folder(&"a".repeat(FOLDER_NAME_MAX)).is_ok());
    }

    #[test]
    fn hierarchy_helpers() {
        assert_eq!(superiors("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(superiors("a").count(), 0);
        assert!(is_inferior("a/b", "a"));
        assert!(!is_inferior("ab", "a"));
        assert!(!is_inferior("a", "a"));
        assert_eq!(reparent("a/b", "a", "x/y"), "x/y/b");
        assert_eq!(reparent("a", "a", "z"), "z");
    }

    #[test]
    fn special_use_by_exact_name() {
        assert_eq!(SpecialUse::of("Trash"), Some(SpecialUse::Trash));
        assert_eq!(SpecialUse::of("trash"), None);
        assert_eq!(SpecialUse::of("Sent/2025"), None);
        assert_eq!(SpecialUse::Junk.attribute(), "\\Junk");
    }

    #[test]
    fn user_names_map_to_distinct_safe_files() {
        assert_eq!(journal_file("a/b"), "612f62.journal");
        assert_ne!(journal_file("ab"), journal_file("AB"));
        assert!(check_user("").is_err());
        assert!(check_user(&"u".repeat(USER_NAME_MAX + 1)).is_err());
        assert!(check_user(&"u".repeat(USER_NAME_MAX)).is_ok());
        assert!(journal_temp_file(&"u".repeat(USER_NAME_MAX)).len() <= 255);
    }
}
