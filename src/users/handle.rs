//! The live view of the users file a running server asks: a shared snapshot
//! that is re-read when the file changes (checked at most once a second, on
//! lookup), so `tern user add` takes effect without a restart. It must never
//! replace a good snapshot with a bad file, nor hold its lock while hashing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
}

struct State {
    users: Arc<Users>,
    /// The file version `users` came from, or the last bad version seen
    /// (so a bad file is reported once, not on every check).
    stamp: Option<FileStamp>,
    checked: Instant,
}

impl UsersHandle {
    /// Loads the users file; fails when it is bad, so a server does not
    /// start on a broken file. A missing file means no users yet.
    pub fn open(path: &Path) -> Result<UsersHandle, UsersError> {
        UsersHandle::open_checking_every(path, CHECK_INTERVAL)
    }

    fn open_checking_every(
        path: &Path,
        check_interval: Duration,
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
                }),
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
            Ok(stamp) => stamp != state.stamp,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "users file: cannot stat; keeping the users loaded before");
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
