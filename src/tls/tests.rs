use super::*;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A CA and a directory to write certificates into.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("wf-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Named, or OpenSSL clients take a leaf with the same (empty)
        // issuer and subject for self-signed.
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("wayfinder test CA {tag}"),
        );
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// Writes a leaf for `names` as `file.crt` / `file.key`.
    fn leaf(&self, file: &str, names: &[&str]) -> CertFiles {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.ca, &self.ca_key)
            .unwrap();
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Handshakes with `store` as `sni` (verified against the CA for that
/// name): whether it succeeded.
async fn handshake(pki: &Pki, store: &Arc<CertStore>, sni: &str) -> Result<(), String> {
    let acceptor = TlsAcceptor::from(store.server_config().unwrap());
    let (client, server) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move { acceptor.accept(server).await.map(|_| ()) });
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let result = pki.connector().connect(name, client).await;
    let _ = server.await;
    result.map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn sni_picks_exact_and_wildcard_certificates_with_a_default() {
    let pki = Pki::new("sni");
    let a = pki.leaf("a", &["a.example", "localhost"]);
    let b = pki.leaf("b", &["*.b.example"]);
    let store = CertStore::new(vec![a, b]).unwrap();
    for ok in ["a.example", "localhost", "x.b.example", "y.b.example"] {
        assert_eq!(handshake(&pki, &store, ok).await, Ok(()), "{ok}");
    }
    // No certificate covers it: the default (a) is served, and the client's
    // verification of the name fails.
    let err = handshake(&pki, &store, "c.example").await.unwrap_err();
    assert!(
        err.contains("not valid for name") || err.contains("NotValidForName"),
        "{err}"
    );
    let err = handshake(&pki, &store, "b.example").await.unwrap_err();
    assert!(!err.is_empty(), "a wildcard does not cover its parent");
}

#[tokio::test]
async fn reload_swaps_certificates_and_keeps_the_old_set_on_errors() {
    let pki = Pki::new("reload");
    let files = pki.leaf("site", &["old.example"]);
    let store = CertStore::new(vec![files.clone()]).unwrap();
    assert_eq!(handshake(&pki, &store, "old.example").await, Ok(()));
    assert!(!store.changed());

    // A broken file: refused with its name, the old certificate stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    let err = store.reload().unwrap_err().to_string();
    assert!(err.contains("site.crt"), "{err}");
    assert_eq!(handshake(&pki, &store, "old.example").await, Ok(()));

    // A good replacement: new connections get it.
    let fresh = pki.leaf("site", &["new.example"]);
    assert_eq!(fresh, files);
    store.reload().unwrap();
    assert_eq!(handshake(&pki, &store, "new.example").await, Ok(()));
    assert!(handshake(&pki, &store, "old.example").await.is_err());
}

#[test]
fn mismatched_key_and_missing_files_are_named() {
    let pki = Pki::new("bad");
    let a = pki.leaf("a", &["a.example"]);
    let b = pki.leaf("b", &["b.example"]);
    let crossed = CertFiles {
        cert: a.cert.clone(),
        key: b.key.clone(),
    };
    let err = CertStore::new(vec![crossed]).unwrap_err().to_string();
    assert!(err.contains("a.crt") && err.contains("b.key"), "{err}");
    let missing = CertFiles {
        cert: pki.dir.join("nope.crt"),
        key: a.key,
    };
    let err = CertStore::new(vec![missing]).unwrap_err().to_string();
    assert!(err.contains("nope.crt"), "{err}");
    assert!(matches!(CertStore::new(vec![]), Err(TlsError::Empty)));
}

impl Pki {
    /// The CA certificate as a PEM file.
    fn ca_file(&self) -> PathBuf {
        let path = self.dir.join("ca.crt");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }
}

fn settings(ca_file: Option<PathBuf>) -> ClientSettings {
    ClientSettings {
        ca_file,
        server_name: None,
        client_cert: None,
        insecure_skip_verify: false,
    }
}

/// A one-connection TLS server on loopback serving `files`, offering
/// `alpn`, asking for a client certificate signed by `client_ca` when
/// given. Returns its address and the server side's handshake result.
async fn server(
    files: &CertFiles,
    alpn: &[&[u8]],
    client_ca: Option<&Pki>,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<Option<Vec<u8>>, String>>,
) {
    let key = certified_key(files, &provider()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.ca.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(key.cert.clone(), {
            let pem = std::fs::read(&files.key).unwrap();
            private_key(&files.key, &pem).unwrap()
        })
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        Ok(tls.get_ref().1.alpn_protocol().map(|p| p.to_vec()))
    });
    (addr, task)
}

async fn connect(
    tls: &ClientTls,
    addr: std::net::SocketAddr,
    alpn: Alpn,
) -> Result<Negotiated, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tls.connect(addr.ip(), tcp, alpn)
        .await
        .map(|(_, negotiated)| negotiated)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn client_verifies_by_ca_file_and_ip_or_configured_name() {
    let pki = Pki::new("client-ca");
    let by_ip = pki.leaf("ip", &["127.0.0.1"]);
    let by_name = pki.leaf("name", &["api.internal"]);

    let tls = ClientTls::load(settings(Some(pki.ca_file()))).unwrap();
    let (addr, server_side) = server(&by_ip, &[b"h2", b"http/1.1"], None).await;
    assert_eq!(connect(&tls, addr, Alpn::Both).await, Ok(Negotiated::H2));
    assert_eq!(server_side.await.unwrap(), Ok(Some(b"h2".to_vec())));

    // The instance's IP is not in a certificate made for a name...
    let (addr, _server_side) = server(&by_name, &[b"http/1.1"], None).await;
    let err = connect(&tls, addr, Alpn::Both).await.unwrap_err();
    assert!(
        err.contains("not valid for name") || err.contains("NotValidForName"),
        "{err}"
    );
    // ...unless that name is configured.
    let mut named = settings(Some(pki.ca_file()));
    named.server_name = Some("api.internal".to_owned());
    let tls = ClientTls::load(named).unwrap();
    let (addr, _server_side) = server(&by_name, &[b"http/1.1"], None).await;
    assert_eq!(connect(&tls, addr, Alpn::Both).await, Ok(Negotiated::Http1));
}

#[tokio::test]
async fn unknown_ca_is_refused_unless_verification_is_skipped() {
    let pki = Pki::new("client-unknown");
    let stranger = Pki::new("client-stranger");
    let leaf = stranger.leaf("ip", &["127.0.0.1"]);
    let tls = ClientTls::load(settings(Some(pki.ca_file()))).unwrap();
    let (addr, _server_side) = server(&leaf, &[], None).await;
    let err = connect(&tls, addr, Alpn::Http1).await.unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown issuer"),
        "{err}"
    );

    let mut insecure = settings(None);
    insecure.insecure_skip_verify = true;
    let tls = ClientTls::load(insecure).unwrap();
    let (addr, _server_side) = server(&leaf, &[], None).await;
    assert_eq!(
        connect(&tls, addr, Alpn::Http1).await,
        Ok(Negotiated::Http1)
    );
}

#[tokio::test]
async fn h2_only_refuses_an_instance_that_does_not_pick_it() {
    let pki = Pki::new("client-alpn");
    let leaf = pki.leaf("ip", &["127.0.0.1"]);
    let tls = ClientTls::load(settings(Some(pki.ca_file()))).unwrap();
    let (addr, _server_side) = server(&leaf, &[], None).await;
    let err = connect(&tls, addr, Alpn::H2).await.unwrap_err();
    assert!(err.contains("did not accept h2"), "{err}");
}

#[tokio::test]
async fn client_certificate_is_presented_when_the_instance_asks() {
    let pki = Pki::new("client-mtls");
    let leaf = pki.leaf("ip", &["127.0.0.1"]);
    let client = pki.leaf("client", &["wayfinder"]);

    let without = ClientTls::load(settings(Some(pki.ca_file()))).unwrap();
    let (addr, server_side) = server(&leaf, &[], Some(&pki)).await;
    // TLS 1.3: the client finishes before the server refuses; the server
    // side reports the missing certificate.
    let _ = connect(&without, addr, Alpn::Http1).await;
    let err = server_side.await.unwrap().unwrap_err();
    assert!(
        err.contains("certificate") || err.contains("Certificate"),
        "{err}"
    );

    let mut with = settings(Some(pki.ca_file()));
    with.client_cert = Some(client);
    let with = ClientTls::load(with).unwrap();
    let (addr, server_side) = server(&leaf, &[], Some(&pki)).await;
    assert_eq!(
        connect(&with, addr, Alpn::Http1).await,
        Ok(Negotiated::Http1)
    );
    assert_eq!(server_side.await.unwrap(), Ok(None));
}

#[test]
fn loads_compare_by_settings_and_file_contents_and_name_bad_files() {
    let pki = Pki::new("client-load");
    let ca = pki.ca_file();
    let a = ClientTls::load(settings(Some(ca.clone()))).unwrap();
    let b = ClientTls::load(settings(Some(ca.clone()))).unwrap();
    assert_eq!(a, b);
    let other = Pki::new("client-load-2");
    std::fs::write(&ca, other.ca.pem()).unwrap();
    let c = ClientTls::load(settings(Some(ca.clone()))).unwrap();
    assert_ne!(a, c, "a rotated CA file makes a different configuration");

    std::fs::write(&ca, "garbage").unwrap();
    let err = ClientTls::load(settings(Some(ca))).unwrap_err().to_string();
    assert!(err.contains("ca.crt"), "{err}");
    let missing = ClientTls::load(settings(Some(pki.dir.join("nope.pem"))));
    assert!(missing.unwrap_err().to_string().contains("nope.pem"));
    let mut bad_name = settings(None);
    bad_name.server_name = Some("not a name!".to_owned());
    bad_name.insecure_skip_verify = true;
    assert!(matches!(
        ClientTls::load(bad_name),
        Err(TlsError::ServerName(_))
    ));
}
