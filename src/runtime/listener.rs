//! Listening sockets: one per core per configured address, all bound with
//! `SO_REUSEPORT` so the kernel spreads connections across cores with no
//! shared accept queue. Also the per-driver accept adapters.
//!
//! This module must never accept on behalf of another core: each socket it
//! hands out belongs to exactly one core thread.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use super::transport::{TokioStream, Transport, UringStream};

/// Pending-connection queue per socket. Bursts from 100-session load
/// generators must not see SYN drops.
const LISTEN_BACKLOG: i32 = 1024;

/// Which protocol a listener serves; also the `listener` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Relay/MX SMTP (port 25 in production).
    Smtp,
    /// Submission with STARTTLS (port 587 in production).
    Submission,
    /// Submission over implicit TLS (port 465 in production, RFC 8314 3.3).
    SubmissionTls,
    /// POP3 with STLS (port 110 in production).
    Pop3,
    /// POP3 over implicit TLS (port 995 in production, RFC 8314).
    Pop3Tls,
    /// IMAP with STARTTLS (port 143 in production).
    Imap,
    /// IMAP over implicit TLS (port 993 in production, RFC 8314).
    ImapTls,
}

impl ListenerKind {
    /// Submission listeners offer AUTH and apply RFC 6409's rules.
    pub fn is_submission(self) -> bool {
        matches!(self, ListenerKind::Submission | ListenerKind::SubmissionTls)
    }

    /// TLS from the first byte (RFC 8314).
    pub fn implicit_tls(self) -> bool {
        matches!(
            self,
            ListenerKind::SubmissionTls | ListenerKind::Pop3Tls | ListenerKind::ImapTls
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            ListenerKind::Smtp => "smtp",
            ListenerKind::Submission => "submission",
            ListenerKind::SubmissionTls => "submissions",
            ListenerKind::Pop3 => "pop3",
            ListenerKind::Pop3Tls => "pop3s",
            ListenerKind::Imap => "imap",
            ListenerKind::ImapTls => "imaps",
        }
    }
}

/// The sockets of one configured address, one per core.
pub struct BoundAddress {
    pub kind: ListenerKind,
    /// The address actually bound (port 0 resolved to the real port).
    pub local: SocketAddr,
    pub per_core: Vec<std::net::TcpListener>,
}

fn reuseport_socket(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // "[::]:25" serves IPv6 only; IPv4 gets its own configured address,
        // so both can be bound side by side.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Bind `addr` once per core. With port 0 the first bind picks the port and
/// the other cores join that same port.
pub fn bind_per_core(
    kind: ListenerKind,
    addr: SocketAddr,
    cores: usize,
) -> io::Result<BoundAddress> {
    let first = reuseport_socket(addr)?;
    let local = first.local_addr()?;
    let mut per_core = Vec::with_capacity(cores);
    per_core.push(first);
    for _ in 1..cores {
        per_core.push(reuseport_socket(local)?);
    }
    Ok(BoundAddress {
        kind,
        local,
        per_core,
    })
}

/// Accepts connections for one core under one driver.
#[allow(async_fn_in_trait)]
pub trait Acceptor {
    type Stream: Transport + 'static;
    async fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)>;
}

impl Acceptor for tokio::net::TcpListener {
    type Stream = TokioStream;

    async fn accept(&self) -> io::Result<(TokioStream, SocketAddr)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        stream.set_nodelay(true)?;
        Ok((TokioStream(stream), peer))
    }
}

impl Acceptor for tokio_uring::net::TcpListener {
    type Stream = UringStream;

    async fn accept(&self) -> io::Result<(UringStream, SocketAddr)> {
        let (stream, peer) = tokio_uring::net::TcpListener::accept(self).await?;
        stream.set_nodelay(true)?;
        Ok((UringStream(stream), peer))
    }
}
