use super::*;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
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
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wayfinder test CA");
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
