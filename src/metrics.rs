//! The Prometheus exporter: installed once in `main`, before any core thread
//! starts, so every stage's `metrics::` calls land in one registry.
//!
//! This module must never define metrics on behalf of the stages (each
//! stage names its own, documented in docs/METRICS.md); it only chooses how
//! they are exported, histogram buckets included.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Spool commits: tens of microseconds (page cache) to a second (a stalled disk).
const COMMIT_SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Messages per fdatasync: 1 when idle, hundreds under load.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Serve `/metrics` on `addr` from a thread of the exporter's own.
pub fn install(addr: SocketAddr) -> Result<(), BuildError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full("tern_spool_commit_seconds".into()),
            COMMIT_SECONDS_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("tern_spool_commit_batch_size".into()),
            BATCH_SIZE_BUCKETS,
        )?
        .install()
}
