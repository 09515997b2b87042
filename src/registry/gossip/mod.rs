//! The gossip fleet (`[registry.gossip]`): wayfinder proxies and
//! `wayfinder register --gossip` agents join one gossip cluster; each
//! member gossips its own registrations, and every proxy builds its
//! snapshot from the union, reported under [`GOSSIP_SOURCE`]. No etcd.
//!
//! Gossip itself is chitchat's (Quickwit's cluster membership crate):
//! scuttlebutt anti-entropy replicates each member's key-value state, and
//! a phi-accrual failure detector declares a member dead when its
//! heartbeats stop for about `phi_threshold` times their usual gap.
//! This module adds what wayfinder needs on top:
//! - [`Silence`]: the configured failure detection time
//!   (`failure_detection`): a member unheard for it, less the rounds its
//!   last heartbeat takes to spread, is dead whatever chitchat's detector
//!   says;
//! - [`seal`]: the transport, sealing each datagram with the shared secret;
//! - [`wire`]: what a member publishes (its instances, whether it is
//!   leaving, what it withdrew on purpose, what it ejected);
//! - [`fleet`]: the members as this one sees them, and which removals are
//!   explicit (left, withdrawn) or implicit (dead: the self-preservation
//!   guard applies);
//! - this file: starting, joining the seeds with backoff, following
//!   chitchat's live set, publishing, leaving, and the registration store
//!   wrapper that tells the fleet about a proxy's own registrations.
//!
//! Shared observations: with `observations = "share"` a proxy also
//! gossips the instances its passive health has ejected; every member
//! shows them in `GET /v1/members` with how many proxies agree. They are
//! advisory: no proxy ejects on another's word (see the README, "Gossip
//! fleet").

pub mod fleet;
mod seal;
pub mod wire;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use chitchat::transport::Transport;
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    NodeState, ProtocolVersion,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use fleet::{MemberId, MemberState};
pub use seal::Traffic;
pub use wire::{Published, PublishedInstance, Role, STATE_KEY};

use self::fleet::{Fleet, Heard};
use self::seal::SealedTransport;
use super::registrations::{Pending, RegisterRequest, Registration, RegistrationStore};
use super::Registry;
use crate::clock;
use crate::config::GossipSettings;

/// The source name the fleet's instances are reported under.
pub const GOSSIP_SOURCE: &str = "gossip";

/// How long a dead or departed member stays listed.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// How long a withdrawal stays in a member's `gone` list.
const GONE_FOR: Duration = Duration::from_secs(60);
/// How many times a round [`Gossip::follow`] looks for silent members.
const CHECKS_PER_ROUND: u32 = 4;
/// After a message arrives, the wait before reading the fleet's state:
/// chitchat applies it on its own task, and a burst arrives together.
const ARRIVAL_SETTLE: Duration = Duration::from_millis(10);

/// Why gossip could not start.
#[derive(Debug, thiserror::Error)]
#[error("gossip: {0}")]
pub struct GossipError(String);

/// A member of the fleet.
pub struct Gossip {
    settings: GossipSettings,
    id: ChitchatId,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    handle: Mutex<Option<ChitchatHandle>>,
    registry: Weak<Registry>,
    fleet: Mutex<Fleet>,
    traffic: Arc<Traffic>,
    /// What this member publishes.
    mine: Mutex<Published>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Becomes true once another member is alive.
    joined: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("name", &self.settings.name)
            .field("advertise", &self.settings.advertise)
            .finish_non_exhaustive()
    }
}

/// One member, for `GET /v1/members`.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    /// Its name.
    pub name: Arc<str>,
    /// Its generation (start time, ms since the epoch).
    pub generation: u64,
    /// Its gossip address.
    pub addr: SocketAddr,
    /// `alive`, `dead` or `left`.
    pub state: &'static str,
    /// Whether this is the member answering.
    pub this: bool,
    /// When its state or what it published last changed.
    pub changed: Option<SystemTime>,
    /// What it publishes.
    pub published: Published,
}

impl Gossip {
    /// Joins the fleet `settings` describe as a `role`; a proxy passes the
    /// registry the fleet's instances are reported to.
    pub async fn start(
        settings: &GossipSettings,
        role: Role,
        registry: Option<&Arc<Registry>>,
    ) -> Result<Arc<Gossip>, GossipError> {
        let generation = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let id = ChitchatId::new(settings.name.clone(), generation, settings.advertise);
        let traffic = Arc::new(Traffic::default());
        let transport = SealedTransport::new(
            &settings.cluster,
            settings.secret.as_deref(),
            traffic.clone(),
        );
        let mine = Published {
            role,
            ..Published::default()
        };
        let config = ChitchatConfig {
            chitchat_id: id.clone(),
            cluster_id: settings.cluster.clone(),
            gossip_interval: settings.interval,
            listen_addr: settings.bind,
            seed_nodes: settings.join.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: f64::from(settings.phi_threshold),
                sampling_window_size: 1000,
                max_interval: settings.interval * 20,
                initial_interval: settings.interval,
                dead_node_grace_period: FORGET_AFTER,
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
        };
        let handle = spawn_chitchat(
            config,
            vec![(STATE_KEY.to_owned(), mine.encode())],
            &transport as &dyn Transport,
        )
        .await
        .map_err(|e| GossipError(format!("{e:#}")))?;
        let me = Arc::new(Gossip {
            settings: settings.clone(),
            id,
            chitchat: handle.chitchat(),
            handle: Mutex::new(Some(handle)),
            registry: registry.map_or_else(Weak::new, Arc::downgrade),
            fleet: Mutex::new(Fleet::default()),
            traffic,
            mine: Mutex::new(mine),
            tasks: Mutex::new(Vec::new()),
            joined: tokio::sync::watch::Sender::new(false),
        });
        tracing::info!(
            name = %settings.name,
            bind = %settings.bind,
            advertise = %settings.advertise,
            cluster = %settings.cluster,
            sealed = settings.secret.is_some(),
            seeds = ?settings.join,
            "gossip started"
        );
        let follow = tokio::spawn(me.clone().follow());
        let join = tokio::spawn(me.clone().join_seeds());
        me.tasks().extend([follow, join]);
        Ok(me)
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fleet(&self) -> std::sync::MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mine(&self) -> std::sync::MutexGuard<'_, Published> {
        self.mine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This member's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The address gossip listens on.
    pub fn bind(&self) -> SocketAddr {
        self.settings.bind
    }

    /// Bytes and datagrams through the gossip socket.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Waits (at most `limit`) until another member is alive; whether one is.
    pub async fn wait_joined(&self, limit: Duration) -> bool {
        let mut rx = self.joined.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|j| *j))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    // === following the fleet ===

    /// Follows chitchat's live set (it changes when a member joins or dies,
    /// and chitchat reports it once per round) and what the live members
    /// publish, read again soon after each message arrives: a change pushed
    /// by its member applies here at once, not at this member's next round.
    ///
    /// Also declares dead, without waiting for chitchat's detector, a
    /// member whose heartbeat has not advanced here for
    /// [`GossipSettings::silence`] (see [`Silence`]), looked at
    /// [`CHECKS_PER_ROUND`] times a round so deaths are seen when nothing
    /// arrives.
    async fn follow(self: Arc<Self>) {
        let mut live = self.chitchat.lock().await.live_nodes_watcher();
        let mut tick = tokio::time::interval(self.settings.interval / CHECKS_PER_ROUND);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        let mut silence = Silence::new(self.settings.silence());
        // The members taken as alive and the version of each one's state
        // last read.
        let mut seen: Vec<(ChitchatId, u64)> = Vec::new();
        loop {
            // Whether to report to the registry even when nothing changed
            // (once a round, and when chitchat's live set changes).
            let report = tokio::select! {
                r = live.changed() => if r.is_err() { return } else { true },
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    ticks % CHECKS_PER_ROUND == 0
                }
                () = self.traffic.arrived.notified() => {
                    // Let chitchat apply it (and what arrives with it).
                    tokio::time::sleep(ARRIVAL_SETTLE).await;
                    false
                }
            };
            live.borrow_and_update();
            let alive: Vec<Heard> = {
                let chitchat = self.chitchat.lock().await;
                let now = silence.look(
                    chitchat
                        .live_nodes()
                        .filter(|id| **id != self.id)
                        .filter_map(|id| {
                            let state = chitchat.node_state(id)?;
                            Some((id, u64::from(state.heartbeat()), state.max_version()))
                        }),
                    tokio::time::Instant::now(),
                );
                // Most messages change nothing (heartbeats): skip those.
                if !report && now == seen {
                    continue;
                }
                seen = now;
                seen.iter()
                    .filter_map(|(id, _)| Some(heard(id, chitchat.node_state(id)?)))
                    .collect()
            };
            self.joined.send_if_modified(|j| {
                let now = !alive.is_empty();
                let changed = *j != now;
                *j = now;
                changed
            });
            self.observe(alive);
        }
    }

    fn observe(&self, alive: Vec<Heard>) {
        let now_ms = clock::now_ms();
        let mut fleet = self.fleet();
        let change = fleet.observe(alive, SystemTime::now(), now_ms);
        fleet.prune(now_ms.saturating_sub(FORGET_AFTER.as_millis() as u64));
        drop(fleet);
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        if change.cut_off {
            // Keep the last good set: a failing source, then stale.
            registry.source_failed(
                GOSSIP_SOURCE,
                "no other gossip member answers (cut off from the fleet?)".to_owned(),
            );
            return;
        }
        let cause = |s: &super::InstanceSpec| {
            change
                .causes
                .get(&(s.service.clone(), s.addr))
                .cloned()
                .unwrap_or_else(|| "no longer published by any gossip member".to_owned())
        };
        // Reporting an unchanged set is cheap (nothing is marked dirty) and
        // keeps the source's last success fresh.
        registry.report_because(GOSSIP_SOURCE, change.instances, change.removals, &cause);
    }

    /// Retry-join: until another member is alive, greets every seed, with
    /// the wait doubling from the gossip interval up to `retry_join_max`
    /// (chitchat also greets seeds in its rounds; this makes the first
    /// contact prompt and logs progress). Starts again if the member is
    /// ever left alone.
    async fn join_seeds(self: Arc<Self>) {
        if self.settings.join.is_empty() {
            return;
        }
        let others = resolve(&self.settings.join).await;
        if !others.is_empty() && others.iter().all(|s| *s == self.settings.advertise) {
            // Its only seed is itself: the first member, waiting to be joined.
            return;
        }
        let mut joined = self.joined.subscribe();
        loop {
            let mut wait = self.settings.interval;
            let mut attempts = 0u32;
            while !*joined.borrow_and_update() {
                let seeds = resolve(&self.settings.join).await;
                if let Some(h) = self
                    .handle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                {
                    for s in seeds.iter().filter(|s| **s != self.settings.advertise) {
                        let _ = h.gossip(*s);
                    }
                } else {
                    return;
                }
                attempts += 1;
                if attempts == 3 {
                    tracing::warn!(seeds = ?self.settings.join, retry_max = ?self.settings.retry_join_max, "no gossip seed answers yet; retrying with backoff");
                }
                let _ = tokio::time::timeout(wait, joined.changed()).await;
                wait = (wait * 2).min(self.settings.retry_join_max);
            }
            tracing::info!(attempts, "joined the gossip fleet");
            if joined.wait_for(|j| !*j).await.is_err() {
                return;
            }
            tracing::warn!("no other gossip member is alive; greeting the seeds again");
        }
    }

    // === publishing ===

    /// Publishes `instances` as this member's, naming `gone` the ones it
    /// withdrew on purpose.
    pub async fn publish(
        &self,
        instances: Vec<PublishedInstance>,
        gone: Vec<(Arc<str>, SocketAddr)>,
    ) {
        let value = {
            let mut mine = self.mine();
            if mine.instances == instances && mine.gone == gone {
                return;
            }
            mine.instances = instances;
            mine.gone = gone;
            mine.encode()
        };
        self.set_state(value).await;
    }

    /// Publishes the instances this proxy ejected now.
    async fn publish_ejected(&self, ejected: Vec<(Arc<str>, SocketAddr)>) {
        let value = {
            let mut mine = self.mine();
            if mine.ejected == ejected {
                return;
            }
            mine.ejected = ejected;
            mine.encode()
        };
        self.set_state(value).await;
    }

    /// Sets what this member publishes and pushes it to every alive member
    /// at once: each then has it after one exchange, instead of after the
    /// O(log members) rounds random gossip takes, so a change reaches a
    /// fleet of any size within about one round (the receiver applies it
    /// at its next round). Costs one exchange per member per change.
    async fn set_state(&self, value: String) {
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set(STATE_KEY, value);
        self.push_to_alive();
    }

    /// Starts a gossip exchange with every alive member now.
    fn push_to_alive(&self) {
        let peers: Vec<SocketAddr> = self
            .fleet()
            .members()
            .values()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| m.addr)
            .collect();
        if let Some(h) = self
            .handle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            for p in &peers {
                let _ = h.gossip(*p);
            }
        }
    }

    /// Leaves the fleet: publishes that it is leaving with no instances
    /// (every proxy removes them explicitly), keeps gossiping for
    /// `leave_timeout` so the news spreads, then stops.
    pub async fn leave(&self) {
        let value = {
            let mut mine = self.mine();
            mine.leaving = true;
            mine.gone = mine
                .instances
                .drain(..)
                .map(|i| (i.service, i.address))
                .collect();
            mine.encode()
        };
        // Pushed to every alive member now (set_state).
        self.set_state(value).await;
        tracing::info!(linger = ?self.settings.leave_timeout, "leaving the gossip fleet");
        let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
        tokio::time::sleep(self.settings.leave_timeout).await;
        self.stop_tasks();
        if let Some(h) = handle {
            let _ = h.shutdown().await;
        }
    }

    fn stop_tasks(&self) {
        for t in self.tasks().drain(..) {
            t.abort();
        }
    }

    /// Stops gossiping at once, without saying goodbye (the others will
    /// declare this member dead).
    pub fn abort(&self) {
        self.stop_tasks();
        if let Some(h) = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
        }
    }

    /// Every member known, this one first.
    pub fn members(&self) -> Vec<MemberInfo> {
        let mut out = vec![MemberInfo {
            name: self.id.node_id.clone(),
            generation: self.id.generation_id,
            addr: self.settings.advertise,
            state: if self.mine().leaving { "left" } else { "alive" },
            this: true,
            changed: None,
            published: self.mine().clone(),
        }];
        out.extend(
            self.fleet()
                .members()
                .iter()
                .map(|((name, generation), m)| MemberInfo {
                    name: name.clone(),
                    generation: *generation,
                    addr: m.addr,
                    state: m.state.as_str(),
                    this: false,
                    changed: Some(m.changed),
                    published: m.published.clone(),
                }),
        );
        out
    }

    /// Instances alive proxies report ejected, with who reports each.
    pub fn shared_ejections(&self) -> BTreeMap<(Arc<str>, SocketAddr), Vec<Arc<str>>> {
        let mut all = self.fleet().ejections();
        for k in &self.mine().ejected {
            all.entry(k.clone())
                .or_default()
                .push(self.id.node_id.clone());
        }
        all
    }

    /// For a proxy: publishes the registrations of `store` (and, with
    /// `observations = "share"`, its ejections) whenever they change, until
    /// the registry is dropped.
    pub fn spawn_publisher(self: &Arc<Self>, store: Arc<Announced>) {
        let task = tokio::spawn(self.clone().publish_registrations(store));
        self.tasks().push(task);
    }

    async fn publish_registrations(self: Arc<Self>, store: Arc<Announced>) {
        let Some(mut versions) = self.registry.upgrade().map(|r| r.watch()) else {
            return;
        };
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let instances = store
                .inner
                .all()
                .iter()
                .map(PublishedInstance::from)
                .collect();
            self.publish(instances, store.gone()).await;
            if self.settings.share_ejections {
                if let Some(registry) = self.registry.upgrade() {
                    self.publish_ejected(ejected_now(&registry)).await;
                }
            }
            tokio::select! {
                () = store.changed.notified() => {}
                r = versions.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
            }
        }
    }
}

/// The instances `registry` has ejected now.
fn ejected_now(registry: &Registry) -> Vec<(Arc<str>, SocketAddr)> {
    let now = clock::now_ms();
    let snap = registry.load();
    let mut out = Vec::new();
    for s in snap.services() {
        for m in s.members() {
            let i = &m.instance;
            if i.is_ejected(now) {
                out.push((i.key().service.clone(), i.addr()));
            }
        }
    }
    out
}

/// The failure detection wayfinder adds to chitchat's: a member alive for
/// chitchat whose heartbeat has not advanced *here* for `limit` is taken
/// as dead.
///
/// chitchat's phi-accrual detector declares a member dead after
/// `phi_threshold` times the mean gap between the heartbeats of it this
/// member hears (an adaptive time, not one an operator can set), and only
/// looks at the end of each of its rounds. This one gives the fleet a
/// configured time (`failure_detection`, from which `limit` is derived)
/// and is looked at several times a round. Whichever declares a member
/// dead first wins; a member whose heartbeat advances again is alive
/// again.
#[derive(Debug)]
struct Silence {
    limit: Duration,
    /// Each member's last heartbeat heard and when it advanced.
    heard: std::collections::HashMap<ChitchatId, (u64, tokio::time::Instant)>,
}

impl Silence {
    fn new(limit: Duration) -> Silence {
        Silence {
            limit,
            heard: std::collections::HashMap::new(),
        }
    }

    /// Takes in the members chitchat has alive at `now`, each with its
    /// heartbeat and the version of its state; returns those also heard
    /// within the limit, with the version of each one's state, in order.
    fn look<'a>(
        &mut self,
        live: impl Iterator<Item = (&'a ChitchatId, u64, u64)>,
        now: tokio::time::Instant,
    ) -> Vec<(ChitchatId, u64)> {
        let mut out = Vec::new();
        let mut still = std::collections::HashSet::new();
        for (id, beat, version) in live {
            still.insert(id.clone());
            let (last, at) = self.heard.entry(id.clone()).or_insert((beat, now));
            if beat > *last {
                (*last, *at) = (beat, now);
            }
            if now.saturating_duration_since(*at) <= self.limit {
                out.push((id.clone(), version));
            }
        }
        // chitchat declared these dead: heard again, they start afresh.
        self.heard.retain(|id, _| still.contains(id));
        out.sort_unstable();
        out
    }
}

fn heard(id: &ChitchatId, state: &NodeState) -> Heard {
    Heard {
        id: (id.node_id.clone(), id.generation_id),
        addr: id.gossip_advertise_addr,
        published: state.get(STATE_KEY).and_then(Published::decode),
    }
}

/// The seeds' addresses (host names resolved now; a failing one skipped).
async fn resolve(seeds: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in seeds {
        if let Ok(addrs) = tokio::net::lookup_host(s.as_str()).await {
            out.extend(addrs);
        }
    }
    out
}

// === the proxy's own registrations ===

/// The registration store of a proxy in a fleet: the local store, plus
/// what the fleet needs to know about its changes (a deregistration is an
/// explicit removal for every proxy; anything else the publisher reads
/// from the store).
#[derive(Debug)]
pub struct Announced {
    inner: Arc<dyn RegistrationStore>,
    /// Deregistered instances and `clock::now_ms()` of each.
    gone: Mutex<Vec<(Arc<str>, SocketAddr, u64)>>,
    changed: Notify,
}

impl Announced {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn RegistrationStore>) -> Arc<Announced> {
        Arc::new(Announced {
            inner,
            gone: Mutex::new(Vec::new()),
            changed: Notify::new(),
        })
    }

    fn gone_list(&self) -> std::sync::MutexGuard<'_, Vec<(Arc<str>, SocketAddr, u64)>> {
        self.gone.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gone(&self) -> Vec<(Arc<str>, SocketAddr)> {
        let cutoff = clock::now_ms().saturating_sub(GONE_FOR.as_millis() as u64);
        let mut g = self.gone_list();
        g.retain(|(_, _, at)| *at >= cutoff);
        g.iter().map(|(s, a, _)| (s.clone(), *a)).collect()
    }

    fn notify<T>(
        &self,
        r: Result<T, super::registrations::RegistrationError>,
    ) -> Result<T, super::registrations::RegistrationError> {
        if r.is_ok() {
            self.changed.notify_one();
        }
        r
    }
}

impl RegistrationStore for Announced {
    fn source_name(&self) -> &'static str {
        self.inner.source_name()
    }

    fn register<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        req: RegisterRequest,
    ) -> Pending<'a, bool> {
        Box::pin(async move {
            let address = req.address;
            let r = self.inner.register(service, id, req).await;
            if r.is_ok() {
                // Registered again: no longer gone.
                self.gone
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|(s, a, _)| !(&**s == service && *a == address));
            }
            self.notify(r)
        })
    }

    fn heartbeat<'a>(&'a self, service: &'a str, id: &'a str) -> Pending<'a, ()> {
        self.inner.heartbeat(service, id)
    }

    fn deregister<'a>(&'a self, service: &'a str, id: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            // Named gone before it leaves the store: the publisher may run
            // as soon as the local store reports, and must not publish the
            // removal without its reason.
            let entry = self
                .inner
                .get(service, id)
                .map(|r| (r.service.clone(), r.address, clock::now_ms()));
            if let Some(e) = &entry {
                self.gone_list().push(e.clone());
            }
            let r = self.inner.deregister(service, id).await;
            if let (Err(_), Some((s, a, _))) = (&r, entry) {
                self.gone_list()
                    .retain(|(gs, ga, _)| !(*gs == s && *ga == a));
            }
            self.notify(r)
        })
    }

    fn set_draining<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        draining: bool,
    ) -> Pending<'a, Registration> {
        Box::pin(async move {
            let r = self.inner.set_draining(service, id, draining).await;
            self.notify(r)
        })
    }

    fn get(&self, service: &str, id: &str) -> Option<Registration> {
        self.inner.get(service, id)
    }

    fn all(&self) -> Vec<Registration> {
        self.inner.all()
    }

    fn expire(&self, now_ms: u64) -> usize {
        let n = self.inner.expire(now_ms);
        if n > 0 {
            self.changed.notify_one();
        }
        n
    }

    fn run_expiry(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        // The local store's expiry reports to the registry; the publisher
        // sees the new version and republishes.
        self.inner.clone().run_expiry()
    }

    fn save(&self) {
        self.inner.save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ChitchatId {
        ChitchatId::new(name.to_owned(), 1, SocketAddr::from(([127, 0, 0, 1], 7946)))
    }

    #[test]
    fn a_member_unheard_for_the_limit_is_silent_until_its_heartbeat_advances() {
        let (a, b) = (id("a"), id("b"));
        let mut s = Silence::new(Duration::from_secs(2));
        let t = tokio::time::Instant::now();
        let names = |v: Vec<(ChitchatId, u64)>| -> Vec<String> {
            v.into_iter().map(|(i, _)| i.node_id.to_string()).collect()
        };
        assert_eq!(
            names(s.look([(&a, 5, 1), (&b, 9, 1)].into_iter(), t)),
            ["a", "b"]
        );
        // b keeps beating, a does not.
        let at = |ms| t + Duration::from_millis(ms);
        assert_eq!(
            names(s.look([(&a, 5, 1), (&b, 10, 1)].into_iter(), at(1500))),
            ["a", "b"]
        );
        assert_eq!(
            names(s.look([(&a, 5, 1), (&b, 11, 1)].into_iter(), at(2000))),
            ["a", "b"]
        );
        assert_eq!(
            names(s.look([(&a, 5, 1), (&b, 12, 1)].into_iter(), at(2001))),
            ["b"]
        );
        // A heartbeat of a again: alive again.
        assert_eq!(
            names(s.look([(&a, 6, 2), (&b, 12, 1)].into_iter(), at(2500))),
            ["a", "b"]
        );
        // chitchat drops b; heard of again, it starts afresh.
        assert_eq!(names(s.look([(&a, 7, 2)].into_iter(), at(9000))), ["a"]);
        assert_eq!(
            names(s.look([(&a, 7, 2), (&b, 12, 1)].into_iter(), at(9100))),
            ["a", "b"]
        );
    }
}
