//! The registration source: instances that registered themselves (or were
//! registered by `wayfinder register`) through the admin API, each kept
//! alive by heartbeats within its TTL.
//!
//! Every change is reported to the registry as this source's whole set under
//! the name [`API_SOURCE`]. Deregistrations are explicit removals; TTL
//! expiries are implicit, so a burst of them goes through the registry's
//! self-preservation guard. A registration whose removal the guard holds
//! back stays visible as expired (and held) until the hold ends: it is
//! registered again, deregistered, released, or `registry.max_hold` passes.
//! With a state file configured, the set (and the operator's drains) is
//! saved on every change and loaded at start (each loaded instance gets a
//! fresh TTL), so a restarted proxy routes before its instances heartbeat
//! again.
//!
//! With `[registry.etcd]` configured the same calls write through to etcd
//! instead ([`super::etcd::EtcdStore`]): nothing is kept here, every proxy
//! sharing the etcd sees the change through its watch, and a call that
//! cannot reach etcd fails with [`RegistrationError::Unavailable`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::etcd::{EtcdStore, ETCD_SOURCE};
use super::{InstanceKey, InstanceSpec, Registry, Removals};
use crate::clock;

/// Registrations by (service, id).
type Entries = HashMap<(Arc<str>, Arc<str>), Registration>;

/// The source name registrations are reported under.
pub const API_SOURCE: &str = "api";

/// One registered instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// Service name.
    pub service: Arc<str>,
    /// Instance id, unique within the service.
    pub id: Arc<str>,
    /// Where it listens.
    pub address: SocketAddr,
    /// Relative share of traffic.
    pub weight: u32,
    /// Metadata.
    pub tags: BTreeMap<String, String>,
    /// How long it stays without a heartbeat.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Asked to drain: listed, takes no new requests.
    pub draining: bool,
    /// When it first registered.
    #[serde(with = "humantime_serde")]
    pub registered_at: SystemTime,
    /// `clock::now_ms()` at which it expires (not saved).
    #[serde(skip)]
    pub expires_ms: u64,
    /// Its TTL lapsed; it is still listed only because self-preservation
    /// holds back its removal (not saved).
    #[serde(skip)]
    pub expired: bool,
}

impl Registration {
    /// Its (service, id) key.
    pub(crate) fn key(&self) -> (Arc<str>, Arc<str>) {
        (self.service.clone(), self.id.clone())
    }

    /// The instance as reported to the registry.
    pub(crate) fn spec(&self) -> InstanceSpec {
        InstanceSpec {
            service: self.service.clone(),
            addr: self.address,
            weight: self.weight,
            id: Some(self.id.clone()),
            tags: (!self.tags.is_empty()).then(|| Arc::new(self.tags.clone())),
            draining: self.draining,
        }
    }
}

/// What a registration call asks for (already validated).
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    /// Where it listens.
    pub address: SocketAddr,
    /// Relative share of traffic, 1 to 1000.
    pub weight: u32,
    /// Metadata.
    pub tags: BTreeMap<String, String>,
    /// Time to live without a heartbeat.
    pub ttl: Duration,
}

/// The state file: registrations and the operator's drains.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    registrations: Vec<Registration>,
    #[serde(default)]
    drains: Vec<SavedDrain>,
}

/// An operator's drain, as saved.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedDrain {
    service: Arc<str>,
    address: SocketAddr,
    #[serde(with = "humantime_serde")]
    since: SystemTime,
}

/// Why a registration call failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistrationError {
    /// No such registration.
    #[error("instance {id:?} of service {service:?} is not registered")]
    NotFound {
        /// Service.
        service: String,
        /// Id.
        id: String,
    },
    /// Another id of the same service already has the address.
    #[error("address {address} is already registered as {other:?} in service {service:?}")]
    AddressTaken {
        /// Service.
        service: String,
        /// The address.
        address: SocketAddr,
        /// The id holding it.
        other: String,
    },
    /// The shared registry (etcd) could not confirm the change.
    #[error(
        "registration not confirmed: the shared registry is unavailable ({message}); retry later"
    )]
    Unavailable {
        /// What failed.
        message: String,
    },
}

/// The registrations, shared by the admin API and the expiry task.
#[derive(Debug)]
pub struct Registrations {
    registry: Weak<Registry>,
    entries: Mutex<Entries>,
    /// Registrations that expired while self-preservation holds back their
    /// removal (locked after `entries` when both are).
    expired: Mutex<Entries>,
    state_file: Option<PathBuf>,
    changed: Notify,
    /// Where calls go instead of `entries` when etcd is configured.
    etcd: Option<Arc<EtcdStore>>,
}

impl Registrations {
    /// An empty set reporting to `registry`, loading `state_file` if given
    /// and present.
    pub fn new(registry: &Arc<Registry>, state_file: Option<PathBuf>) -> Arc<Registrations> {
        let me = Arc::new(Registrations {
            registry: Arc::downgrade(registry),
            entries: Mutex::new(HashMap::new()),
            expired: Mutex::new(HashMap::new()),
            state_file,
            changed: Notify::new(),
            etcd: None,
        });
        me.load_state();
        me
    }

    /// Registrations written through to `store` (etcd): this proxy keeps
    /// none of its own.
    pub fn with_etcd(registry: &Arc<Registry>, store: Arc<EtcdStore>) -> Arc<Registrations> {
        Arc::new(Registrations {
            registry: Arc::downgrade(registry),
            entries: Mutex::new(HashMap::new()),
            expired: Mutex::new(HashMap::new()),
            state_file: None,
            changed: Notify::new(),
            etcd: Some(store),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_expired(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.expired.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The source name the registrations are reported under (`api`, or
    /// `etcd` when the registry is shared).
    pub fn source_name(&self) -> &'static str {
        if self.etcd.is_some() {
            ETCD_SOURCE
        } else {
            API_SOURCE
        }
    }

    /// Whether the registry still holds back the removal of `r`.
    fn held(&self, r: &Registration) -> bool {
        self.registry
            .upgrade()
            .and_then(|reg| reg.held_back(self.source_name(), &r.service, r.address))
            .is_some()
    }

    /// Registers (or updates) `id` of `service`. Idempotent: the same call
    /// again renews the TTL and updates the fields. Returns whether it was new.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        req: RegisterRequest,
    ) -> Result<bool, RegistrationError> {
        if let Some(etcd) = &self.etcd {
            return etcd.register(service, id, req).await;
        }
        let mut entries = self.lock();
        if let Some(other) = entries
            .values()
            .find(|r| &*r.service == service && r.address == req.address && &*r.id != id)
        {
            return Err(RegistrationError::AddressTaken {
                service: service.to_owned(),
                address: req.address,
                other: other.id.to_string(),
            });
        }
        let key: (Arc<str>, Arc<str>) = (Arc::from(service), Arc::from(id));
        let expires_ms = clock::now_ms() + req.ttl.as_millis() as u64;
        // Registering again ends an expiry (of this id, or of another id at
        // this address): the instance is listed again, nothing is held.
        self.lock_expired()
            .retain(|k, r| *k != key && !(&*r.service == service && r.address == req.address));
        let new = !entries.contains_key(&key);
        let entry = entries.entry(key.clone()).or_insert_with(|| Registration {
            service: key.0.clone(),
            id: key.1.clone(),
            address: req.address,
            weight: req.weight,
            tags: BTreeMap::new(),
            ttl: req.ttl,
            draining: false,
            registered_at: SystemTime::now(),
            expires_ms,
            expired: false,
        });
        let moved = (entry.address != req.address).then_some(entry.address);
        entry.address = req.address;
        entry.weight = req.weight;
        entry.tags = req.tags;
        entry.ttl = req.ttl;
        entry.expires_ms = expires_ms;
        if new {
            tracing::info!(service, id, address = %req.address, ttl = ?req.ttl, "instance registered");
        }
        let removals = match moved {
            Some(old) => Removals::Only(vec![(key.0.clone(), old)]),
            None => Removals::Implicit,
        };
        self.publish(&entries, removals, &|_| String::new());
        Ok(new)
    }

    /// Renews the TTL of `id`. An expired registration is not renewed (it
    /// must register again).
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<(), RegistrationError> {
        if let Some(etcd) = &self.etcd {
            return etcd.heartbeat(service, id).await;
        }
        let mut entries = self.lock();
        let r = entries
            .get_mut(&key(service, id))
            .ok_or_else(|| not_found(service, id))?;
        r.expires_ms = clock::now_ms() + r.ttl.as_millis() as u64;
        Ok(())
    }

    /// Removes `id`: no new requests reach it, requests in flight finish.
    /// An expired registration whose removal is held back is removed now.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), RegistrationError> {
        if let Some(etcd) = &self.etcd {
            return etcd.deregister(service, id).await;
        }
        let mut entries = self.lock();
        let r = match entries.remove(&key(service, id)) {
            Some(r) => r,
            None => self
                .lock_expired()
                .remove(&key(service, id))
                .filter(|r| self.held(r))
                .ok_or_else(|| not_found(service, id))?,
        };
        tracing::info!(service, id, address = %r.address, "instance deregistered");
        self.publish(
            &entries,
            Removals::Only(vec![(r.service.clone(), r.address)]),
            &|_| String::new(),
        );
        Ok(())
    }

    /// Marks `id` draining (or not): it stays listed but takes no new
    /// requests.
    pub async fn set_draining(
        &self,
        service: &str,
        id: &str,
        draining: bool,
    ) -> Result<Registration, RegistrationError> {
        if let Some(etcd) = &self.etcd {
            return etcd.set_draining(service, id, draining).await;
        }
        let mut entries = self.lock();
        let r = entries
            .get_mut(&key(service, id))
            .ok_or_else(|| not_found(service, id))?;
        r.draining = draining;
        r.expires_ms = clock::now_ms() + r.ttl.as_millis() as u64;
        let out = r.clone();
        self.publish(&entries, Removals::Implicit, &|_| String::new());
        Ok(out)
    }

    /// One registration: a live one, or an expired one whose removal
    /// self-preservation still holds back (`expired` set).
    pub fn get(&self, service: &str, id: &str) -> Option<Registration> {
        let found = match &self.etcd {
            Some(etcd) => etcd.get(service, id),
            None => {
                let live = self.lock().get(&key(service, id)).cloned();
                live.or_else(|| self.lock_expired().get(&key(service, id)).cloned())
            }
        };
        found.filter(|r| !r.expired || self.held(r))
    }

    /// Every registration.
    pub fn all(&self) -> Vec<Registration> {
        if let Some(etcd) = &self.etcd {
            return etcd.all();
        }
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        v
    }

    /// Removes registrations whose TTL lapsed; returns how many. Those
    /// whose removal self-preservation holds back stay visible as expired.
    pub fn expire(&self, now_ms: u64) -> usize {
        let mut entries = self.lock();
        let lapsed: Vec<(Arc<str>, Arc<str>)> = entries
            .iter()
            .filter(|(_, r)| r.expires_ms <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        if lapsed.is_empty() {
            drop(entries);
            self.prune_expired();
            return 0;
        }
        let mut why: HashMap<(Arc<str>, SocketAddr), String> = HashMap::new();
        let mut expired = Vec::with_capacity(lapsed.len());
        for k in &lapsed {
            if let Some(mut r) = entries.remove(k) {
                tracing::warn!(service = %r.service, id = %r.id, address = %r.address, ttl = ?r.ttl, "registration expired: no heartbeat within its TTL");
                why.insert(
                    (r.service.clone(), r.address),
                    format!(
                        "registration {} expired: no heartbeat within its TTL of {}",
                        r.id,
                        humantime::format_duration(r.ttl)
                    ),
                );
                r.expired = true;
                expired.push(r);
            }
        }
        let cause = |spec: &InstanceSpec| {
            why.get(&(spec.service.clone(), spec.addr))
                .cloned()
                .unwrap_or_else(|| "registration expired".to_owned())
        };
        self.publish(&entries, Removals::Implicit, &cause);
        {
            let mut held = self.lock_expired();
            for r in expired {
                held.insert(r.key(), r);
            }
        }
        drop(entries);
        self.prune_expired();
        lapsed.len()
    }

    /// Forgets expired registrations whose removal is no longer held back
    /// (applied after `registry.max_hold`, or released).
    fn prune_expired(&self) {
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        self.lock_expired().retain(|_, r| {
            registry
                .held_back(API_SOURCE, &r.service, r.address)
                .is_some()
        });
    }

    /// Expires lapsed registrations until the registry is dropped.
    pub async fn run_expiry(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        loop {
            let Some(me) = weak.upgrade() else { return };
            let now = clock::now_ms();
            me.expire(now);
            let next = me.lock().values().map(|r| r.expires_ms).min();
            let wait = next.map_or(Duration::from_secs(1), |t| {
                Duration::from_millis(t.saturating_sub(now) + 1)
            });
            let wait = wait.min(Duration::from_secs(1));
            let notified = async {
                tokio::select! {
                    () = me.changed.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            };
            notified.await;
        }
    }

    fn publish(
        &self,
        entries: &Entries,
        removals: Removals,
        cause: &dyn Fn(&InstanceSpec) -> String,
    ) {
        let specs: Vec<InstanceSpec> = entries.values().map(Registration::spec).collect();
        if let Some(registry) = self.registry.upgrade() {
            registry.report_because(API_SOURCE, specs, removals, cause);
        }
        self.changed.notify_one();
        self.save_state(entries);
    }

    /// Saves the state file now (after a change of the operator's drains).
    pub fn save(&self) {
        if self.state_file.is_some() {
            self.save_state(&self.lock());
        }
    }

    fn save_state(&self, entries: &Entries) {
        let Some(path) = &self.state_file else { return };
        let mut registrations: Vec<Registration> = entries.values().cloned().collect();
        registrations.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        let drains = self
            .registry
            .upgrade()
            .map(|r| r.operator_drains())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, since)| SavedDrain {
                service: k.service,
                address: k.addr,
                since,
            })
            .collect();
        let state = StateFile {
            registrations,
            drains,
        };
        let result = serde_json::to_vec_pretty(&state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, path)
            });
        if let Err(e) = result {
            tracing::warn!(file = %path.display(), error = %e, "cannot save registry state file");
        }
    }

    fn load_state(&self) {
        let Some(path) = &self.state_file else { return };
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read registry state file");
                return;
            }
        };
        // Files written before drains were saved hold a bare list.
        let parsed = serde_json::from_slice::<StateFile>(&text).or_else(|e| {
            serde_json::from_slice::<Vec<Registration>>(&text)
                .map(|registrations| StateFile {
                    registrations,
                    drains: Vec::new(),
                })
                .map_err(|_| e)
        });
        let state = match parsed {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring unreadable registry state file");
                return;
            }
        };
        if let Some(registry) = self.registry.upgrade() {
            registry.restore_operator_drains(state.drains.into_iter().map(|d| {
                (
                    InstanceKey {
                        service: d.service,
                        addr: d.address,
                    },
                    d.since,
                )
            }));
        }
        let now = clock::now_ms();
        let mut entries = self.lock();
        for mut r in state.registrations {
            r.expires_ms = now + r.ttl.as_millis() as u64;
            entries.insert((r.service.clone(), r.id.clone()), r);
        }
        tracing::info!(file = %path.display(), instances = entries.len(), "loaded registrations from the state file");
        self.publish(&entries, Removals::Implicit, &|_| String::new());
        // Serve them, and the saved drains, from the first request.
        if let Some(registry) = self.registry.upgrade() {
            registry.rebuild();
        }
    }
}

fn key(service: &str, id: &str) -> (Arc<str>, Arc<str>) {
    (Arc::from(service), Arc::from(id))
}

fn not_found(service: &str, id: &str) -> RegistrationError {
    RegistrationError::NotFound {
        service: service.to_owned(),
        id: id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

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

    #[tokio::test]
    async fn ttl_lapse_removes_and_heartbeat_keeps() {
        let (reg, regs) = setup();
        for (i, port) in [(1, 1), (2, 2), (3, 3)] {
            regs.register("a", &format!("i{i}"), req(port, 1_000))
                .await
                .unwrap();
        }
        let now = clock::now_ms();
        regs.heartbeat("a", "i1").await.unwrap();
        regs.heartbeat("a", "i2").await.unwrap();
        // Only i3 lapses: one of three is within the self-preservation guard.
        {
            let mut e = regs.lock();
            e.get_mut(&key("a", "i3")).unwrap().expires_ms = now;
        }
        assert_eq!(regs.expire(now + 1), 1);
        reg.rebuild();
        assert_eq!(reg.load().service("a").unwrap().members().len(), 2);
        assert!(regs.heartbeat("a", "i3").await.is_err());
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
}
