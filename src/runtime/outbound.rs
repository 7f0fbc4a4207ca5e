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
use crate::relay::connection::Connector;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("system trust store: {0}")]
    SystemRoots(String),
    #[error("CA file {path}: {message}")]
    RootsFile { path: String, message: String },
}

/// Open a TCP connection (plain tokio) with a connect timeout; TCP_NODELAY on.
pub async fn connect_tokio(addr: SocketAddr, timeout: Duration) -> io::Result<TokioStream> {
    let stream = connect_within(addr, timeout, tokio::net::TcpStream::connect(addr)).await?;
    // Pipelined SMTP writes whole command groups; Nagle would only delay them.
    stream.set_nodelay(true)?;
    Ok(TokioStream(stream))
}

/// Open a TCP connection (tokio-uring) with a connect timeout; TCP_NODELAY on.
pub async fn connect_uring(addr: SocketAddr, timeout: Duration) -> io::Result<UringStream> {
    let stream = connect_within(addr, timeout, tokio_uring::net::TcpStream::connect(addr)).await?;
    stream.set_nodelay(true)?;
    Ok(UringStream(stream))
}

/// Outbound connections on the plain tokio driver.
pub struct TokioConnector;

impl Connector for TokioConnector {
    type Stream = TokioStream;

    async fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TokioStream> {
        connect_tokio(addr, timeout).await
    }
}

/// Outbound connections on the tokio-uring driver.
pub struct UringConnector;

impl Connector for UringConnector {
    type Stream = UringStream;

    async fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<UringStream> {
        connect_uring(addr, timeout).await
    }
}

/// Run a connect attempt under `timeout`, naming the address in the error.
async fn connect_within<S>(
    addr: SocketAddr,
    timeout: Duration,
    connect: impl std::future::Future<Output = io::Result<S>>,
) -> io::Result<S> {
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("connect to {addr}: {e}"))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tls::TlsStream;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use rustls::pki_types::PrivateKeyDer;
    use rustls::ServerConfig;
    use std::future::Future;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Every test finishes well inside this, or fails instead of hanging.
    const TEST_DEADLINE: Duration = Duration::from_secs(10);
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

    struct TestCa {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl TestCa {
        fn new(name: &str) -> TestCa {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            TestCa { cert, key }
        }

        fn roots(&self) -> Arc<RootCertStore> {
            let mut roots = RootCertStore::empty();
            roots.add(self.cert.der().clone()).unwrap();
            Arc::new(roots)
        }

        /// A server configuration for a `localhost` leaf signed by this CA.
        fn server_config(&self) -> Arc<ServerConfig> {
            let key = KeyPair::generate().unwrap();
            let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            let leaf = params.signed_by(&key, &self.cert, &self.key).unwrap();
            server_config_for(leaf.der().clone(), &key)
        }
    }

    fn server_config_for(cert: CertificateDer<'static>, key: &KeyPair) -> Arc<ServerConfig> {
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key_der)
                .unwrap();
        Arc::new(config)
    }

    fn self_signed_localhost() -> Arc<ServerConfig> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        server_config_for(certified.cert.der().clone(), &certified.key_pair)
    }

    fn run<F: Future<Output = ()>>(test: F) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            tokio::time::timeout(TEST_DEADLINE, test)
                .await
                .expect("test ran past its deadline");
        });
    }

    /// One TLS server session on a loopback port: answers "pong:" + what it
    /// reads, once. Returns the address and the server's outcome.
    async fn tls_echo_server(
        config: Arc<ServerConfig>,
    ) -> (SocketAddr, tokio::task::JoinHandle<io::Result<()>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::task::spawn_local(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = TlsStream::accept(TokioStream(tcp), config).await?;
            let (n, buf) = tls.read(Vec::with_capacity(1024)).await;
            n?;
            let mut reply = b"pong:".to_vec();
            reply.extend_from_slice(&buf);
            let (written, _) = tls.write_all(reply).await;
            written
        });
        (addr, server)
    }

    async fn ping(stream: &mut impl Transport) -> Vec<u8> {
        let (written, _) = stream.write_all(b"ping".to_vec()).await;
        written.unwrap();
        let mut got = Vec::new();
        while got.len() < b"pong:ping".len() {
            let (n, buf) = stream.read(Vec::with_capacity(1024)).await;
            if n.unwrap() == 0 {
                break;
            }
            got.extend_from_slice(&buf);
        }
        got
    }

    #[test]
    fn verified_connection_carries_data_both_ways() {
        run(async {
            let ca = TestCa::new("tern test CA");
            let (addr, server) = tls_echo_server(ca.server_config()).await;
            let tcp = connect_tokio(addr, CONNECT_TIMEOUT).await.unwrap();
            let config = client_config(CertCheck::Roots(ca.roots()));
            let mut tls = TlsClientStream::connect(tcp, config, "localhost")
                .await
                .unwrap();
            assert!(
                tls.describe().starts_with("TLSv1.3 TLS13_"),
                "{}",
                tls.describe()
            );
            assert_eq!(ping(&mut tls).await, b"pong:ping");
            server.await.unwrap().unwrap();
        });
    }

    #[test]
    fn empty_roots_fail_with_a_certificate_error() {
        run(async {
            let ca = TestCa::new("tern test CA");
            let (addr, server) = tls_echo_server(ca.server_config()).await;
            let tcp = connect_tokio(addr, CONNECT_TIMEOUT).await.unwrap();
            let config = client_config(CertCheck::Roots(Arc::new(RootCertStore::empty())));
            let err = TlsClientStream::connect(tcp, config, "localhost")
                .await
                .err()
                .expect("an empty trust store must not verify anything");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            let message = err.to_string();
            assert!(
                message.contains("TLS handshake with localhost"),
                "{message}"
            );
            assert!(message.contains("UnknownIssuer"), "{message}");
            assert!(server.await.unwrap().is_err(), "the server sees the alert");
        });
    }

    #[test]
    fn another_ca_fails() {
        run(async {
            let ca = TestCa::new("tern test CA");
            let other = TestCa::new("some other CA");
            let (addr, _server) = tls_echo_server(ca.server_config()).await;
            let tcp = connect_tokio(addr, CONNECT_TIMEOUT).await.unwrap();
            let config = client_config(CertCheck::Roots(other.roots()));
            let err = TlsClientStream::connect(tcp, config, "localhost")
                .await
                .err()
                .expect("a certificate from another CA must fail");
            assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        });
    }

    #[test]
    fn wrong_name_fails_with_roots() {
        run(async {
            let ca = TestCa::new("tern test CA");
            let (addr, _server) = tls_echo_server(ca.server_config()).await;
            let tcp = connect_tokio(addr, CONNECT_TIMEOUT).await.unwrap();
            let config = client_config(CertCheck::Roots(ca.roots()));
            let err = TlsClientStream::connect(tcp, config, "mx.example.org")
                .await
                .err()
                .expect("a certificate for another name must fail");
            assert!(err.to_string().contains("not valid for name"), "{err}");
        });
    }

    #[test]
    fn opportunistic_accepts_self_signed_and_wrong_name() {
        run(async {
            for name in ["localhost", "mx.example.org", "127.0.0.1"] {
                let (addr, server) = tls_echo_server(self_signed_localhost()).await;
                let tcp = connect_tokio(addr, CONNECT_TIMEOUT).await.unwrap();
                let mut tls = TlsClientStream::connect(tcp, client_config(CertCheck::None), name)
                    .await
                    .unwrap();
                assert_eq!(ping(&mut tls).await, b"pong:ping", "{name}");
                server.await.unwrap().unwrap();
            }
        });
    }

    #[test]
    fn opportunistic_checks_tls12_handshake_signature_path() {
        run(async {
            let certified =
                rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
            let key_der = PrivateKeyDer::try_from(certified.key_pair.serialize_der()).unwrap();
            let tls12_only = ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key_der)
            .unwrap();
            let (addr, server) = tls_echo_server(Arc::new(tls12_only)).await;
            let tcp = connect_tokio(addr, CONNECT_TIMEOUT).await.unwrap();
            let mut tls =
                TlsClientStream::connect(tcp, client_config(CertCheck::None), "localhost")
                    .await
                    .unwrap();
            assert!(
                tls.describe().starts_with("TLSv1.2 TLS_ECDHE_"),
                "{}",
                tls.describe()
            );
            assert_eq!(ping(&mut tls).await, b"pong:ping");
            server.await.unwrap().unwrap();
        });
    }

    #[test]
    fn system_roots_reads_the_trust_store_named_by_ssl_cert_file() {
        // The only test in the crate that reads these variables, so changing
        // them does not race with another test.
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, TestCa::new("tern test CA").cert.pem()).unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        std::env::remove_var("SSL_CERT_DIR");
        std::env::set_var("SSL_CERT_FILE", &bundle);
        let loaded = system_roots().map(|roots| roots.len());
        std::env::set_var("SSL_CERT_FILE", &empty);
        let from_empty = system_roots();
        std::env::remove_var("SSL_CERT_FILE");
        assert_eq!(loaded.unwrap(), 1);
        let err = from_empty.unwrap_err();
        assert!(err.to_string().starts_with("system trust store:"), "{err}");
    }

    #[test]
    fn invalid_server_name_is_refused_before_any_io() {
        run(async {
            let (addr, _server) = tls_echo_server(self_signed_localhost()).await;
            let tcp = connect_tokio(addr, CONNECT_TIMEOUT).await.unwrap();
            let err = TlsClientStream::connect(tcp, client_config(CertCheck::None), "bad name!")
                .await
                .err()
                .expect("not a DNS name or IP literal");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        });
    }

    #[test]
    fn connect_to_a_closed_port_fails_quickly() {
        run(async {
            let addr = {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.local_addr().unwrap()
            };
            let started = std::time::Instant::now();
            let err = connect_tokio(addr, CONNECT_TIMEOUT)
                .await
                .err()
                .expect("nothing listens there");
            assert!(started.elapsed() < CONNECT_TIMEOUT);
            assert!(err.to_string().contains(&addr.to_string()), "{err}");
        });
    }

    #[test]
    fn connect_timeout_reports_timed_out() {
        run(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let err = connect_within(
                addr,
                Duration::from_millis(50),
                std::future::pending::<io::Result<()>>(),
            )
            .await
            .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert!(err.to_string().contains(&addr.to_string()), "{err}");
        });
    }

    #[test]
    fn peer_closing_mid_handshake_is_an_error() {
        run(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::task::spawn_local(async move {
                let (mut tcp, _) = listener.accept().await.unwrap();
                // Take the ClientHello, then hang up without answering.
                let mut hello = [0u8; 512];
                let _ = tcp.read(&mut hello).await;
            });
            let tcp = connect_tokio(addr, CONNECT_TIMEOUT).await.unwrap();
            let err = TlsClientStream::connect(tcp, client_config(CertCheck::None), "localhost")
                .await
                .err()
                .expect("the handshake cannot finish");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        });
    }

    #[test]
    fn plaintext_answer_to_client_hello_is_an_error() {
        run(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::task::spawn_local(async move {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut hello = [0u8; 512];
                let _ = tcp.read(&mut hello).await;
                let _ = tcp.write_all(b"220 mx.example.org ESMTP\r\n").await;
                // Hold the connection open: the client must fail on the bytes alone.
                tokio::time::sleep(TEST_DEADLINE).await;
            });
            let tcp = connect_tokio(addr, CONNECT_TIMEOUT).await.unwrap();
            let err = TlsClientStream::connect(tcp, client_config(CertCheck::None), "localhost")
                .await
                .err()
                .expect("SMTP text is not a TLS record");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        });
    }

    #[test]
    fn roots_from_pem_loads_a_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, TestCa::new("tern test CA").cert.pem()).unwrap();
        assert_eq!(roots_from_pem(&path).unwrap().len(), 1);
    }

    #[test]
    fn roots_from_pem_rejects_missing_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = roots_from_pem(&missing).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = roots_from_pem(&empty).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
    }

    #[test]
    fn uring_connection_carries_data_both_ways() {
        tokio_uring::start(async {
            tokio::time::timeout(TEST_DEADLINE, async {
                let ca = TestCa::new("tern test CA");
                let server_config = ca.server_config();
                let listener =
                    tokio_uring::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
                let addr = listener.local_addr().unwrap();
                let server = tokio_uring::spawn(async move {
                    let (tcp, _) = listener.accept().await?;
                    let mut tls = TlsStream::accept(UringStream(tcp), server_config).await?;
                    let (n, buf) = tls.read(Vec::with_capacity(1024)).await;
                    n?;
                    let mut reply = b"pong:".to_vec();
                    reply.extend_from_slice(&buf);
                    tls.write_all(reply).await.0
                });
                let tcp = connect_uring(addr, CONNECT_TIMEOUT).await.unwrap();
                let config = client_config(CertCheck::Roots(ca.roots()));
                let mut tls = TlsClientStream::connect(tcp, config, "localhost")
                    .await
                    .unwrap();
                assert_eq!(ping(&mut tls).await, b"pong:ping");
                server.await.unwrap().unwrap();
            })
            .await
            .expect("test ran past its deadline");
        });
    }
}
