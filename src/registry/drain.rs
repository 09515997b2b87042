//! The operator's drains: an operator drains any listed instance by its
//! (service, address), whatever source lists it; the drain outlives config
//! reloads and the instance leaving and coming back, until cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::{InstanceKey, Registry};

/// Why an operator drain call could not apply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrainError {
    /// No source lists the instance (and, to cancel, no drain is recorded).
    #[error("service {service:?} has no instance {addr}")]
    UnknownInstance {
        /// Service.
        service: String,
        /// Address.
        addr: SocketAddr,
    },
}

impl Registry {
    /// Drains (or, with `drain` false, undrains) the instance `addr` of
    /// `service`, whatever source lists it: it keeps its place but takes no
    /// new requests, in panic mode too. The drain lasts, across config
    /// reloads and the instance leaving and coming back, until cancelled.
    /// Returns whether anything changed. Draining needs a listed instance;
    /// cancelling needs a recorded drain or a listed instance.
    pub fn set_operator_drain(
        &self,
        service: &str,
        addr: SocketAddr,
        drain: bool,
    ) -> Result<bool, DrainError> {
        let key = InstanceKey {
            service: Arc::from(service),
            addr,
        };
        let mut st = self.lock();
        let listed = st.sources.iter().any(|e| {
            e.set
                .iter()
                .any(|s| s.addr == addr && &*s.service == service)
        });
        let changed = if drain {
            if !listed {
                return Err(DrainError::UnknownInstance {
                    service: service.to_owned(),
                    addr,
                });
            }
            st.operator_drains
                .insert(key.clone(), SystemTime::now())
                .is_none()
        } else {
            let had = st.operator_drains.remove(&key).is_some();
            if !had && !listed {
                return Err(DrainError::UnknownInstance {
                    service: service.to_owned(),
                    addr,
                });
            }
            had
        };
        if changed {
            tracing::info!(service, instance = %addr, drain, "operator drain changed");
            st.dirty.extend([key.service]);
            self.touched(st);
        }
        Ok(changed)
    }

    /// The operator's drains (service, address, since when), including
    /// those of instances no source lists right now.
    pub fn operator_drains(&self) -> Vec<(InstanceKey, SystemTime)> {
        let st = self.lock();
        st.operator_drains
            .iter()
            .map(|(k, t)| (k.clone(), *t))
            .collect()
    }

    /// Restores operator drains saved earlier (at start, from the state
    /// file).
    pub fn restore_operator_drains(
        &self,
        drains: impl IntoIterator<Item = (InstanceKey, SystemTime)>,
    ) {
        let mut st = self.lock();
        let mut services = Vec::new();
        for (key, since) in drains {
            services.push(key.service.clone());
            st.operator_drains.insert(key, since);
        }
        if !services.is_empty() {
            st.dirty.extend(services);
            self.touched(st);
        }
    }
}
