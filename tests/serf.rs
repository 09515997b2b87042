//! The Serf source against real Serf agents (`/usr/bin/serf`, the Debian
//! package `serf`, installed by `.ci/test`): agents on loopback ports
//! picked at run time, tagged with the instances they advertise, and a
//! `wayfinder run` proxy following one agent's RPC. Routing follows joins,
//! tag updates, a graceful leave and a SIGKILLed agent declared failed.
//! Without serf these tests fail, saying how to install it.

mod support;

use std::time::Duration;

use support::fleet::{serf_binary, SerfAgent};
use support::{wait_for, wayfinder, Backend, ConfigFile, Proc};

/// Serf declares a silent member failed within seconds; CI is slow.
const SPREAD: Duration = Duration::from_secs(40);

struct Follower {
    proc: Proc,
    proxy: support::fleet::ProxyView,
    _config: ConfigFile,
}

async fn follow(rpc: std::net::SocketAddr) -> Follower {
    follow_with(rpc, "").await
}

/// A proxy following the agent at `rpc`, `extra` added to `[registry.serf]`.
async fn follow_with(rpc: std::net::SocketAddr, extra: &str) -> Follower {
    let config = ConfigFile::new(
        "serf",
        &format!(
            "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [registry]\nself_preservation_percent = 0\n\
             [registry.serf]\nrpc = \"{rpc}\"\nretry_max = \"500ms\"\n{extra}"
        ),
    );
    let proc = Proc::spawn(wayfinder(&[
        "run",
        "--config",
        config.path.to_str().unwrap(),
    ]));
    let at = proc.listening(20).await;
    Follower {
        proc,
        proxy: support::fleet::ProxyView { at },
        _config: config,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_follows_serf_joins_updates_leaves_and_failures() {
    serf_binary();
    let web = [
        Backend::start("web-1").await,
        Backend::start("web-2").await,
        Backend::start("web-3").await,
    ];
    let api = Backend::start("api-1").await;
    let n1 = SerfAgent::start(
        "n1",
        &[
            ("service", "web".into()),
            ("port", web[0].addr.port().to_string()),
        ],
        None,
    )
    .await;
    let f = follow(n1.rpc).await;
    f.proxy.wait_instances("web", &[web[0].addr], SPREAD).await;
    assert_eq!(f.proxy.route("web").await.as_deref(), Some("web-1"));

    // n2 joins with two services: one by port, one by address.
    let n2 = SerfAgent::start(
        "n2",
        &[
            ("service.web", web[1].addr.port().to_string()),
            ("service.api", api.addr.to_string()),
        ],
        Some(n1.bind),
    )
    .await;
    f.proxy
        .wait_instances("web", &[web[0].addr, web[1].addr], SPREAD)
        .await;
    f.proxy.wait_instances("api", &[api.addr], SPREAD).await;
    assert_eq!(f.proxy.route("api").await.as_deref(), Some("api-1"));

    // A tag update changes the weight.
    n2.cli(&["tags", "-set", "weight.web=7"]);
    wait_for(SPREAD, "web-2's weight becomes 7", || async {
        f.proxy.instances("web").await.get(&web[1].addr) == Some(&7)
    })
    .await;

    // A graceful leave removes n2's instances.
    n2.cli(&["leave"]);
    f.proxy.wait_instances("web", &[web[0].addr], SPREAD).await;
    f.proxy.wait_instances("api", &[], SPREAD).await;

    // n3 joins, then is SIGKILLed: Serf declares it failed, and it goes.
    let mut n3 = SerfAgent::start(
        "n3",
        &[
            ("service", "web".into()),
            ("port", web[2].addr.port().to_string()),
        ],
        Some(n1.bind),
    )
    .await;
    f.proxy
        .wait_instances("web", &[web[0].addr, web[2].addr], SPREAD)
        .await;
    n3.daemon.kill();
    let took = f.proxy.wait_instances("web", &[web[0].addr], SPREAD).await;
    println!("SIGKILLed serf agent removed after {took:?}");
    assert!(f.proc.log().contains("member-failed"), "{}", f.proc.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_good_set_serves_while_the_agent_is_away_and_a_restarted_agent_is_listed_again() {
    serf_binary();
    let web = Backend::start("web-1").await;
    let mut n1 = SerfAgent::start(
        "n1",
        &[
            ("service", "web".into()),
            ("port", web.addr.port().to_string()),
        ],
        None,
    )
    .await;
    let f = follow(n1.rpc).await;
    f.proxy.wait_instances("web", &[web.addr], SPREAD).await;
    n1.daemon.kill();
    // The last good set keeps serving while the agent is away.
    wait_for(SPREAD, "the serf source reports failing", || async {
        let sources = f.proxy.admin_json("/v1/sources").await;
        sources
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "serf" && s["state"] == "failing")
    })
    .await;
    assert_eq!(f.proxy.route("web").await.as_deref(), Some("web-1"));
    // Back (same ports), now advertising another instance: the source
    // reconnects, lists again, and follows.
    let web2 = Backend::start("web-2").await;
    for a in &mut n1.args {
        if a.starts_with("port=") {
            *a = format!("port={}", web2.addr.port());
        }
    }
    n1.restart().await;
    f.proxy.wait_instances("web", &[web2.addr], SPREAD).await;
    assert_eq!(f.proxy.route("web").await.as_deref(), Some("web-2"));
}

/// The `serf` source's state and last error, as `GET /v1/sources` shows.
async fn serf_source(f: &Follower) -> (String, String) {
    let sources = f.proxy.admin_json("/v1/sources").await;
    let s = sources
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "serf")
        .cloned()
        .unwrap_or_default();
    (
        s["state"].as_str().unwrap_or("").to_owned(),
        s["last_error"].to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_rpc_auth_is_followed_with_its_key_and_refuses_a_wrong_one() {
    serf_binary();
    let web = Backend::start("web-1").await;
    let key = "serf-rpc-key-0123456789";
    // serf takes the RPC key from a JSON config file only (`rpc_auth`); it
    // reads a file named with -config-file whatever its extension.
    let serf_config = ConfigFile::new("serf-agent", &format!("{{\"rpc_auth\": \"{key}\"}}"));
    let n1 = SerfAgent::start_with(
        "n1",
        &[
            ("service", "web".into()),
            ("port", web.addr.port().to_string()),
        ],
        None,
        &[&format!("-config-file={}", serf_config.path.display())],
    )
    .await;

    // The right key, from the environment variable `auth_key_env` names.
    let good = {
        let config = ConfigFile::new(
            "serf-auth",
            &format!(
                "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                 [registry.serf]\nrpc = \"{}\"\nauth_key_env = \"SERF_TEST_KEY\"\n",
                n1.rpc
            ),
        );
        let mut cmd = wayfinder(&["run", "--config", config.path.to_str().unwrap()]);
        cmd.env("SERF_TEST_KEY", key);
        let proc = Proc::spawn(cmd);
        let at = proc.listening(20).await;
        Follower {
            proc,
            proxy: support::fleet::ProxyView { at },
            _config: config,
        }
    };
    good.proxy.wait_instances("web", &[web.addr], SPREAD).await;
    assert_eq!(good.proxy.route("web").await.as_deref(), Some("web-1"));
    assert_eq!(serf_source(&good).await.0, "ok");

    // A wrong key: the agent refuses the auth call, and the source says so.
    let wrong = follow_with(n1.rpc, "auth_key = \"not-the-key\"\n").await;
    wait_for(SPREAD, "the wrong key is refused", || async {
        serf_source(&wrong).await.0 == "failing"
    })
    .await;
    let (_, error) = serf_source(&wrong).await;
    println!("a wrong key: {error}");
    assert!(
        error.contains("refused auth") && error.contains("Invalid authentication token"),
        "{error}"
    );
    assert!(wrong.proxy.instances("web").await.is_empty());

    // No key at all: the agent refuses the first call that needs one.
    let none = follow(n1.rpc).await;
    wait_for(SPREAD, "no key is refused", || async {
        serf_source(&none).await.0 == "failing"
    })
    .await;
    let (_, error) = serf_source(&none).await;
    println!("no key: {error}");
    assert!(error.contains("Authentication required"), "{error}");
    drop(wrong.proc);
    drop(none.proc);
}
