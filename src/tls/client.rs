//! TLS towards one service's instances: which roots verify them (the
//! system's trust store, or a CA file), which name their certificate must
//! carry (a configured name, or the instance's IP address), an optional
//! client certificate (mTLS), and the ALPN protocols offered. Loaded once
//! per configuration (start and each reload), then shared by every
//! connection to the service, so rustls' session cache resumes sessions
//! across them.
//!
//! `insecure_skip_verify` accepts any certificate (the handshake's
//! signatures are still checked, so the peer holds the key of the
//! certificate it sent, whatever that is); the app warns at start.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{certificates, private_key, provider, read, CertFiles, TlsError};

/// The application protocols offered in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1` only.
    Http1,
    /// `h2` only: an instance that does not pick it is refused.
    H2,
    /// `h2` and `http/1.1`: the instance chooses.
    Both,
}

/// The protocol the instance chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// HTTP/1.1 (chosen, or no ALPN answer).
    Http1,
    /// HTTP/2.
    H2,
}

/// What a service's `tls` table says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientSettings {
    /// PEM file of the CA certificates to trust; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    /// The name sent in SNI and verified in the instance's certificate;
    /// `None`: the instance's IP address (verified against IP SANs, no
    /// SNI).
    pub server_name: Option<String>,
    /// A client certificate and key presented to instances that ask.
    pub client_cert: Option<CertFiles>,
    /// Accept any certificate (testing only; warned about at start).
    pub insecure_skip_verify: bool,
}

/// A loaded client configuration for one service.
pub struct ClientTls {
    settings: ClientSettings,
    /// The bytes of the files read, so two loads compare equal only when
    /// nothing changed on disk (a reload with a rotated CA file replaces
    /// the service's configuration even when its settings did not change).
    material: Vec<Vec<u8>>,
    server_name: Option<ServerName<'static>>,
    /// One connector per ALPN offer ([`Alpn::Http1`], [`Alpn::H2`],
    /// [`Alpn::Both`]), sharing roots, client certificate and session
    /// cache.
    connectors: [TlsConnector; 3],
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings && self.material == other.material
    }
}

impl Eq for ClientTls {}

/// The system's trust store, read once per process.
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Option<Arc<RootCertStore>>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "a system root certificate could not be read");
            }
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            (added > 0).then(|| Arc::new(roots))
        })
        .clone()
        .ok_or(TlsError::NoSystemRoots)
}

impl ClientTls {
    /// Reads the files `settings` names and builds the configuration.
    pub fn load(settings: ClientSettings) -> Result<ClientTls, TlsError> {
        let provider = provider();
        let mut material = Vec::new();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = if settings.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider.clone())))
        } else {
            let roots = match &settings.ca_file {
                None => system_roots()?,
                Some(path) => {
                    let pem = read(path)?;
                    let mut roots = RootCertStore::empty();
                    for cert in certificates(path, &pem)? {
                        roots.add(cert).map_err(|e| TlsError::Pem {
                            path: path.clone(),
                            what: format!("not a usable CA certificate ({e})"),
                        })?;
                    }
                    material.push(pem);
                    Arc::new(roots)
                }
            };
            builder.with_root_certificates(roots)
        };
        let config = match &settings.client_cert {
            None => builder.with_no_client_auth(),
            Some(files) => {
                let cert_pem = read(&files.cert)?;
                let key_pem = read(&files.key)?;
                let chain = certificates(&files.cert, &cert_pem)?;
                let key = private_key(&files.key, &key_pem)?;
                material.push(cert_pem);
                material.push(key_pem);
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|source| TlsError::Key {
                        cert: files.cert.clone(),
                        key: files.key.clone(),
                        source,
                    })?
            }
        };
        // Clones of one configuration share its session store, so a
        // session resumes whichever ALPN offer made it.
        let with_alpn = |alpn: &[&[u8]]| {
            let mut c = config.clone();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            TlsConnector::from(Arc::new(c))
        };
        let connectors = [
            with_alpn(&[b"http/1.1"]),
            with_alpn(&[b"h2"]),
            with_alpn(&[b"h2", b"http/1.1"]),
        ];
        let server_name = match &settings.server_name {
            None => None,
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| TlsError::ServerName(name.clone()))?,
            ),
        };
        Ok(ClientTls {
            settings,
            material,
            server_name,
            connectors,
        })
    }

    /// What it was loaded from.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The TLS handshake over `tcp`, connected to the instance at `ip`,
    /// offering `alpn`. An instance that does not choose `h2` when only
    /// `h2` was offered is refused.
    pub async fn connect(
        &self,
        ip: IpAddr,
        tcp: TcpStream,
        alpn: Alpn,
    ) -> io::Result<(TlsStream<TcpStream>, Negotiated)> {
        let name = self
            .server_name
            .clone()
            .unwrap_or(ServerName::IpAddress(ip.into()));
        let connector = match alpn {
            Alpn::Http1 => &self.connectors[0],
            Alpn::H2 => &self.connectors[1],
            Alpn::Both => &self.connectors[2],
        };
        let stream = connector.connect(name, tcp).await?;
        let negotiated = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Negotiated::H2,
            _ => Negotiated::Http1,
        };
        if alpn == Alpn::H2 && negotiated != Negotiated::H2 {
            return Err(io::Error::other("the instance did not accept h2 (ALPN)"));
        }
        Ok((stream, negotiated))
    }
}

/// `insecure_skip_verify`: every certificate is taken; signatures over
/// the handshake are still verified.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
