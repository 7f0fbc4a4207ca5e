//! The live view of the users file a running server asks: a shared snapshot
//! that is re-read when the file changes (checked at most once a second, on
//! lookup), so `tern user add` takes effect without a restart. It must never
//! replace a good snapshot with a bad file, nor hold its lock while hashing,
//! nor run more password checks at once than it has slots for.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::file::{load_stamped, FileStamp};
use super::{User, Users, UsersError};

/// How often a lookup may look at the file's metadata: one `stat` a second
/// is free, and an edit is seen within a second.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A cheap-to-clone, thread-safe handle on the current users.
#[derive(Clone)]
pub struct UsersHandle {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    check_interval: Duration,
    state: Mutex<State>,
    /// Password checks that may run at once (see `verify_slots`).
    verify_slots: Arc<Semaphore>,
}

/// How many argon2id checks may run at once: one per core. A check is pure
/// CPU and holds its whole memory cost (19 MiB for new hashes, up to the
/// 2 GiB a stored hash may ask for) while it runs, so more at once add
/// memory, not speed: without a bound, a burst of logins (100 mail clients
/// polling together, or one client opening connections on purpose) ran one
/// check per blocking thread, 19 MiB each.
fn verify_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

struct State {
    users: Arc<Users>,
    /// The file version `users` came from, or the last bad version seen
    /// (so a bad file is reported once, not on every check).
    stamp: Option<FileStamp>,
    checked: Instant,
    /// The last check could not stat the file (warned once until it can).
    stat_failing: bool,
}

impl UsersHandle {
    /// Loads the users file; fails when it is bad, so a server does not
    /// start on a broken file. A missing file means no users yet.
    pub fn open(path: &Path) -> Result<UsersHandle, UsersError> {
        UsersHandle::open_with(path, CHECK_INTERVAL, verify_slots())
    }

    fn open_with(
        path: &Path,
        check_interval: Duration,
        verify_slots: usize,
    ) -> Result<UsersHandle, UsersError> {
        let (users, stamp) = load_stamped(path)?;
        record_loaded(&users);
        Ok(UsersHandle {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                check_interval,
                state: Mutex::new(State {
                    users: Arc::new(users),
                    stamp,
                    checked: Instant::now(),
                    stat_failing: false,
                }),
                verify_slots: Arc::new(Semaphore::new(verify_slots)),
            }),
        })
    }

    /// The users file this handle follows.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The current users, re-read first when the file changed since the
    /// last check and that check is more than a second old.
    pub fn current(&self) -> Arc<Users> {
        // A panic elsewhere while holding the lock leaves State consistent
        // (every field is replaced whole), so a poisoned lock is still usable.
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if state.checked.elapsed() >= self.shared.check_interval {
            state.checked = Instant::now();
            self.refresh(&mut state);
        }
        Arc::clone(&state.users)
    }

    /// The user owning `address` (case-insensitive), if any.
    pub fn find_by_address(&self, address: &str) -> Option<User> {
        self.current().find_by_address(address).cloned()
    }

    /// The user named `name` (case-insensitive), if any.
    pub fn find(&self, name: &str) -> Option<User> {
        self.current().find(name).cloned()
    }

    /// `verify` on tokio's blocking pool: argon2id costs tens of
    /// milliseconds of CPU by design and must never run on a core's event
    /// loop. Waits for a free slot first (one per core, shared by every
    /// listener); the slot is held by the check itself, so a session that
    /// goes away while its check runs does not free it early. Returns the
    /// user's name.
    pub async fn verify_off_loop(&self, login: String, password: String) -> Option<String> {
        // The semaphore is never closed: acquiring only waits.
        let slot = Arc::clone(&self.shared.verify_slots)
            .acquire_owned()
            .await
            .ok()?;
        let users = self.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            users
                .verify(&login, password.as_bytes())
                .map(|user| user.name().to_owned())
        })
        .await
        .ok()
        .flatten()
    }

    /// The user whose name or one of whose addresses is `login`.
    pub fn find_login(&self, login: &str) -> Option<User> {
        self.current().find_login(login).cloned()
    }

    /// `Users::verify` on the current users: the user when `login` (name or
    /// address) and `password` match. CPU-heavy: call it off any event loop.
    pub fn verify(&self, login: &str, password: &[u8]) -> Option<User> {
        // The snapshot is taken first so the lock is not held while hashing.
        let users = self.current();
        users.verify(login, password).cloned()
    }

    fn refresh(&self, state: &mut State) {
        let path = &self.shared.path;
        let changed = match FileStamp::current(path) {
            Ok(stamp) => {
                state.stat_failing = false;
                stamp != state.stamp
            }
            Err(e) => {
                if !state.stat_failing {
                    tracing::warn!(file = %path.display(), error = %e, "users file: cannot stat; keeping the users loaded before");
                }
                state.stat_failing = true;
                false
            }
        };
        if !changed {
            return;
        }
        match load_stamped(path) {
            Ok((users, stamp)) => {
                tracing::info!(file = %path.display(), users = users.len(), "users file reloaded");
                metrics::counter!("tern_users_reloads_total", "result" => "ok").increment(1);
                record_loaded(&users);
                state.users = Arc::new(users);
                state.stamp = stamp;
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "users file is bad; keeping the users loaded before");
                metrics::counter!("tern_users_reloads_total", "result" => "error").increment(1);
                // Remember this version so it is reported once; the next edit
                // of the file changes the stamp and is tried again.
                if let Ok(stamp) = FileStamp::current(path) {
                    state.stamp = stamp;
                }
            }
        }
    }
}

fn record_loaded(users: &Users) {
    metrics::gauge!("tern_users_accounts").set(users.len() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOON: Duration = Duration::ZERO;

    fn assert_shareable<T: Send + Sync + Clone + 'static>() {}

    fn handle_with_alice(dir: &Path, slots: usize) -> UsersHandle {
        let path = dir.join("users.toml");
        Users::edit(&path, |users| {
            users.add("alice@localhost", b"pw", &[]).map(|_| ())
        })
        .unwrap();
        UsersHandle::open_with(&path, Duration::from_secs(3600), slots).unwrap()
    }

    #[tokio::test]
    async fn a_check_waits_for_a_free_slot() {
        let dir = tempfile::tempdir().unwrap();
        let handle = handle_with_alice(dir.path(), 1);
        let held = Arc::clone(&handle.shared.verify_slots)
            .try_acquire_owned()
            .unwrap();
        let login = tokio::spawn({
            let handle = handle.clone();
            async move {
                handle
                    .verify_off_loop("alice@localhost".into(), "pw".into())
                    .await
            }
        });
        // With the only slot taken the check cannot start, however long it
        // is given (a check with the tests' cheap hash takes microseconds).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!login.is_finished());
        drop(held);
        assert_eq!(login.await.unwrap().as_deref(), Some("alice@localhost"));
        assert_eq!(handle.shared.verify_slots.available_permits(), 1);
    }

    #[tokio::test]
    async fn concurrent_checks_all_finish_and_give_their_slots_back() {
        let dir = tempfile::tempdir().unwrap();
        let handle = handle_with_alice(dir.path(), 2);
        let logins: Vec<_> = (0..16)
            .map(|i| {
                let handle = handle.clone();
                let password = if i % 2 == 0 { "pw" } else { "wrong" };
                tokio::spawn(async move {
                    handle
                        .verify_off_loop("alice@localhost".into(), password.into())
                        .await
                })
            })
            .collect();
        for (i, login) in logins.into_iter().enumerate() {
            let want = (i % 2 == 0).then(|| "alice@localhost".to_owned());
            assert_eq!(login.await.unwrap(), want, "login {i}");
        }
        assert_eq!(handle.shared.verify_slots.available_permits(), 2);
    }

    #[test]
    fn the_handle_is_shareable_between_threads() {
        assert_shareable::<UsersHandle>();
    }

    #[test]
    fn edits_are_seen_without_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let handle = UsersHandle::open_with(&path, SOON, 1).unwrap();
        assert!(handle.find_by_address("alice@localhost").is_none());
        Users::edit(&path, |users| {
            users.add("alice@localhost", b"pw", &[]).map(|_| ())
        })
        .unwrap();
        let other_thread = handle.clone();
        let found = std::thread::spawn(move || other_thread.verify("ALICE@localhost", b"pw"))
            .join()
            .unwrap();
        assert_eq!(
            found.map(|u| u.name().to_owned()),
            Some("alice@localhost".into())
        );
        assert!(handle.verify("alice@localhost", b"wrong").is_none());
        Users::edit(&path, |users| users.remove("alice@localhost")).unwrap();
        assert!(handle.find("alice@localhost").is_none());
    }

    #[test]
    fn a_file_turned_bad_keeps_the_last_good_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        Users::edit(&path, |users| users.add("alice", b"pw", &[]).map(|_| ())).unwrap();
        let handle = UsersHandle::open_with(&path, SOON, 1).unwrap();
        std::fs::write(
            &path,
            "[[user]]\nname = \"alice\"\npassword = \"plaintext\"\n",
        )
        .unwrap();
        assert!(handle.verify("alice", b"pw").is_some());
        assert!(handle.verify("alice", b"plaintext").is_none());
        Users::edit(&path, |users| users.add("bob", b"pw", &[]).map(|_| ())).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        Users::edit(&path, |users| users.add("bob", b"pw", &[]).map(|_| ())).unwrap();
        assert!(handle.find("bob").is_some(), "a good file is read again");
        assert!(handle.find("alice").is_none());
    }

    #[test]
    fn the_file_is_looked_at_only_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let handle = UsersHandle::open_with(&path, Duration::from_secs(3600), 1).unwrap();
        Users::edit(&path, |users| users.add("alice", b"pw", &[]).map(|_| ())).unwrap();
        assert!(handle.find("alice").is_none());
        assert_eq!(handle.path(), path);
    }

    #[test]
    fn a_bad_file_at_open_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(&path, "not toml [").unwrap();
        let e = UsersHandle::open(&path).err().unwrap();
        assert!(e.to_string().contains("users.toml"), "{e}");
    }
}
