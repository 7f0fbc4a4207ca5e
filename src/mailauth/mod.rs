//! Authentication of mail with the mail-auth crate: SPF (RFC 7208), DKIM
//! (RFC 6376, RFC 8463) and DMARC (RFC 7489) checks of mail that arrives
//! from outside, recorded in `Received-SPF:` and `Authentication-Results:`
//! (RFC 8601) fields at the top of the stored message, and DKIM signing of
//! mail that leaves.
//!
//! It must never refuse a message for a temporary DNS failure, never let a
//! check wait longer than `[mail_auth] check_timeout`, never sign mail that
//! did not come from a trusted client (`[relay] mynetworks` or
//! authenticated), and never query DNS through anything but the core's
//! relay resolver (`[relay] nameservers`).

mod fields;
mod inbound;
mod lookup_cache;
mod policy;
mod signing;

pub use inbound::{InboundAuth, InboundSettings};
pub use policy::RejectPolicy;
pub use signing::{DkimSigners, SigningSetupError};

use crate::envelope::ClientInfo;
use crate::smtp::RelayAccess;

/// The methods counted in `tern_mailauth_results_total`.
pub const METHODS: [&str; 3] = ["spf", "dkim", "dmarc"];
/// The results counted in `tern_mailauth_results_total` (RFC 8601 2.7).
pub const RESULTS: [&str; 7] = [
    "pass",
    "fail",
    "softfail",
    "neutral",
    "none",
    "temperror",
    "permerror",
];
/// The reasons counted in `tern_mailauth_rejected_total`.
pub const REJECT_REASONS: [&str; 2] = ["spf", "dmarc"];

/// Create every mail authentication series at zero.
pub fn register_metrics() {
    for method in METHODS {
        for result in RESULTS {
            metrics::counter!("tern_mailauth_results_total", "method" => method, "result" => result)
                .increment(0);
        }
    }
    for reason in REJECT_REASONS {
        metrics::counter!("tern_mailauth_rejected_total", "reason" => reason).increment(0);
    }
    for algorithm in signing::ALGORITHM_LABELS {
        metrics::counter!("tern_dkim_signed_total", "algorithm" => algorithm).increment(0);
    }
    metrics::counter!("tern_dkim_sign_errors_total").increment(0);
}

/// The client is one of ours: in `[relay] mynetworks` or authenticated.
/// Its mail is not checked on the way in and is signed on the way out.
fn is_trusted(client: &ClientInfo, access: &RelayAccess) -> bool {
    client.auth.is_some() || access.client_is_trusted(client.ip)
}
