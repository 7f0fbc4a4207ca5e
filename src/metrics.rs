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

/// Accept to delivered: milliseconds on a healthy path, up to the days a
/// deferred message may wait (the 5-day default lifetime).
const DELIVERY_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0, 14400.0, 86400.0, 432000.0,
];
/// DNS queries: sub-millisecond from a local cache to the resolver timeout.
const DNS_SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Transactions per outbound connection: 1 without reuse, up to
/// `max_messages_per_connection` (1000 by default).
const MESSAGES_PER_CONNECTION_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
];

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
        .set_buckets_for_metric(
            Matcher::Full("tern_mailbox_commit_seconds".into()),
            COMMIT_SECONDS_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("tern_mailbox_commit_batch_journals".into()),
            BATCH_SIZE_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("tern_delivery_latency_seconds".into()),
            DELIVERY_LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("tern_dns_lookup_seconds".into()),
            DNS_SECONDS_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("tern_outbound_messages_per_connection".into()),
            MESSAGES_PER_CONNECTION_BUCKETS,
        )?
        .install()
}
