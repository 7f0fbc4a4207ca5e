//! Helpers shared by the unit tests of several stages. Compiled for tests
//! only; must never hold anything the product itself needs.

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms for up to ten seconds; true once it holds.
/// For conditions a background thread brings about (syncs, recycling),
/// never for asserting how long something took.
pub(crate) fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}
