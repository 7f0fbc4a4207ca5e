//! The durable spool (being written).
pub mod error;
pub use error::SpoolError;
