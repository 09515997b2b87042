use std::path::Path;

use super::*;
use crate::clock;
use crate::config::Config;

fn setup() -> (Arc<Registry>, Arc<Registrations>) {
    let reg = Registry::new(
        &Config::parse(
            "[services.z]\ninstances = [\"127.0.0.1:50\"]\n",
            Path::new("t.toml"),
        )
        .unwrap(),
    );
    let regs = Registrations::new(&reg, None);
    (reg, regs)
}

fn req(port: u16, ttl_ms: u64) -> RegisterRequest {
    RegisterRequest {
        address: format!("127.0.0.1:{port}").parse().unwrap(),
        weight: 1,
        tags: BTreeMap::new(),
        ttl: Duration::from_millis(ttl_ms),
    }
}

#[tokio::test]
async fn register_is_idempotent_and_visible() {
    let (reg, regs) = setup();
    assert_eq!(regs.register("a", "i1", req(1, 10_000)).await, Ok(true));
    assert_eq!(regs.register("a", "i1", req(1, 10_000)).await, Ok(false));
    reg.rebuild();
    let snap = reg.load();
    let m = &snap.service("a").unwrap().members()[0];
    assert_eq!(m.id.as_deref(), Some("i1"));
    assert_eq!(&*m.source, API_SOURCE);
    assert!(matches!(
        regs.register("a", "i2", req(1, 10_000)).await,
        Err(RegistrationError::AddressTaken { .. })
    ));
}

/// TTLs run on the (paused) clock: a registration lapses when its TTL
/// passes without a heartbeat; a heartbeat starts its TTL again; a lapsed
/// one is not renewed.
#[tokio::test(start_paused = true)]
async fn ttl_lapse_removes_and_heartbeat_keeps() {
    let (reg, regs) = setup();
    for (i, port) in [(1, 1), (2, 2), (3, 3)] {
        regs.register("a", &format!("i{i}"), req(port, 1_000))
            .await
            .unwrap();
    }
    tokio::time::advance(Duration::from_millis(600)).await;
    regs.heartbeat("a", "i1").await.unwrap();
    regs.heartbeat("a", "i2").await.unwrap();
    tokio::time::advance(Duration::from_millis(399)).await;
    assert_eq!(regs.expire(clock::now_ms()), 0, "999 ms: none lapsed");
    tokio::time::advance(Duration::from_millis(1)).await;
    // Only i3 lapses: one of three is within the self-preservation guard.
    assert_eq!(regs.expire(clock::now_ms()), 1);
    reg.rebuild();
    let ports: Vec<u16> = reg
        .load()
        .service("a")
        .unwrap()
        .members()
        .iter()
        .map(|m| m.instance.addr().port())
        .collect();
    assert_eq!(ports, [1, 2]);
    assert_eq!(
        regs.heartbeat("a", "i3").await,
        Err(RegistrationError::NotFound {
            service: "a".into(),
            id: "i3".into()
        })
    );
    tokio::time::advance(Duration::from_millis(599)).await;
    assert_eq!(regs.expire(clock::now_ms()), 0, "renewed at 600 ms");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(regs.expire(clock::now_ms()), 2);
}

/// The expiry task wakes when the next TTL lapses: the registration leaves
/// the registry then, not before (a held-back removal aside: with the guard
/// off here).
#[tokio::test(start_paused = true)]
async fn expiry_task_expires_when_the_ttl_lapses() {
    let reg = Registry::new(
        &Config::parse(
            "[registry]\nself_preservation_percent = 0\n[services.z]\ninstances = [\"127.0.0.1:50\"]\n",
            Path::new("t.toml"),
        )
        .unwrap(),
    );
    let regs = Registrations::new(&reg, None);
    tokio::spawn(regs.clone().run_expiry());
    regs.register("a", "i1", req(1, 5_000)).await.unwrap();
    let listed = |regs: &Registrations| regs.all().len();
    tokio::time::sleep(Duration::from_millis(4_990)).await;
    assert_eq!(listed(&regs), 1, "before its TTL");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(listed(&regs), 0, "expired by the task");
    reg.rebuild();
    assert!(reg.load().service("a").is_none());
}

#[tokio::test]
async fn deregister_is_explicit_even_for_the_last_instance() {
    let (reg, regs) = setup();
    regs.register("a", "i1", req(1, 10_000)).await.unwrap();
    reg.rebuild();
    regs.deregister("a", "i1").await.unwrap();
    reg.rebuild();
    assert!(reg.load().service("a").is_none());
    assert!(regs.deregister("a", "i1").await.is_err());
}

#[tokio::test]
async fn state_file_round_trip() {
    let path = std::env::temp_dir().join(format!(
        "wayfinder-state-{}-{}.json",
        std::process::id(),
        clock::now_ms()
    ));
    {
        let reg = Registry::new(
            &Config::parse(
                "[services.z]\ninstances = [\"127.0.0.1:50\"]\n",
                Path::new("t.toml"),
            )
            .unwrap(),
        );
        let regs = Registrations::new(&reg, Some(path.clone()));
        regs.register("a", "i1", req(7, 10_000)).await.unwrap();
    }
    let reg = Registry::new(
        &Config::parse(
            "[services.z]\ninstances = [\"127.0.0.1:50\"]\n",
            Path::new("t.toml"),
        )
        .unwrap(),
    );
    let regs = Registrations::new(&reg, Some(path.clone()));
    assert_eq!(regs.all().len(), 1);
    reg.rebuild();
    assert_eq!(
        reg.load().service("a").unwrap().members()[0]
            .instance
            .addr()
            .port(),
        7
    );
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn state_file_keeps_operator_drains_and_reads_the_old_format() {
    let path = std::env::temp_dir().join(format!(
        "wayfinder-state-drains-{}-{}.json",
        std::process::id(),
        clock::now_ms()
    ));
    let cfg = Config::parse(
        "[services.z]\ninstances = [\"127.0.0.1:50\"]\n",
        Path::new("t.toml"),
    )
    .unwrap();
    let z: SocketAddr = "127.0.0.1:50".parse().unwrap();
    {
        let reg = Registry::new(&cfg);
        let regs = Registrations::new(&reg, Some(path.clone()));
        reg.set_operator_drain("z", z, true).unwrap();
        regs.save();
    }
    let reg = Registry::new(&cfg);
    let _regs = Registrations::new(&reg, Some(path.clone()));
    let drains = reg.operator_drains();
    assert_eq!(drains.len(), 1);
    assert_eq!(drains[0].0.addr, z);
    assert_eq!(
        reg.load().service("z").unwrap().members()[0]
            .instance
            .lifecycle(),
        crate::registry::Lifecycle::Draining
    );

    // A file from before drains were saved: a bare list.
    std::fs::write(
        &path,
        r#"[{"service":"a","id":"i1","address":"127.0.0.1:7","weight":1,"tags":{},"ttl":"10s","draining":false,"registered_at":"2026-01-01T00:00:00Z"}]"#,
    )
    .unwrap();
    let reg = Registry::new(&cfg);
    let regs = Registrations::new(&reg, Some(path.clone()));
    assert_eq!(regs.all().len(), 1);
    let _ = std::fs::remove_file(path);
}
