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

/// Every string of up to `max_len` bytes over `alphabet`, shortest first:
/// exhaustive inputs for the byte-stream codecs, whose bugs hide in short
/// runs of the few characters that matter to them.
pub(crate) fn every_string(alphabet: &[u8], max_len: u32) -> impl Iterator<Item = Vec<u8>> + '_ {
    (0..=max_len).flat_map(move |len| {
        (0..alphabet.len().pow(len)).map(move |mut n| {
            let mut text = Vec::with_capacity(len as usize);
            for _ in 0..len {
                text.push(alphabet[n % alphabet.len()]);
                n /= alphabet.len();
            }
            text
        })
    })
}
