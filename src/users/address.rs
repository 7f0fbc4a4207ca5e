//! What a login name and a mail address in the users file may look like, and
//! the one case folding every lookup uses. Pure functions: this module must
//! never touch files or passwords.
//!
//! Case: RFC 5321 2.4 lets a server treat local parts as case-sensitive, but
//! every mainstream MTA (Postfix, Exim, Sendmail, Exchange, Gmail) folds
//! them, and senders routinely change case; a user who must tell `Bob@` from
//! `bob@` does not exist. tern folds both names and addresses to ASCII lower
//! case for matching and uniqueness, and keeps them as written for display.
//!
//! Addresses are restricted to ASCII dot-atom local parts and ASCII host
//! names: the forms a local mailbox is given in practice, and the only ones
//! whose folding is unambiguous. Quoted local parts, address literals and
//! UTF-8 (RFC 6531) addresses are refused here, so they never match a user.

use thiserror::Error;

/// Longest local part (RFC 5321 4.5.3.1.1).
const LOCAL_PART_MAX: usize = 64;
/// Longest domain (RFC 5321 4.5.3.1.2).
const DOMAIN_MAX: usize = 255;
/// Longest label of a domain (RFC 1035 2.3.4).
const DOMAIN_LABEL_MAX: usize = 63;
/// Longest address: a 256-octet path (RFC 5321 4.5.3.1.3) less its `<` `>`.
const ADDRESS_MAX: usize = 254;
/// Longest login name: a name may be an address, so the same bound.
const NAME_MAX: usize = ADDRESS_MAX;

/// Why a string is not an address a local user can own.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddressError {
    #[error("not of the form local-part@domain")]
    NoAt,
    #[error("longer than {ADDRESS_MAX} octets (RFC 5321 4.5.3.1.3)")]
    TooLong,
    #[error("local part is empty, longer than {LOCAL_PART_MAX} octets (RFC 5321 4.5.3.1.1) or not a dot-atom of ASCII letters, digits and !#$%&'*+-/=?^_`{{|}}~")]
    LocalPart,
    #[error("domain is not a host name of ASCII letters, digits and hyphens (RFC 1035 2.3.1)")]
    Domain,
}

/// Why a string cannot be a login name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("longer than {NAME_MAX} octets")]
    TooLong,
    #[error("may hold only visible ASCII characters (no spaces, controls or UTF-8)")]
    Character,
    #[error("contains '@' but is not a valid address: {0}")]
    Address(AddressError),
}

/// The form every lookup and uniqueness check compares.
pub fn fold(text: &str) -> String {
    text.to_ascii_lowercase()
}

/// Checks `address` is `dot-atom "@" host-name` within RFC 5321 limits.
pub fn check_address(address: &str) -> Result<(), AddressError> {
    if address.len() > ADDRESS_MAX {
        return Err(AddressError::TooLong);
    }
    let (local, domain) = address.rsplit_once('@').ok_or(AddressError::NoAt)?;
    if !is_dot_atom(local) {
        return Err(AddressError::LocalPart);
    }
    if !is_host_name(domain) {
        return Err(AddressError::Domain);
    }
    Ok(())
}

/// Checks `name` can be a login: visible ASCII, bounded, and a valid address
/// when it contains `@` (such a name is also the user's first address).
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong);
    }
    // Visible ASCII only: every protocol carries such a name unquoted or in
    // a simple quoted string (POP3 USER, IMAP LOGIN, SASL PLAIN).
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(NameError::Character);
    }
    if name.contains('@') {
        check_address(name).map_err(NameError::Address)?;
    }
    Ok(())
}

/// `dot-atom-text` (RFC 5322 3.2.3), ASCII only, within the local-part limit.
fn is_dot_atom(local: &str) -> bool {
    let is_atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b);
    !local.is_empty()
        && local.len() <= LOCAL_PART_MAX
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

/// A host name (RFC 1035 2.3.1 with RFC 1123 2.1's leading digits).
fn is_host_name(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= DOMAIN_MAX
        && domain.split('.').all(|label| {
            let bytes = label.as_bytes();
            let let_dig = |b: &u8| b.is_ascii_alphanumeric();
            !bytes.is_empty()
                && bytes.len() <= DOMAIN_LABEL_MAX
                && bytes.first().is_some_and(let_dig)
                && bytes.last().is_some_and(let_dig)
                && bytes.iter().all(|b| let_dig(b) || *b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_addresses_pass() {
        for good in [
            "alice@localhost",
            "a.smith@example.org",
            "x+tag@mail-1.example.co.uk",
            "o'neil@EXAMPLE.com",
            "1@2.example",
        ] {
            assert_eq!(check_address(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn malformed_addresses_fail_with_the_reason() {
        assert_eq!(check_address("alice"), Err(AddressError::NoAt));
        assert_eq!(check_address("@localhost"), Err(AddressError::LocalPart));
        assert_eq!(
            check_address("a..b@localhost"),
            Err(AddressError::LocalPart)
        );
        assert_eq!(check_address(".a@localhost"), Err(AddressError::LocalPart));
        assert_eq!(check_address("a b@localhost"), Err(AddressError::LocalPart));
        assert_eq!(
            check_address("\"a\"@localhost"),
            Err(AddressError::LocalPart)
        );
        assert_eq!(check_address("a@b@localhost"), Err(AddressError::LocalPart));
        assert_eq!(check_address("é@localhost"), Err(AddressError::LocalPart));
        assert_eq!(check_address("alice@"), Err(AddressError::Domain));
        assert_eq!(check_address("alice@-x.org"), Err(AddressError::Domain));
        assert_eq!(check_address("alice@x..org"), Err(AddressError::Domain));
        assert_eq!(
            check_address("alice@[127.0.0.1]"),
            Err(AddressError::Domain)
        );
        assert_eq!(
            check_address("alice@exa_mple.org"),
            Err(AddressError::Domain)
        );
    }

    #[test]
    fn length_limits_are_enforced() {
        let local_64 = "a".repeat(64);
        assert_eq!(check_address(&format!("{local_64}@localhost")), Ok(()));
        let local_65 = "a".repeat(65);
        assert_eq!(
            check_address(&format!("{local_65}@localhost")),
            Err(AddressError::LocalPart)
        );
        let label_64 = "b".repeat(64);
        assert_eq!(
            check_address(&format!("a@{label_64}.org")),
            Err(AddressError::Domain)
        );
        let long_domain = vec!["c".repeat(63); 4].join(".");
        assert_eq!(
            check_address(&format!("a@{long_domain}")),
            Err(AddressError::TooLong)
        );
    }

    #[test]
    fn names_are_visible_ascii_and_addresses_when_they_hold_an_at() {
        assert_eq!(check_name("alice"), Ok(()));
        assert_eq!(check_name("alice@localhost"), Ok(()));
        assert_eq!(check_name("Bob_2"), Ok(()));
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name("al ice"), Err(NameError::Character));
        assert_eq!(check_name("al\0ice"), Err(NameError::Character));
        assert_eq!(check_name("älice"), Err(NameError::Character));
        assert_eq!(check_name(&"n".repeat(255)), Err(NameError::TooLong));
        assert_eq!(
            check_name("alice@"),
            Err(NameError::Address(AddressError::Domain))
        );
    }

    #[test]
    fn folding_is_ascii_lower_case() {
        assert_eq!(fold("Alice@LocalHost"), "alice@localhost");
        assert_eq!(fold("alice"), "alice");
    }
}
