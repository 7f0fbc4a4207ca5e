//! What every server-side protocol driver (SMTP, POP3, IMAP) does the
//! same way: write a sans-IO session's pending output under a deadline,
//! and wait for shutdown without spinning.
//!
//! It must never interpret the bytes: protocol logic stays in the sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info};

use super::tls::TlsStream;
use super::transport::{MaybeTls, Transport};

/// A TLS handshake that has not finished by then is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// A sans-IO server session's output queue.
pub trait Outgoing {
    fn output(&self) -> &[u8];
    fn consume_output(&mut self, n: usize);
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
