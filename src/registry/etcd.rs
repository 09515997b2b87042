//! etcd as the registry shared by several proxies: the `etcd` source (list
//! the prefix once, then follow a watch) and the write-through store behind
//! the registration API when `[registry.etcd]` is configured.
//!
//! Reading: the source lists `PREFIX/services/` and watches the whole prefix
//! from the next revision. Every watch response updates [`mirror::Mirror`]
//! and reports the whole set under [`ETCD_SOURCE`]. Deletes that carry a
//! deregistration marker are explicit removals; other deletes (lease
//! expiry) are implicit, so a mass expiry meets the self-preservation guard.
//! A compacted watch revision re-lists; a broken connection resumes the
//! watch from the next revision (re-listing if etcd's history no longer
//! continues ours), with capped exponential backoff. While etcd is
//! unreachable the last good set keeps serving and the source shows as
//! failing in `GET /v1/sources` (logged once per state change).
//!
//! Writing (the registration API's calls, in [`write`]): a lease of the
//! instance's TTL plus a put on it; heartbeats keep the lease alive;
//! deregistration deletes the key and writes its marker in one transaction.

mod client;
mod mirror;
mod wire;
mod write;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::client::Client;
use self::mirror::{Layout, Mirror};
use self::wire::{prefix_end, WatchResponse};
use super::{InstanceSpec, Registry, Removals};
use crate::config::EtcdSettings;

pub use self::client::EtcdError;

/// The source name etcd's instances are reported under.
pub const ETCD_SOURCE: &str = "etcd";

/// First wait after a failure; doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle watch checks that its endpoint still answers (a
/// half-open connection would otherwise look like a quiet registry).
const WATCH_PROBE: Duration = Duration::from_secs(10);
/// Lease TTL of deregistration markers: long enough for every watcher to
/// see the marker with its delete, short enough not to pile up.
const MARKER_TTL_SECS: i64 = 60;

/// The etcd source and write-through store.
#[derive(Debug)]
pub struct EtcdStore {
    client: Client,
    layout: Layout,
    registry: Weak<Registry>,
    mirror: Mutex<Mirror>,
    /// Becomes true after the first successful listing.
    listed: watch::Sender<bool>,
}

/// How one watch ended.
enum WatchEnd {
    /// Our history no longer continues etcd's: list again now.
    Relist(String),
    /// Failed; retry after a backoff, resuming at the revision if given.
    Failed(String, Option<i64>),
}

impl EtcdStore {
    /// A store for `settings`, reporting to `registry`. Call
    /// [`EtcdStore::spawn`] to start following etcd.
    pub fn new(settings: &EtcdSettings, registry: &Arc<Registry>) -> Arc<EtcdStore> {
        let layout = Layout::new(&settings.prefix);
        Arc::new(EtcdStore {
            client: Client::new(settings),
            mirror: Mutex::new(Mirror::new(layout.clone())),
            layout,
            registry: Arc::downgrade(registry),
            listed: watch::Sender::new(false),
        })
    }

    /// Starts the list-and-watch task; abort the handle to stop it.
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        tokio::spawn(self.clone().run())
    }

    /// Waits (at most `timeout`) for the first listing; whether it came.
    pub async fn wait_listed(&self, timeout: Duration) -> bool {
        let mut rx = self.listed.subscribe();
        let listed = tokio::time::timeout(timeout, rx.wait_for(|listed| *listed))
            .await
            .is_ok_and(|r| r.is_ok());
        listed
    }

    fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|e| e.into_inner())
    }

    // === following etcd ===

    async fn run(self: Arc<Self>) {
        let mut backoff = BACKOFF_START;
        let mut resume: Option<i64> = None;
        while self.registry.strong_count() > 0 {
            let from = match resume.take() {
                Some(revision) => revision,
                None => match self.list().await {
                    Ok(revision) => revision + 1,
                    Err(e) => {
                        self.failed(format!("listing {}: {e}", self.prefix()));
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                },
            };
            match self.follow(from, &mut backoff).await {
                WatchEnd::Relist(reason) => {
                    tracing::info!(source = ETCD_SOURCE, %reason, "re-listing etcd");
                }
                WatchEnd::Failed(error, next) => {
                    self.failed(error);
                    resume = next;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Lists every instance key and reports the set; the listing's revision.
    async fn list(&self) -> Result<i64, EtcdError> {
        let start = self.layout.services();
        let r = self.client.range(&start, Some(&prefix_end(&start))).await?;
        let revision = r.header.revision;
        let mut m = self.mirror();
        m.reset(r.kvs, revision, r.header.cluster_id);
        self.report(&mut m, Removals::Implicit);
        drop(m);
        self.listed.send_replace(true);
        Ok(revision)
    }

    /// Follows one watch from `from` until it ends.
    async fn follow(&self, from: i64, backoff: &mut Duration) -> WatchEnd {
        let root = self.layout.root();
        let (mut stream, idx) = match self.client.watch(root, &prefix_end(root), from).await {
            Ok(s) => s,
            Err(e) => {
                return WatchEnd::Failed(format!("watching {}: {e}", self.prefix()), Some(from))
            }
        };
        let mut next = from;
        let mut probe =
            tokio::time::interval_at(tokio::time::Instant::now() + WATCH_PROBE, WATCH_PROBE);
        loop {
            let message = tokio::select! {
                m = stream.next() => m,
                _ = probe.tick() => {
                    if let Err(e) = self.client.probe(idx, root).await {
                        return WatchEnd::Failed(format!("watch connection check: {e}"), Some(next));
                    }
                    continue;
                }
            };
            let r = match message {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return WatchEnd::Failed("etcd closed the watch stream".to_owned(), Some(next))
                }
                Err(e) => return WatchEnd::Failed(format!("watch: {e}"), Some(next)),
            };
            if r.canceled {
                return if r.compact_revision > 0 {
                    WatchEnd::Relist(format!(
                        "revision {next} was compacted (etcd keeps history from {})",
                        r.compact_revision
                    ))
                } else {
                    WatchEnd::Failed(
                        format!("etcd canceled the watch: {}", r.cancel_reason),
                        None,
                    )
                };
            }
            if r.created {
                if let Some(reason) = self.history_break(&r, from) {
                    return WatchEnd::Relist(reason);
                }
                *backoff = BACKOFF_START;
                // Reporting (even an unchanged set) marks the source healthy.
                self.report(&mut self.mirror(), Removals::Implicit);
                continue;
            }
            if let Some(last) = r.events.iter().map(|e| e.kv.mod_revision).max() {
                next = next.max(last + 1);
            }
            self.apply(&r);
        }
    }

    /// Why a new watch's history does not continue the mirror's, if it
    /// does not: another cluster, or revisions that went backwards (a
    /// cluster restored or recreated).
    fn history_break(&self, r: &WatchResponse, from: i64) -> Option<String> {
        let m = self.mirror();
        let cluster = r.header.cluster_id;
        if m.cluster_id != 0 && cluster != 0 && cluster != m.cluster_id {
            return Some(format!(
                "etcd cluster id changed from {} to {cluster}",
                m.cluster_id
            ));
        }
        if r.header.revision > 0 && r.header.revision + 1 < from {
            return Some(format!(
                "etcd revision went back from {} to {}",
                from - 1,
                r.header.revision
            ));
        }
        None
    }

    /// Applies one watch response; removals it names as explicit are
    /// applied as asked, the others meet the self-preservation guard.
    fn apply(&self, r: &WatchResponse) {
        let mut m = self.mirror();
        let applied = m.apply(&r.events);
        if applied.changed {
            let removals = if applied.explicit.is_empty() {
                Removals::Implicit
            } else {
                Removals::Only(applied.explicit)
            };
            self.report(&mut m, removals);
        }
    }

    fn report(&self, mirror: &mut Mirror, removals: Removals) {
        if let Some(registry) = self.registry.upgrade() {
            let cause = |spec: &InstanceSpec| match &spec.id {
                Some(id) => format!(
                    "etcd key of {id} deleted without a deregistration marker (its lease expired?)"
                ),
                None => "etcd key deleted without a deregistration marker".to_owned(),
            };
            registry.report_because(ETCD_SOURCE, mirror.specs(), removals, &cause);
            mirror.prune_expired(|r| {
                registry
                    .held_back(ETCD_SOURCE, &r.service, r.address)
                    .is_some()
            });
        }
    }

    fn failed(&self, error: String) {
        if let Some(registry) = self.registry.upgrade() {
            registry.source_failed(ETCD_SOURCE, error);
        }
    }

    fn prefix(&self) -> String {
        String::from_utf8_lossy(self.layout.root()).into_owned()
    }
}
