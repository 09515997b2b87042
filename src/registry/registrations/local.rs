//! The local registration store: registrations kept in this proxy, each
//! alive while heartbeats renew its TTL, expired here when one lapses
//! (through the registry's self-preservation guard), and saved to the
//! state file (with the operator's drains) on every change.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{
    held, key, not_found, Carried, Pending, RegisterRequest, Registration, RegistrationError,
    RegistrationStore, API_SOURCE,
};
use crate::clock;
use crate::registry::{InstanceKey, InstanceSpec, Registry, Removals};

/// Registrations by (service, id).
type Entries = HashMap<(Arc<str>, Arc<str>), Registration>;

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

/// Registrations kept in this proxy: TTLs counted here, the set saved to
/// the state file on every change.
#[derive(Debug)]
pub struct LocalStore {
    registry: Weak<Registry>,
    entries: Mutex<Entries>,
    /// Registrations that expired while self-preservation holds back their
    /// removal (locked after `entries` when both are).
    expired: Mutex<Entries>,
    state_file: Option<PathBuf>,
    changed: Notify,
}

impl LocalStore {
    /// An empty set reporting to `registry`, loading `state_file` if given
    /// and present.
    pub fn new(registry: &Arc<Registry>, state_file: Option<PathBuf>) -> Arc<LocalStore> {
        let me = Arc::new(LocalStore {
            registry: Arc::downgrade(registry),
            entries: Mutex::new(HashMap::new()),
            expired: Mutex::new(HashMap::new()),
            state_file,
            changed: Notify::new(),
        });
        me.load_state();
        me
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_expired(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.expired.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the registry still holds back the removal of `r`.
    fn held(&self, r: &Registration) -> bool {
        held(&self.registry, API_SOURCE, r)
    }

    /// Registers (or updates) `id` of `service`. Idempotent: the same call
    /// again renews the TTL and updates the fields. Returns whether it was new.
    fn register_now(
        &self,
        service: &str,
        id: &str,
        req: RegisterRequest,
    ) -> Result<bool, RegistrationError> {
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
    fn heartbeat_now(&self, service: &str, id: &str) -> Result<(), RegistrationError> {
        let mut entries = self.lock();
        let r = entries
            .get_mut(&key(service, id))
            .ok_or_else(|| not_found(service, id))?;
        r.expires_ms = clock::now_ms() + r.ttl.as_millis() as u64;
        Ok(())
    }

    /// Removes `id`: no new requests reach it, requests in flight finish.
    /// An expired registration whose removal is held back is removed now.
    fn deregister_now(&self, service: &str, id: &str) -> Result<(), RegistrationError> {
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
    fn set_draining_now(
        &self,
        service: &str,
        id: &str,
        draining: bool,
    ) -> Result<Registration, RegistrationError> {
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

    /// One registration: a live one, or an expired one still kept.
    fn get_now(&self, service: &str, id: &str) -> Option<Registration> {
        let live = self.lock().get(&key(service, id)).cloned();
        live.or_else(|| self.lock_expired().get(&key(service, id)).cloned())
    }

    /// Every registration.
    fn all_now(&self) -> Vec<Registration> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        v
    }

    /// Removes registrations whose TTL lapsed; returns how many. Those
    /// whose removal self-preservation holds back stay visible as expired.
    fn expire_now(&self, now_ms: u64) -> usize {
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
        super::COUNTS
            .expired
            .fetch_add(lapsed.len() as u64, std::sync::atomic::Ordering::Relaxed);
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
    async fn expire_until_dropped(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        loop {
            let Some(me) = weak.upgrade() else { return };
            let now = clock::now_ms();
            me.expire_now(now);
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
    fn save_now(&self) {
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

// === hand-over to a successor process ===

impl LocalStore {
    fn hand_over_now(&self) -> Vec<Carried> {
        let now = clock::now_ms();
        self.lock()
            .values()
            .map(|r| Carried {
                registration: r.clone(),
                ttl_left: Duration::from_millis(r.expires_ms.saturating_sub(now)),
            })
            .collect()
    }

    fn take_over_now(&self, carried: Vec<Carried>) {
        let now = clock::now_ms();
        let mut entries = self.lock();
        entries.clear();
        for Carried {
            mut registration,
            ttl_left,
        } in carried
        {
            registration.expires_ms = now + ttl_left.as_millis() as u64;
            registration.expired = false;
            entries.insert(registration.key(), registration);
        }
        tracing::info!(
            instances = entries.len(),
            "took over the registrations of the previous process"
        );
        self.publish(&entries, Removals::Implicit, &|_| String::new());
    }
}

impl RegistrationStore for LocalStore {
    fn source_name(&self) -> &'static str {
        API_SOURCE
    }

    fn register<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        req: RegisterRequest,
    ) -> Pending<'a, bool> {
        Box::pin(std::future::ready(self.register_now(service, id, req)))
    }

    fn heartbeat<'a>(&'a self, service: &'a str, id: &'a str) -> Pending<'a, ()> {
        Box::pin(std::future::ready(self.heartbeat_now(service, id)))
    }

    fn deregister<'a>(&'a self, service: &'a str, id: &'a str) -> Pending<'a, ()> {
        Box::pin(std::future::ready(self.deregister_now(service, id)))
    }

    fn set_draining<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        draining: bool,
    ) -> Pending<'a, Registration> {
        Box::pin(std::future::ready(
            self.set_draining_now(service, id, draining),
        ))
    }

    fn get(&self, service: &str, id: &str) -> Option<Registration> {
        self.get_now(service, id)
    }

    fn all(&self) -> Vec<Registration> {
        self.all_now()
    }

    fn expire(&self, now_ms: u64) -> usize {
        self.expire_now(now_ms)
    }

    fn run_expiry(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.expire_until_dropped())
    }

    fn save(&self) {
        self.save_now();
    }

    fn hand_over(&self) -> Option<Vec<Carried>> {
        Some(self.hand_over_now())
    }

    fn take_over(&self, carried: Vec<Carried>) {
        self.take_over_now(carried);
    }
}
