//! The words for an instance's state, shared by the registry, health, the
//! balancer and the admin API: its identity ([`InstanceKey`]), where it is
//! in its life ([`Lifecycle`]: serving, draining, removed), its active
//! [`Health`], and the [`Transition`] record operators see.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// What makes two instances the same instance: the service and the address.
/// Sources may also give an instance id; it is metadata, not identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    /// The service the instance belongs to.
    pub service: Arc<str>,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Active health of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// The service has no active check.
    NotChecked = 0,
    /// Checks are configured and none has passed yet.
    Unknown = 1,
    /// The last transition was to healthy.
    Healthy = 2,
    /// The last transition was to unhealthy.
    Unhealthy = 3,
}

impl Health {
    pub(super) fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Unknown,
            2 => Health::Healthy,
            3 => Health::Unhealthy,
            _ => Health::NotChecked,
        }
    }

    /// Lower-case name, as shown by the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::NotChecked => "not_checked",
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// The last change of an instance's state, for operators.
#[derive(Debug, Clone)]
pub struct Transition {
    /// What it changed to (`healthy`, `unhealthy`, `ejected`, `draining`...).
    pub to: &'static str,
    /// Why.
    pub reason: String,
    /// When.
    pub at: SystemTime,
}

/// Where an instance is in its life, as the registry sees it. Health
/// (active checks, ejections) is separate: it decides whether a *serving*
/// instance is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Lifecycle {
    /// Listed and taking new requests (when its health allows).
    Serving = 0,
    /// Listed, but its source or an operator asked it to drain: it takes
    /// no new requests, not even in panic mode; requests in flight finish.
    /// The drain can be cancelled.
    Draining = 1,
    /// No source lists it any more: no new snapshot lists it, requests in
    /// flight finish, then its state is dropped. Final.
    Removed = 2,
}

impl Lifecycle {
    pub(super) fn from_u8(v: u8) -> Lifecycle {
        match v {
            1 => Lifecycle::Draining,
            2 => Lifecycle::Removed,
            _ => Lifecycle::Serving,
        }
    }

    /// Lower-case name, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Serving => "serving",
            Lifecycle::Draining => "draining",
            Lifecycle::Removed => "removed",
        }
    }
}
