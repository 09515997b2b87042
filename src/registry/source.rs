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
#[derive(Debug, Clone, PartialEq, Eq)]
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
