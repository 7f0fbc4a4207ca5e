//! tern: a high-throughput durable SMTP relay. The library holds every stage
//! so that the binary, the integration tests, the benches and the fuzz
//! targets all drive the same code.

pub mod base64;
pub mod clock;
pub mod config;
pub mod envelope;
pub mod imap;
pub mod limits;
pub mod mailauth;
pub mod mailbox;
pub mod metrics;
pub mod pop3;
pub mod queue;
pub mod queue_report;
pub mod relay;
pub mod runtime;
pub mod sasl;
pub mod smtp;
pub mod spool;
#[cfg(test)]
mod test_util;
pub mod users;
