//! The source interface: every producer of instances (the static TOML list
//! today; the registration API, etcd and DNS later) reports its *whole*
//! current set under its own name, and the registry merges the sets.
//!
//! Merge rule: the union of all sources, keyed by [`super::InstanceKey`]
//! (service + address). When two sources list the same instance, the one
//! reported first (the static config is always first) decides its weight
//! and id. A source that fails simply does not report: its last good set
//! stays in force.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;

/// Name of the static-config source.
pub const STATIC_SOURCE: &str = "config";

/// One instance as a source reports it.
#[derive(Debug, Clone, Eq)]
pub struct InstanceSpec {
    /// The service it belongs to.
    pub service: Arc<str>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Relative share of traffic (at least 1).
    pub weight: u32,
    /// The id the source knows it by, if any.
    pub id: Option<Arc<str>>,
    /// Metadata.
    pub tags: Option<Arc<BTreeMap<String, String>>>,
    /// Asked to drain: kept listed, takes no new requests.
    pub draining: bool,
}

/// Equal strings, checked by pointer first: specs compared across
/// rebuilds usually share their `Arc`s, and `Arc<str>`'s own `==` always
/// compares the bytes.
#[inline]
pub(crate) fn same_str(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl PartialEq for InstanceSpec {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
            && self.weight == other.weight
            && self.draining == other.draining
            && same_str(&self.service, &other.service)
            && match (&self.id, &other.id) {
                (Some(a), Some(b)) => same_str(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
            && match (&self.tags, &other.tags) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (a, b) => a.is_none() && b.is_none(),
            }
    }
}

impl InstanceSpec {
    /// A plain instance: weight 1, no id, no tags.
    pub fn new(service: Arc<str>, addr: SocketAddr) -> Self {
        InstanceSpec {
            service,
            addr,
            weight: 1,
            id: None,
            tags: None,
            draining: false,
        }
    }
}

/// The static instances written in the config file.
pub fn static_instances(config: &Config) -> Vec<InstanceSpec> {
    config
        .services
        .values()
        .flat_map(|svc| {
            svc.instances.iter().map(move |i| InstanceSpec {
                service: svc.name.clone(),
                addr: i.addr,
                weight: i.weight,
                id: None,
                tags: None,
                draining: false,
            })
        })
        .collect()
}
