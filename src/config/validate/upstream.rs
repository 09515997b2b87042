//! `protocol` and `tls` of a service: how the proxy speaks to its
//! instances. The TLS files are read and the client configuration built
//! here, so `check` names a missing or broken CA or client certificate with
//! its key and line, and a reload with a bad file is refused as a whole.

use std::sync::Arc;

use toml::Spanned;

use super::tls::file;
use crate::config::check::Cx;
use crate::config::raw::{RawProtocol, RawService, RawUpstreamTls, RawUpstreamTlsTable};
use crate::config::{Protocol, Upstream};
use crate::tls::{CertFiles, ClientSettings, ClientTls, TlsError};

/// A service's `protocol` and `tls`, under `key` (`services.NAME`).
pub(super) fn upstream(cx: &Cx<'_>, s: &RawService, key: &str) -> Upstream {
    let protocol = match s.protocol.as_ref().map(|p| *p.get_ref()) {
        None | Some(RawProtocol::Http1) => Protocol::Http1,
        Some(RawProtocol::H2c) => Protocol::H2c,
        Some(RawProtocol::H2) => Protocol::H2,
        Some(RawProtocol::Auto) => Protocol::Auto,
    };
    let table = match s.tls.as_ref().map(|t| (t, t.get_ref())) {
        Some((_, RawUpstreamTls::On(table))) => Some(table),
        Some((at, RawUpstreamTls::Off)) if protocol == Protocol::H2 => {
            cx.push(cx.err_at(
                at,
                format!("{key}.tls"),
                "protocol = \"h2\" is HTTP/2 over TLS; use \"h2c\" for plain HTTP/2",
            ));
            return Upstream::default();
        }
        // `protocol = "h2"` alone: TLS with the system's roots.
        None if protocol == Protocol::H2 => Some(&DEFAULT_TABLE),
        _ => None,
    };
    let Some(table) = table else {
        return Upstream {
            protocol,
            protocol_written: s.protocol.is_some(),
            tls: None,
        };
    };
    if protocol == Protocol::H2c {
        let at = s.protocol.as_ref().expect("h2c was written");
        cx.push(cx.err_at(
            at,
            format!("{key}.protocol"),
            "\"h2c\" is HTTP/2 without TLS; with tls use \"h2\" (or \"auto\")",
        ));
        return Upstream::default();
    }
    let tls = settings(cx, table, &format!("{key}.tls")).and_then(|settings| {
        ClientTls::load(settings)
            .map_err(|e| cx.push(load_error(cx, s.tls.as_ref(), table, key, e)))
            .ok()
    });
    Upstream {
        protocol,
        protocol_written: s.protocol.is_some(),
        tls: tls.map(Arc::new),
    }
}

const DEFAULT_TABLE: RawUpstreamTlsTable = RawUpstreamTlsTable {
    ca_file: None,
    server_name: None,
    cert: None,
    key: None,
    insecure_skip_verify: false,
};

/// The table's settings, with its files resolved and present.
fn settings(cx: &Cx<'_>, t: &RawUpstreamTlsTable, key: &str) -> Option<ClientSettings> {
    let path = |v: &Option<Spanned<String>>, name: &str| match v {
        None => Some(None),
        Some(s) => cx.ok(file(cx, s, &format!("{key}.{name}"))).map(Some),
    };
    let ca_file = path(&t.ca_file, "ca_file")?;
    let client_cert = match (&t.cert, &t.key) {
        (None, None) => None,
        (Some(cert), Some(k)) => Some(CertFiles {
            cert: cx.ok(file(cx, cert, &format!("{key}.cert")))?,
            key: cx.ok(file(cx, k, &format!("{key}.key")))?,
        }),
        (Some(at), None) | (None, Some(at)) => {
            cx.push(cx.err_at(
                at,
                key.to_owned(),
                "a client certificate needs both cert and key",
            ));
            return None;
        }
    };
    if let (true, Some(at)) = (t.insecure_skip_verify, &t.ca_file) {
        cx.push(cx.err_at(
            at,
            format!("{key}.ca_file"),
            "insecure_skip_verify = true verifies nothing: remove one of the two",
        ));
        return None;
    }
    Some(ClientSettings {
        ca_file,
        server_name: t.server_name.as_ref().map(|n| n.get_ref().clone()),
        client_cert,
        insecure_skip_verify: t.insecure_skip_verify,
    })
}

/// A load error, at the key whose file or value it concerns.
fn load_error(
    cx: &Cx<'_>,
    tls: Option<&Spanned<RawUpstreamTls>>,
    t: &RawUpstreamTlsTable,
    key: &str,
    e: TlsError,
) -> crate::config::ConfigError {
    let names = |v: &Option<Spanned<String>>, path: &std::path::Path| {
        v.as_ref()
            .is_some_and(|s| path.ends_with(std::path::Path::new(s.get_ref())))
    };
    let (at, name) = match &e {
        TlsError::Read { path, .. } | TlsError::Pem { path, .. } if names(&t.ca_file, path) => {
            (t.ca_file.as_ref().map(Spanned::span), "tls.ca_file")
        }
        TlsError::Read { path, .. } | TlsError::Pem { path, .. } if names(&t.key, path) => {
            (t.key.as_ref().map(Spanned::span), "tls.key")
        }
        TlsError::Read { .. } | TlsError::Pem { .. } | TlsError::Key { .. } => {
            (t.cert.as_ref().map(Spanned::span), "tls.cert")
        }
        TlsError::ServerName(_) => (t.server_name.as_ref().map(Spanned::span), "tls.server_name"),
        _ => (tls.map(Spanned::span), "tls"),
    };
    cx.err(at, format!("{key}.{name}"), e.to_string())
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{err, parse};
    use crate::config::Protocol;

    const SERVICE: &str = "[services.api]\ninstances = [\"127.0.0.1:9001\"]\n";

    #[test]
    fn protocol_and_tls_forms() {
        let c = parse(&format!("{SERVICE}protocol = \"h2c\"\n")).unwrap();
        let up = &c.services["api"].policy.upstream;
        assert_eq!((up.protocol, up.tls.is_none()), (Protocol::H2c, true));

        let c = parse(&format!("{SERVICE}protocol = \"h2\"\n")).unwrap();
        let up = &c.services["api"].policy.upstream;
        assert_eq!(up.protocol, Protocol::H2);
        assert!(up.tls.is_some(), "h2 implies TLS");

        let c = parse(&format!(
            "{SERVICE}tls = {{ insecure_skip_verify = true, server_name = \"api.internal\" }}\n"
        ))
        .unwrap();
        let tls = c.services["api"].policy.upstream.tls.clone().unwrap();
        assert!(tls.settings().insecure_skip_verify);
        assert_eq!(tls.settings().server_name.as_deref(), Some("api.internal"));

        let c = parse(&format!("{SERVICE}tls = false\n")).unwrap();
        assert!(c.services["api"].policy.upstream.tls.is_none());
    }

    #[test]
    fn contradictions_and_bad_files_are_named() {
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "protocol = \"h2c\"\ntls = true\n",
                3,
                "services.api.protocol",
                "h2c",
            ),
            (
                "protocol = \"h2\"\ntls = false\n",
                4,
                "services.api.tls",
                "h2c",
            ),
            (
                "tls = { cert = \"c.pem\" }\n",
                3,
                "services.api.tls",
                "both cert and key",
            ),
            (
                "tls = { ca_file = \"/nonexistent/ca.pem\" }\n",
                3,
                "services.api.tls.ca_file",
                "not a readable file",
            ),
            (
                "tls = { verify = false }\n",
                3,
                "services.api.tls.verify",
                "unknown field",
            ),
            (
                "protocol = \"http3\"\n",
                3,
                "services.api.protocol",
                "unknown variant",
            ),
            (
                "tls = { server_name = \"bad name!\", insecure_skip_verify = true }\n",
                3,
                "services.api.tls.server_name",
                "not a DNS name",
            ),
        ];
        for (text, line, key, message) in cases {
            let (l, k, m) = err(&format!("{SERVICE}{text}"));
            assert_eq!((l, k.as_str()), (*line, *key), "{text}: {m}");
            assert!(m.contains(message), "{text}: {m}");
        }
    }

    #[test]
    fn a_broken_ca_file_is_refused_with_its_key() {
        let dir = std::env::temp_dir().join(format!("wf-upstream-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not pem").unwrap();
        let (line, key, message) = err(&format!(
            "{SERVICE}tls = {{ ca_file = {:?} }}\n",
            ca.display().to_string()
        ));
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            (line, key.as_str()),
            (3, "services.api.tls.ca_file"),
            "{message}"
        );
        assert!(message.contains("ca.pem"), "{message}");
    }
}
