//! Wall-clock time as milliseconds since the Unix epoch: the one reading
//! of the clock that envelopes, retry schedules and the queue's age share.
//!
//! Only the runtime and the delivery worker may call it: sans-IO protocol
//! code and the queue arithmetic take the time as an argument, so they
//! stay testable. A clock before 1970 reads as 0 rather than panicking.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
