//! TLS termination: the certificates of a TLS listener. They come from PEM
//! files and are chosen by SNI: a certificate serves every name it is valid
//! for (its exact and wildcard DNS names, as webpki matches them), the
//! first configured one serves clients that send no name or a name no
//! certificate covers. ALPN offers `h2` and `http/1.1`; TLS 1.2 and 1.3
//! only (rustls has nothing older), its default (modern, AEAD-only)
//! cipher suites; sessions resume by tickets and from a session cache.
//!
//! Reloading: [`CertStore::reload`] reads every file again and swaps the
//! whole set in at once; a file that cannot be read or parsed, a key that
//! does not match its certificate, leaves the running set as it was and
//! says which file and why. New connections get the new set; open ones
//! keep theirs. The server calls it when a file's modification time
//! changes and on SIGHUP.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::ServerName;

use super::{certified_key, provider, CertFiles, TlsError};

/// One loaded certificate.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' modification times when read (to notice changes).
    stamps: (Option<SystemTime>, Option<SystemTime>),
}

/// The certificates of one TLS listener, swapped as a whole on reload.
#[derive(Debug)]
pub struct CertStore {
    files: Vec<CertFiles>,
    loaded: ArcSwap<Vec<Loaded>>,
    provider: Arc<CryptoProvider>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Loads one certificate chain and key.
fn load(files: &CertFiles, provider: &CryptoProvider) -> Result<Loaded, TlsError> {
    let stamps = (modified(&files.cert), modified(&files.key));
    let certified = certified_key(files, provider)?;
    Ok(Loaded {
        key: Arc::new(certified),
        stamps,
    })
}

impl CertStore {
    /// Loads `files` (the first is the default certificate).
    pub fn new(files: Vec<CertFiles>) -> Result<Arc<CertStore>, TlsError> {
        if files.is_empty() {
            return Err(TlsError::Empty);
        }
        let provider = provider();
        let loaded = files
            .iter()
            .map(|f| load(f, &provider))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(CertStore {
            files,
            loaded: ArcSwap::from_pointee(loaded),
            provider,
        }))
    }

    /// Whether a file changed on disk since it was loaded.
    pub fn changed(&self) -> bool {
        let loaded = self.loaded.load();
        self.files
            .iter()
            .zip(loaded.iter())
            .any(|(f, l)| (modified(&f.cert), modified(&f.key)) != l.stamps)
    }

    /// Reads every file again and swaps the new set in; on any error the
    /// running set stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = self
            .files
            .iter()
            .map(|f| load(f, &self.provider))
            .collect::<Result<Vec<_>, _>>()?;
        self.loaded.store(Arc::new(fresh));
        Ok(())
    }

    /// A rustls server configuration answering from this store: ALPN `h2`
    /// and `http/1.1`, TLS 1.2 and 1.3, tickets and a session cache.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.loaded.load();
        let by_name = hello
            .server_name()
            .and_then(|n| ServerName::try_from(n).ok())
            .and_then(|name| {
                loaded.iter().find(|l| {
                    l.key
                        .end_entity_cert()
                        .ok()
                        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                        .is_some_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
                })
            });
        by_name.or_else(|| loaded.first()).map(|l| l.key.clone())
    }
}
