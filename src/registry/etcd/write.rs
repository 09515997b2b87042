//! Writing through to etcd: the registration API's calls when
//! `[registry.etcd]` is configured. A registration is a lease of the
//! instance's TTL plus a put of its key on that lease; a heartbeat keeps
//! the lease alive; a deregistration deletes the key and writes its marker
//! in one transaction. Nothing is kept locally: this proxy, like every
//! other, sees the change through its watch. A call that cannot reach etcd
//! fails with [`RegistrationError::Unavailable`] (503 on the API).

use std::sync::Arc;
use std::time::Duration;

use super::mirror::{decode, Stored, StoredValue};
use super::{EtcdError, EtcdStore, ETCD_SOURCE, MARKER_TTL_SECS};
use crate::registry::registrations::{
    Pending, RegisterRequest, Registration, RegistrationError, RegistrationStore,
};

impl EtcdStore {
    /// Registers (or updates) `id` of `service` on a fresh lease of its TTL.
    /// Returns whether the key was new.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        req: RegisterRequest,
    ) -> Result<bool, RegistrationError> {
        let existing = {
            let m = self.mirror();
            if let Some(other) = m
                .registrations()
                .into_iter()
                .find(|r| &*r.service == service && r.address == req.address && &*r.id != id)
            {
                return Err(RegistrationError::AddressTaken {
                    service: service.to_owned(),
                    address: req.address,
                    other: other.id.to_string(),
                });
            }
            m.get(service, id).cloned()
        };
        let registration = Registration {
            service: Arc::from(service),
            id: Arc::from(id),
            address: req.address,
            weight: req.weight,
            tags: req.tags,
            ttl: req.ttl,
            draining: existing.as_ref().is_some_and(|s| s.registration.draining),
            registered_at: existing
                .as_ref()
                .map_or_else(std::time::SystemTime::now, |s| s.registration.registered_at),
            expires_ms: 0,
            expired: false,
        };
        let value = encode(&registration);
        let lease = self
            .client
            .lease_grant(lease_secs(req.ttl))
            .await
            .map_err(unavailable)?;
        let key = self.layout.instance(service, id);
        let put = match self.client.put(&key, &value, Some(lease)).await {
            Ok(p) => p,
            Err(e) => {
                self.revoke_quietly(lease).await;
                return Err(unavailable(e));
            }
        };
        let new = put.prev_kv.is_none();
        if let Some(prev) = put.prev_kv.filter(|p| p.lease != 0 && p.lease != lease) {
            // The key moved to the new lease; the old one holds nothing.
            self.revoke_quietly(prev.lease).await;
        }
        if new {
            tracing::info!(service, id, address = %req.address, ttl = ?req.ttl, "instance registered in etcd");
        }
        Ok(new)
    }

    /// Keeps the lease of `id` alive.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<(), RegistrationError> {
        let mut stored = self.stored(service, id, false).await?;
        for fresh in [false, true] {
            if fresh {
                // The mirror may hold a lease replaced by a re-registration
                // through another proxy: read the key itself once.
                let again = self.stored(service, id, true).await?;
                if again.lease == stored.lease {
                    break;
                }
                stored = again;
            }
            if stored.lease == 0 {
                return Ok(());
            }
            let ttl = self
                .client
                .lease_keepalive(stored.lease)
                .await
                .map_err(unavailable)?;
            if ttl > 0 {
                return Ok(());
            }
        }
        Err(not_found(service, id))
    }

    /// Deletes `id`, with its deregistration marker, in one transaction.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), RegistrationError> {
        let marker_lease = self
            .client
            .lease_grant(MARKER_TTL_SECS)
            .await
            .map_err(unavailable)?;
        let key = self.layout.instance(service, id);
        let marker = self.layout.marker(service, id);
        let txn = match self
            .client
            .delete_with_marker(&key, &marker, marker_lease)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                self.revoke_quietly(marker_lease).await;
                return Err(unavailable(e));
            }
        };
        if !txn.succeeded {
            self.revoke_quietly(marker_lease).await;
            return Err(not_found(service, id));
        }
        let prev = txn
            .responses
            .into_iter()
            .filter_map(|r| r.response_delete_range)
            .flat_map(|d| d.prev_kvs)
            .next();
        if let Some(prev) = &prev {
            tracing::info!(service, id, value = %String::from_utf8_lossy(&prev.value), "instance deregistered from etcd");
            if prev.lease != 0 {
                self.revoke_quietly(prev.lease).await;
            }
        }
        Ok(())
    }

    /// Marks `id` draining (or not), keeping its lease.
    pub async fn set_draining(
        &self,
        service: &str,
        id: &str,
        draining: bool,
    ) -> Result<Registration, RegistrationError> {
        let mut registration = self.stored(service, id, false).await?.registration;
        registration.draining = draining;
        let key = self.layout.instance(service, id);
        match self.client.put(&key, &encode(&registration), None).await {
            Ok(_) => Ok(registration),
            Err(e) if e.is_key_not_found() => Err(not_found(service, id)),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// One registration as this proxy last saw it.
    pub fn get(&self, service: &str, id: &str) -> Option<Registration> {
        let m = self.mirror();
        m.get(service, id)
            .map(|s| s.registration.clone())
            .or_else(|| m.get_expired(service, id))
    }

    /// Every registration as this proxy last saw it.
    pub fn all(&self) -> Vec<Registration> {
        self.mirror().registrations()
    }

    /// `id` from the mirror, or (on a miss, or with `fresh`) from etcd.
    async fn stored(
        &self,
        service: &str,
        id: &str,
        fresh: bool,
    ) -> Result<Stored, RegistrationError> {
        if !fresh {
            if let Some(s) = self.mirror().get(service, id).cloned() {
                return Ok(s);
            }
        }
        let key = self.layout.instance(service, id);
        let r = self.client.range(&key, None).await.map_err(unavailable)?;
        r.kvs
            .into_iter()
            .next()
            .and_then(|kv| decode((Arc::from(service), Arc::from(id)), &kv))
            .ok_or_else(|| not_found(service, id))
    }

    async fn revoke_quietly(&self, lease: i64) {
        if let Err(e) = self.client.lease_revoke(lease).await {
            tracing::debug!(lease, error = %e, "could not revoke an unused etcd lease; it will expire");
        }
    }
}

/// The registration API's store when the registry is shared: every call
/// goes to etcd; registrations lapse with their leases, in etcd.
impl RegistrationStore for EtcdStore {
    fn source_name(&self) -> &'static str {
        ETCD_SOURCE
    }

    fn register<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        req: RegisterRequest,
    ) -> Pending<'a, bool> {
        Box::pin(EtcdStore::register(self, service, id, req))
    }

    fn heartbeat<'a>(&'a self, service: &'a str, id: &'a str) -> Pending<'a, ()> {
        Box::pin(EtcdStore::heartbeat(self, service, id))
    }

    fn deregister<'a>(&'a self, service: &'a str, id: &'a str) -> Pending<'a, ()> {
        Box::pin(EtcdStore::deregister(self, service, id))
    }

    fn set_draining<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        draining: bool,
    ) -> Pending<'a, Registration> {
        Box::pin(EtcdStore::set_draining(self, service, id, draining))
    }

    fn get(&self, service: &str, id: &str) -> Option<Registration> {
        EtcdStore::get(self, service, id)
    }

    fn all(&self) -> Vec<Registration> {
        EtcdStore::all(self)
    }
}

fn encode(r: &Registration) -> Vec<u8> {
    // Serializing plain strings, numbers and maps cannot fail.
    serde_json::to_vec(&StoredValue::of(r)).unwrap_or_default()
}

/// etcd lease TTLs are whole seconds: round up, at least 1 (etcd itself
/// raises very short TTLs to its minimum, about 2s by default).
fn lease_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis().div_ceil(1000)).map_or(i64::MAX, |s| s.max(1))
}

fn unavailable(e: EtcdError) -> RegistrationError {
    tracing::debug!(error = %e, "registration not written to etcd");
    RegistrationError::Unavailable {
        message: e.to_string(),
    }
}

fn not_found(service: &str, id: &str) -> RegistrationError {
    RegistrationError::NotFound {
        service: service.to_owned(),
        id: id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ttl_rounds_up_to_whole_seconds() {
        assert_eq!(lease_secs(Duration::from_millis(100)), 1);
        assert_eq!(lease_secs(Duration::from_millis(1500)), 2);
        assert_eq!(lease_secs(Duration::from_secs(10)), 10);
    }
}
