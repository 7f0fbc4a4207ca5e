//! Drives one SMTP server session over one connection: moves bytes between
//! the transport and the sans-IO `ServerSession`, stores finished messages
//! in this core's spool writer, upgrades to TLS on STARTTLS (or starts in
//! TLS on the implicit-TLS submission listener, RFC 8314), and checks AUTH
//! passwords off the event loop, slowing failures per client network.
//!
//! This module must never decide anything about SMTP itself (replies, state,
//! limits come from the session) and must never let a reply for a message
//! out before the spool says the message is durable.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::admission::AdmissionConfig;
use super::auth_throttle::AuthThrottle;
use super::imap_conn::ImapContext;
use super::listener::ListenerKind;
use super::pop3_conn::Pop3Context;
use super::session_io::{exchange, flush, tls_handshake, Exchanged, Incoming, Outgoing, UnitClock};
use super::tls::TlsStream;
use super::transport::{MaybeTls, Transport, READ_CHUNK};
use crate::clock::now_ms;
use crate::limits::InputDeadline;
use crate::mailauth::InboundAuth;
use crate::queue::scheduler::Scheduler;
use crate::smtp::auth::Mechanism;
use crate::smtp::reply::REPLY_CLASSES;
use crate::smtp::{
    AuthenticatedUser, IncomingMessage, RecipientHook, ServerSession, SessionConfig, SessionEvent,
};
use crate::spool::{QueueId, SpoolError, SpoolWriter};
use crate::users::UsersHandle;

/// What every connection on one core shares. Lives on that core only.
pub struct CoreContext {
    pub core: usize,
    /// Sessions on relay/MX listeners.
    pub session_config: Arc<SessionConfig>,
    /// Sessions on submission listeners (AUTH, RFC 6409 rules).
    pub submission_config: Arc<SessionConfig>,
    /// The `[limits]` every new connection is admitted under.
    pub admission: Arc<AdmissionConfig>,
    /// Whom AUTH checks passwords against.
    pub users: UsersHandle,
    /// Recent AUTH failures by client network, on this core.
    pub auth_throttle: Rc<RefCell<AuthThrottle>>,
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
    /// SPF/DKIM/DMARC checks of inbound mail; None when `[mail_auth]`
    /// verifies nothing.
    pub mail_auth: Option<Rc<InboundAuth>>,
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
    for mechanism in Mechanism::ALL {
        for result in ["ok", "failed", "aborted"] {
            metrics::counter!(
                "tern_smtp_auth_total",
                "mechanism" => mechanism.label(),
                "result" => result
            )
            .increment(0);
        }
    }
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

/// Serve one SMTP connection to its end.
pub async fn serve<T: Transport>(
    transport: T,
    peer: SocketAddr,
    kind: ListenerKind,
    ctx: Rc<CoreContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut stream: MaybeTls<T, TlsStream<T>> = MaybeTls::Plain(transport);
    let implicit_tls = kind.implicit_tls();
    if implicit_tls {
        let Some(config) = ctx.tls.clone() else {
            return;
        };
        if !tls_handshake(&mut stream, config, peer, "SMTP").await {
            return;
        }
    }
    let config = if kind.is_submission() {
        &ctx.submission_config
    } else {
        &ctx.session_config
    };
    let mut session = ServerSession::new(Arc::clone(config), peer.ip(), implicit_tls)
        .with_recipient_hook(Rc::clone(&ctx.recipient_hook));
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
                if let Some(auth) = ctx
                    .mail_auth
                    .as_ref()
                    .filter(|auth| auth.applies_to(&message.envelope))
                {
                    if let Err(reply) = auth.check(&mut message).await {
                        info!(
                            from = %message.envelope.sender,
                            client = %peer.ip(),
                            code = reply.code(),
                            "message refused by mail authentication"
                        );
                        session.message_refused(&reply);
                        continue;
                    }
                }
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
                            // Left out of the line when the client did not authenticate.
                            auth = message.envelope.client.auth.as_deref(),
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
            SessionEvent::Authenticate { login, password } => {
                let user = authenticate(&ctx, peer, login, password).await;
                session.auth_done(user);
            }
            SessionEvent::Close => {
                let _ = flush(&mut stream, &mut session, &mut out_buf, write_timeout).await;
                break;
            }
        }
    }
}

/// Check AUTH credentials off the event loop. A failure is answered only
/// after this client network's throttle delay, and logged for operators
/// (and fail2ban-style tools).
async fn authenticate(
    ctx: &CoreContext,
    peer: SocketAddr,
    login: String,
    password: String,
) -> Option<AuthenticatedUser> {
    let name = ctx.users.verify_off_loop(login.clone(), password).await;
    // A user removed between the check and this lookup counts as a failure.
    let user = name.and_then(|name| ctx.users.find(&name));
    match user {
        Some(user) => {
            info!(client = %peer.ip(), user = user.name(), "SMTP AUTH succeeded");
            Some(AuthenticatedUser {
                name: user.name().to_owned(),
                addresses: user.addresses().to_vec(),
            })
        }
        None => {
            let delay = ctx
                .auth_throttle
                .borrow_mut()
                .failed(peer.ip(), Instant::now());
            warn!(client = %peer.ip(), %login, delay_ms = delay.as_millis() as u64, "SMTP AUTH failed");
            tokio::time::sleep(delay).await;
            None
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
