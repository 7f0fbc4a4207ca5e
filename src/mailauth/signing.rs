//! DKIM signing of outbound mail (RFC 6376 with rsa-sha256, RFC 8463 with
//! ed25519-sha256), relaxed/relaxed canonicalization, with one key per
//! signing domain loaded once at start from `[[mail_auth.signing]]`.
//!
//! It must never sign mail from an untrusted client (that would vouch for
//! forged mail), never read a key file after start-up, and never stop a
//! delivery because signing failed (the message leaves unsigned, counted).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use mail_auth::common::crypto::{Algorithm, DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::DkimSigner;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use tracing::warn;

use super::fields::{author_domain, fields_to_sign};
use super::is_trusted;
use crate::config::{DkimAlgorithm, DkimSigningEntry};
use crate::envelope::Envelope;
use crate::smtp::RelayAccess;

/// The `algorithm` label of `tern_dkim_signed_total`.
pub const ALGORITHM_LABELS: [&str; 2] = ["rsa-sha256", "ed25519-sha256"];

/// A key could not be loaded: start-up stops, naming the domain and file.
#[derive(Debug, thiserror::Error)]
pub enum SigningSetupError {
    #[error("[[mail_auth.signing]] {domain}: cannot read key_file {}: {source}", file.display())]
    Read {
        domain: String,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("[[mail_auth.signing]] {domain}: key_file {} holds no usable {algorithm} private key: {reason}", file.display())]
    Key {
        domain: String,
        file: PathBuf,
        algorithm: &'static str,
        reason: String,
    },
}

/// A loaded key shared by every core; mail-auth's signer owns its key, so
/// each signature gets a signer around a clone of this handle.
#[derive(Clone)]
struct SharedKey(Arc<DkimKey>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

struct DomainKey {
    domain: String,
    selector: String,
    key: SharedKey,
    algorithm: &'static str,
    headers: Vec<String>,
}

/// Every signing key, by domain (lower case); a domain may have several
/// (e.g. RSA and Ed25519), each adds its signature.
pub struct DkimSigners {
    keys: HashMap<String, Vec<DomainKey>>,
    access: RelayAccess,
}

fn algorithm_label(algorithm: DkimAlgorithm) -> &'static str {
    match algorithm {
        DkimAlgorithm::RsaSha256 => ALGORITHM_LABELS[0],
        DkimAlgorithm::Ed25519Sha256 => ALGORITHM_LABELS[1],
    }
}

fn load_key(entry: &DkimSigningEntry) -> Result<DkimKey, SigningSetupError> {
    let pem = std::fs::read(&entry.key_file).map_err(|source| SigningSetupError::Read {
        domain: entry.domain.clone(),
        file: entry.key_file.clone(),
        source,
    })?;
    let bad = |reason: String| SigningSetupError::Key {
        domain: entry.domain.clone(),
        file: entry.key_file.clone(),
        algorithm: algorithm_label(entry.algorithm),
        reason,
    };
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad(e.to_string()))?;
    match entry.algorithm {
        DkimAlgorithm::RsaSha256 => RsaKey::<Sha256>::from_key_der(der)
            .map(DkimKey::Rsa)
            .map_err(|e| bad(e.to_string())),
        DkimAlgorithm::Ed25519Sha256 => match der {
            PrivateKeyDer::Pkcs8(pkcs8) => {
                Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
                    .map(DkimKey::Ed25519)
                    .map_err(|e| bad(e.to_string()))
            }
            _ => Err(bad(
                "an Ed25519 key must be PKCS#8 (BEGIN PRIVATE KEY)".into()
            )),
        },
    }
}

impl DkimSigners {
    /// Load every key of `entries`; `access` tells trusted clients.
    pub fn load(
        entries: &[DkimSigningEntry],
        access: RelayAccess,
    ) -> Result<DkimSigners, SigningSetupError> {
        let mut keys: HashMap<String, Vec<DomainKey>> = HashMap::with_capacity(entries.len());
        for entry in entries {
            let domain = entry.domain.trim_end_matches('.').to_ascii_lowercase();
            let key = DomainKey {
                domain: domain.clone(),
                selector: entry.selector.clone(),
                key: SharedKey(Arc::new(load_key(entry)?)),
                algorithm: algorithm_label(entry.algorithm),
                headers: entry.headers.clone(),
            };
            keys.entry(domain).or_default().push(key);
        }
        Ok(DkimSigners { keys, access })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `DKIM-Signature:` fields (CRLF included) to put on top of
    /// `data`: for a trusted client's message whose From: domain, or else
    /// envelope sender domain, has keys, one per key. None when nothing is
    /// to be signed or every signing failed (logged and counted).
    pub fn signature_fields(&self, envelope: &Envelope, data: &[u8]) -> Option<Vec<u8>> {
        if self.keys.is_empty() || !is_trusted(&envelope.client, &self.access) {
            return None;
        }
        let sender_domain = envelope
            .sender
            .rsplit_once('@')
            .map(|(_, domain)| domain.trim_end_matches('.').to_ascii_lowercase());
        let keys = author_domain(data)
            .and_then(|domain| self.keys.get(&domain))
            .or_else(|| sender_domain.and_then(|domain| self.keys.get(&domain)))?;
        let mut fields = Vec::new();
        for key in keys {
            let signed = DkimSigner::from_key(key.key.clone())
                .domain(key.domain.clone())
                .selector(key.selector.clone())
                .headers(fields_to_sign(data, &key.headers))
                .sign(data);
            match signed {
                Ok(signature) => {
                    metrics::counter!("tern_dkim_signed_total", "algorithm" => key.algorithm)
                        .increment(1);
                    fields.extend_from_slice(signature.to_header().as_bytes());
                }
                Err(e) => {
                    metrics::counter!("tern_dkim_sign_errors_total").increment(1);
                    warn!(
                        domain = %key.domain,
                        selector = %key.selector,
                        error = %e,
                        "DKIM signing failed; this signature is left out"
                    );
                }
            }
        }
        (!fields.is_empty()).then_some(fields)
    }
}
