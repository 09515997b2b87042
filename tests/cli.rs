//! Tests of the `wayfinder` binary: `check` and `run` as an operator uses
//! them, and what every command shares (`--version`, `--log-level`,
//! RUST_LOG, argument errors). Each test owns the one process it spawns
//! (killed on drop if still running) and the temporary config files it
//! writes.

mod support;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use http::StatusCode;
use nix::sys::signal::Signal;
use tokio::net::TcpStream;
use tokio::process::Command;

use support::{wayfinder, within, Backend, ConfigFile, H1Client, Proc};

/// Runs a short-lived command to completion: exit status, stdout, stderr.
async fn finish(mut cmd: Command) -> (ExitStatus, String, String) {
    let out = within(30, "wayfinder exits", cmd.output())
        .await
        .expect("spawn wayfinder");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/wayfinder.toml")
}

/// A config with an unknown key (`timeouts.conect`) on line 7.
const UNKNOWN_KEY_ON_LINE_7: &str = r#"listen = ["127.0.0.1:8080"]

[services.api]
instances = ["127.0.0.1:9001"]

[timeouts]
conect = "2s"
"#;

#[tokio::test]
async fn check_accepts_the_shipped_config() {
    let config = shipped_config();
    let mut cmd = wayfinder(&["check", "--config"]);
    cmd.arg(&config);
    let (status, stdout, stderr) = finish(cmd).await;
    assert!(
        status.success(),
        "{status}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains(": ok ("), "{stdout}");
}

/// Every example in `config/` passes `check` (the TLS one after `wayfinder
/// cert` made the files it names, as its header says), copied to a
/// directory of the test's own.
#[tokio::test]
async fn check_accepts_every_example_config() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let dir = std::env::temp_dir().join(format!("wayfinder-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = wayfinder(&["cert", "--out"]);
    cmd.arg(dir.join("tls"));
    let (status, _, stderr) = finish(cmd).await;
    assert!(status.success(), "wayfinder cert: {stderr}");
    let mut checked = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let copy = dir.join(path.file_name().unwrap());
        std::fs::copy(&path, &copy).unwrap();
        let mut cmd = wayfinder(&["check", "--config"]);
        cmd.arg(&copy);
        let (status, stdout, stderr) = finish(cmd).await;
        assert!(
            status.success(),
            "{}: {status}\nstdout: {stdout}\nstderr: {stderr}",
            path.display()
        );
        checked += 1;
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        checked >= 5,
        "only {checked} examples found in {}",
        src.display()
    );
}

#[tokio::test]
async fn check_names_file_line_and_key_of_an_unknown_key() {
    let bad = ConfigFile::new("cli-unknown-key", UNKNOWN_KEY_ON_LINE_7);
    let mut cmd = wayfinder(&["check", "--config"]);
    cmd.arg(&bad.path);
    let (status, stdout, stderr) = finish(cmd).await;
    assert!(!status.success(), "accepted a bad config\nstdout: {stdout}");
    assert!(stderr.contains(bad.file_name()), "file not named: {stderr}");
    assert!(
        stderr.contains(&format!("{}:7:", bad.path.display())),
        "line 7 not named: {stderr}"
    );
    assert!(
        stderr.contains("timeouts.conect"),
        "key not named: {stderr}"
    );
    assert!(stderr.contains("unknown field"), "{stderr}");
}

#[tokio::test]
async fn check_fails_on_a_missing_file() {
    let missing =
        std::env::temp_dir().join(format!("wayfinder-cli-missing-{}.toml", std::process::id()));
    let mut cmd = wayfinder(&["check", "--config"]);
    cmd.arg(&missing);
    let (status, _, stderr) = finish(cmd).await;
    assert!(!status.success());
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[tokio::test]
async fn run_refuses_a_bad_config() {
    let bad = ConfigFile::new("cli-run-bad", UNKNOWN_KEY_ON_LINE_7);
    let mut cmd = wayfinder(&["run", "--config"]);
    cmd.arg(&bad.path);
    let (status, _, stderr) = finish(cmd).await;
    assert!(!status.success(), "run started with a bad config");
    assert!(stderr.contains("timeouts.conect"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_then_drains_and_exits_zero_on_sigterm() {
    let hello = Backend::start("hello").await;
    let slow = Backend::builder("slow")
        .delay(Duration::from_millis(500))
        .start()
        .await;
    let config = ConfigFile::new(
        "cli-run",
        &format!(
            "listen = [\"127.0.0.1:0\"]\n\
             [admin]\nlisten = \"off\"\n\
             [timeouts]\nshutdown_drain = \"5s\"\n\
             [services.hello]\ninstances = [\"{}\"]\n\
             [services.slow]\ninstances = [\"{}\"]\n",
            hello.addr, slow.addr
        ),
    );
    let mut cmd = wayfinder(&["run", "--config"]);
    cmd.arg(&config.path);
    let mut proc = Proc::spawn(cmd);
    let addr = proc.listening(30).await.proxy();
    let listening = proc.log();
    let listening = listening
        .lines()
        .find(|l| l.contains("wayfinder listening"))
        .unwrap();
    // Plain values, not Rust's `Some(..)`/`None`.
    assert!(listening.contains("admin=off"), "{listening}");
    assert!(
        !listening.contains("Some(") && !listening.contains("None"),
        "{listening}"
    );

    let reply = within(
        10,
        "GET through the proxy",
        support::get(addr, "hello.svc", "/"),
    )
    .await
    .expect("GET through the proxy");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "hello");

    // A request in flight when SIGTERM arrives still completes.
    let mut client = H1Client::connect(addr).await.unwrap();
    let in_flight = tokio::spawn(async move { client.get("slow.svc", "/").await });
    support::wait_until(10, "slow request reaches its instance", || slow.hits() == 1).await;
    proc.signal(Signal::SIGTERM);

    let reply = within(10, "in-flight request", in_flight)
        .await
        .unwrap()
        .expect("in-flight request survives SIGTERM");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "slow");
    // The drain is 5 s; leave room for a slow machine.
    let status = proc.wait(15, "wayfinder exits after SIGTERM").await;
    assert!(status.success(), "exit status {status}\n{}", proc.log());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after exit"
    );
}

// === what every command shares ===

#[tokio::test]
async fn version_names_the_commit_and_the_build_profile() {
    let (status, stdout, stderr) = finish(wayfinder(&["--version"])).await;
    assert!(status.success(), "{status}\n{stderr}");
    // What build.rs records: the short commit when built from a git
    // checkout, else "unknown".
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    assert_eq!(
        stdout.trim(),
        format!(
            "wayfinder {} (commit {commit}, {profile} build)",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[tokio::test]
async fn an_unknown_log_level_is_refused_with_exit_2() {
    let config = shipped_config();
    for level in ["bogus", "inof", "info,wayfinder=loud"] {
        let mut cmd = wayfinder(&["--log-level", level, "check", "--config"]);
        cmd.arg(&config);
        let (status, stdout, stderr) = finish(cmd).await;
        assert_eq!(
            status.code(),
            Some(2),
            "{level}: {status}\n{stdout}\n{stderr}"
        );
        assert!(stderr.contains("is not a log level"), "{level}: {stderr}");
        assert!(
            stderr.contains("warning"),
            "the accepted levels are not listed: {stderr}"
        );
    }
    // The same for RUST_LOG, which otherwise wins over --log-level.
    let mut cmd = wayfinder(&["check", "--config"]);
    cmd.arg(&config).env("RUST_LOG", "inof");
    let (status, stdout, stderr) = finish(cmd).await;
    assert_eq!(status.code(), Some(2), "{status}\n{stdout}\n{stderr}");
    assert!(stderr.contains("RUST_LOG"), "{stderr}");
    assert!(stderr.contains("\"inof\" is not a log level"), "{stderr}");
}

/// `--log-level warning` (and RUST_LOG=warning) mean warn: warnings are
/// logged, info lines are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warning_is_accepted_as_the_warn_level() {
    let (_hold, unreachable) = support::refused_addr();
    for (flag, env) in [(Some("warning"), None), (None, Some("warning"))] {
        let mut cmd = wayfinder(&[]);
        if let Some(level) = flag {
            cmd.args(["--log-level", level]);
        }
        if let Some(level) = env {
            cmd.env("RUST_LOG", level);
        }
        cmd.args([
            "register",
            "--service",
            "quiet",
            "--address",
            "127.0.0.1:9",
            "--registry",
        ])
        .arg(format!("http://{unreachable}"));
        let mut proc = Proc::spawn(cmd);
        // A warning: the registry cannot be reached.
        proc.wait_log(20, "WARN").await;
        proc.signal(Signal::SIGTERM);
        let status = proc.wait(20, "registrar exits after SIGTERM").await;
        let log = proc.log();
        assert!(status.success(), "{status}\n{log}");
        assert!(log.contains("registry call failed"), "{log}");
        // ...and no info line ("stopping" is one).
        assert!(
            !log.contains(" INFO "),
            "info logged at warning level:\n{log}"
        );
    }
}

#[tokio::test]
async fn a_check_that_is_not_a_url_gets_the_accepted_forms() {
    let cmd = wayfinder(&[
        "register",
        "--service",
        "api",
        "--address",
        "127.0.0.1:9001",
        "--check",
        "127.0.0.1:9001/healthz",
    ]);
    let (status, _, stderr) = finish(cmd).await;
    assert_eq!(status.code(), Some(2), "{status}\n{stderr}");
    assert!(stderr.contains("127.0.0.1:9001/healthz"), "{stderr}");
    assert!(stderr.contains("http://HOST:PORT/PATH"), "{stderr}");
    assert!(stderr.contains("/PATH to check on --address"), "{stderr}");
    assert!(stderr.contains("--check-tcp"), "{stderr}");
}

// === wayfinder status ===

/// `wayfinder status` against a real running proxy: a table with each
/// instance's state, the sources, and with `--json` the three views in one
/// object; the token is needed with `admin.auth_reads`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_instances_and_sources_from_the_admin_api() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let reg = Backend::start("reg").await;
    let config = ConfigFile::new(
        "cli-status",
        &format!(
            "listen = [\"127.0.0.1:0\"]\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"status-t0ken\"\nauth_reads = true\n\
             [services.web]\ninstances = [\"{}\", \"{}\"]\n",
            a.addr, b.addr
        ),
    );
    let mut cmd = wayfinder(&["run", "--config"]);
    cmd.arg(&config.path);
    let proxy = Proc::spawn(cmd);
    let admin = proxy.listening(30).await.admin();
    let mut api = support::Api::new(admin);
    api.token = Some("status-t0ken".to_owned());
    api.register_ok("files", "f1", reg.addr, "30s").await;
    let drained = api
        .call(
            "PUT",
            &format!("/v1/services/web/instances/{}/drain", b.addr),
            None,
        )
        .await;
    assert_eq!(drained.status, StatusCode::OK, "{}", drained.text());

    let url = format!("http://{admin}");
    let status = |extra: &[&str]| {
        let mut cmd = wayfinder(&["status", "--admin", &url]);
        cmd.args(extra);
        finish(cmd)
    };
    let (code, out, err) = status(&["--token", "status-t0ken"]).await;
    assert!(code.success(), "{code}: {err}");
    let line = |needle: String| {
        out.lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_else(|| panic!("no line with {needle}:\n{out}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert!(out.starts_with("wayfinder "), "{out}");
    let first = line(a.addr.to_string());
    assert_eq!(first[0], "web");
    assert_eq!(first[5], "up", "{out}");
    assert_eq!(line(b.addr.to_string())[5], "draining(operator)", "{out}");
    let registered = line(reg.addr.to_string());
    assert_eq!(
        &registered[..4],
        ["files", &reg.addr.to_string(), "f1", "api"]
    );
    assert!(line("SOURCE ".to_owned()).contains(&"STATE".to_owned()));

    let (code, out, err) = status(&["--token", "status-t0ken", "--json"]).await;
    assert!(code.success(), "{code}: {err}");
    let all: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(all["status"]["phase"], "ready", "{all}");
    assert_eq!(
        all["services"]["services"].as_array().unwrap().len(),
        2,
        "{all}"
    );
    assert!(all["sources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "api"));

    let (code, out, err) = status(&[]).await;
    assert_eq!(code.code(), Some(1), "{out}");
    assert!(err.contains("401") && err.contains("--token"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Nothing listening: one line naming the address, exit 1, without
/// waiting for the timeout.
#[tokio::test]
async fn status_says_when_the_admin_api_is_unreachable() {
    let (_held, addr) = support::refused_addr();
    let url = format!("http://{addr}");
    let (code, out, err) = finish(wayfinder(&["status", "--admin", &url])).await;
    assert_eq!(code.code(), Some(1), "{out}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("unreachable") && err.contains(&addr.to_string()),
        "{err}"
    );
}
