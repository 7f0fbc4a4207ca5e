//! The segment pool and its preparer thread: keeps a few zero-written,
//! durable segments ready so writers never preallocate on the hot path,
//! and recycles segments nothing needs any more (renamed to a fresh seq
//! and pooled, or deleted when the pool is full).
//!
//! This module must never hand out a segment whose file and name are not
//! yet durable, never recycle a segment someone still holds (an `Arc`
//! beyond the table's own), and never grow the spool past `max_size`.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::segment::{io_error, sync_dir, Segment};
use super::store::Shared;
use super::SpoolError;

/// Ready segments the preparer keeps, and the most recycled ones it keeps
/// rather than deleting.
const POOL_TARGET: usize = 2;
/// How often the preparer looks for recyclable segments unprompted.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// How long a writer waits for a segment before reporting an error.
const TAKE_TIMEOUT: Duration = Duration::from_secs(30);

struct PoolState {
    ready: VecDeque<Segment>,
    /// Completed preparer passes: a writer waits for a pass that started
    /// after its request before believing `limited` or `error`.
    passes: u64,
    /// The last pass could not create a segment within `max_size`.
    limited: bool,
    /// The last pass failed to create a segment.
    error: Option<(io::ErrorKind, String)>,
    /// Someone asked for a pass (a segment was taken or released).
    wanted: bool,
    stopping: bool,
}

pub(crate) struct Pool {
    state: Mutex<PoolState>,
    /// Signalled by the preparer after every pass.
    passed: Condvar,
    /// Signalled to wake the preparer.
    wake: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Pool state stays consistent across a panic: every change is a field
    // store or a queue push/pop.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    pub(crate) fn new() -> Pool {
        Pool {
            state: Mutex::new(PoolState {
                ready: VecDeque::new(),
                passes: 0,
                limited: false,
                error: None,
                wanted: true,
                stopping: false,
            }),
            passed: Condvar::new(),
            wake: Condvar::new(),
        }
    }

    /// Asks the preparer for a pass (sweep and refill) soon.
    pub(crate) fn wake(&self) {
        lock(&self.state).wanted = true;
        self.wake.notify_one();
    }

    pub(crate) fn stop(&self) {
        lock(&self.state).stopping = true;
        self.wake.notify_all();
        self.passed.notify_all();
    }

    pub(crate) fn free_segments(&self) -> usize {
        lock(&self.state).ready.len()
    }
}

/// Create the spool's counters at zero so they are exported before their
/// first event (`increment(0)` registers without resetting a live value).
pub(crate) fn register_counters() {
    for name in [
        "tern_spool_syncs_total",
        "tern_spool_commit_errors_total",
        "tern_spool_segments_created_total",
        "tern_spool_segments_recycled_total",
        "tern_spool_segments_deleted_total",
        "tern_spool_compactions_total",
        "tern_spool_compacted_records_total",
        "tern_spool_compacted_bytes_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!("tern_spool_messages").increment(0.0);
}

pub(crate) fn publish_gauges(shared: &Shared) {
    metrics::gauge!("tern_spool_bytes_used").set(shared.bytes_used.load(Ordering::Relaxed) as f64);
    metrics::gauge!("tern_spool_segments", "state" => "in_use")
        .set(shared.segments_in_use() as f64);
    metrics::gauge!("tern_spool_segments", "state" => "free")
        .set(shared.pool.free_segments() as f64);
}

/// What a writer needs a fresh segment for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Message,
    RecipientUpdate,
}

/// Hands a ready segment to a writer, waiting for the preparer if none is
/// ready. `Full` when none can be had within `max_size`. The last ready
/// segment is only given out for recipient updates: a full spool must
/// still be able to record deliveries, which is what frees it.
pub(crate) fn take_segment(shared: &Shared, purpose: Purpose) -> Result<Arc<Segment>, SpoolError> {
    let held_back = match purpose {
        Purpose::Message => 1,
        Purpose::RecipientUpdate => 0,
    };
    let pool = &shared.pool;
    let deadline = Instant::now() + TAKE_TIMEOUT;
    let mut state = lock(&pool.state);
    let mut seen_passes = state.passes;
    loop {
        let spare = state.ready.len() > held_back;
        if let Some(segment) = spare.then(|| state.ready.pop_front()).flatten() {
            state.wanted = true;
            drop(state);
            pool.wake.notify_one();
            let segment = Arc::new(segment);
            shared.start_appending(segment.seq());
            shared.register(Arc::clone(&segment));
            publish_gauges(shared);
            return Ok(segment);
        }
        if state.stopping {
            return Err(SpoolError::SyncStopped);
        }
        if state.passes > seen_passes {
            if let Some((kind, message)) = &state.error {
                let source = io::Error::new(*kind, message.clone());
                return Err(SpoolError::Io {
                    path: shared.config.dir.clone(),
                    source,
                });
            }
            if state.limited {
                let used = shared.bytes_used.load(Ordering::Relaxed);
                return Err(SpoolError::Full {
                    used,
                    limit: shared.config.max_size,
                });
            }
            seen_passes = state.passes;
        }
        state.wanted = true;
        pool.wake.notify_one();
        let now = Instant::now();
        if now >= deadline {
            let source = io::Error::new(io::ErrorKind::TimedOut, "no spool segment became ready");
            return Err(SpoolError::Io {
                path: shared.config.dir.clone(),
                source,
            });
        }
        state = pool
            .passed
            .wait_timeout(state, deadline - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// Body of the preparer thread.
pub(crate) fn run_preparer(shared: Arc<Shared>) {
    let pool = &shared.pool;
    loop {
        {
            let mut state = lock(&pool.state);
            let idle = state.ready.len() >= POOL_TARGET || state.limited || state.error.is_some();
            if !state.wanted && !state.stopping && idle {
                state = pool
                    .wake
                    .wait_timeout(state, SWEEP_INTERVAL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if state.stopping {
                return;
            }
            state.wanted = false;
        }
        sweep(&shared);
        let outcome = fill(&shared);
        {
            let mut state = lock(&pool.state);
            state.passes += 1;
            state.limited = outcome.limited;
            state.error = outcome.error;
        }
        pool.passed.notify_all();
        publish_gauges(&shared);
    }
}

/// Recycles every segment only the table still holds.
fn sweep(shared: &Shared) {
    for segment in shared.unregister_unused() {
        match Arc::try_unwrap(segment) {
            Ok(segment) => recycle(shared, segment),
            // Unreachable while the table lock made us the only holder;
            // keep it registered rather than lose track of it.
            Err(segment) => shared.register(segment),
        }
    }
}

fn recycle(shared: &Shared, segment: Segment) {
    let dir = &shared.config.dir;
    let reusable = segment.len() == shared.config.segment_size && !segment.failed();
    let room = lock(&shared.pool.state).ready.len() < POOL_TARGET;
    let old_seq = segment.seq();
    let segment = if reusable && room {
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        match segment.renumber(dir, seq) {
            Ok(renumbered) => match renumbered
                .sync()
                .and_then(|()| sync_dir(dir).map_err(io_error(dir)))
            {
                Ok(()) => {
                    tracing::debug!(old_seq, seq, "recycled spool segment");
                    metrics::counter!("tern_spool_segments_recycled_total").increment(1);
                    lock(&shared.pool.state).ready.push_back(renumbered);
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not make a recycled segment durable; deleting it");
                    renumbered
                }
            },
            Err((segment, err)) => {
                tracing::warn!(error = %err, "could not recycle segment; deleting it");
                segment
            }
        }
    } else {
        segment
    };
    let len = segment.len();
    let removed = fs::remove_file(segment.path()).and_then(|()| sync_dir(dir));
    match removed {
        Ok(()) => {
            shared.bytes_used.fetch_sub(len, Ordering::Relaxed);
            metrics::counter!("tern_spool_segments_deleted_total").increment(1);
        }
        Err(err) => {
            tracing::warn!(path = %segment.path().display(), error = %err, "could not delete spool segment")
        }
    }
}

struct FillOutcome {
    limited: bool,
    error: Option<(io::ErrorKind, String)>,
}

/// Creates segments until the pool holds `POOL_TARGET` or the limit or an
/// error stops it.
fn fill(shared: &Shared) -> FillOutcome {
    let size = shared.config.segment_size;
    let max = shared.config.max_size;
    loop {
        if lock(&shared.pool.state).ready.len() >= POOL_TARGET {
            return FillOutcome {
                limited: false,
                error: None,
            };
        }
        // Only this thread changes bytes_used after start-up, so the check
        // and the reservation cannot race.
        let used = shared.bytes_used.load(Ordering::Relaxed);
        if max != 0 && used.saturating_add(size) > max {
            return FillOutcome {
                limited: true,
                error: None,
            };
        }
        shared.bytes_used.fetch_add(size, Ordering::Relaxed);
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        match Segment::create(&shared.config.dir, seq, size) {
            Ok(segment) => {
                metrics::counter!("tern_spool_segments_created_total").increment(1);
                lock(&shared.pool.state).ready.push_back(segment);
            }
            Err(err) => {
                shared.bytes_used.fetch_sub(size, Ordering::Relaxed);
                tracing::warn!(dir = %shared.config.dir.display(), error = %err, "could not prepare a spool segment");
                return FillOutcome {
                    limited: false,
                    error: Some((err.kind(), err.to_string())),
                };
            }
        }
    }
}
