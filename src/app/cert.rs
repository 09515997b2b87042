//! `wayfinder cert`: a local certificate authority and a server
//! certificate signed by it, as PEM files, for trying TLS listeners on a
//! development machine (never for production: the CA key lies beside the
//! certificates). Clients trust `ca.crt` (`curl --cacert ca.crt`).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// Why the certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the names or failed to sign.
    #[error("cannot make the certificate: {0}")]
    Make(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The files written.
#[derive(Debug)]
pub struct Made {
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The server certificate (leaf, then the CA) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `ca.crt`, `server.crt` and `server.key` into `dir` (created if
/// needed), the server certificate valid for `names` (DNS names, `*.`
/// wildcards, IP addresses).
pub fn make(dir: &Path, names: &[String]) -> Result<Made, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wayfinder local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("localhost", String::as_str),
    );
    let cert = params.signed_by(&key, &ca, &ca_key)?;

    let made = Made {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    write(&made.ca, &ca.pem())?;
    write(&made.cert, &format!("{}{}", cert.pem(), ca.pem()))?;
    write(&made.key, &key.serialize_pem())?;
    Ok(made)
}

fn write(path: &Path, text: &str) -> Result<(), CertError> {
    std::fs::write(path, text).map_err(|source| CertError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CertFiles, CertStore};

    #[test]
    fn makes_files_the_tls_listener_loads() {
        let dir = std::env::temp_dir().join(format!("wf-cert-{}", std::process::id()));
        let made = make(&dir, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let store = CertStore::new(vec![CertFiles {
            cert: made.cert.clone(),
            key: made.key.clone(),
        }]);
        assert!(store.is_ok(), "{:?}", store.err());
        assert!(std::fs::read_to_string(&made.ca)
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
