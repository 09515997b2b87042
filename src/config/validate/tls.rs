//! `[[tls]]`: TLS listener addresses (none taken twice, none overlapping a
//! plain listener) and their certificate files (relative to the config
//! file's directory, and present: `check` says so before `run` would
//! refuse to start; whether they parse is checked when they are loaded).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::global::{listen_addr, overlap};
use crate::config::check::Cx;
use crate::config::raw::{RawCertificate, RawTls};
use crate::config::{ConfigError, TlsListener};
use crate::tls::CertFiles;

/// Every `[[tls]]` table; `plain` are the plain listeners they must not
/// overlap.
pub(super) fn tls(cx: &Cx<'_>, raw: &[RawTls], plain: &[SocketAddr]) -> Vec<TlsListener> {
    let mut taken: Vec<SocketAddr> = plain.to_vec();
    let mut out = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        let mut listen = Vec::new();
        if t.listen.get_ref().is_empty() {
            cx.push(cx.err_at(
                &t.listen,
                format!("tls[{i}].listen"),
                "list at least one address",
            ));
        }
        for (j, s) in t.listen.get_ref().iter().enumerate() {
            let key = format!("tls[{i}].listen[{j}]");
            let Some(addr) = cx.ok(listen_addr(cx, s, &key)) else {
                continue;
            };
            if let Some(other) = taken.iter().find(|&&o| overlap(o, addr)) {
                cx.push(cx.err_at(
                    s,
                    key,
                    format!("{addr} overlaps another listener ({other})"),
                ));
                continue;
            }
            taken.push(addr);
            listen.push(addr);
        }
        let certs = t.certificates.get_ref();
        if certs.is_empty() {
            cx.push(cx.err_at(
                &t.certificates,
                format!("tls[{i}].certificates"),
                "list at least one { cert = \"...\", key = \"...\" }",
            ));
        }
        let certificates = certs
            .iter()
            .enumerate()
            .filter_map(|(j, c)| cx.ok(cert(cx, c, &format!("tls[{i}].certificates[{j}]"))))
            .collect();
        out.push(TlsListener {
            listen,
            certificates,
        });
    }
    out
}

fn cert(cx: &Cx<'_>, c: &RawCertificate, key: &str) -> Result<CertFiles, ConfigError> {
    Ok(CertFiles {
        cert: file(cx, &c.cert, &format!("{key}.cert"))?,
        key: file(cx, &c.key, &format!("{key}.key"))?,
    })
}

/// A file path relative to the config file's directory, which must exist.
pub(super) fn file(cx: &Cx<'_>, s: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
    let p = PathBuf::from(s.get_ref());
    let p = if p.is_relative() {
        cx.file().parent().unwrap_or(Path::new(".")).join(p)
    } else {
        p
    };
    if !p.is_file() {
        return Err(cx.err_at(
            s,
            key,
            format!(
                "{} is not a readable file (`wayfinder cert` makes a local test certificate)",
                p.display()
            ),
        ));
    }
    Ok(p)
}
