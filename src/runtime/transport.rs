//! The owned-buffer I/O seam between protocol drivers and the two runtimes.
//!
//! io_uring needs the kernel to own a buffer while an operation is in
//! flight, so every read and write hands a `Vec<u8>` over and gets it back.
//! Plain tokio (epoll) satisfies the same contract. This module must never
//! interpret the bytes it moves: protocol logic lives in the sans-IO sessions.

use std::io;

/// Read size per call: one large TCP segment train. Commands are tiny; DATA
/// of 32 KiB messages arrives in a few reads.
pub const READ_CHUNK: usize = 16 * 1024;

/// A byte stream driven by one per-core runtime.
///
/// Futures are not `Send`: every connection lives and dies on the core
/// thread that accepted it (shared-nothing), so no `Send` bound is wanted.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// Read into `buf` from offset 0: on return `buf.len()` is the count
    /// read (0 at end of stream). `buf`'s capacity is the most read.
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    /// Write all of `buf`.
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
}

/// Plain tokio (epoll/kqueue) stream.
pub struct TokioStream(pub tokio::net::TcpStream);

impl Transport for TokioStream {
    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        buf.clear();
        let result = self.0.read_buf(&mut buf).await;
        (result, buf)
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        use tokio::io::AsyncWriteExt;
        let result = self.0.write_all(&buf).await;
        (result, buf)
    }
}

/// io_uring stream through tokio-uring.
pub struct UringStream(pub tokio_uring::net::TcpStream);

impl Transport for UringStream {
    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        self.0.read(buf).await
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.0.write_all(buf).await
    }
}

/// A connection that may be upgraded to TLS in place (STARTTLS, STLS):
/// plain at first, then the TLS stream `S` wrapping the same transport.
pub enum MaybeTls<T, S> {
    Plain(T),
    Tls(Box<S>),
    /// Taken for a handshake that failed: every read and write errors.
    Gone,
}

impl<T, S> MaybeTls<T, S> {
    /// The plain transport, for a handshake; leaves `Gone` behind (also
    /// when the connection already has TLS, which the caller reports).
    pub fn take_plain(&mut self) -> Option<T> {
        match std::mem::replace(self, MaybeTls::Gone) {
            MaybeTls::Plain(plain) => Some(plain),
            other => {
                *self = other;
                None
            }
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection lost in a TLS handshake",
    )
}

impl<T: Transport, S: Transport> Transport for MaybeTls<T, S> {
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            MaybeTls::Plain(t) => t.read(buf).await,
            MaybeTls::Tls(t) => t.read(buf).await,
            MaybeTls::Gone => (Err(gone()), buf),
        }
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            MaybeTls::Plain(t) => t.write_all(buf).await,
            MaybeTls::Tls(t) => t.write_all(buf).await,
            MaybeTls::Gone => (Err(gone()), buf),
        }
    }
}
