//! One outbound SMTP connection: TCP connect, the sans-IO `ClientSession`
//! driven over it (greeting, EHLO, STARTTLS with rustls), then one mail
//! transaction after another until the pool retires it with QUIT.
//!
//! This module only moves bytes and applies the session's timeouts. It
//! must never decide SMTP (the session does) and never reuse a connection
//! whose session is not ready for another transaction.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::runtime::outbound::TlsClientStream;
use crate::runtime::transport::{MaybeTls, Transport, READ_CHUNK};
use crate::smtp::client::{
    ClientConfig, ClientEvent, ClientSession, CloseReason, OutboundTransaction, ReceivedReply,
    TransactionResult,
};

/// Opens TCP connections on the core's I/O driver.
#[allow(async_fn_in_trait)]
pub trait Connector {
    type Stream: Transport + 'static;
    async fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<Self::Stream>;
}

/// A QUIT is waited for this long at most: the message is already handed
/// over, so a slow goodbye must not hold a pool slot.
const QUIT_WAIT: Duration = Duration::from_secs(10);

type Stream<T> = MaybeTls<T, TlsClientStream<T>>;

/// Why a connection could not be made ready for mail.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Connect(String),
    /// The STARTTLS handshake failed; the TCP connection is gone.
    #[error("TLS with {host}: {message}")]
    Tls { host: String, message: String },
    #[error("{host} [{addr}]: {reason}")]
    Refused {
        host: String,
        addr: SocketAddr,
        reason: String,
        /// The peer's reply, when it gave one (421/554 greeting, EHLO).
        reply: Option<ReceivedReply>,
    },
}

/// What ended a drive of the session.
enum Driven {
    Ready,
    Done(TransactionResult),
    Closed(CloseReason),
    /// The handshake after STARTTLS failed.
    TlsFailed(String),
}

/// A connection ready for transactions.
pub struct OutboundConnection<T: Transport> {
    session: ClientSession,
    stream: Stream<T>,
    pub addr: SocketAddr,
    /// The MX or next-hop host name (TLS server name, logs).
    pub host: String,
    /// Transactions sent so far.
    pub messages: usize,
    pub idle_since: Instant,
    in_buf: Vec<u8>,
    out_buf: Vec<u8>,
}

impl<T: Transport + 'static> OutboundConnection<T> {
    /// Connect and get the session to `Ready` (greeting, EHLO, STARTTLS).
    pub async fn open<C: Connector<Stream = T>>(
        connector: &C,
        addr: SocketAddr,
        host: &str,
        session_config: Arc<ClientConfig>,
        tls_config: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
    ) -> Result<Self, OpenError> {
        let stream = connector
            .connect(addr, connect_timeout)
            .await
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        let mut conn = OutboundConnection {
            session: ClientSession::new(session_config, false),
            stream: MaybeTls::Plain(stream),
            addr,
            host: host.to_owned(),
            messages: 0,
            idle_since: Instant::now(),
            in_buf: Vec::with_capacity(READ_CHUNK),
            out_buf: Vec::with_capacity(1024),
        };
        match conn.drive(Some(&tls_config)).await {
            Driven::Ready => Ok(conn),
            Driven::TlsFailed(message) => Err(OpenError::Tls {
                host: host.to_owned(),
                message,
            }),
            Driven::Closed(reason) => Err(refused(host, addr, reason)),
            Driven::Done(_) => Err(OpenError::Refused {
                host: host.to_owned(),
                addr,
                reason: "transaction result before any transaction".into(),
                reply: None,
            }),
        }
    }

    /// Send one transaction. The connection comes back when the session is
    /// ready for another one.
    pub async fn send(
        mut self,
        tx: OutboundTransaction<'_>,
    ) -> (TransactionResult, Option<OutboundConnection<T>>) {
        if let Err(refused) = self.session.start_transaction(tx) {
            // Nothing went on the wire: the connection stays usable.
            return (refused, Some(self));
        }
        self.messages += 1;
        let result = match self.drive(None).await {
            Driven::Done(result) => result,
            // The session records an outcome for every recipient before it
            // reports Closed, so this only happens on a session bug.
            Driven::Ready | Driven::Closed(_) | Driven::TlsFailed(_) => {
                return (TransactionResult::default(), None)
            }
        };
        match self.drive(None).await {
            Driven::Ready => {
                self.idle_since = Instant::now();
                (result, Some(self))
            }
            _ => (result, None),
        }
    }

    /// QUIT and wait (briefly) for the goodbye.
    pub async fn quit(mut self) {
        self.session.quit();
        let _ = tokio::time::timeout(QUIT_WAIT, self.drive(None)).await;
    }

    /// Moves bytes until the session needs a decision from the caller.
    /// `tls` is the client config for STARTTLS (only while opening).
    async fn drive(&mut self, tls: Option<&Arc<rustls::ClientConfig>>) -> Driven {
        loop {
            match self.session.poll() {
                ClientEvent::NeedInput => {
                    if let Err(e) = self.flush().await {
                        debug!(addr = %self.addr, error = %e, "write failed");
                        self.session.peer_closed();
                        continue;
                    }
                    let read = self.stream.read(std::mem::take(&mut self.in_buf));
                    match tokio::time::timeout(self.session.read_timeout(), read).await {
                        Err(_) => {
                            self.in_buf = Vec::with_capacity(READ_CHUNK);
                            self.session.timed_out();
                        }
                        Ok((Ok(0), buf)) => {
                            self.in_buf = buf;
                            self.session.peer_closed();
                        }
                        Ok((Ok(n), buf)) => {
                            self.session.receive(buf.get(..n).unwrap_or_default());
                            self.in_buf = buf;
                        }
                        Ok((Err(e), _)) => {
                            debug!(addr = %self.addr, error = %e, "read failed");
                            self.in_buf = Vec::with_capacity(READ_CHUNK);
                            self.session.peer_closed();
                        }
                    }
                }
                ClientEvent::StartTls => {
                    if self.flush().await.is_err() {
                        return Driven::TlsFailed("connection lost before the handshake".into());
                    }
                    let Some(config) = tls else {
                        return Driven::TlsFailed("STARTTLS outside connection set-up".into());
                    };
                    match self.start_tls(Arc::clone(config)).await {
                        Ok(()) => self.session.tls_started(),
                        Err(message) => return Driven::TlsFailed(message),
                    }
                }
                ClientEvent::Ready => return Driven::Ready,
                ClientEvent::TransactionDone(result) => return Driven::Done(result),
                ClientEvent::Closed(reason) => {
                    let _ = self.flush().await;
                    return Driven::Closed(reason);
                }
            }
        }
    }

    async fn start_tls(&mut self, config: Arc<rustls::ClientConfig>) -> Result<(), String> {
        let Some(plain) = self.stream.take_plain() else {
            return Err("STARTTLS on a connection without a plain stream".into());
        };
        let handshake = TlsClientStream::connect(plain, config, &self.host);
        match tokio::time::timeout(self.session.read_timeout(), handshake).await {
            Ok(Ok(tls)) => {
                debug!(addr = %self.addr, tls = %tls.describe(), "TLS established");
                self.stream = MaybeTls::Tls(Box::new(tls));
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("handshake timed out".into()),
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.session.output().is_empty() {
            return Ok(());
        }
        let buf = self.session.take_output(std::mem::take(&mut self.out_buf));
        match tokio::time::timeout(self.session.write_timeout(), self.stream.write_all(buf)).await {
            Ok((Ok(()), buf)) => {
                self.out_buf = buf;
                Ok(())
            }
            Ok((Err(e), _)) => Err(e),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
    }
}

fn refused(host: &str, addr: SocketAddr, reason: CloseReason) -> OpenError {
    let (text, reply) = match reason {
        CloseReason::GreetingRefused(r) => ("greeting refused".to_string(), Some(r)),
        CloseReason::HelloRefused(r) => ("EHLO and HELO refused".to_string(), Some(r)),
        CloseReason::ServiceClosing(r) => ("service closing".to_string(), Some(r)),
        CloseReason::TlsRequiredButUnavailable => (
            "STARTTLS required but not offered or refused".to_string(),
            None,
        ),
        CloseReason::ProtocolError(e) => (format!("protocol error: {e}"), None),
        CloseReason::TimedOut => ("timed out".to_string(), None),
        CloseReason::PeerClosed => ("connection closed by the peer".to_string(), None),
        CloseReason::Quit => ("closed".to_string(), None),
    };
    let reason = match &reply {
        Some(r) => format!("{text}: {} {}", r.code, r.text),
        None => text,
    };
    OpenError::Refused {
        host: host.to_owned(),
        addr,
        reason,
        reply,
    }
}
