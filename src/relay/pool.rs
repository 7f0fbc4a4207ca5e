//! The per-core pool of outbound connections: idle connections kept per
//! destination (host, address, TLS policy) for the next message, and the
//! cap on concurrent connections to one destination.
//!
//! It must never hand one connection to two deliveries at once, never keep
//! a connection past `max_messages_per_connection` or its idle timeout,
//! and never open more than its share of `max_connections_per_destination`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::connection::OutboundConnection;
use crate::config::OutboundTls;
use crate::runtime::transport::Transport;
use crate::smtp::client::{OutboundTransaction, TransactionResult};

/// How often idle connections are checked against their timeout.
const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// One destination: connections to it are interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub host: String,
    pub addr: SocketAddr,
    pub tls: OutboundTls,
}

/// Counts an open connection in `tern_outbound_connections_active` and
/// records its message count when it goes, however it goes.
struct ConnectionGauge {
    messages: usize,
}

impl ConnectionGauge {
    fn new() -> Self {
        metrics::gauge!("tern_outbound_connections_active").increment(1.0);
        ConnectionGauge { messages: 0 }
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!("tern_outbound_connections_active").decrement(1.0);
        metrics::histogram!("tern_outbound_messages_per_connection").record(self.messages as f64);
    }
}

/// A connection with its slot in the destination's limit.
pub struct Pooled<T: Transport> {
    pub conn: OutboundConnection<T>,
    _permit: OwnedSemaphorePermit,
    gauge: ConnectionGauge,
}

/// What `acquire` found.
pub enum Acquired<T: Transport> {
    /// An idle connection, ready for a transaction.
    Reused(Box<Pooled<T>>),
    /// Room for a new connection: open one and `wrap` it with this permit.
    Open(OwnedSemaphorePermit),
}

struct Destination<T: Transport> {
    idle: Vec<OutboundConnection<T>>,
    /// Idle connections keep their permit inside this vector.
    idle_permits: Vec<(OwnedSemaphorePermit, ConnectionGauge)>,
    limit: Arc<Semaphore>,
    returned: Rc<Notify>,
}

pub struct ConnectionPool<T: Transport> {
    destinations: RefCell<HashMap<PoolKey, Destination<T>>>,
    per_destination: usize,
    max_messages: usize,
    idle_timeout: Duration,
}

impl<T: Transport + 'static> ConnectionPool<T> {
    /// `per_destination` is this core's share of the server-wide limit.
    pub fn new(per_destination: usize, max_messages: usize, idle_timeout: Duration) -> Self {
        ConnectionPool {
            destinations: RefCell::new(HashMap::new()),
            per_destination: per_destination.max(1),
            max_messages: max_messages.max(1),
            idle_timeout,
        }
    }

    /// An idle connection to `key`, or a permit to open one; waits while
    /// the destination is at its limit and nothing is idle.
    pub async fn acquire(&self, key: &PoolKey) -> Acquired<T> {
        loop {
            let (limit, returned) = {
                let mut destinations = self.destinations.borrow_mut();
                let dest = destinations
                    .entry(key.clone())
                    .or_insert_with(|| Destination {
                        idle: Vec::new(),
                        idle_permits: Vec::new(),
                        limit: Arc::new(Semaphore::new(self.per_destination)),
                        returned: Rc::new(Notify::new()),
                    });
                if let (Some(conn), Some((permit, gauge))) =
                    (dest.idle.pop(), dest.idle_permits.pop())
                {
                    return Acquired::Reused(Box::new(Pooled {
                        conn,
                        _permit: permit,
                        gauge,
                    }));
                }
                (Arc::clone(&dest.limit), Rc::clone(&dest.returned))
            };
            tokio::select! {
                permit = limit.acquire_owned() => {
                    // The semaphore is never closed, so acquire cannot fail.
                    if let Ok(permit) = permit {
                        return Acquired::Open(permit);
                    }
                }
                _ = returned.notified() => {}
            }
        }
    }

    /// A freshly opened connection, counted against its permit.
    pub fn wrap(&self, conn: OutboundConnection<T>, permit: OwnedSemaphorePermit) -> Pooled<T> {
        Pooled {
            conn,
            _permit: permit,
            gauge: ConnectionGauge::new(),
        }
    }

    /// Sends one transaction over `pooled`, then keeps the connection for
    /// the next message, or closes it (QUIT) when it has carried its share.
    /// The flag tells whether the connection survived the transaction.
    pub async fn send(
        &self,
        key: &PoolKey,
        pooled: Pooled<T>,
        tx: OutboundTransaction<'_>,
    ) -> (TransactionResult, bool) {
        let Pooled {
            conn,
            _permit: permit,
            mut gauge,
        } = pooled;
        let (result, conn) = conn.send(tx).await;
        let Some(conn) = conn else {
            gauge.messages += 1;
            return (result, false);
        };
        gauge.messages = conn.messages;
        if conn.messages >= self.max_messages {
            tokio::task::spawn_local(async move {
                conn.quit().await;
                drop((permit, gauge));
            });
            return (result, true);
        }
        if let Some(dest) = self.destinations.borrow_mut().get_mut(key) {
            dest.idle.push(conn);
            dest.idle_permits.push((permit, gauge));
            dest.returned.notify_one();
        }
        (result, true)
    }

    /// Closes idle connections older than the idle timeout, forever.
    pub async fn reap(self: Rc<Self>) {
        loop {
            tokio::time::sleep(REAP_INTERVAL).await;
            self.close_idle_older_than(self.idle_timeout);
        }
    }

    /// QUIT every idle connection (shutdown).
    pub fn close_all_idle(&self) {
        self.close_idle_older_than(Duration::ZERO);
    }

    fn close_idle_older_than(&self, age: Duration) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for dest in self.destinations.borrow_mut().values_mut() {
            let mut index = 0;
            while index < dest.idle.len() {
                if now.duration_since(dest.idle[index].idle_since) >= age {
                    let conn = dest.idle.swap_remove(index);
                    let slot = dest.idle_permits.swap_remove(index);
                    expired.push((conn, slot));
                } else {
                    index += 1;
                }
            }
        }
        self.destinations.borrow_mut().retain(|_, dest| {
            !dest.idle.is_empty() || dest.limit.available_permits() < self.per_destination
        });
        for (conn, slot) in expired {
            tokio::task::spawn_local(async move {
                conn.quit().await;
                drop(slot);
            });
        }
    }
}
