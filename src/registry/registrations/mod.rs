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
//! Where registrations are kept is a [`RegistrationStore`], behind the one
//! interface of [`Registrations`]: [`LocalStore`] keeps them in this
//! proxy (TTLs counted here, the state file); with `[registry.etcd]`
//! configured the etcd store writes through to etcd instead
//! (`super::etcd::EtcdStore`): nothing is kept here, every proxy sharing
//! the etcd sees the change through its watch, and a call that cannot reach
//! etcd fails with [`RegistrationError::Unavailable`].

mod local;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{InstanceSpec, Registry};

pub use local::LocalStore;

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

/// A registration handed to a successor process (`wayfinder run
/// --takeover`), with the time its TTL had left.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Carried {
    /// The registration.
    pub registration: Registration,
    /// Time left before it expires without a heartbeat.
    #[serde(with = "humantime_serde")]
    pub ttl_left: Duration,
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

/// A store's answer to a call, once it has one.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, RegistrationError>> + Send + 'a>>;

/// Where registrations are kept, and the calls the registration API makes
/// on them. A store reports its registrations to the registry as one
/// source, under [`RegistrationStore::source_name`].
pub trait RegistrationStore: Send + Sync + fmt::Debug {
    /// The source name its registrations are reported under.
    fn source_name(&self) -> &'static str;

    /// Registers (or updates) `id` of `service`. Idempotent: the same call
    /// again renews the TTL and updates the fields. Returns whether it was
    /// new.
    fn register<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        req: RegisterRequest,
    ) -> Pending<'a, bool>;

    /// Renews the TTL of `id`.
    fn heartbeat<'a>(&'a self, service: &'a str, id: &'a str) -> Pending<'a, ()>;

    /// Removes `id`: no new requests reach it, requests in flight finish.
    fn deregister<'a>(&'a self, service: &'a str, id: &'a str) -> Pending<'a, ()>;

    /// Marks `id` draining (or not): it stays listed but takes no new
    /// requests.
    fn set_draining<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        draining: bool,
    ) -> Pending<'a, Registration>;

    /// One registration, including an expired one still kept (`expired`
    /// set).
    fn get(&self, service: &str, id: &str) -> Option<Registration>;

    /// Every registration.
    fn all(&self) -> Vec<Registration>;

    /// Removes the registrations whose TTL lapsed by `now_ms`; how many.
    /// A store whose TTLs lapse elsewhere (etcd leases) has none.
    fn expire(&self, _now_ms: u64) -> usize {
        0
    }

    /// Expires lapsed registrations as they lapse, until the store is
    /// dropped; ends at once for a store with nothing to expire.
    fn run_expiry(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async {})
    }

    /// Saves what the store keeps on disk, if anything (after a change of
    /// the operator's drains).
    fn save(&self) {}

    /// The registrations this process keeps, with their TTLs' time left,
    /// for a successor process; `None` for a store that keeps them
    /// elsewhere (etcd).
    fn hand_over(&self) -> Option<Vec<Carried>> {
        None
    }

    /// Replaces the registrations with those a predecessor process handed
    /// over (see [`RegistrationStore::hand_over`]).
    fn take_over(&self, _carried: Vec<Carried>) {}
}

/// Registration events since the process started, for the metrics.
#[derive(Debug)]
pub struct Counts {
    /// New registrations (not renewals or updates).
    pub registered: AtomicU64,
    /// Deregistrations.
    pub deregistered: AtomicU64,
    /// Registrations removed because their TTL lapsed (this proxy's own
    /// store; an etcd store's leases lapse in etcd).
    pub expired: AtomicU64,
}

/// The process's registration counts.
pub static COUNTS: Counts = Counts {
    registered: AtomicU64::new(0),
    deregistered: AtomicU64::new(0),
    expired: AtomicU64::new(0),
};

/// The registrations, shared by the admin API and the expiry task: one
/// interface over whichever [`RegistrationStore`] keeps them.
#[derive(Debug)]
pub struct Registrations {
    registry: Weak<Registry>,
    store: Arc<dyn RegistrationStore>,
}

impl Registrations {
    /// Registrations kept in this proxy and reported to `registry`, loading
    /// `state_file` if given and present.
    pub fn new(registry: &Arc<Registry>, state_file: Option<PathBuf>) -> Arc<Registrations> {
        Registrations::with_store(registry, LocalStore::new(registry, state_file))
    }

    /// Registrations kept in `store` (etcd, shared by several proxies).
    pub fn with_store(
        registry: &Arc<Registry>,
        store: Arc<dyn RegistrationStore>,
    ) -> Arc<Registrations> {
        Arc::new(Registrations {
            registry: Arc::downgrade(registry),
            store,
        })
    }

    /// The source name the registrations are reported under (`api`, or
    /// `etcd` when the registry is shared).
    pub fn source_name(&self) -> &'static str {
        self.store.source_name()
    }

    /// Registers (or updates) `id` of `service`. Idempotent: the same call
    /// again renews the TTL and updates the fields. Returns whether it was new.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        req: RegisterRequest,
    ) -> Result<bool, RegistrationError> {
        let new = self.store.register(service, id, req).await?;
        if new {
            COUNTS.registered.fetch_add(1, Relaxed);
        }
        Ok(new)
    }

    /// Renews the TTL of `id`. An expired registration is not renewed (it
    /// must register again).
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<(), RegistrationError> {
        self.store.heartbeat(service, id).await
    }

    /// Removes `id`: no new requests reach it, requests in flight finish.
    /// An expired registration whose removal is held back is removed now.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), RegistrationError> {
        self.store.deregister(service, id).await?;
        COUNTS.deregistered.fetch_add(1, Relaxed);
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
        self.store.set_draining(service, id, draining).await
    }

    /// One registration: a live one, or an expired one whose removal
    /// self-preservation still holds back (`expired` set).
    pub fn get(&self, service: &str, id: &str) -> Option<Registration> {
        self.store
            .get(service, id)
            .filter(|r| !r.expired || held(&self.registry, self.source_name(), r))
    }

    /// Every registration.
    pub fn all(&self) -> Vec<Registration> {
        self.store.all()
    }

    /// Removes registrations whose TTL lapsed by `now_ms`; returns how
    /// many. Those whose removal self-preservation holds back stay visible
    /// as expired.
    pub fn expire(&self, now_ms: u64) -> usize {
        self.store.expire(now_ms)
    }

    /// Expires lapsed registrations until the registrations are dropped.
    pub async fn run_expiry(self: Arc<Self>) {
        let store = self.store.clone();
        drop(self);
        store.run_expiry().await;
    }

    /// Saves the state file now (after a change of the operator's drains).
    pub fn save(&self) {
        self.store.save();
    }

    /// The registrations kept in this process, for a successor process
    /// (`None` when the store keeps them elsewhere).
    pub fn hand_over(&self) -> Option<Vec<Carried>> {
        self.store.hand_over()
    }

    /// Takes over the registrations a predecessor process handed over:
    /// they replace what is kept here (the state file's copy included),
    /// each expiring when it would have there.
    pub fn take_over(&self, carried: Vec<Carried>) {
        self.store.take_over(carried);
    }
}

/// Whether the registry still holds back the removal of `r`, reported by
/// `source`.
fn held(registry: &Weak<Registry>, source: &str, r: &Registration) -> bool {
    registry
        .upgrade()
        .and_then(|reg| reg.held_back(source, &r.service, r.address))
        .is_some()
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
mod tests;
