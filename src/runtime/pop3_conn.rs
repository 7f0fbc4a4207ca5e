//! Drives one POP3 connection: moves bytes between the transport and the
//! sans-IO `Pop3Session`, upgrades to TLS on STLS (or starts in TLS on an
//! implicit-TLS listener, RFC 8314), and waits for the deletions of QUIT to
//! be durable before the session may say `+OK`.
//!
//! This module must never decide anything about POP3 itself and never
//! answer QUIT before the mailbox says the deletions are on disk.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use super::pop3_backend::Pop3Stores;
use super::session_io::{exchange, flush, tls_handshake, Exchanged, Incoming, Outgoing, UnitClock};
use super::tls::TlsStream;
use super::transport::{MaybeTls, Transport, READ_CHUNK};
use crate::limits::InputDeadline;
use crate::mailbox::Durable;
use crate::pop3::{Pop3Config, Pop3Event, Pop3Session};

/// Writes to a POP3 client: a RETR of a large message to a slow client
/// must still finish, a dead one must not hold the session forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Create the POP3 series at zero, so `rate()` sees the first logins.
pub fn register_metrics() {
    for command in crate::pop3::VERB_LABELS {
        metrics::counter!("tern_pop3_commands_total", "command" => command).increment(0);
    }
    for result in ["ok", "failed"] {
        metrics::counter!("tern_pop3_logins_total", "result" => result).increment(0);
    }
    metrics::counter!("tern_pop3_bytes_sent_total").increment(0);
}

/// What every POP3 connection on one core shares.
pub struct Pop3Context {
    pub config: Arc<Pop3Config>,
    pub stores: Rc<Pop3Stores>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

type Session = Pop3Session<Durable>;

impl Outgoing for Session {
    fn output(&self) -> &[u8] {
        Pop3Session::output(self)
    }

    fn consume_output(&mut self, n: usize) {
        Pop3Session::consume_output(self, n)
    }
}

impl Incoming for Session {
    fn receive(&mut self, input: &[u8]) {
        Pop3Session::receive(self, input)
    }

    fn timed_out(&mut self) {
        Pop3Session::timed_out(self)
    }

    fn read_timeout(&self) -> Duration {
        Pop3Session::read_timeout(self)
    }

    fn deadline(&self) -> InputDeadline {
        Pop3Session::deadline(self)
    }

    fn shutting_down(&mut self) -> bool {
        Pop3Session::shutting_down(self)
    }
}

/// Serve one POP3 connection to its end. `implicit_tls`: handshake first.
pub async fn serve<T: Transport>(
    transport: T,
    peer: SocketAddr,
    implicit_tls: bool,
    ctx: Rc<Pop3Context>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut stream: MaybeTls<T, TlsStream<T>> = MaybeTls::Plain(transport);
    if implicit_tls {
        let Some(config) = ctx.tls.clone() else {
            return;
        };
        if !tls_handshake(&mut stream, config, peer, "POP3").await {
            return;
        }
    }
    let backend: Rc<dyn crate::pop3::Pop3Backend<Commit = Durable>> = ctx.stores.clone();
    let mut session = Session::new(ctx.config.clone(), backend, implicit_tls);
    let mut clock = UnitClock::default();
    let mut in_buf = Vec::with_capacity(READ_CHUNK);
    let mut out_buf = Vec::with_capacity(1024);
    loop {
        match session.poll() {
            Pop3Event::NeedInput => {
                let exchanged = exchange(
                    &mut stream,
                    &mut session,
                    &mut clock,
                    &mut in_buf,
                    &mut out_buf,
                    WRITE_TIMEOUT,
                    &mut shutdown,
                    peer,
                    std::future::pending(),
                )
                .await;
                if let Exchanged::Closed = exchanged {
                    break;
                }
            }
            Pop3Event::Authenticate { login, password } => {
                let user = ctx.stores.users.verify_off_loop(login, password).await;
                session.auth_done(user);
            }
            Pop3Event::Commit(durable) => {
                let result = durable.await.map_err(|e| e.to_string());
                if let Err(e) = &result {
                    info!(%peer, error = %e, "POP3 deletions not applied");
                }
                session.commit_done(result);
            }
            Pop3Event::StartTls => {
                if flush(&mut stream, &mut session, &mut out_buf, WRITE_TIMEOUT)
                    .await
                    .is_err()
                {
                    break;
                }
                let Some(config) = ctx.tls.clone() else {
                    break;
                };
                if !tls_handshake(&mut stream, config, peer, "POP3").await {
                    break;
                }
                session.tls_started();
            }
            Pop3Event::Close => {
                let _ = flush(&mut stream, &mut session, &mut out_buf, WRITE_TIMEOUT).await;
                break;
            }
        }
    }
}
