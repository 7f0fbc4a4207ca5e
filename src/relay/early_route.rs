//! The early route lookup at RCPT time: for a recipient that will go by
//! MX, start the DNS lookup as soon as RCPT is accepted (so the answer is
//! cached when delivery starts, right after the `250` to DATA), and refuse
//! a domain already known to publish a null MX with `556 5.1.10`
//! (RFC 7505 3.2: a sending MTA should not accept mail it cannot deliver).
//!
//! It runs inside the sans-IO session's RCPT step, so it must never wait:
//! it only peeks at the cache and starts a background lookup.

use std::rc::Rc;

use super::dns::{MxResolver, RouteError};
use super::routing::RouteTable;
use crate::smtp::{EnhancedStatus, RecipientHook, Reply};

/// RFC 7505 3.2 with RFC 7504: the domain accepts no mail.
const NULL_MX_STATUS: EnhancedStatus = EnhancedStatus::new(5, 1, 10);

pub struct EarlyRoute {
    resolver: Rc<MxResolver>,
    routes: Rc<RouteTable>,
}

impl EarlyRoute {
    pub fn new(resolver: Rc<MxResolver>, routes: Rc<RouteTable>) -> EarlyRoute {
        EarlyRoute { resolver, routes }
    }
}

impl RecipientHook for EarlyRoute {
    fn check_recipient(&self, address: &str, domain: &str) -> Option<Reply> {
        if !self.routes.uses_mx(address) {
            return None;
        }
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
