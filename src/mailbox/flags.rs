//! Message flags: the five IMAP system flags as a bitset, keywords as
//! validated case-insensitive atoms, and the per-user keyword table that
//! stores a message's keywords as a 64-bit set.
//!
//! This module only represents and converts flags; it must never decide
//! which messages change (the store does) nor do I/O.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::hash::{Hash, Hasher};

use super::MailboxError;

/// Keywords a user's mailbox may define: they are stored as a u64 set.
pub const KEYWORDS_MAX: usize = 64;
/// Longest keyword in bytes. RFC 3501 sets no limit; this bounds the
/// keyword table and every FLAGS response.
pub const KEYWORD_MAX_LEN: usize = 100;

/// The RFC 3501 2.3.2 system flags (\Recent is not kept: IMAP4rev2,
/// RFC 9051, dropped it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SystemFlags(u8);

const SYSTEM_NAMES: [(SystemFlags, &str); 5] = [
    (SystemFlags::SEEN, "\\Seen"),
    (SystemFlags::ANSWERED, "\\Answered"),
    (SystemFlags::FLAGGED, "\\Flagged"),
    (SystemFlags::DELETED, "\\Deleted"),
    (SystemFlags::DRAFT, "\\Draft"),
];

impl SystemFlags {
    pub const SEEN: SystemFlags = SystemFlags(1);
    pub const ANSWERED: SystemFlags = SystemFlags(2);
    pub const FLAGGED: SystemFlags = SystemFlags(4);
    pub const DELETED: SystemFlags = SystemFlags(8);
    pub const DRAFT: SystemFlags = SystemFlags(16);
    const ALL_BITS: u8 = 31;

    pub const fn empty() -> SystemFlags {
        SystemFlags(0)
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    /// The flags of a stored bit pattern, if every bit names a flag.
    pub fn from_bits(bits: u8) -> Option<SystemFlags> {
        (bits & !Self::ALL_BITS == 0).then_some(SystemFlags(bits))
    }

    pub fn contains(self, other: SystemFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: SystemFlags) {
        self.0 |= other.0;
    }

    pub fn remove(&mut self, other: SystemFlags) {
        self.0 &= !other.0;
    }

    /// The flag named `name` (`\Seen`, any case).
    pub fn from_name(name: &str) -> Option<SystemFlags> {
        SYSTEM_NAMES
            .iter()
            .find(|(_, known)| known.eq_ignore_ascii_case(name))
            .map(|(flag, _)| *flag)
    }

    /// Names of the set flags, in RFC order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        SYSTEM_NAMES
            .into_iter()
            .filter(move |(flag, _)| self.contains(*flag))
            .map(|(_, name)| name)
    }
}

/// A keyword flag: an RFC 3501 atom (so never starting with a backslash),
/// compared case-insensitively, spelled as first given.
#[derive(Clone)]
pub struct Keyword(String);

/// RFC 3501 9 ATOM-CHAR: any CHAR except atom-specials ("(" / ")" / "{" /
/// SP / CTL / list-wildcards / quoted-specials / resp-specials).
fn is_atom_char(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !b"(){%*\"\\]".contains(&b)
}

impl Keyword {
    pub fn new(name: &str) -> Result<Keyword, MailboxError> {
        let reason = if name.is_empty() {
            "empty"
        } else if name.len() > KEYWORD_MAX_LEN {
            "longer than 100 bytes"
        } else if !name.bytes().all(is_atom_char) {
            "not an atom"
        } else {
            return Ok(Keyword(name.to_owned()));
        };
        Err(MailboxError::InvalidFlag {
            name: name.to_owned(),
            reason,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Keyword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keyword({:?})", self.0)
    }
}

impl PartialEq for Keyword {
    fn eq(&self, other: &Keyword) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl Eq for Keyword {}

impl Ord for Keyword {
    fn cmp(&self, other: &Keyword) -> Ordering {
        let mine = self.0.bytes().map(|b| b.to_ascii_lowercase());
        mine.cmp(other.0.bytes().map(|b| b.to_ascii_lowercase()))
    }
}

impl PartialOrd for Keyword {
    fn partial_cmp(&self, other: &Keyword) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash for Keyword {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for b in self.0.bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
    }
}

/// The flags of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub system: SystemFlags,
    pub keywords: BTreeSet<Keyword>,
}

impl Flags {
    /// Adds a flag by its wire name: `\Seen` etc. (any case) or a keyword.
    /// `\Recent` and other backslash names are refused.
    pub fn insert_name(&mut self, name: &str) -> Result<(), MailboxError> {
        if name.starts_with('\\') {
            let flag = SystemFlags::from_name(name).ok_or_else(|| MailboxError::InvalidFlag {
                name: name.to_owned(),
                reason: "not a settable system flag",
            })?;
            self.system.insert(flag);
        } else {
            self.keywords.insert(Keyword::new(name)?);
        }
        Ok(())
    }

    /// Every flag's wire name: system flags first, then keywords.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        let system = self.system.names().map(|name| -> &str { name });
        system.chain(self.keywords.iter().map(Keyword::as_str))
    }
}

/// How STORE combines given flags with a message's flags (RFC 3501 6.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    Add,
    Remove,
    Replace,
}

/// The keywords a user's mailbox has defined; a message stores bit `i`
/// for keyword `i`. Keywords are never undefined, so bits stay valid.
#[derive(Debug, Default, Clone)]
pub(crate) struct KeywordTable {
    names: Vec<Keyword>,
}

impl KeywordTable {
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn all(&self) -> &[Keyword] {
        &self.names
    }

    /// Defines the keyword at the next index (journal replay checks the
    /// index it recorded).
    pub(crate) fn define(&mut self, keyword: Keyword) -> Option<usize> {
        if self.names.len() >= KEYWORDS_MAX || self.names.contains(&keyword) {
            return None;
        }
        self.names.push(keyword);
        Some(self.names.len() - 1)
    }

    fn index(&self, keyword: &Keyword, planned: &[Keyword]) -> Option<usize> {
        self.names
            .iter()
            .chain(planned)
            .position(|known| known == keyword)
    }

    /// The bit set of `keywords`, adding those not yet defined to
    /// `planned` (they get the indexes after the table's end).
    pub(crate) fn plan_bits(
        &self,
        keywords: &BTreeSet<Keyword>,
        planned: &mut Vec<Keyword>,
    ) -> Result<u64, MailboxError> {
        let mut bits = 0u64;
        for keyword in keywords {
            let index = match self.index(keyword, planned) {
                Some(index) => index,
                None => {
                    if self.names.len() + planned.len() >= KEYWORDS_MAX {
                        return Err(MailboxError::TooManyKeywords {
                            limit: KEYWORDS_MAX,
                        });
                    }
                    planned.push(keyword.clone());
                    self.names.len() + planned.len() - 1
                }
            };
            bits |= 1u64 << index;
        }
        Ok(bits)
    }

    /// The bits of those `keywords` already defined (others cannot be set
    /// on any message, so removing them changes nothing).
    pub(crate) fn known_bits(&self, keywords: &BTreeSet<Keyword>) -> u64 {
        keywords
            .iter()
            .filter_map(|keyword| self.index(keyword, &[]))
            .fold(0, |bits, index| bits | (1u64 << index))
    }

    pub(crate) fn resolve(&self, bits: u64) -> BTreeSet<Keyword> {
        self.names
            .iter()
            .enumerate()
            .filter(|(index, _)| bits & (1u64 << index) != 0)
            .map(|(_, keyword)| keyword.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keywords(names: &[&str]) -> BTreeSet<Keyword> {
        names.iter().map(|n| Keyword::new(n).unwrap()).collect()
    }

    #[test]
    fn system_flags_by_name_and_bits() {
        let mut flags = Flags::default();
        flags.insert_name("\\SEEN").unwrap();
        flags.insert_name("\\Deleted").unwrap();
        flags.insert_name("$Forwarded").unwrap();
        assert!(flags.system.contains(SystemFlags::SEEN));
        assert!(!flags.system.contains(SystemFlags::DRAFT));
        assert_eq!(
            flags.names().collect::<Vec<_>>(),
            ["\\Seen", "\\Deleted", "$Forwarded"]
        );
        assert_eq!(SystemFlags::from_bits(31).map(SystemFlags::bits), Some(31));
        assert!(SystemFlags::from_bits(32).is_none());
    }

    #[test]
    fn bad_flags_are_refused() {
        let mut flags = Flags::default();
        for bad in [
            "\\Recent", "\\Bogus", "", "a b", "x(", "q\"", "br]", "st*", "%", "\u{e9}",
        ] {
            assert!(
                matches!(
                    flags.insert_name(bad),
                    Err(MailboxError::InvalidFlag { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(Keyword::new(&"k".repeat(KEYWORD_MAX_LEN + 1)).is_err());
        assert_eq!(flags, Flags::default());
    }

    #[test]
    fn keywords_compare_without_case() {
        assert_eq!(Keyword::new("Junk").unwrap(), Keyword::new("junk").unwrap());
        assert_eq!(keywords(&["a", "A", "b"]).len(), 2);
    }

    #[test]
    fn table_plans_bits_and_enforces_the_limit() {
        let mut table = KeywordTable::default();
        table.define(Keyword::new("one").unwrap()).unwrap();
        let mut planned = Vec::new();
        let bits = table
            .plan_bits(&keywords(&["ONE", "two"]), &mut planned)
            .unwrap();
        assert_eq!(bits, 0b11);
        assert_eq!(planned, vec![Keyword::new("two").unwrap()]);
        assert_eq!(table.known_bits(&keywords(&["one", "zzz"])), 1);
        assert_eq!(table.resolve(1), keywords(&["one"]));

        let mut full = KeywordTable::default();
        for i in 0..KEYWORDS_MAX {
            full.define(Keyword::new(&format!("k{i}")).unwrap())
                .unwrap();
        }
        assert!(full.define(Keyword::new("more").unwrap()).is_none());
        let err = full
            .plan_bits(&keywords(&["more"]), &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, MailboxError::TooManyKeywords { limit: 64 }));
        assert_eq!(
            full.plan_bits(&keywords(&["k63"]), &mut Vec::new())
                .unwrap(),
            1u64 << 63
        );
    }
}
