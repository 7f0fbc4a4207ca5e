//! The relay stage: everything that moves a queued message towards the
//! remote MTA of its recipients (routing first).
//!
//! This module only groups its children; it must never hold logic of its own.

pub mod connection;
pub mod delivery;
mod destination;
pub mod dns;
pub(crate) mod expiring_cache;
pub mod next_hop;
pub mod pool;
pub mod recipient_check;
pub mod routing;
