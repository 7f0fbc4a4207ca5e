//! Outbound connections for the relay: TCP connect with a deadline on either
//! driver, the rustls client configuration (opportunistic or verified), and
//! the TLS client stream that STARTTLS upgrades a connection to.
//!
//! This module must never see SMTP (the sans-IO client decides when to start
//! TLS and what to do when it fails) and must never reuse plaintext bytes
//! received before the handshake began.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, Connection, DigitallySignedStruct, RootCertStore};
use tracing::warn;

use super::tls::{tls_error, RecordPump};
use super::transport::{TokioStream, Transport, UringStream};

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("system trust store: {0}")]
    SystemRoots(String),
    #[error("CA file {path}: {message}")]
    RootsFile { path: String, message: String },
}

/// Open a TCP connection (plain tokio) with a connect timeout; TCP_NODELAY on.
pub async fn connect_tokio(addr: SocketAddr, timeout: Duration) -> io::Result<TokioStream> {
    let stream = within(addr, timeout, tokio::net::TcpStream::connect(addr)).await?;
    // Pipelined SMTP writes whole command groups; Nagle would only delay them.
    stream.set_nodelay(true)?;
    Ok(TokioStream(stream))
}

/// Open a TCP connection (tokio-uring) with a connect timeout; TCP_NODELAY on.
pub async fn connect_uring(addr: SocketAddr, timeout: Duration) -> io::Result<UringStream> {
    let stream = within(addr, timeout, tokio_uring::net::TcpStream::connect(addr)).await?;
    stream.set_nodelay(true)?;
    Ok(UringStream(stream))
}

/// Run a connect attempt under `timeout`, naming the address in the error.
async fn within<S>(
    addr: SocketAddr,
    timeout: Duration,
    connect: impl std::future::Future<Output = io::Result<S>>,
) -> io::Result<S> {
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(io::Error::new(
            e.kind(),
            format!("connect to {addr}: {e}"),
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {addr}: no answer within {timeout:?}"),
        )),
    }
}

/// How the server certificate is checked.
#[derive(Debug, Clone)]
pub enum CertCheck {
    /// Opportunistic TLS (RFC 7435): encrypt, accept any certificate (most MX
    /// hosts present self-signed or mismatched names); still verifies the
    /// handshake signature.
    None,
    /// Verify chain and name against these roots (system roots, or a test CA).
    Roots(Arc<RootCertStore>),
}

/// Client configuration with the ring provider and rustls' safe defaults.
pub fn client_config(check: CertCheck) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // The ring provider implements every default protocol version and
        // cipher suite, so this cannot fail.
        .expect("the ring provider supports rustls' default protocol versions");
    let config = match check {
        CertCheck::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate { algorithms }))
            .with_no_client_auth(),
        CertCheck::Roots(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
    };
    Arc::new(config)
}

/// The platform's trust store, via rustls-native-certs. Unreadable entries
/// are logged and skipped; an empty result is an error.
pub fn system_roots() -> Result<RootCertStore, OutboundError> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        warn!(%error, "system trust store: skipped an entry");
    }
    let mut roots = RootCertStore::empty();
    let (added, rejected) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let mut reasons: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        if rejected > 0 {
            reasons.push(format!("{rejected} certificates could not be parsed"));
        }
        if reasons.is_empty() {
            reasons.push("no certificates found".into());
        }
        return Err(OutboundError::SystemRoots(reasons.join("; ")));
    }
    Ok(roots)
}

/// Trust anchors from a PEM file (a private or test CA).
pub fn roots_from_pem(path: &Path) -> Result<RootCertStore, OutboundError> {
    let file_err = |message: String| OutboundError::RootsFile {
        path: path.display().to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no CERTIFICATE block found".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| file_err(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// RFC 7435 opportunistic security: any certificate is accepted, but the
/// handshake signatures must verify against the presented key, so the
/// session is at least bound to whoever holds that key.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS client stream over an inner transport.
pub struct TlsClientStream<T>(RecordPump<T>);

impl<T: Transport> TlsClientStream<T> {
    /// Handshake with SNI = `server_name` (an MX host name; an IP literal
    /// when there is no name, in which case no SNI is sent).
    pub async fn connect(
        inner: T,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> io::Result<Self> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TLS server name {server_name:?}: {e}"),
            )
        })?;
        let conn = ClientConnection::new(config, name).map_err(tls_error)?;
        match RecordPump::handshake(inner, Connection::Client(conn)).await {
            Ok(pump) => Ok(TlsClientStream(pump)),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("TLS handshake with {server_name}: {e}"),
            )),
        }
    }

    /// Protocol version and cipher suite, e.g. "TLSv1.3 TLS13_AES_256_GCM_SHA384".
    pub fn describe(&self) -> String {
        self.0.describe()
    }
}

impl<T: Transport> Transport for TlsClientStream<T> {
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.0.read(buf).await
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.0.write_all(buf).await
    }
}
