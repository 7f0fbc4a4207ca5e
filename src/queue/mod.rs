//! The delivery queue: what happens to a message after the spool has it
//! (scheduling, retry and bounces).
//!
//! This module only groups the queue's parts; it must never hold logic of
//! its own.

pub mod dsn;
pub mod hold;
pub mod retry;
pub mod scheduler;
pub mod settle;
