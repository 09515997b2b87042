//! The dashboard in a real browser: the real `wayfinder run` binary with
//! real hyper instances (one actively health-checked service), and
//! Debian's headless Chromium driven over the DevTools protocol (a
//! WebSocket; no WebDriver needed). The page must show the services and
//! instances, an instance registered during the test and then its
//! removal, an instance turning unhealthy after it is stopped, all
//! without a reload; and its Drain button must drain the instance (the
//! admin API says so). A screenshot goes to the test's output directory
//! (`target/tmp/dashboard.png`).
//!
//! Chromium is required: without it the test fails, naming the package
//! (`.ci/test` installs it).

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{wayfinder, within, Api, Backend, ConfigFile, Proc};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Headless Chromium with one page, driven over the DevTools protocol.
struct Browser {
    child: tokio::process::Child,
    ws: Ws,
    session: String,
    next_id: u64,
    _profile: tempdir::Dir,
}

mod tempdir {
    //! A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Browser {
    /// Starts Chromium and opens `url` in a 1280x900 page.
    async fn open(url: &str) -> Browser {
        let exe = ["chromium", "chromium-browser"]
            .into_iter()
            .find(|c| {
                std::process::Command::new("sh")
                    .args(["-c", &format!("command -v {c}")])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("Chromium is needed for this test: apt-get install chromium (.ci/test does)");
        let profile = support::temp_path("chromium", "");
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = tokio::process::Command::new(exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let endpoint = within(30, "Chromium's DevTools endpoint", async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(at) = line.find("ws://") {
                    return line[at..].trim().to_owned();
                }
            }
            panic!("Chromium exited without a DevTools endpoint");
        })
        .await;
        // Keep draining its stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio_tungstenite::connect_async(&endpoint)
            .await
            .expect("DevTools WebSocket");
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: tempdir::Dir(profile),
        };
        let target = b
            .call("Target.createTarget", json!({ "url": url }), false)
            .await;
        let id = target["targetId"].as_str().unwrap().to_owned();
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({ "targetId": id, "flatten": true }),
                false,
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b
    }

    /// One DevTools command (on the page's session when `page`); its result.
    async fn call(&mut self, method: &str, params: Value, page: bool) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if page {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::Text(msg.to_string())).await.unwrap();
        within(30, method, async {
            while let Some(m) = self.ws.next().await {
                let Ok(Message::Text(t)) = m else { continue };
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    if let Some(e) = v.get("error") {
                        panic!("{method}: {e}");
                    }
                    return v["result"].clone();
                }
            }
            panic!("DevTools connection closed");
        })
        .await
    }

    /// Evaluates `expr` in the page; its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
                true,
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Waits (bounded) until `expr` is true in the page.
    async fn wait_for(&mut self, secs: u64, what: &str, expr: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if self.eval(expr).await == Value::Bool(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                panic!("{what}: not within {secs}s; the page shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the page to `path`.
    async fn screenshot(&mut self, path: &std::path::Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }), true)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `[data-instance="service addr"]`'s `attr` in the page, as a JS expression.
fn row(service: &str, addr: SocketAddr) -> String {
    format!("document.querySelector('[data-instance=\"{service} {addr}\"]')")
}

#[tokio::test]
async fn the_page_follows_the_registry_live() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let config = format!(
        "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [services.web]\ninstances = [\"{}\", \"{}\"]\n\
         [services.web.health]\nkind = \"http\"\npath = \"/\"\ninterval = \"300ms\"\n\
         timeout = \"200ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\njitter = \"0s\"\n",
        a.addr, b.addr
    );
    let file = ConfigFile::new("dashboard", &config);
    let proc = Proc::spawn(wayfinder(&["run", "--config", file.path.to_str().unwrap()]));
    let admin = proc.listening(20).await.admin.expect("admin on");
    let api = Api::new(admin);

    let mut page = Browser::open(&format!("http://{admin}/dashboard")).await;
    // Both instances, healthy once their first check passes.
    for addr in [a.addr, b.addr] {
        page.wait_for(
            15,
            "instance shown healthy",
            &format!("{}?.dataset.health === 'healthy'", row("web", addr)),
        )
        .await;
    }
    page.wait_for(
        5,
        "the config source",
        "document.querySelector('[data-source=\"config\"]')?.dataset.state === 'ok'",
    )
    .await;

    // Registered during the test: appears, then leaves, without a reload.
    let c = Backend::start("c").await;
    api.register_ok("orders", "c1", c.addr, "60s").await;
    page.wait_for(
        10,
        "registered instance shown",
        &format!("{} !== null", row("orders", c.addr)),
    )
    .await;
    page.wait_for(
        5,
        "its arrival in the event feed",
        &format!(
            "document.getElementById('events').innerText.includes('added orders {}')",
            c.addr
        ),
    )
    .await;
    let r = api.deregister("orders", "c1").await;
    assert!(r.status.is_success(), "{}", r.text());
    page.wait_for(
        10,
        "deregistered instance gone",
        &format!("{} === null", row("orders", c.addr)),
    )
    .await;
    page.wait_for(
        5,
        "its removal in the event feed",
        &format!(
            "document.getElementById('events').innerText.includes('removed orders {}')",
            c.addr
        ),
    )
    .await;

    // Killed: unhealthy on the page within a few seconds.
    b.stop().await;
    page.wait_for(
        10,
        "stopped instance shown unhealthy",
        &format!("{}?.dataset.health === 'unhealthy'", row("web", b.addr)),
    )
    .await;

    // The Drain button drains (as the admin API reports).
    page.eval(&format!(
        "{}.querySelector('button.drain').click()",
        row("web", a.addr)
    ))
    .await;
    page.wait_for(
        10,
        "drained instance shown draining",
        &format!("{}?.dataset.draining === 'true'", row("web", a.addr)),
    )
    .await;
    let services = api.json("/v1/services").await;
    let inst = services["services"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["address"] == a.addr.to_string())
        .cloned()
        .unwrap();
    assert_eq!(inst["draining"], true, "{inst}");
    assert_eq!(inst["drained_by"], json!(["operator"]));
    page.wait_for(
        5,
        "the button now cancels the drain",
        &format!(
            "{}.querySelector('button.undrain') !== null",
            row("web", a.addr)
        ),
    )
    .await;

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    page.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    drop(page);
}
