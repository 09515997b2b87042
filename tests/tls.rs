//! TLS termination end to end: the `wayfinder` binary with `[[tls]]`
//! listeners, certificates made at test time (rcgen: a CA, two SNI names
//! and a wildcard, an expired one), real clients (`curl --cacert` over
//! HTTP/1.1 and HTTP/2 by ALPN, and a rustls client), real backends.

mod support;

use std::path::PathBuf;
use std::process::Stdio;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::pki::Pki;
use support::{wayfinder, within, Backend, ConfigFile, Mode, Proc};

/// A running proxy: one plain and one TLS listener, routes for `a.example`
/// and `*.b.example` to the echo backend, and `/secure` (redirects plain
/// requests) and `/private` (refuses them).
struct Tls {
    proc: Proc,
    plain: std::net::SocketAddr,
    tls: std::net::SocketAddr,
    _config: ConfigFile,
}

async fn start(certs: &[(PathBuf, PathBuf)], backend: &Backend) -> Tls {
    let certificates: Vec<String> = certs
        .iter()
        .map(|(c, k)| format!("{{ cert = {:?}, key = {:?} }}", c, k))
        .collect();
    let config = ConfigFile::new(
        "tls",
        &format!(
            r#"listen = ["127.0.0.1:0"]
[admin]
listen = "off"
[[tls]]
listen = ["127.0.0.1:0"]
certificates = [{}]
[[routes]]
path = "/secure"
service = "echo"
require_tls = "redirect"
[[routes]]
path = "/private"
service = "echo"
require_tls = "refuse"
[[routes]]
path = "/"
service = "echo"
[services.echo]
instances = ["{}"]
"#,
            certificates.join(", "),
            backend.addr
        ),
    );
    let proc = Proc::spawn(wayfinder(&[
        "--log-level",
        "info",
        "run",
        "--config",
        config.path.to_str().unwrap(),
    ]));
    let listening = proc.listening(30).await;
    let tls = listening.tls[0];
    Tls {
        plain: listening.proxy(),
        tls,
        proc,
        _config: config,
    }
}

/// `curl` as a real client: `args`, then the URL; returns (status line of
/// `-w`, body).
async fn curl(args: &[&str], url: &str) -> (String, String) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("curl runs (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match text.rsplit_once('\n') {
        Some((body, status)) if out.status.success() => (status.to_owned(), body.to_owned()),
        _ => (format!("failed: {stderr}"), text),
    }
}

fn resolve(name: &str, addr: std::net::SocketAddr) -> String {
    format!("{name}:{}:127.0.0.1", addr.port())
}

/// Whether a handshake for `name` succeeds, the certificate served being
/// verified for that name against the CA.
async fn handshake(pki: &Pki, addr: std::net::SocketAddr, name: &str) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let sni = ServerName::try_from(name.to_owned()).unwrap();
    pki.connector()
        .connect(sni, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_alpn_and_forwarded_proto() {
    within(90, "TLS listeners", async {
        let pki = Pki::new("tls-sni");
        let a = pki.leaf("a", &["a.example"], false);
        let b = pki.leaf("b", &["*.b.example"], false);
        let backend = Backend::builder("echo").mode(Mode::Echo).start().await;
        let proxy = start(&[a, b], &backend).await;
        let ca = pki.ca_file();
        let ca = ca.to_str().unwrap();
        for (name, url_host) in [("a.example", "a.example"), ("x.b.example", "x.b.example")] {
            let url = format!("https://{url_host}:{}/hello", proxy.tls.port());
            for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
                let (status, body) = curl(
                    &["--cacert", ca, "--resolve", &resolve(name, proxy.tls), flag],
                    &url,
                )
                .await;
                assert_eq!(status, format!("200 {version}"), "{name} {flag}: {body}");
                let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(
                    echoed["headers"]["x-forwarded-proto"][0], "https",
                    "{name} {flag}: {body}"
                );
            }
        }
        // No certificate covers the name: the default one is served, and
        // the client's verification fails.
        let (status, _) = curl(
            &[
                "--cacert",
                ca,
                "--resolve",
                &resolve("c.example", proxy.tls),
            ],
            &format!("https://c.example:{}/", proxy.tls.port()),
        )
        .await;
        assert!(status.starts_with("failed"), "{status}");
        // TLS 1.1 at most: refused by the server (rustls speaks 1.2 and 1.3).
        let (status, _) = curl(
            &[
                "--cacert",
                ca,
                "--resolve",
                &resolve("a.example", proxy.tls),
                "--tlsv1.1",
                "--tls-max",
                "1.1",
            ],
            &format!("https://a.example:{}/", proxy.tls.port()),
        )
        .await;
        assert!(status.starts_with("failed"), "TLS 1.1 accepted: {status}");
        // Plain HTTP on the plain listener still says http.
        let (status, body) = curl(&[], &format!("http://{}/hello", proxy.plain)).await;
        assert_eq!(status, "200 1.1");
        assert!(body.contains("\"x-forwarded-proto\":[\"http\"]"), "{body}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_that_require_tls_redirect_or_refuse_plain_requests() {
    within(60, "require_tls", async {
        let pki = Pki::new("tls-require");
        let a = pki.leaf("a", &["a.example"], false);
        let backend = Backend::builder("echo").mode(Mode::Echo).start().await;
        let proxy = start(&[a], &backend).await;
        let ca = pki.ca_file();
        let (status, _) = curl(
            &["-H", "Host: a.example"],
            &format!("http://{}/secure/x?q=1", proxy.plain),
        )
        .await;
        assert_eq!(status, "308 1.1");
        let out = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{redirect_url}",
                "-H",
                "Host: a.example",
            ])
            .arg(format!("http://{}/secure/x?q=1", proxy.plain))
            .output()
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("https://a.example:{}/secure/x?q=1", proxy.tls.port())
        );
        let (status, _) = curl(&[], &format!("http://{}/private", proxy.plain)).await;
        assert_eq!(status, "403 1.1");
        // Over TLS both are served.
        for path in ["/secure/x", "/private"] {
            let (status, body) = curl(
                &[
                    "--cacert",
                    ca.to_str().unwrap(),
                    "--resolve",
                    &resolve("a.example", proxy.tls),
                ],
                &format!("https://a.example:{}{path}", proxy.tls.port()),
            )
            .await;
            assert_eq!(status, "200 2", "{path} (HTTP/2 by ALPN): {body}");
        }
        assert_eq!(
            backend.hits(),
            2,
            "only the TLS requests reached the instance"
        );
    })
    .await;
}

/// Reads one HTTP/1.1 response with a Content-Length body off `stream`.
async fn get_on<S: AsyncReadExt + AsyncWriteExt + Unpin>(stream: &mut S, host: &str) -> u16 {
    stream
        .write_all(format!("GET /keep HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_change_and_a_broken_file_keeps_the_old_ones() {
    within(90, "certificate reload", async {
        let pki = Pki::new("tls-reload");
        let first = pki.leaf("site", &["old.example"], false);
        let backend = Backend::start("echo").await;
        let proxy = start(std::slice::from_ref(&first), &backend).await;
        assert!(handshake(&pki, proxy.tls, "old.example").await.is_ok());

        // A connection opened before the change.
        let tcp = TcpStream::connect(proxy.tls).await.unwrap();
        let mut old = pki
            .connector()
            .connect(ServerName::try_from("old.example").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(get_on(&mut old, "old.example").await, 200);

        // Swapped on disk: new connections get it (the files are polled).
        let swapped = pki.leaf("site", &["new.example"], false);
        assert_eq!(swapped, first);
        proxy.proc.wait_log(30, "TLS certificates reloaded").await;
        assert!(handshake(&pki, proxy.tls, "new.example").await.is_ok());
        assert!(handshake(&pki, proxy.tls, "old.example").await.is_err());
        assert_eq!(
            get_on(&mut old, "old.example").await,
            200,
            "old connection works on"
        );

        // A broken file: refused, logged, the running certificate stays.
        std::fs::write(&first.0, "not a certificate").unwrap();
        proxy
            .proc
            .wait_log(30, "TLS certificates not reloaded")
            .await;
        assert!(proxy.proc.log().contains("site.crt"), "the file is named");
        assert!(handshake(&pki, proxy.tls, "new.example").await.is_ok());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_served_and_refused_by_clients_and_bad_files_stop_the_start() {
    within(60, "bad certificates", async {
        let pki = Pki::new("tls-bad");
        let expired = pki.leaf("expired", &["old.example"], true);
        let backend = Backend::start("echo").await;
        let proxy = start(&[expired], &backend).await;
        let err = handshake(&pki, proxy.tls, "old.example").await.unwrap_err();
        assert!(err.to_lowercase().contains("expired"), "{err}");
        drop(proxy);

        // A missing file is named by `check`.
        let config = ConfigFile::new(
            "tls-missing",
            "[admin]\nlisten = \"off\"\n[[tls]]\nlisten = [\"127.0.0.1:0\"]\ncertificates = [{ cert = \"nope.crt\", key = \"nope.key\" }]\n",
        );
        let out = wayfinder(&["check", "--config", config.path.to_str().unwrap()])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("tls[0].certificates[0].cert") && stderr.contains("nope.crt"),
            "{stderr}"
        );

        // A file that is not a certificate stops `run`, naming it.
        let garbage = pki.dir.join("garbage.crt");
        std::fs::write(&garbage, "garbage").unwrap();
        let key = pki.leaf("k", &["k.example"], false).1;
        let config = ConfigFile::new(
            "tls-garbage",
            &format!(
                "[admin]\nlisten = \"off\"\n[[tls]]\nlisten = [\"127.0.0.1:0\"]\ncertificates = [{{ cert = {garbage:?}, key = {key:?} }}]\n"
            ),
        );
        let mut proc = Proc::spawn(wayfinder(&[
            "run",
            "--config",
            config.path.to_str().unwrap(),
        ]));
        let status = proc.wait(30, "run with a bad certificate").await;
        assert!(!status.success());
        assert!(proc.log().contains("garbage.crt"), "{}", proc.log());
    })
    .await;
}

#[tokio::test]
async fn cert_command_makes_a_working_local_certificate() {
    let dir = support::temp_path("tls-cert-cmd", ".d");
    let out = wayfinder(&[
        "cert",
        "--out",
        dir.to_str().unwrap(),
        "--name",
        "localhost",
    ])
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["ca.crt", "server.crt", "server.key"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
