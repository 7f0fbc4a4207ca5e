//! The routing checks at RCPT time. A recipient in a local domain must be
//! a known user (`550 5.1.1` otherwise, so no bounce is ever owed for a
//! typo), except postmaster, which RFC 5321 4.5.1 says must be accepted.
//! For a recipient that goes by MX, the DNS lookup starts as soon as RCPT
//! is accepted (so the answer is cached when delivery starts, right
//! after the `250` to DATA), and a domain already known to publish a null
//! MX is refused with `556 5.1.10` (RFC 7505 3.2: a sending MTA should not
//! accept mail it cannot deliver).
//!
//! It runs inside the sans-IO session's RCPT step, so it must never wait:
//! it only peeks at caches and starts a background lookup.

use std::rc::Rc;

use super::dns::{MxResolver, RouteError};
use super::routing::{Hop, RouteTable};
use crate::smtp::{EnhancedStatus, RecipientHook, Reply};
use crate::users::UsersHandle;

/// RFC 7505 3.2 with RFC 7504: the domain accepts no mail.
const NULL_MX_STATUS: EnhancedStatus = EnhancedStatus::new(5, 1, 10);
/// RFC 3463 3.2: X.1.1 bad destination mailbox address.
const UNKNOWN_USER_STATUS: EnhancedStatus = EnhancedStatus::new(5, 1, 1);

pub struct RecipientCheck {
    resolver: Rc<MxResolver>,
    routes: Rc<RouteTable>,
    users: UsersHandle,
}

impl RecipientCheck {
    pub fn new(resolver: Rc<MxResolver>, routes: Rc<RouteTable>, users: UsersHandle) -> Self {
        RecipientCheck {
            resolver,
            routes,
            users,
        }
    }
}

impl RecipientHook for RecipientCheck {
    fn check_recipient(&self, address: &str, domain: &str) -> Option<Reply> {
        match self.routes.hop_for(address) {
            // A user the address names, or postmaster: always accepted
            // (RFC 5321 4.5.1), with or without an owner yet.
            Hop::Local
                if self.users.find_login(address).is_none()
                    && !self.routes.is_postmaster(address) =>
            {
                Some(unknown_user(address))
            }
            Hop::Mx { .. } => self.check_mx(address, domain),
            Hop::Local | Hop::Static { .. } => None,
        }
    }
}

fn unknown_user(address: &str) -> Reply {
    Reply::new(
        550,
        UNKNOWN_USER_STATUS,
        format!("<{address}>: Recipient address rejected: User unknown in local recipient table"),
    )
}

impl RecipientCheck {
    fn check_mx(&self, address: &str, domain: &str) -> Option<Reply> {
        match self.resolver.cached(domain) {
            Some(Err(RouteError::NullMx)) => Some(Reply::new(
                556,
                NULL_MX_STATUS,
                format!(
                    "<{address}>: Recipient address rejected: {domain} accepts no mail (null MX)"
                ),
            )),
            Some(_) => None,
            None => {
                self.resolver.prefetch(domain);
                None
            }
        }
    }
}
