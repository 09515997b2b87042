//! TLS material, on both sides of the proxy: reading PEM certificates and
//! keys, the certificates a TLS listener serves ([`CertStore`], chosen by
//! SNI, reloaded when their files change) and the client configuration the
//! proxy uses towards one service's instances ([`ClientTls`]: roots, the
//! name to verify, a client certificate, ALPN).
//!
//! A leaf: it knows files and rustls, nothing of the proxy. Config
//! validation loads a service's [`ClientTls`] (so `check` names a bad CA or
//! key file with its TOML key); the server and the upstream dialer use what
//! was loaded.
//!
//! rustls with the `ring` provider: pure Rust around a C/asm core built by
//! `cc`, so a fresh machine needs nothing beyond the Rust toolchain
//! (`aws-lc-rs`, rustls' default, needs cmake and takes minutes to build).
//! TLS 1.2 and 1.3 only (rustls has nothing older), rustls' default
//! AEAD-only cipher suites.

mod client;
mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use client::{Alpn, ClientSettings, ClientTls, Negotiated};
pub use server::CertStore;

/// One certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertFiles {
    /// The certificate chain (leaf first).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why certificates, keys or roots could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM section of the kind expected.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the key or the pair.
    #[error("{cert} / {key}: {source}")]
    Key {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// No certificate at all.
    #[error("a TLS listener needs at least one certificate")]
    Empty,
    /// The system's trust store had no usable root certificate.
    #[error("no trusted root certificates found on this system (set ca_file)")]
    NoSystemRoots,
    /// The name to verify instances by is not a DNS name or an IP address.
    #[error("{0:?} is not a DNS name or an IP address")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("{0}")]
    Config(#[from] rustls::Error),
}

/// The crypto provider every TLS configuration here uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file (at least one).
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("not a PEM certificate chain ({e})"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE section".to_owned(),
        });
    }
    Ok(chain)
}

/// The private key of a PEM file.
fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: format!("no usable private key ({e})"),
    })
}

/// A certificate chain and its key, checked to belong together.
fn certified_key(files: &CertFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(&files.cert, &read(&files.cert)?)?;
    let key = private_key(&files.key, &read(&files.key)?)?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Key {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })
}

#[cfg(test)]
mod tests;
