//! Password hashing and checking with argon2id, PHC strings in the users
//! file. Must never store, log or compare a plaintext password anywhere but
//! inside argon2, and never let a stored hash demand unbounded work.

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use thiserror::Error;

/// Cost of new hashes: OWASP's argon2id recommendation (19 MiB, t=2, p=1),
/// which is the argon2 crate's default.
#[cfg(not(test))]
const PARAMS: Params = Params::DEFAULT;
/// Unit tests hash with the cheapest parameters argon2 allows: debug builds
/// hash the OWASP cost in about half a second. Never compiled into tern.
#[cfg(test)]
const PARAMS: Params = match Params::new(
    Params::MIN_M_COST,
    Params::MIN_T_COST,
    Params::MIN_P_COST,
    None,
) {
    Ok(params) => params,
    Err(_) => panic!("argon2's minimum parameters are valid"),
};

/// A hash of a password nobody has, with the OWASP parameters of new hashes:
/// checked when a login is unknown so that it costs what a known login costs.
const DUMMY_HASH_OWASP: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$dGVybi1kdW1teS1zYWx0IQ$EYRFKkDX3pOIXEGAcz+yliHWp7wp2ZnqZ3E4jxhgwVU";
#[cfg(not(test))]
const DUMMY_HASH: &str = DUMMY_HASH_OWASP;
/// The same with the unit tests' cheap parameters.
#[cfg(test)]
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=8,t=1,p=1$dGVybi1kdW1teS1zYWx0IQ$XfpIIOzcwiFA0qozKKgGk2Swk3YYBWYIBwfaDZ7dq54";

/// Largest memory cost a stored hash may ask for, in KiB: 2 GiB, the first
/// recommended option of RFC 9106 4. Larger values would let an edited
/// users file exhaust memory on every login.
const MEMORY_COST_MAX_KIB: u32 = 2 * 1024 * 1024;
/// Largest number of passes a stored hash may ask for (RFC 9106 4 suggests
/// 1 to 3; argon2's own default is 2).
const TIME_COST_MAX: u32 = 16;
/// Largest number of lanes a stored hash may ask for (RFC 9106 4 suggests
/// 4; lanes run one after another here, so each one is pure cost).
const PARALLELISM_MAX: u32 = 16;
/// Longest password accepted when setting one: longer ones are almost
/// certainly a file piped by mistake.
const PASSWORD_MAX: usize = 1024;

/// Why a stored hash is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    #[error("not a PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash): {0}")]
    Syntax(String),
    #[error("algorithm {0} is not argon2id")]
    Algorithm(String),
    #[error("argon2 parameters are invalid: {0}")]
    Params(String),
    #[error("argon2 parameters m={m},t={t},p={p} exceed the limits m<={MEMORY_COST_MAX_KIB},t<={TIME_COST_MAX},p<={PARALLELISM_MAX}")]
    TooCostly { m: u32, t: u32, p: u32 },
    #[error("has no salt or no hash output")]
    Incomplete,
}

/// Why a password cannot be set.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PasswordError {
    #[error("password is empty")]
    Empty,
    #[error("password is longer than {PASSWORD_MAX} bytes")]
    TooLong,
    #[error("password contains NUL, CR or LF, which no POP3, IMAP or SASL client can send")]
    Character,
    #[error("hashing failed: {0}")]
    Hashing(String),
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, PARAMS)
}

/// Hashes `password` with a fresh random salt from the operating system;
/// returns the PHC string to store.
pub fn hash(password: &[u8]) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    if password.len() > PASSWORD_MAX {
        return Err(PasswordError::TooLong);
    }
    // SASL PLAIN separates fields with NUL, POP3 and IMAP lines end at CRLF:
    // a password holding one of those could be stored but never used.
    if password.iter().any(|b| matches!(b, 0 | b'\r' | b'\n')) {
        return Err(PasswordError::Character);
    }
    hasher()
        .hash_password(password)
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordError::Hashing(e.to_string()))
}

/// Checks that a stored PHC string is an argon2id hash within the cost
/// limits, so that `verify` can never be asked for unbounded work.
pub fn check_stored(stored: &str) -> Result<(), HashError> {
    let parsed = PasswordHash::new(stored).map_err(|e| HashError::Syntax(e.to_string()))?;
    if parsed.algorithm.as_str() != argon2::ARGON2ID_IDENT.as_str() {
        return Err(HashError::Algorithm(parsed.algorithm.to_string()));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(HashError::Incomplete);
    }
    let params = Params::try_from(&parsed).map_err(|e| HashError::Params(e.to_string()))?;
    let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
    if m > MEMORY_COST_MAX_KIB || t > TIME_COST_MAX || p > PARALLELISM_MAX {
        return Err(HashError::TooCostly { m, t, p });
    }
    Ok(())
}

/// True when `password` matches the stored PHC string. A hash that does not
/// parse matches nothing (`Users::load` refuses such files anyway).
pub fn verify(password: &[u8], stored: &str) -> bool {
    hasher().verify_password(password, stored).is_ok()
}

/// Size from which the allocator maps memory for itself alone and gives it
/// back to the system when freed. glibc starts at 128 KiB but raises the
/// bound to the size of each mapped block freed, up to 32 MiB: after the
/// first password check, argon2's 19 MiB working memory comes from the
/// heap instead, freed memory there stays resident, and small long-lived
/// allocations made between checks (a mailbox loaded at login) split it so
/// that the next check needs fresh memory. tern grew by about 19 MiB per
/// user that logged in (past 1 GiB with 100 mail clients). A fixed bound
/// turns the raising off.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1024 * 1024;

/// Makes the memory of every password check go back to the system when the
/// check ends (see `MMAP_THRESHOLD`). Call once at start, before threads
/// allocate. Does nothing where the C library is not glibc.
pub fn return_check_memory_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tuning value of glibc's allocator, under
    // the allocator's own locks; no memory is handed over.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Spends the work of one `verify` on a hash nobody can match.
pub fn verify_dummy(password: &[u8]) {
    // The result is meaningless by construction: only the time spent counts.
    let _ = verify(password, DUMMY_HASH);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let stored = hash(b"correct horse").unwrap();
        assert!(stored.starts_with("$argon2id$v=19$"), "{stored}");
        assert_eq!(check_stored(&stored), Ok(()));
        assert!(verify(b"correct horse", &stored));
        assert!(!verify(b"correct horsf", &stored));
        assert!(!verify(b"", &stored));
    }

    #[test]
    fn salts_are_random() {
        assert_ne!(hash(b"same").unwrap(), hash(b"same").unwrap());
    }

    #[test]
    fn unusable_passwords_are_refused() {
        assert_eq!(hash(b""), Err(PasswordError::Empty));
        assert_eq!(hash(&[b'x'; 1025]), Err(PasswordError::TooLong));
        assert_eq!(hash(b"a\nb"), Err(PasswordError::Character));
        assert_eq!(hash(b"a\rb"), Err(PasswordError::Character));
        assert_eq!(hash(b"a\0b"), Err(PasswordError::Character));
    }

    #[test]
    fn the_dummy_hash_costs_what_a_new_hash_costs() {
        assert_eq!(check_stored(DUMMY_HASH), Ok(()));
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let dummy_params = Params::try_from(&dummy).unwrap();
        assert_eq!(dummy_params.m_cost(), PARAMS.m_cost());
        assert_eq!(dummy_params.t_cost(), PARAMS.t_cost());
        assert_eq!(dummy_params.p_cost(), PARAMS.p_cost());
        assert!(!verify(b"tern: no such login", "$argon2id$v=19$broken"));
    }

    #[test]
    fn the_shipped_dummy_hash_has_the_owasp_parameters() {
        assert_eq!(check_stored(DUMMY_HASH_OWASP), Ok(()));
        let parsed = PasswordHash::new(DUMMY_HASH_OWASP).unwrap();
        let params = Params::try_from(&parsed).unwrap();
        let default = Params::DEFAULT;
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (default.m_cost(), default.t_cost(), default.p_cost())
        );
    }

    #[test]
    fn stored_hashes_are_checked() {
        assert!(matches!(
            check_stored("plaintext"),
            Err(HashError::Syntax(_))
        ));
        assert!(matches!(
            check_stored("$argon2i$v=19$m=8,t=1,p=1$dGVybi1kdW1teS1zYWx0IQ$XfpIIOzcwiFA0qozKKgGk2Swk3YYBWYIBwfaDZ7dq54"),
            Err(HashError::Algorithm(_))
        ));
        assert_eq!(
            check_stored("$argon2id$v=19$m=4194304,t=1,p=1$dGVybi1kdW1teS1zYWx0IQ$XfpIIOzcwiFA0qozKKgGk2Swk3YYBWYIBwfaDZ7dq54"),
            Err(HashError::TooCostly { m: 4194304, t: 1, p: 1 })
        );
        assert_eq!(
            check_stored("$argon2id$v=19$m=8,t=1,p=1"),
            Err(HashError::Incomplete)
        );
    }
}
