//! What every server-side protocol driver (SMTP, POP3, IMAP) does the
//! same way: write a sans-IO session's pending output under a deadline,
//! read the client's next bytes under the session's timeout and under the
//! deadline of the whole unit of input the session awaits (so a client
//! trickling bytes is cut off like an idle one), and wait for shutdown
//! without spinning.
//!
//! It must never interpret the bytes: protocol logic stays in the sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info};

use super::tls::TlsStream;
use super::transport::{MaybeTls, Transport, READ_CHUNK};
use crate::limits::InputDeadline;

/// A TLS handshake that has not finished by then is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// A sans-IO server session's output queue.
pub trait Outgoing {
    fn output(&self) -> &[u8];
    fn consume_output(&mut self, n: usize);
}

/// A sans-IO server session's input side.
pub trait Incoming: Outgoing {
    fn receive(&mut self, input: &[u8]);
    /// The read timeout or the input deadline expired.
    fn timed_out(&mut self);
    /// The longest wait for any one read.
    fn read_timeout(&self) -> Duration;
    /// The deadline of the unit of input the session awaits.
    fn deadline(&self) -> InputDeadline;
    /// Shutdown was signalled: true when the session queued its goodbye
    /// and must be polled again instead of read.
    fn shutting_down(&mut self) -> bool;
}

/// The driver's half of [`InputDeadline`]: when the session's current
/// unit of input began (the first read after the unit changed, so the
/// time spent writing the previous answer is not held against it).
#[derive(Debug)]
pub struct UnitClock {
    unit: Option<u64>,
    started: Instant,
}

impl Default for UnitClock {
    fn default() -> Self {
        UnitClock {
            unit: None,
            started: Instant::now(),
        }
    }
}

impl UnitClock {
    /// Time left for `deadline`'s unit at `now`; a new unit restarts the clock.
    pub fn left(&mut self, deadline: InputDeadline, now: Instant) -> Duration {
        if self.unit != Some(deadline.unit) {
            self.unit = Some(deadline.unit);
            self.started = now;
        }
        (self.started + deadline.within).saturating_duration_since(now)
    }
}

/// What one `exchange` came to.
pub enum Exchanged {
    /// Input, a timeout or shutdown reached the session: poll it again.
    Poll,
    /// `wake` resolved first (nothing was read).
    Woken,
    /// The connection is gone (EOF, read or write failure).
    Closed,
}

/// Flush the session's output, then read once from the client (under the
/// session's read timeout and what is left of its input deadline) and
/// hand the bytes to the session, unless shutdown or `wake` comes first.
#[allow(clippy::too_many_arguments)]
pub async fn exchange<T: Transport, S: Incoming>(
    stream: &mut T,
    session: &mut S,
    clock: &mut UnitClock,
    in_buf: &mut Vec<u8>,
    out_buf: &mut Vec<u8>,
    write_timeout: Duration,
    shutdown: &mut watch::Receiver<bool>,
    peer: SocketAddr,
    wake: impl std::future::Future<Output = ()>,
) -> Exchanged {
    if flush(stream, session, out_buf, write_timeout)
        .await
        .is_err()
    {
        return Exchanged::Closed;
    }
    // SIGTERM: idle sessions say goodbye and close; a session in the
    // middle of something may finish it (up to the core's deadline).
    if *shutdown.borrow_and_update() && session.shutting_down() {
        return Exchanged::Poll;
    }
    let left = clock.left(session.deadline(), Instant::now());
    let read = stream.read(std::mem::take(in_buf));
    let timed_read = tokio::time::timeout(session.read_timeout().min(left), read);
    let result = tokio::select! {
        r = timed_read => r,
        _ = wake => {
            *in_buf = Vec::with_capacity(READ_CHUNK);
            return Exchanged::Woken;
        }
        _ = shutdown_signal(shutdown) => {
            *in_buf = Vec::with_capacity(READ_CHUNK);
            return Exchanged::Poll;
        }
    };
    match result {
        Err(_) => {
            debug!(%peer, "read timed out or input deadline passed");
            *in_buf = Vec::with_capacity(READ_CHUNK);
            session.timed_out();
            Exchanged::Poll
        }
        Ok((Ok(0), _)) => Exchanged::Closed,
        Ok((Ok(n), buf)) => {
            session.receive(buf.get(..n).unwrap_or_default());
            *in_buf = buf;
            Exchanged::Poll
        }
        Ok((Err(e), _)) => {
            debug!(%peer, error = %e, "read failed");
            Exchanged::Closed
        }
    }
}

/// Send the session's pending output. Err means the connection is gone.
pub async fn flush<T: Transport, S: Outgoing>(
    stream: &mut T,
    session: &mut S,
    out: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), ()> {
    if session.output().is_empty() {
        return Ok(());
    }
    let mut buf = std::mem::take(out);
    buf.clear();
    buf.extend_from_slice(session.output());
    let n = buf.len();
    match tokio::time::timeout(timeout, stream.write_all(buf)).await {
        Ok((Ok(()), buf)) => {
            *out = buf;
            session.consume_output(n);
            Ok(())
        }
        Ok((Err(e), _)) => {
            debug!(error = %e, "write failed");
            Err(())
        }
        Err(_) => {
            debug!("write timed out");
            Err(())
        }
    }
}

/// Resolves when shutdown is signalled; never, once the server handle is
/// gone without signalling (so a select on it cannot spin).
pub async fn shutdown_signal(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Server-side TLS on `stream`: an implicit-TLS listener, or after
/// STLS/STARTTLS. False when it failed (the connection is then unusable).
pub async fn tls_handshake<T: Transport>(
    stream: &mut MaybeTls<T, TlsStream<T>>,
    config: Arc<rustls::ServerConfig>,
    peer: SocketAddr,
    protocol: &str,
) -> bool {
    let Some(plain) = stream.take_plain() else {
        return false;
    };
    let (result, done) =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsStream::accept(plain, config)).await {
            Ok(Ok(tls)) => {
                debug!(%peer, protocol, tls = %tls.describe(), "TLS established");
                *stream = MaybeTls::Tls(Box::new(tls));
                ("ok", true)
            }
            Ok(Err(e)) => {
                info!(%peer, protocol, error = %e, "TLS handshake failed");
                ("error", false)
            }
            Err(_) => {
                info!(%peer, protocol, "TLS handshake timed out");
                ("timeout", false)
            }
        };
    metrics::counter!("tern_tls_handshakes_total", "result" => result).increment(1);
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_clock_restarts_only_when_the_unit_changes() {
        let t0 = Instant::now();
        let mut clock = UnitClock::default();
        let minute = Duration::from_secs(60);
        let unit = |unit| InputDeadline {
            unit,
            within: minute,
        };
        assert_eq!(clock.left(unit(0), t0), minute);
        let t1 = t0 + Duration::from_secs(45);
        assert_eq!(clock.left(unit(0), t1), Duration::from_secs(15));
        assert_eq!(clock.left(unit(0), t0 + 2 * minute), Duration::ZERO);
        assert_eq!(clock.left(unit(1), t1), minute);
        // A deadline that grew (content paced in) is measured from the
        // same start.
        let longer = InputDeadline {
            unit: 1,
            within: 2 * minute,
        };
        assert_eq!(clock.left(longer, t1 + minute), minute);
    }
}
