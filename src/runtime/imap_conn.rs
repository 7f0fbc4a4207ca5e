//! Drives one IMAP connection: moves bytes between the transport and the
//! sans-IO `ImapSession`, upgrades to TLS on STARTTLS (or starts in TLS on
//! an implicit-TLS listener, RFC 8314), awaits mailbox changes before the
//! session may report them done, and wakes an IDLE session when its
//! mailbox changes (RFC 2177).
//!
//! This module must never decide anything about IMAP itself and never
//! let a tagged OK out before the change it reports is durable.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::imap_backend::ImapStores;
use super::session_io::{exchange, flush, tls_handshake, Exchanged, Incoming, Outgoing, UnitClock};
use super::tls::TlsStream;
use super::transport::{MaybeTls, Transport, READ_CHUNK};
use crate::imap::{ImapConfig, ImapEvent, ImapSession};
use crate::limits::InputDeadline;

/// Writes to an IMAP client: a large FETCH to a slow client must finish,
/// a dead one must not hold the session forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Create the IMAP series at zero, so `rate()` sees the first events.
pub fn register_metrics() {
    for command in crate::imap::CommandBody::NAMES.iter().chain(&["bad"]) {
        metrics::counter!("tern_imap_commands_total", "command" => *command).increment(0);
    }
    for result in ["ok", "failed"] {
        metrics::counter!("tern_imap_logins_total", "result" => result).increment(0);
    }
    metrics::counter!("tern_imap_bytes_sent_total").increment(0);
}

/// What every IMAP connection on one core shares.
pub struct ImapContext {
    pub config: Arc<ImapConfig>,
    pub stores: Rc<ImapStores>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Outgoing for ImapSession {
    fn output(&self) -> &[u8] {
        ImapSession::output(self)
    }

    fn consume_output(&mut self, n: usize) {
        ImapSession::consume_output(self, n)
    }
}

impl Incoming for ImapSession {
    fn receive(&mut self, input: &[u8]) {
        ImapSession::receive(self, input)
    }

    fn timed_out(&mut self) {
        ImapSession::timed_out(self)
    }

    fn read_timeout(&self) -> Duration {
        ImapSession::read_timeout(self)
    }

    fn deadline(&self) -> InputDeadline {
        ImapSession::deadline(self)
    }

    fn shutting_down(&mut self) -> bool {
        ImapSession::shutting_down(self)
    }
}

/// Serve one IMAP connection to its end. `implicit_tls`: handshake first.
pub async fn serve<T: Transport>(
    transport: T,
    peer: SocketAddr,
    implicit_tls: bool,
    ctx: Rc<ImapContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut stream: MaybeTls<T, TlsStream<T>> = MaybeTls::Plain(transport);
    if implicit_tls {
        let Some(config) = ctx.tls.clone() else {
            return;
        };
        if !tls_handshake(&mut stream, config, peer, "IMAP").await {
            return;
        }
    }
    let backend: Rc<dyn crate::imap::ImapBackend> = ctx.stores.clone();
    let mut session = ImapSession::new(ctx.config.clone(), backend, implicit_tls);
    let mut clock = UnitClock::default();
    let mut in_buf = Vec::with_capacity(READ_CHUNK);
    let mut out_buf = Vec::with_capacity(4096);
    loop {
        let mut changes = match session.poll() {
            ImapEvent::NeedInput => None,
            ImapEvent::Idle(changes) => Some(changes),
            ImapEvent::Commit(durable) => {
                if flush(&mut stream, &mut session, &mut out_buf, WRITE_TIMEOUT)
                    .await
                    .is_err()
                {
                    break;
                }
                let result = durable.await.map_err(|e| e.to_string());
                session.commit_done(result);
                continue;
            }
            ImapEvent::Append(ticket) => {
                if flush(&mut stream, &mut session, &mut out_buf, WRITE_TIMEOUT)
                    .await
                    .is_err()
                {
                    break;
                }
                let result = ticket.await;
                session.append_done(result);
                continue;
            }
            ImapEvent::StartTls => {
                if flush(&mut stream, &mut session, &mut out_buf, WRITE_TIMEOUT)
                    .await
                    .is_err()
                {
                    break;
                }
                let Some(config) = ctx.tls.clone() else {
                    break;
                };
                if !tls_handshake(&mut stream, config, peer, "IMAP").await {
                    break;
                }
                session.tls_started();
                continue;
            }
            ImapEvent::Authenticate { login, password } => {
                let user = ctx.stores.users.verify_off_loop(login, password).await;
                session.auth_done(user);
                continue;
            }
            ImapEvent::Flush => {
                if flush(&mut stream, &mut session, &mut out_buf, WRITE_TIMEOUT)
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            ImapEvent::Close => {
                let _ = flush(&mut stream, &mut session, &mut out_buf, WRITE_TIMEOUT).await;
                break;
            }
        };
        let exchanged = exchange(
            &mut stream,
            &mut session,
            &mut clock,
            &mut in_buf,
            &mut out_buf,
            WRITE_TIMEOUT,
            &mut shutdown,
            peer,
            changed(&mut changes),
        )
        .await;
        match exchanged {
            Exchanged::Poll => {}
            Exchanged::Woken => session.mailbox_changed(),
            Exchanged::Closed => break,
        }
    }
}

/// Resolves when the IDLE session's mailbox changes; never without one.
async fn changed(changes: &mut Option<watch::Receiver<u64>>) {
    match changes {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}
