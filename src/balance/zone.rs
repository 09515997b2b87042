//! Zone preference: a pool's members in this proxy's zone (`[zone]`) take
//! its traffic while at least `min_available_percent` of them are
//! available; below that (or in panic mode) traffic spreads over every
//! zone. Health calls [`reassess`] with panic mode (on every rebuild,
//! health transition and periodic sweep), so a pick only reads a flag.

use crate::registry::{Health, ServiceEntry};

/// Recomputes, for each pool of `service` with members in the zone,
/// whether traffic stays there at `now_ms`. Members whose first check has
/// not run and draining members are not counted (as for panic mode).
/// Logs each change once.
pub fn reassess(service: &ServiceEntry, now_ms: u64) {
    let Some(zone) = &service.policy().traffic.zone else {
        return;
    };
    let panic = service.live().in_panic();
    for pool in service.pools() {
        let Some(local) = pool.local() else {
            continue;
        };
        let (mut counted, mut available) = (0usize, 0usize);
        for &i in local.members() {
            let inst = &service.members()[i as usize].instance;
            if inst.health() == Health::Unknown || !inst.takes_new_requests() {
                continue;
            }
            counted += 1;
            if inst.is_available(now_ms) {
                available += 1;
            }
        }
        let min = usize::from(zone.min_available_percent);
        let ok = !panic && available > 0 && available * 100 >= min * counted;
        if pool.set_local_ok(ok) != ok {
            if ok {
                tracing::info!(service = %service.name(), zone = %zone.name, available, of = counted, "traffic stays in the zone");
            } else {
                tracing::warn!(service = %service.name(), zone = %zone.name, available, of = counted, min_percent = min, "too few instances available in the zone: spilling over to other zones");
            }
        }
    }
}
