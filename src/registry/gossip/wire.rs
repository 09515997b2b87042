//! What each member gossips about itself: one value under [`STATE_KEY`],
//! JSON, replaced whole on every change (chitchat versions it). A member's
//! own registrations only: a registrar agent its instance(s), a proxy what
//! it received through its admin API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::registry::registrations::Registration;
use crate::registry::InstanceSpec;

/// The key of a member's state.
pub const STATE_KEY: &str = "wayfinder";

/// What kind of member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A wayfinder proxy: publishes its admin API's registrations and
    /// builds its snapshot from everyone's.
    #[default]
    Proxy,
    /// `wayfinder register --gossip`: publishes its instance.
    Agent,
}

/// A member's gossiped state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// What kind of member.
    #[serde(default)]
    pub role: Role,
    /// Leaving the fleet: its instances are gone on purpose.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// Its instances.
    #[serde(default)]
    pub instances: Vec<PublishedInstance>,
    /// Instances it withdrew on purpose recently (deregistered): their
    /// removal is explicit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<(Arc<str>, SocketAddr)>,
    /// Instances this proxy's passive health has ejected now (with
    /// `observations = "share"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ejected: Vec<(Arc<str>, SocketAddr)>,
}

/// One instance as gossiped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedInstance {
    /// Its service.
    pub service: Arc<str>,
    /// Its id, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Arc<str>>,
    /// Where it listens.
    pub address: SocketAddr,
    /// Relative share of traffic.
    #[serde(default = "one")]
    pub weight: u32,
    /// Metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Asked to drain.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

fn one() -> u32 {
    1
}

impl PublishedInstance {
    /// The instance as reported to the registry.
    pub fn spec(&self) -> InstanceSpec {
        InstanceSpec {
            service: self.service.clone(),
            addr: self.address,
            weight: self.weight.max(1),
            id: self.id.clone(),
            tags: (!self.tags.is_empty()).then(|| Arc::new(self.tags.clone())),
            draining: self.draining,
        }
    }
}

impl From<&Registration> for PublishedInstance {
    fn from(r: &Registration) -> Self {
        PublishedInstance {
            service: r.service.clone(),
            id: Some(r.id.clone()),
            address: r.address,
            weight: r.weight,
            tags: r.tags.clone(),
            draining: r.draining,
        }
    }
}

impl Published {
    /// As gossiped.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }

    /// A member's value; `None` when it is not one we understand.
    pub fn decode(s: &str) -> Option<Published> {
        serde_json::from_str(s).ok()
    }
}
