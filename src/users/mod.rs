//! Local users: who may log in (POP3, IMAP, later SMTP AUTH) and which
//! addresses deliver to whose mailbox. `Users` is one consistent copy of the
//! users file with its lookups and edits; `UsersHandle` is the live view a
//! running server asks. This module must never keep or print a plaintext
//! password, and never let a lookup reveal through its answer or its timing
//! whether a login exists.
//!
//! The file (`[users] file`, TOML) holds one `[[user]]` table per account:
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! addresses = ["alice@localhost", "a.smith@localhost"]
//! ```
//!
//! Names and addresses share one namespace, compared ASCII case-insensitively
//! (see `address` for why): a login is a name or any of a user's addresses,
//! so no string may mean two users. `tern user` rewrites the file whole;
//! comments in it are not kept.

mod address;
mod file;
mod handle;
mod password;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

pub use address::{check_name, fold, AddressError, NameError};
pub use handle::UsersHandle;
pub use password::{return_check_memory_to_the_system, HashError, PasswordError};

/// Everything that can go wrong reading, checking or editing users. Each
/// message is complete on its own (the cause is part of it, not a separate
/// `source`), so logs and the CLI show it whole and once.
#[derive(Debug, Error)]
pub enum UsersError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{}: [[user]] entry {entry} (name {name:?}): {problem}", path.display())]
    Entry {
        path: PathBuf,
        /// 1-based position of the entry in the file.
        entry: usize,
        name: String,
        problem: Box<UsersError>,
    },
    #[error("user name {name:?} {reason}")]
    BadName { name: String, reason: NameError },
    #[error("address {address:?}: {reason}")]
    BadAddress {
        address: String,
        reason: AddressError,
    },
    #[error("{name} is already taken by user {owner}")]
    DuplicateName { name: String, owner: String },
    #[error("address {address} already belongs to user {owner}")]
    AddressTaken { address: String, owner: String },
    #[error("no user {0}")]
    UnknownUser(String),
    #[error("user {name} has no address {address}")]
    NotAnAddress { name: String, address: String },
    #[error("password hash: {0}")]
    BadHash(HashError),
    #[error("{0}")]
    Password(PasswordError),
}

/// One account. The password hash never leaves this module except into
/// the users file.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    name: String,
    password_hash: String,
    addresses: Vec<String>,
}

impl User {
    /// The login name, as written in the file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The addresses delivering to this user, as written in the file.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is left out: Debug output ends up in logs.
        f.debug_struct("User")
            .field("name", &self.name)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

/// One consistent set of users with indexes by folded name and address.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: Vec<User>,
    /// Folded login name -> position in `users`.
    by_name: HashMap<String, usize>,
    /// Folded address -> position in `users`.
    by_address: HashMap<String, usize>,
}

impl Users {
    /// No users.
    pub fn new() -> Users {
        Users::default()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Every user, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.users.iter()
    }

    /// The user with login name `name` (case-insensitive).
    pub fn find(&self, name: &str) -> Option<&User> {
        self.at(self.by_name.get(&address::fold(name)))
    }

    /// The user owning `address`, compared ASCII case-insensitively in both
    /// local part and domain, as mainstream MTAs do.
    pub fn find_by_address(&self, address: &str) -> Option<&User> {
        self.at(self.by_address.get(&address::fold(address)))
    }

    /// The user `login` names: a login name or any of a user's addresses.
    pub fn find_login(&self, login: &str) -> Option<&User> {
        let key = address::fold(login);
        self.at(self.by_name.get(&key).or_else(|| self.by_address.get(&key)))
    }

    /// The user whose login (name or address) is `login` and whose password
    /// is `password`. An unknown login costs one argon2 check all the same,
    /// so response time does not tell which logins exist. CPU-heavy (tens
    /// of milliseconds): call it off any event loop.
    pub fn verify(&self, login: &str, password: &[u8]) -> Option<&User> {
        match self.find_login(login) {
            Some(user) => password::verify(password, &user.password_hash).then_some(user),
            None => {
                password::verify_dummy(password);
                None
            }
        }
    }

    /// Adds a user. A `name` holding `@` is also the user's first address;
    /// `addresses` follow it. Checks everything before hashing the password.
    pub fn add(
        &mut self,
        name: &str,
        password: &[u8],
        addresses: &[String],
    ) -> Result<&User, UsersError> {
        let mut wanted: Vec<String> = Vec::new();
        if name.contains('@') {
            wanted.push(name.to_owned());
        }
        for address in addresses {
            // The name given again as an address is the same address, not a clash.
            if !(name.contains('@') && address.eq_ignore_ascii_case(name)) {
                wanted.push(address.clone());
            }
        }
        let user = User {
            name: name.to_owned(),
            password_hash: String::new(),
            addresses: wanted,
        };
        self.check_new(&user)?;
        let password_hash = password::hash(password).map_err(UsersError::Password)?;
        self.users.push(User {
            password_hash,
            ..user
        });
        self.reindex();
        // The user was pushed just above, so the vector is not empty.
        Ok(self.users.last().expect("a user was just added"))
    }

    /// Removes the user with login name `name`; returns it.
    pub fn remove(&mut self, name: &str) -> Result<User, UsersError> {
        let position = self.position(name)?;
        let user = self.users.remove(position);
        self.reindex();
        Ok(user)
    }

    /// Replaces a user's password with a new hash of `password`.
    pub fn set_password(&mut self, name: &str, password: &[u8]) -> Result<(), UsersError> {
        let position = self.position(name)?;
        let password_hash = password::hash(password).map_err(UsersError::Password)?;
        if let Some(user) = self.users.get_mut(position) {
            user.password_hash = password_hash;
        }
        Ok(())
    }

    /// Gives user `name` another address.
    pub fn add_address(&mut self, name: &str, address: &str) -> Result<(), UsersError> {
        let position = self.position(name)?;
        check_address(address)?;
        let key = address::fold(address);
        let owner = self
            .by_address
            .get(&key)
            .or_else(|| self.by_name.get(&key).filter(|&&p| p != position));
        if let Some(owner) = self.at(owner) {
            return Err(UsersError::AddressTaken {
                address: address.to_owned(),
                owner: owner.name.clone(),
            });
        }
        if let Some(user) = self.users.get_mut(position) {
            user.addresses.push(address.to_owned());
        }
        self.by_address.insert(key, position);
        Ok(())
    }

    /// Takes `address` away from user `name`.
    pub fn remove_address(&mut self, name: &str, address: &str) -> Result<(), UsersError> {
        let position = self.position(name)?;
        let key = address::fold(address);
        let not_theirs = || UsersError::NotAnAddress {
            name: name.to_owned(),
            address: address.to_owned(),
        };
        let user = self.users.get_mut(position).ok_or_else(not_theirs)?;
        let index = user
            .addresses
            .iter()
            .position(|a| address::fold(a) == key)
            .ok_or_else(not_theirs)?;
        user.addresses.remove(index);
        self.by_address.remove(&key);
        Ok(())
    }

    /// Adds a user read from the file, whose hash is stored already.
    fn push_stored(&mut self, user: User) -> Result<(), UsersError> {
        password::check_stored(&user.password_hash).map_err(UsersError::BadHash)?;
        self.check_new(&user)?;
        let position = self.users.len();
        self.by_name.insert(address::fold(&user.name), position);
        for address in &user.addresses {
            self.by_address.insert(address::fold(address), position);
        }
        self.users.push(user);
        Ok(())
    }

    /// Checks a user about to be added against the syntax rules and
    /// against every login already taken.
    fn check_new(&self, user: &User) -> Result<(), UsersError> {
        address::check_name(&user.name).map_err(|reason| UsersError::BadName {
            name: user.name.clone(),
            reason,
        })?;
        if let Some(owner) = self.find_login(&user.name) {
            return Err(UsersError::DuplicateName {
                name: user.name.clone(),
                owner: owner.name.clone(),
            });
        }
        let mut seen: Vec<String> = Vec::with_capacity(user.addresses.len());
        for address in &user.addresses {
            check_address(address)?;
            let key = address::fold(address);
            let owner = if seen.contains(&key) {
                Some(user.name.as_str())
            } else {
                self.find_login(address).map(User::name)
            };
            if let Some(owner) = owner {
                return Err(UsersError::AddressTaken {
                    address: address.clone(),
                    owner: owner.to_owned(),
                });
            }
            seen.push(key);
        }
        Ok(())
    }

    fn position(&self, name: &str) -> Result<usize, UsersError> {
        self.by_name
            .get(&address::fold(name))
            .copied()
            .ok_or_else(|| UsersError::UnknownUser(name.to_owned()))
    }

    fn at(&self, position: Option<&usize>) -> Option<&User> {
        position.and_then(|&p| self.users.get(p))
    }

    /// Rebuilds both indexes after a change that moved positions.
    fn reindex(&mut self) {
        self.by_name.clear();
        self.by_address.clear();
        for (position, user) in self.users.iter().enumerate() {
            self.by_name.insert(address::fold(&user.name), position);
            for address in &user.addresses {
                self.by_address.insert(address::fold(address), position);
            }
        }
    }
}

fn check_address(address: &str) -> Result<(), UsersError> {
    address::check_address(address).map_err(|reason| UsersError::BadAddress {
        address: address.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| a.to_string()).collect()
    }

    fn alice_and_bob() -> Users {
        let mut users = Users::new();
        users
            .add(
                "alice",
                b"alice pw",
                &addresses(&["alice@localhost", "A.Smith@localhost"]),
            )
            .unwrap();
        users
            .add(
                "bob@localhost",
                b"bob pw",
                &addresses(&["robert@localhost"]),
            )
            .unwrap();
        users
    }

    #[test]
    fn lookups_fold_case_in_names_and_addresses() {
        let users = alice_and_bob();
        assert_eq!(users.len(), 2);
        assert_eq!(users.find("ALICE").map(User::name), Some("alice"));
        assert_eq!(
            users.find_by_address("a.smith@LOCALHOST").map(User::name),
            Some("alice")
        );
        assert_eq!(
            users.find_by_address("Bob@Localhost").map(User::name),
            Some("bob@localhost")
        );
        assert_eq!(
            users.find_login("Robert@localhost").map(User::name),
            Some("bob@localhost")
        );
        assert!(
            users.find_by_address("alice").is_none(),
            "a name is not an address"
        );
        assert!(users.find_by_address("carol@localhost").is_none());
        assert!(users.find("carol").is_none());
    }

    #[test]
    fn a_name_with_an_at_is_the_first_address() {
        let users = alice_and_bob();
        let bob = users.find("bob@localhost").unwrap();
        assert_eq!(bob.addresses(), ["bob@localhost", "robert@localhost"]);
        let mut users = Users::new();
        users
            .add("carol@localhost", b"pw", &addresses(&["CAROL@localhost"]))
            .unwrap();
        assert_eq!(
            users.find("carol@localhost").unwrap().addresses(),
            ["carol@localhost"]
        );
    }

    #[test]
    fn verify_accepts_the_name_or_any_address_with_the_right_password() {
        let users = alice_and_bob();
        assert_eq!(
            users.verify("alice", b"alice pw").map(User::name),
            Some("alice")
        );
        assert_eq!(
            users
                .verify("A.SMITH@localhost", b"alice pw")
                .map(User::name),
            Some("alice")
        );
        assert!(users.verify("alice", b"bob pw").is_none());
        assert!(users.verify("alice", b"").is_none());
        assert!(users.verify("carol", b"alice pw").is_none());
        assert!(users.verify("", b"").is_none());
    }

    #[test]
    fn a_login_cannot_mean_two_users() {
        let mut users = alice_and_bob();
        assert!(matches!(
            users.add("Alice", b"pw", &[]),
            Err(UsersError::DuplicateName { owner, .. }) if owner == "alice"
        ));
        assert!(matches!(
            users.add("a.smith@localhost", b"pw", &[]),
            Err(UsersError::DuplicateName { owner, .. }) if owner == "alice"
        ));
        assert!(matches!(
            users.add("carol", b"pw", &addresses(&["Robert@localhost"])),
            Err(UsersError::AddressTaken { owner, .. }) if owner == "bob@localhost"
        ));
        assert!(matches!(
            users.add("carol", b"pw", &addresses(&["c@localhost", "C@localhost"])),
            Err(UsersError::AddressTaken { owner, .. }) if owner == "carol"
        ));
        assert_eq!(users.len(), 2, "failed adds change nothing");
    }

    #[test]
    fn bad_input_is_refused_before_anything_changes() {
        let mut users = alice_and_bob();
        assert!(matches!(
            users.add("car ol", b"pw", &[]),
            Err(UsersError::BadName {
                reason: NameError::Character,
                ..
            })
        ));
        assert!(matches!(
            users.add("carol", b"pw", &addresses(&["carol"])),
            Err(UsersError::BadAddress {
                reason: AddressError::NoAt,
                ..
            })
        ));
        assert!(matches!(
            users.add("carol", b"", &[]),
            Err(UsersError::Password(PasswordError::Empty))
        ));
        assert!(matches!(
            users.add_address("alice", "x@"),
            Err(UsersError::BadAddress { .. })
        ));
        assert_eq!(users.len(), 2);
        assert_eq!(users.find("alice").unwrap().addresses().len(), 2);
    }

    #[test]
    fn remove_drops_the_user_and_every_address() {
        let mut users = alice_and_bob();
        let alice = users.remove("ALICE").unwrap();
        assert_eq!(alice.name(), "alice");
        assert!(users.find("alice").is_none());
        assert!(users.find_by_address("alice@localhost").is_none());
        assert_eq!(
            users.find_by_address("robert@localhost").map(User::name),
            Some("bob@localhost"),
            "positions after the removed user are reindexed"
        );
        assert!(matches!(
            users.remove("alice"),
            Err(UsersError::UnknownUser(name)) if name == "alice"
        ));
        users
            .add("alice", b"pw", &addresses(&["alice@localhost"]))
            .unwrap();
    }

    #[test]
    fn set_password_replaces_the_old_one() {
        let mut users = alice_and_bob();
        users.set_password("alice", b"new pw").unwrap();
        assert!(users.verify("alice", b"new pw").is_some());
        assert!(users.verify("alice", b"alice pw").is_none());
        assert!(matches!(
            users.set_password("alice", b"a\nb"),
            Err(UsersError::Password(PasswordError::Character))
        ));
        assert!(
            users.verify("alice", b"new pw").is_some(),
            "a refused password changes nothing"
        );
        assert!(matches!(
            users.set_password("carol", b"pw"),
            Err(UsersError::UnknownUser(_))
        ));
    }

    #[test]
    fn addresses_are_added_and_removed() {
        let mut users = alice_and_bob();
        users.add_address("alice", "Ali@localhost").unwrap();
        assert_eq!(
            users.find_by_address("ali@LOCALHOST").map(User::name),
            Some("alice")
        );
        assert!(matches!(
            users.add_address("alice", "ali@localhost"),
            Err(UsersError::AddressTaken { owner, .. }) if owner == "alice"
        ));
        assert!(matches!(
            users.add_address("alice", "bob@localhost"),
            Err(UsersError::AddressTaken { owner, .. }) if owner == "bob@localhost"
        ));
        assert!(matches!(
            users.add_address("carol", "c@localhost"),
            Err(UsersError::UnknownUser(_))
        ));
        users.remove_address("alice", "ALI@localhost").unwrap();
        assert!(users.find_by_address("ali@localhost").is_none());
        assert!(matches!(
            users.remove_address("alice", "robert@localhost"),
            Err(UsersError::NotAnAddress { .. })
        ));
        assert_eq!(
            users.find_by_address("robert@localhost").map(User::name),
            Some("bob@localhost"),
            "a refused removal leaves the owner's address alone"
        );
        // A name that is an address may lose the address and take it back.
        users
            .remove_address("bob@localhost", "bob@localhost")
            .unwrap();
        assert!(users.find_by_address("bob@localhost").is_none());
        assert!(users.verify("bob@localhost", b"bob pw").is_some());
        assert!(matches!(
            users.add_address("alice", "bob@localhost"),
            Err(UsersError::AddressTaken { owner, .. }) if owner == "bob@localhost"
        ));
        users.add_address("bob@localhost", "bob@localhost").unwrap();
        assert!(users.find_by_address("bob@localhost").is_some());
    }

    #[test]
    fn debug_output_leaves_the_hash_out() {
        let users = alice_and_bob();
        let text = format!("{:?}", users.find("alice").unwrap());
        assert!(text.contains("alice@localhost"), "{text}");
        assert!(!text.contains("argon2"), "{text}");
    }
}
