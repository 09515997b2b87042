//! The registration source: instances that registered themselves (or were
//! registered by `wayfinder register`) through the admin API, each kept
//! alive by heartbeats within its TTL.
//!
//! Every change is reported to the registry as this source's whole set under
//! the name [`API_SOURCE`]. Deregistrations are explicit removals; TTL
//! expiries are implicit, so a burst of them goes through the registry's
//! self-preservation guard. With a state file configured, the set is saved
//! on every change and loaded at start (each loaded instance gets a fresh
//! TTL), so a restarted proxy routes before its instances heartbeat again.
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

use super::etcd::EtcdStore;
use super::{InstanceSpec, Registry, Removals};
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
            state_file: None,
            changed: Notify::new(),
            etcd: Some(store),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
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
        self.publish(&entries, removals);
        Ok(new)
    }

    /// Renews the TTL of `id`.
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
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), RegistrationError> {
        if let Some(etcd) = &self.etcd {
            return etcd.deregister(service, id).await;
        }
        let mut entries = self.lock();
        let r = entries
            .remove(&key(service, id))
            .ok_or_else(|| not_found(service, id))?;
        tracing::info!(service, id, address = %r.address, "instance deregistered");
        self.publish(
            &entries,
            Removals::Only(vec![(r.service.clone(), r.address)]),
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
        self.publish(&entries, Removals::Implicit);
        Ok(out)
    }

    /// One registration.
    pub fn get(&self, service: &str, id: &str) -> Option<Registration> {
        if let Some(etcd) = &self.etcd {
            return etcd.get(service, id);
        }
        self.lock().get(&key(service, id)).cloned()
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

    /// Removes registrations whose TTL lapsed; returns how many.
    pub fn expire(&self, now_ms: u64) -> usize {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|_, r| {
            let keep = r.expires_ms > now_ms;
            if !keep {
                tracing::warn!(service = %r.service, id = %r.id, address = %r.address, ttl = ?r.ttl, "registration expired: no heartbeat within its TTL");
            }
            keep
        });
        let gone = before - entries.len();
        if gone > 0 {
            self.publish(&entries, Removals::Implicit);
        }
        gone
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

    fn publish(&self, entries: &Entries, removals: Removals) {
        let specs: Vec<InstanceSpec> = entries.values().map(Registration::spec).collect();
        if let Some(registry) = self.registry.upgrade() {
            registry.report(API_SOURCE, specs, removals);
        }
        self.changed.notify_one();
        self.save_state(entries);
    }

    fn save_state(&self, entries: &Entries) {
        let Some(path) = &self.state_file else { return };
        let list: Vec<&Registration> = entries.values().collect();
        let result = serde_json::to_vec_pretty(&list)
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
        let list: Vec<Registration> = match serde_json::from_slice(&text) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring unreadable registry state file");
                return;
            }
        };
        let now = clock::now_ms();
        let mut entries = self.lock();
        for mut r in list {
            r.expires_ms = now + r.ttl.as_millis() as u64;
            entries.insert((r.service.clone(), r.id.clone()), r);
        }
        tracing::info!(file = %path.display(), instances = entries.len(), "loaded registrations from the state file");
        self.publish(&entries, Removals::Implicit);
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
}
