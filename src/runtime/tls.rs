//! TLS for any `Transport`: rustls driven by hand over owned buffers, so the
//! io_uring and epoll drivers share one TLS path (STARTTLS and, later,
//! implicit TLS). The record pump serves both the server side here and the
//! client side in `outbound`. Also loads the PEM certificate and key named
//! in `[tls]`.
//!
//! This module must never see SMTP: it only turns plaintext into records
//! and back, and it never reuses bytes received before the handshake began
//! (the caller's session has discarded them).

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{Connection, ProtocolVersion, ServerConfig, ServerConnection};

use super::transport::{Transport, READ_CHUNK};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("[tls] cert = {path}: {message}")]
    Cert { path: String, message: String },
    #[error("[tls] key = {path}: {message}")]
    Key { path: String, message: String },
    #[error("[tls]: certificate and key do not work together: {0}")]
    Config(rustls::Error),
}

/// Build the server-side TLS configuration from PEM files.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let cert_err = |message: String| TlsSetupError::Cert {
        path: cert.display().to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no CERTIFICATE block found".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsSetupError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Config)?
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .map_err(TlsSetupError::Config)?;
    Ok(Arc::new(config))
}

/// A TLS server stream over an inner transport.
pub struct TlsStream<T>(RecordPump<T>);

pub(super) fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<T: Transport> TlsStream<T> {
    /// Run the server handshake to completion over `inner`.
    pub async fn accept(inner: T, config: Arc<ServerConfig>) -> io::Result<Self> {
        let conn = ServerConnection::new(config).map_err(tls_error)?;
        RecordPump::handshake(inner, Connection::Server(conn))
            .await
            .map(TlsStream)
    }

    /// Protocol version and cipher suite, for logs and trace headers.
    pub fn describe(&self) -> String {
        self.0.describe()
    }
}

impl<T: Transport> Transport for TlsStream<T> {
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.0.read(buf).await
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.0.write_all(buf).await
    }
}

/// The record pump shared by both sides (`TlsStream` here, the client in
/// `outbound`): moves ciphertext between a rustls connection and `inner`.
pub(super) struct RecordPump<T> {
    inner: T,
    conn: Connection,
    /// Spare buffer for ciphertext moving to and from `inner`.
    io_buf: Vec<u8>,
    /// The peer closed the TCP stream or sent close_notify.
    eof: bool,
}

impl<T: Transport> RecordPump<T> {
    /// Run the handshake of `conn` (either side) to completion over `inner`.
    pub(super) async fn handshake(inner: T, conn: Connection) -> io::Result<Self> {
        let mut stream = RecordPump {
            inner,
            conn,
            io_buf: Vec::with_capacity(READ_CHUNK),
            eof: false,
        };
        while stream.conn.is_handshaking() {
            stream.flush_records().await?;
            if !stream.conn.is_handshaking() {
                break;
            }
            if stream.conn.wants_read() && !stream.read_records().await? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during TLS handshake",
                ));
            }
        }
        stream.flush_records().await?;
        Ok(stream)
    }

    /// Protocol version and cipher suite, for logs and trace headers.
    pub(super) fn describe(&self) -> String {
        // The spelling OpenSSL and Received headers use, not rustls' `TLSv1_3`.
        let version = match self.conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let suite = self
            .conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown");
        format!("{version} {suite}")
    }

    /// Send every pending TLS record to the peer.
    async fn flush_records(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut out = std::mem::take(&mut self.io_buf);
            out.clear();
            self.conn.write_tls(&mut out)?;
            let (result, buf) = self.inner.write_all(out).await;
            self.io_buf = buf;
            result?;
        }
        Ok(())
    }

    /// Read ciphertext from the peer and process it; false at end of stream.
    async fn read_records(&mut self) -> io::Result<bool> {
        let buf = std::mem::take(&mut self.io_buf);
        let (result, buf) = self.inner.read(buf).await;
        self.io_buf = buf;
        let n = result?;
        if n == 0 {
            return Ok(false);
        }
        let mut offered = &self.io_buf[..n];
        while !offered.is_empty() {
            self.conn.read_tls(&mut offered)?;
            if let Err(e) = self.conn.process_new_packets() {
                // Tell the peer why (an alert) before failing.
                let _ = self.flush_records().await;
                return Err(tls_error(e));
            }
        }
        Ok(true)
    }
}

impl<T: Transport> Transport for RecordPump<T> {
    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        let want = buf.capacity().max(READ_CHUNK);
        buf.resize(want, 0);
        loop {
            match self.conn.reader().read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return (Ok(n), buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    buf.clear();
                    return (Err(e), buf);
                }
            }
            if self.eof {
                buf.clear();
                return (Ok(0), buf);
            }
            match self.read_records().await {
                Ok(true) => {
                    // Answer key updates and the like promptly.
                    if let Err(e) = self.flush_records().await {
                        buf.clear();
                        return (Err(e), buf);
                    }
                }
                Ok(false) => self.eof = true,
                Err(e) => {
                    buf.clear();
                    return (Err(e), buf);
                }
            }
        }
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let result = match self.conn.writer().write_all(&buf) {
            Ok(()) => self.flush_records().await,
            Err(e) => Err(e),
        };
        (result, buf)
    }
}
