//! The Serf source (`[registry.serf]`): follows an existing Serf cluster
//! through one agent's RPC (msgpack over TCP): handshake (and auth), open
//! a `stream` of member events, list the members, then apply each
//! `member-join`, `member-update`, `member-leave`, `member-failed` and
//! `member-reap` as it comes. A lost connection is retried with capped
//! exponential backoff and the members are listed again; meanwhile the
//! last good set keeps serving and the source shows as failing.
//!
//! Members become instances by their tags (`P` is `tag_prefix`, empty by
//! default), with the member's address as the default host:
//! - `Pservice=NAME` with `Pport=PORT` or `Paddr=HOST:PORT`, optional
//!   `Pweight=N`: one instance of one service;
//! - `Pservice.NAME=PORT` or `Pservice.NAME=HOST:PORT`, optional
//!   `Pweight.NAME=N`: one instance of each such service;
//! - `Pdraining=true`: its instances drain.
//!
//! A member that `failed` (or was reaped) loses its instances implicitly
//! (the self-preservation guard applies); one that is `leaving` or `left`,
//! or changed its tags, loses them explicitly.

mod rpc;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;

use self::rpc::{Connection, EventBody, MembersBody, ResponseHeader, RpcError, SerfMember};
use super::{InstanceSpec, Registry, Removals};
use crate::config::SerfSettings;

pub use self::rpc::SerfIp;

/// The source name Serf's instances are reported under.
pub const SERF_SOURCE: &str = "serf";

/// First wait after a failure; doubles up to `retry_max`.
const BACKOFF_START: Duration = Duration::from_millis(100);

/// The Serf source.
#[derive(Debug)]
pub struct SerfSource {
    settings: SerfSettings,
    registry: Weak<Registry>,
    /// The members, by name, as last heard.
    members: BTreeMap<String, SerfMember>,
    /// Members whose tags could not be read (logged once each).
    warned: BTreeSet<String>,
    /// The set last reported.
    reported: Vec<InstanceSpec>,
}

/// How an update's removals should be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// A full listing: what is no longer there failed (implicit).
    Listing,
    /// An event about these members.
    Event,
}

impl SerfSource {
    /// Starts following the agent at `settings.rpc`, reporting to
    /// `registry`; abort the handle to stop.
    pub fn spawn(settings: &SerfSettings, registry: &Arc<Registry>) -> JoinHandle<()> {
        let source = SerfSource {
            settings: settings.clone(),
            registry: Arc::downgrade(registry),
            members: BTreeMap::new(),
            warned: BTreeSet::new(),
            reported: Vec::new(),
        };
        tokio::spawn(source.run())
    }

    async fn run(mut self) {
        let mut backoff = BACKOFF_START;
        let mut failing = false;
        while self.registry.strong_count() > 0 {
            match self.follow(&mut backoff, &mut failing).await {
                Ok(()) => return,
                Err(e) => {
                    if let Some(r) = self.registry.upgrade() {
                        r.source_failed(
                            SERF_SOURCE,
                            format!("serf agent {}: {e}", self.settings.rpc),
                        );
                    }
                    failing = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.settings.retry_max);
                }
            }
        }
    }

    /// One connection: stream, list, then events until it breaks.
    async fn follow(&mut self, backoff: &mut Duration, failing: &mut bool) -> Result<(), RpcError> {
        let mut c = Connection::open(self.settings.rpc, self.settings.auth_key.as_deref()).await?;
        #[derive(serde::Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Stream {
            r#type: &'static str,
        }
        // Stream first, then list: no event falls between the two, and the
        // answers arrive in the order the agent saw things.
        let stream = c
            .send(
                "stream",
                Some(&Stream {
                    r#type: "member-join,member-leave,member-failed,member-update,member-reap",
                }),
            )
            .await?;
        let list = c.send::<()>("members", None).await?;
        let mut acked = false;
        loop {
            let h: ResponseHeader = c.read().await?;
            if !h.error.is_empty() {
                let command = if h.seq == list { "members" } else { "stream" };
                return Err(RpcError::Refused {
                    command,
                    error: h.error,
                });
            }
            if h.seq == list {
                let body: MembersBody = c.read().await?;
                tracing::info!(agent = %self.settings.rpc, members = body.members.len(), "serf members listed");
                self.members = body
                    .members
                    .into_iter()
                    .map(|m| (m.name.clone(), m))
                    .collect();
                self.report(Why::Listing, &BTreeSet::new());
                *backoff = BACKOFF_START;
                if std::mem::take(failing) {
                    tracing::info!(agent = %self.settings.rpc, "serf agent reachable again");
                }
            } else if h.seq == stream && !acked {
                acked = true;
            } else if h.seq == stream {
                let ev: EventBody = c.read().await?;
                self.apply(ev);
            } else {
                return Err(RpcError::Decode(format!(
                    "answer to unknown call {}",
                    h.seq
                )));
            }
            if self.registry.strong_count() == 0 {
                return Ok(());
            }
        }
    }

    fn apply(&mut self, ev: EventBody) {
        let mut touched = BTreeSet::new();
        for m in ev.members {
            tracing::info!(event = %ev.event, member = %m.name, status = %m.status, "serf event");
            touched.insert(m.name.clone());
            if ev.event == "member-reap" {
                self.members.remove(&m.name);
            } else {
                self.members.insert(m.name.clone(), m);
            }
        }
        self.report(Why::Event, &touched);
    }

    /// Reports the instances of the alive members. Removals asked for:
    /// those of members that are leaving or left, or whose tags changed.
    fn report(&mut self, why: Why, touched: &BTreeSet<String>) {
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        let mut specs = Vec::new();
        let mut explicit = Vec::new();
        let prefix = self.settings.tag_prefix.clone();
        for (name, m) in &self.members {
            let mine = match instances(m, &prefix) {
                Ok(v) => {
                    self.warned.remove(name);
                    v
                }
                Err(why) => {
                    if self.warned.insert(name.clone()) {
                        tracing::warn!(member = %name, %why, "serf member's tags name no usable instance; ignored");
                    }
                    Vec::new()
                }
            };
            match m.status.as_str() {
                "alive" => specs.extend(mine),
                "leaving" | "left" => {
                    explicit.extend(mine.iter().map(|s| (s.service.clone(), s.addr)))
                }
                _ => {}
            }
        }
        if why == Why::Event {
            // A touched alive member that dropped an instance changed its
            // tags on purpose.
            let now: BTreeSet<(Arc<str>, SocketAddr)> =
                specs.iter().map(|s| (s.service.clone(), s.addr)).collect();
            for s in &self.reported {
                let key = (s.service.clone(), s.addr);
                let owner_alive =
                    s.id.as_deref()
                        .and_then(|id| self.members.get(member_of(id)))
                        .is_some_and(|m| m.status == "alive" && touched.contains(&m.name));
                if owner_alive && !now.contains(&key) {
                    explicit.push(key);
                }
            }
        }
        let removals = if explicit.is_empty() {
            Removals::Implicit
        } else {
            Removals::Only(explicit)
        };
        let members = &self.members;
        let cause = |s: &InstanceSpec| {
            let status =
                s.id.as_deref()
                    .and_then(|id| members.get(member_of(id)))
                    .map_or("reaped", |m| m.status.as_str());
            format!(
                "serf member {} is {status}",
                s.id.as_deref().map_or("?", member_of)
            )
        };
        registry.report_because(SERF_SOURCE, specs.clone(), removals, &cause);
        self.reported = specs;
    }
}

/// The member name of an instance id (`NAME` or `NAME/SERVICE`).
fn member_of(id: &str) -> &str {
    id.split_once('/').map_or(id, |(m, _)| m)
}

/// The instances a member's tags describe (see the module docs).
pub fn instances(m: &SerfMember, prefix: &str) -> Result<Vec<InstanceSpec>, String> {
    let tag = |k: &str| m.tags.get(&format!("{prefix}{k}"));
    let draining = tag("draining").is_some_and(|v| v == "true");
    let weight = |k: &str| -> Result<u32, String> {
        match tag(k) {
            None => Ok(1),
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|w| (1..=1000).contains(w))
                .ok_or_else(|| format!("{prefix}{k}={v:?} is not a weight 1..1000")),
        }
    };
    let addr_of = |v: &str, key: &str| -> Result<SocketAddr, String> {
        if let Ok(a) = v.parse::<SocketAddr>() {
            return Ok(a);
        }
        v.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .map(|p| SocketAddr::new(m.addr.0, p))
            .ok_or_else(|| format!("{key}={v:?} is neither a port nor IP:PORT"))
    };
    let tags = Arc::new(m.tags.clone());
    let spec = |service: &str, addr, weight, id: String| InstanceSpec {
        service: Arc::from(service),
        addr,
        weight,
        id: Some(Arc::from(id)),
        tags: Some(tags.clone()),
        draining,
    };
    let mut out = Vec::new();
    if let Some(service) = tag("service") {
        let addr = match (tag("addr"), tag("port")) {
            (Some(a), _) => addr_of(a, &format!("{prefix}addr"))?,
            (None, Some(p)) => addr_of(p, &format!("{prefix}port"))?,
            (None, None) => {
                return Err(format!(
                    "{prefix}service needs {prefix}port or {prefix}addr"
                ))
            }
        };
        out.push(spec(service, addr, weight("weight")?, m.name.clone()));
    }
    let several = format!("{prefix}service.");
    for (k, v) in &m.tags {
        if let Some(service) = k.strip_prefix(&several).filter(|s| !s.is_empty()) {
            let addr = addr_of(v, k)?;
            let w = weight(&format!("weight.{service}"))?;
            out.push(spec(service, addr, w, format!("{}/{service}", m.name)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(tags: &[(&str, &str)]) -> SerfMember {
        SerfMember {
            name: "node-1".to_owned(),
            addr: SerfIp([10, 0, 0, 7].into()),
            port: 7946,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            status: "alive".to_owned(),
        }
    }

    #[test]
    fn tags_name_one_or_several_services() {
        let one = instances(
            &member(&[("service", "api"), ("port", "8080"), ("weight", "3")]),
            "",
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].addr.to_string(), "10.0.0.7:8080");
        assert_eq!(one[0].weight, 3);
        assert_eq!(one[0].id.as_deref(), Some("node-1"));
        let several = instances(
            &member(&[
                ("wf-service.api", "8080"),
                ("wf-service.web", "127.0.0.1:80"),
                ("wf-weight.web", "2"),
                ("wf-draining", "true"),
                ("service", "ignored-without-prefix"),
            ]),
            "wf-",
        )
        .unwrap();
        assert_eq!(several.len(), 2);
        assert_eq!(several[1].addr.to_string(), "127.0.0.1:80");
        assert_eq!(several[1].weight, 2);
        assert!(several[0].draining);
        assert_eq!(several[1].id.as_deref(), Some("node-1/web"));
        assert!(instances(&member(&[("role", "db")]), "")
            .unwrap()
            .is_empty());
        assert!(instances(&member(&[("service", "api")]), "").is_err());
        assert!(instances(&member(&[("service", "api"), ("port", "x")]), "").is_err());
    }
}
