//! A password check gives argon2's working memory (19 MiB for tern's
//! hashes) back to the system when it ends, however many users log in and
//! whatever a login allocates in between. Its own test binary: it reads the
//! process's resident memory, which other tests would disturb.

use std::thread;

use tern::users::{return_check_memory_to_the_system, UsersHandle};

/// A hash with the parameters of tern's new hashes (argon2id, 19 MiB, t=2),
/// of a password nobody has: checking it costs what a real login costs.
const OWASP_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$dGVybi1kdW1teS1zYWx0IQ$EYRFKkDX3pOIXEGAcz+yliHWp7wp2ZnqZ3E4jxhgwVU";
const USERS: usize = 6;
const CHECK_MEMORY_KIB: u64 = 19456;

fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn password_checks_do_not_keep_their_memory() {
    return_check_memory_to_the_system();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    let file: String = (1..=USERS)
        .map(|i| {
            format!("[[user]]\nname = \"u{i}\"\npassword = \"{OWASP_HASH}\"\naddresses = []\n")
        })
        .collect();
    std::fs::write(&path, file).unwrap();
    let users = UsersHandle::open(&path).unwrap();

    let before = rss_anon_kib();
    let mut kept_between_checks = Vec::new();
    for i in 1..=USERS {
        // Each check on a thread of its own, as on tokio's blocking pool.
        let handle = users.clone();
        let login = format!("u{i}");
        let found = thread::spawn(move || handle.verify(&login, b"not the password"))
            .join()
            .unwrap();
        assert!(found.is_none());
        // What a login keeps afterwards (a mailbox index, a session).
        kept_between_checks.push(vec![i as u8; 64 * 1024]);
    }
    // Without the fix one check's memory or more stays resident; with it,
    // only what the loop kept (384 KiB) and small change.
    let grown = rss_anon_kib().saturating_sub(before);
    assert!(
        grown < CHECK_MEMORY_KIB / 2,
        "{USERS} password checks left {grown} KiB resident (one check uses {CHECK_MEMORY_KIB} KiB)"
    );
}
