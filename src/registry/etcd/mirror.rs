//! The key layout in etcd and this proxy's in-memory mirror of it.
//!
//! Layout under the prefix (default `/wayfinder/`):
//!
//! - `PREFIX/services/{service}/{instance_id}`: one instance, as JSON
//!   `{"address": "IP:PORT", "weight": 1, "tags": {}, "registered_at":
//!   RFC 3339, "ttl": "10s", "draining": false}` (only `address` is
//!   required), attached to a lease whose TTL is the instance's TTL.
//! - `PREFIX/deregistered/{service}/{instance_id}`: written in the same
//!   transaction as a deregistration's delete (on a short lease of its own),
//!   so that every proxy can tell an asked-for removal from a lease expiry.
//!
//! The mirror applies watch events in order and names the removals that
//! were explicit: a delete with its marker in the same watch response, or
//! the old address of a re-registered instance. A delete without a marker
//! (lease expiry, a plain delete by another tool) is implicit and goes
//! through the registry's self-preservation guard.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::wire::{Event, EventKind, KeyValue};
use crate::config::check_service_name;
use crate::registry::registrations::Registration;
use crate::registry::InstanceSpec;

/// (service, instance id).
pub(crate) type Id = (Arc<str>, Arc<str>);

/// What a key under the prefix stands for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// An instance.
    Instance(Id),
    /// A deregistration marker.
    Marker(Id),
    /// Anything else (ignored).
    Other,
}

/// The JSON value of an instance key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredValue {
    pub address: String,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

fn one() -> u32 {
    1
}

impl StoredValue {
    /// The value stored for `r`.
    pub(crate) fn of(r: &Registration) -> StoredValue {
        StoredValue {
            address: r.address.to_string(),
            weight: r.weight,
            tags: r.tags.clone(),
            registered_at: Some(humantime::format_rfc3339_millis(r.registered_at).to_string()),
            ttl: (!r.ttl.is_zero()).then(|| humantime::format_duration(r.ttl).to_string()),
            draining: r.draining,
        }
    }

    /// The registration it describes; `Err` says what is wrong.
    fn registration(self, (service, id): Id) -> Result<Registration, String> {
        let address: SocketAddr = self
            .address
            .parse()
            .map_err(|_| format!("address {:?} is not IP:PORT", self.address))?;
        if address.port() == 0 || address.ip().is_unspecified() {
            return Err(format!("address {address} is not reachable"));
        }
        if !(1..=1000).contains(&self.weight) {
            return Err(format!("weight {} is out of range 1..=1000", self.weight));
        }
        Ok(Registration {
            service,
            id,
            address,
            weight: self.weight,
            tags: self.tags,
            ttl: self
                .ttl
                .as_deref()
                .and_then(|t| humantime::parse_duration(t).ok())
                .unwrap_or(Duration::ZERO),
            draining: self.draining,
            registered_at: self
                .registered_at
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .unwrap_or_else(SystemTime::now),
            expires_ms: 0,
            expired: false,
        })
    }
}

/// The key layout under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    prefix: String,
}

impl Layout {
    /// The layout under `prefix` (which ends with `/`).
    pub(crate) fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.to_owned(),
        }
    }

    /// Every key this proxy watches.
    pub(crate) fn root(&self) -> &[u8] {
        self.prefix.as_bytes()
    }

    /// The prefix of every instance key.
    pub(crate) fn services(&self) -> Vec<u8> {
        format!("{}services/", self.prefix).into_bytes()
    }

    /// The key of one instance.
    pub(crate) fn instance(&self, service: &str, id: &str) -> Vec<u8> {
        format!("{}services/{service}/{id}", self.prefix).into_bytes()
    }

    /// The deregistration marker of one instance.
    pub(crate) fn marker(&self, service: &str, id: &str) -> Vec<u8> {
        format!("{}deregistered/{service}/{id}", self.prefix).into_bytes()
    }

    /// What `key` stands for.
    pub(crate) fn parse(&self, key: &[u8]) -> KeyKind {
        let Some(rest) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(self.prefix.as_str()))
        else {
            return KeyKind::Other;
        };
        let (kind, rest) = rest.split_once('/').unwrap_or((rest, ""));
        let Some((service, id)) = rest.split_once('/') else {
            return KeyKind::Other;
        };
        if check_service_name(service).is_err() || id.is_empty() || id.contains('/') {
            return KeyKind::Other;
        }
        let id = (Arc::from(service), Arc::from(id));
        match kind {
            "services" => KeyKind::Instance(id),
            "deregistered" => KeyKind::Marker(id),
            _ => KeyKind::Other,
        }
    }
}

/// One instance as last seen in etcd.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub registration: Registration,
    pub lease: i64,
}

/// What applying one watch response did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Anything changed.
    pub changed: bool,
    /// Instances removed on purpose: deleted with their marker, or the old
    /// address of an instance re-registered elsewhere. Other removals are
    /// implicit.
    pub explicit: Vec<(Arc<str>, SocketAddr)>,
}

/// The instances under the prefix, as of `revision`.
#[derive(Debug)]
pub(crate) struct Mirror {
    layout: Layout,
    entries: BTreeMap<Id, Stored>,
    /// Instances whose key went away implicitly (a lease expired): kept
    /// while the registry holds back their removal, so they can be shown
    /// as expired.
    expired: BTreeMap<Id, Stored>,
    /// The etcd revision the mirror reflects.
    pub revision: i64,
    /// The cluster it came from.
    pub cluster_id: u64,
}

impl Mirror {
    /// An empty mirror (revision 0: never listed).
    pub(crate) fn new(layout: Layout) -> Mirror {
        Mirror {
            layout,
            entries: BTreeMap::new(),
            expired: BTreeMap::new(),
            revision: 0,
            cluster_id: 0,
        }
    }

    /// Replaces everything with a fresh listing.
    pub(crate) fn reset(&mut self, kvs: Vec<KeyValue>, revision: i64, cluster_id: u64) {
        let before = std::mem::take(&mut self.entries);
        for kv in kvs {
            if let KeyKind::Instance(id) = self.layout.parse(&kv.key) {
                if let Some(stored) = decode(id, &kv) {
                    self.entries.insert(stored.registration.key(), stored);
                }
            }
        }
        // Keys gone meanwhile went implicitly, as far as the mirror knows.
        for (id, stored) in before {
            if !self.entries.contains_key(&id) {
                self.expired.insert(id, stored);
            }
        }
        let entries = &self.entries;
        self.expired.retain(|id, _| !entries.contains_key(id));
        self.revision = revision;
        self.cluster_id = cluster_id;
    }

    /// Applies one watch response's events.
    pub(crate) fn apply(&mut self, events: &[Event]) -> Applied {
        let markers: HashSet<Id> = events
            .iter()
            .filter(|e| e.kind == EventKind::Put)
            .filter_map(|e| match self.layout.parse(&e.kv.key) {
                KeyKind::Marker(id) => Some(id),
                _ => None,
            })
            .collect();
        let mut out = Applied::default();
        for event in events {
            self.revision = self.revision.max(event.kv.mod_revision);
            let KeyKind::Instance(id) = self.layout.parse(&event.kv.key) else {
                continue;
            };
            let old = match (event.kind, decode_event(&id, event)) {
                (EventKind::Put, Some(new)) => {
                    self.expired.remove(&id);
                    let moved_to = new.registration.address;
                    let old = self.entries.insert(id.clone(), new);
                    if let Some(o) = old.as_ref().filter(|o| o.registration.address != moved_to) {
                        out.explicit.push((id.0.clone(), o.registration.address));
                    }
                    out.changed = true;
                    continue;
                }
                // A delete, or a value that no longer follows the layout.
                _ => self.entries.remove(&id),
            };
            if let Some(old) = old {
                out.changed = true;
                if event.kind == EventKind::Delete && markers.contains(&id) {
                    out.explicit.push((id.0.clone(), old.registration.address));
                    self.expired.remove(&id);
                } else {
                    self.expired.insert(id, old);
                }
            }
        }
        out
    }

    /// One instance.
    pub(crate) fn get(&self, service: &str, id: &str) -> Option<&Stored> {
        self.entries.get(&(Arc::from(service), Arc::from(id)))
    }

    /// One instance whose key went away implicitly, marked `expired`.
    pub(crate) fn get_expired(&self, service: &str, id: &str) -> Option<Registration> {
        self.expired
            .get(&(Arc::from(service), Arc::from(id)))
            .map(|s| Registration {
                expired: true,
                ..s.registration.clone()
            })
    }

    /// Forgets expired instances for which `held` is false.
    pub(crate) fn prune_expired(&mut self, held: impl Fn(&Registration) -> bool) {
        self.expired.retain(|_, s| held(&s.registration));
    }

    /// Every instance, ordered by (service, id).
    pub(crate) fn registrations(&self) -> Vec<Registration> {
        self.entries
            .values()
            .map(|s| s.registration.clone())
            .collect()
    }

    /// The instance set to report to the registry.
    pub(crate) fn specs(&self) -> Vec<InstanceSpec> {
        self.entries
            .values()
            .map(|s| s.registration.spec())
            .collect()
    }
}

/// The instance a PUT event stores; `None` for deletes and unusable values.
fn decode_event(id: &Id, event: &Event) -> Option<Stored> {
    match event.kind {
        EventKind::Put => decode(id.clone(), &event.kv),
        EventKind::Delete => None,
    }
}

/// The stored instance in `kv`, or `None` (logged) when its value is not
/// usable.
pub(crate) fn decode(id: Id, kv: &KeyValue) -> Option<Stored> {
    let parsed = serde_json::from_slice::<StoredValue>(&kv.value)
        .map_err(|e| e.to_string())
        .and_then(|v| v.registration(id.clone()));
    match parsed {
        Ok(registration) => Some(Stored {
            registration,
            lease: kv.lease,
        }),
        Err(error) => {
            tracing::warn!(
                key = %String::from_utf8_lossy(&kv.key),
                %error,
                "ignoring an etcd instance key whose value does not follow the documented layout"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::registrations::Registration;

    fn layout() -> Layout {
        Layout::new("/w/")
    }

    fn put(key: &str, address: &str, rev: i64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.as_bytes().to_vec(),
                value: format!(r#"{{"address":"{address}"}}"#).into_bytes(),
                mod_revision: rev,
                lease: 9,
            },
        }
    }

    fn delete(key: &str, rev: i64) -> Event {
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.as_bytes().to_vec(),
                mod_revision: rev,
                ..KeyValue::default()
            },
        }
    }

    #[test]
    fn keys_parse_by_layout() {
        let l = layout();
        let id = (Arc::from("api"), Arc::from("i-1"));
        assert_eq!(
            l.parse(b"/w/services/api/i-1"),
            KeyKind::Instance(id.clone())
        );
        assert_eq!(l.parse(b"/w/deregistered/api/i-1"), KeyKind::Marker(id));
        assert_eq!(l.parse(b"/w/services/API/i-1"), KeyKind::Other);
        assert_eq!(l.parse(b"/w/services/api/a/b"), KeyKind::Other);
        assert_eq!(l.parse(b"/w/services/api"), KeyKind::Other);
        assert_eq!(l.parse(b"/x/services/api/i"), KeyKind::Other);
        assert_eq!(l.instance("api", "i-1"), b"/w/services/api/i-1");
    }

    #[test]
    fn value_round_trips_and_defaults() {
        let r = Registration {
            service: Arc::from("a"),
            id: Arc::from("i"),
            address: "127.0.0.1:80".parse().unwrap(),
            weight: 3,
            tags: BTreeMap::from([("v".to_owned(), "2".to_owned())]),
            ttl: Duration::from_secs(10),
            draining: true,
            registered_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            expires_ms: 0,
            expired: false,
        };
        let json = serde_json::to_vec(&StoredValue::of(&r)).unwrap();
        let back: StoredValue = serde_json::from_slice(&json).unwrap();
        let back = back
            .registration((r.service.clone(), r.id.clone()))
            .unwrap();
        assert_eq!(back, r);
        let minimal: StoredValue = serde_json::from_str(r#"{"address":"10.0.0.1:9"}"#).unwrap();
        let m = minimal
            .registration((r.service.clone(), r.id.clone()))
            .unwrap();
        assert_eq!((m.weight, m.draining, m.ttl), (1, false, Duration::ZERO));
        let bad: StoredValue = serde_json::from_str(r#"{"address":"nowhere"}"#).unwrap();
        assert!(bad.registration((r.service.clone(), r.id)).is_err());
    }

    #[test]
    fn deletes_with_a_marker_are_explicit_others_implicit() {
        let mut m = Mirror::new(layout());
        let a = m.apply(&[
            put("/w/services/a/1", "127.0.0.1:1", 2),
            put("/w/services/a/2", "127.0.0.1:2", 3),
            put("/w/services/a/3", "127.0.0.1:3", 4),
            put("/w/other", "x", 4),
        ]);
        assert!(a.changed && a.explicit.is_empty());
        assert_eq!(m.specs().len(), 3);
        assert_eq!(m.revision, 4);

        // A deregistration: delete and marker in one revision.
        let a = m.apply(&[
            delete("/w/services/a/1", 5),
            put("/w/deregistered/a/1", "x", 5),
        ]);
        assert!(a.changed);
        assert_eq!(
            a.explicit,
            vec![(Arc::from("a"), "127.0.0.1:1".parse().unwrap())]
        );
        assert_eq!(m.specs().len(), 2);

        // Lease expiry: no marker, so not named as explicit.
        let a = m.apply(&[delete("/w/services/a/2", 6), delete("/w/services/a/9", 6)]);
        assert!(a.changed && a.explicit.is_empty());
        assert_eq!(m.specs().len(), 1);
        let a = m.apply(&[delete("/w/services/a/9", 7)]);
        assert!(!a.changed);

        // The expired one stays visible as expired (while the registry
        // holds it); the deregistered one does not.
        let gone = m.get_expired("a", "2").expect("expired kept");
        assert!(gone.expired && gone.address.port() == 2);
        assert!(m.get_expired("a", "1").is_none());
        m.apply(&[put("/w/services/a/2", "127.0.0.1:2", 8)]);
        assert!(m.get_expired("a", "2").is_none(), "registered again");
        m.apply(&[delete("/w/services/a/2", 9)]);
        m.prune_expired(|_| true);
        assert!(m.get_expired("a", "2").is_some());
        m.prune_expired(|_| false);
        assert!(m.get_expired("a", "2").is_none(), "no longer held");
    }

    #[test]
    fn moving_an_address_is_explicit_and_bad_values_are_not() {
        let mut m = Mirror::new(layout());
        m.apply(&[put("/w/services/a/1", "127.0.0.1:1", 2)]);
        let a = m.apply(&[put("/w/services/a/1", "127.0.0.1:1", 3)]);
        assert!(a.changed && a.explicit.is_empty());
        let a = m.apply(&[put("/w/services/a/1", "127.0.0.1:7", 4)]);
        assert_eq!(
            a.explicit,
            vec![(Arc::from("a"), "127.0.0.1:1".parse().unwrap())]
        );
        assert_eq!(m.specs()[0].addr.port(), 7);
        let a = m.apply(&[put("/w/services/a/1", "garbage", 5)]);
        assert!(a.changed && a.explicit.is_empty());
        assert!(m.specs().is_empty());
    }
}
