//! Drives one SMTP server session over one connection: moves bytes between
//! the transport and the sans-IO `ServerSession`, stores finished messages
//! in this core's spool writer, and upgrades to TLS on STARTTLS.
//!
//! This module must never decide anything about SMTP itself (replies, state,
//! limits come from the session) and must never let a reply for a message
//! out before the spool says the message is durable.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::imap_conn::ImapContext;
use super::listener::ListenerKind;
use super::pop3_conn::Pop3Context;
use super::session_io::{exchange, flush, Exchanged, Incoming, Outgoing, UnitClock};
use super::tls::TlsStream;
use super::transport::{MaybeTls, Transport, READ_CHUNK};
use crate::limits::InputDeadline;
use crate::queue::scheduler::Scheduler;
use crate::smtp::reply::REPLY_CLASSES;
use crate::smtp::{IncomingMessage, RecipientHook, ServerSession, SessionConfig, SessionEvent};
use crate::spool::{QueueId, SpoolError, SpoolWriter};

/// What every connection on one core shares. Lives on that core only.
pub struct CoreContext {
    pub core: usize,
    pub session_config: Arc<SessionConfig>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// POP3 connections of this core.
    pub pop3: Rc<Pop3Context>,
    /// IMAP connections of this core.
    pub imap: Rc<ImapContext>,
    /// Shared with this core's delivery worker (recipient updates, DSNs).
    pub spool: Rc<RefCell<SpoolWriter>>,
    /// Where a durable message goes to be delivered.
    pub scheduler: Rc<Scheduler>,
    /// Consulted at RCPT: the early MX lookup and null MX refusal.
    pub recipient_hook: Rc<dyn RecipientHook>,
}

impl CoreContext {
    /// Append to this core's spool and wait until the record is durable.
    async fn store(&self, message: &IncomingMessage) -> Result<QueueId, SpoolError> {
        // The borrow ends before the await: other sessions on this core
        // append while this one waits for the shared sync (group commit).
        let (id, commit) = self
            .spool
            .borrow_mut()
            .append(&message.envelope, &message.data)?;
        commit.await?;
        Ok(id)
    }
}

/// Create every ingest series (the session's included) at zero so dashboards and `rate()` see them
/// before the first event (a counter that appears late hides its first burst).
pub fn register_metrics(kinds: &[ListenerKind]) {
    for kind in kinds {
        let label = kind.label();
        metrics::counter!("tern_connections_total", "listener" => label).increment(0);
        metrics::gauge!("tern_connections_active", "listener" => label).increment(0.0);
        metrics::counter!("tern_accept_errors_total", "listener" => label).increment(0);
    }
    for class in REPLY_CLASSES {
        metrics::counter!("tern_smtp_replies_total", "class" => class).increment(0);
    }
    for result in ["ok", "error", "timeout"] {
        metrics::counter!("tern_tls_handshakes_total", "result" => result).increment(0);
    }
    metrics::counter!("tern_messages_accepted_total").increment(0);
    metrics::counter!("tern_message_bytes_accepted_total").increment(0);
    metrics::counter!("tern_smtp_timeouts_total").increment(0);
    metrics::counter!("tern_smtp_relay_denied_total").increment(0);
    for reason in [
        "bare_line_ending",
        "line_too_long",
        "too_large",
        "hops",
        "spool",
    ] {
        metrics::counter!("tern_smtp_messages_rejected_total", "reason" => reason).increment(0);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Serve one SMTP connection to its end.
pub async fn serve<T: Transport>(
    transport: T,
    peer: SocketAddr,
    kind: ListenerKind,
    ctx: Rc<CoreContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut session = ServerSession::new(ctx.session_config.clone(), peer.ip(), false)
        .with_recipient_hook(Rc::clone(&ctx.recipient_hook));
    let mut stream: MaybeTls<T, TlsStream<T>> = MaybeTls::Plain(transport);
    let mut clock = UnitClock::default();
    let mut in_buf = Vec::with_capacity(READ_CHUNK);
    let mut out_buf = Vec::with_capacity(1024);
    let write_timeout = ctx.session_config.command_timeout;
    loop {
        match session.poll() {
            SessionEvent::NeedInput => {
                let exchanged = exchange(
                    &mut stream,
                    &mut session,
                    &mut clock,
                    &mut in_buf,
                    &mut out_buf,
                    write_timeout,
                    &mut shutdown,
                    peer,
                    std::future::pending(),
                )
                .await;
                if let Exchanged::Closed = exchanged {
                    break;
                }
            }
            SessionEvent::Message(mut message) => {
                message.envelope.received_at_ms = now_ms();
                let size = message.data.len();
                match ctx.store(&message).await {
                    Ok(id) => {
                        metrics::counter!("tern_messages_accepted_total").increment(1);
                        metrics::counter!("tern_message_bytes_accepted_total")
                            .increment(size as u64);
                        info!(
                            queue_id = %id,
                            from = %message.envelope.sender,
                            nrcpt = message.envelope.recipients.len(),
                            size,
                            client = %peer.ip(),
                            listener = kind.label(),
                            "message accepted"
                        );
                        session.message_stored(Ok(id.to_string()));
                        ctx.scheduler.submit(id);
                    }
                    Err(e) => {
                        metrics::counter!("tern_smtp_messages_rejected_total", "reason" => "spool")
                            .increment(1);
                        warn!(client = %peer.ip(), size, error = %e, "message not stored");
                        session.message_stored(Err(&e));
                    }
                }
            }
            SessionEvent::StartTls => {
                if flush(&mut stream, &mut session, &mut out_buf, write_timeout)
                    .await
                    .is_err()
                {
                    break;
                }
                let (Some(plain), Some(config)) = (stream.take_plain(), ctx.tls.clone()) else {
                    warn!(%peer, "STARTTLS event without a plaintext stream and TLS config");
                    break;
                };
                let handshake = TlsStream::accept(plain, config);
                match tokio::time::timeout(ctx.session_config.command_timeout, handshake).await {
                    Ok(Ok(tls)) => {
                        debug!(%peer, tls = %tls.describe(), "TLS established");
                        metrics::counter!("tern_tls_handshakes_total", "result" => "ok")
                            .increment(1);
                        stream = MaybeTls::Tls(Box::new(tls));
                        session.tls_started();
                    }
                    Ok(Err(e)) => {
                        info!(%peer, error = %e, "TLS handshake failed");
                        metrics::counter!("tern_tls_handshakes_total", "result" => "error")
                            .increment(1);
                        break;
                    }
                    Err(_) => {
                        info!(%peer, "TLS handshake timed out");
                        metrics::counter!("tern_tls_handshakes_total", "result" => "timeout")
                            .increment(1);
                        break;
                    }
                }
            }
            SessionEvent::Close => {
                let _ = flush(&mut stream, &mut session, &mut out_buf, write_timeout).await;
                break;
            }
        }
    }
}

impl Outgoing for ServerSession {
    fn output(&self) -> &[u8] {
        ServerSession::output(self)
    }

    fn consume_output(&mut self, n: usize) {
        ServerSession::consume_output(self, n)
    }
}

impl Incoming for ServerSession {
    fn receive(&mut self, input: &[u8]) {
        ServerSession::receive(self, input)
    }

    fn timed_out(&mut self) {
        ServerSession::timed_out(self)
    }

    fn read_timeout(&self) -> Duration {
        ServerSession::read_timeout(self)
    }

    fn deadline(&self) -> InputDeadline {
        ServerSession::deadline(self)
    }

    fn shutting_down(&mut self) -> bool {
        ServerSession::shutting_down(self)
    }
}
