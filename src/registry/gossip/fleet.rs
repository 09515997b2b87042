//! The fleet as this member sees it: every other member, its state
//! (alive, dead, left) and what it last published, and the instance set
//! and removals that follow from a change. Pure: fed what chitchat
//! reports, tested without sockets.
//!
//! Removal rules: a member declared dead takes its instances with it as
//! *implicit* removals (the self-preservation guard applies, as for a
//! lease expiry); a member that leaves, or withdraws an instance it names
//! in its `gone` list, removes it *explicitly*; any other instance an
//! alive member stops publishing is an implicit removal. An instance two
//! members publish stays while either does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::wire::{Published, Role};
use crate::registry::{InstanceSpec, Removals};

/// A member's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Heard from recently.
    Alive,
    /// The failure detector declared it dead.
    Dead,
    /// It said it was leaving.
    Left,
}

impl MemberState {
    /// Lower-case name, as shown.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }
}

/// A member's identity: its name and the generation it started with (a
/// restarted member is a new generation).
pub type MemberId = (Arc<str>, u64);

/// One other member.
#[derive(Debug, Clone)]
pub struct MemberRecord {
    /// Its gossip address.
    pub addr: SocketAddr,
    /// Its state.
    pub state: MemberState,
    /// What it last published.
    pub published: Published,
    /// When its state or what it published last changed.
    pub changed: SystemTime,
    /// `clock::now_ms()` of the same.
    pub changed_ms: u64,
}

/// One member as chitchat reports it alive.
#[derive(Debug, Clone)]
pub struct Heard {
    /// Its identity.
    pub id: MemberId,
    /// Its gossip address.
    pub addr: SocketAddr,
    /// Its state, when it published one we understand.
    pub published: Option<Published>,
}

/// The fleet.
#[derive(Debug, Default)]
pub struct Fleet {
    members: BTreeMap<MemberId, MemberRecord>,
    /// Every other member went silent at once (none left gracefully) and
    /// none has been heard since.
    cut_off: bool,
}

/// What a change means for the registry.
#[derive(Debug)]
pub struct Change {
    /// The whole instance set of the gossip source now.
    pub instances: Vec<InstanceSpec>,
    /// Which removals were asked for.
    pub removals: Removals,
    /// Why each implicit removal happened, by (service, address).
    pub causes: BTreeMap<(Arc<str>, SocketAddr), String>,
    /// This member hears from no other since every alive one went silent
    /// together: it cannot tell its own network failing (a partition) from
    /// all the others dying, so its last set should stay (the source
    /// failing, then stale) rather than be removed.
    pub cut_off: bool,
}

impl Fleet {
    /// Every member known, by identity.
    pub fn members(&self) -> &BTreeMap<MemberId, MemberRecord> {
        &self.members
    }

    /// Takes in the members chitchat reports alive now (this member
    /// excluded); returns the resulting instance set and removals.
    pub fn observe(&mut self, alive: Vec<Heard>, now: SystemTime, now_ms: u64) -> Change {
        let before = self.instance_owners();
        let heard: BTreeSet<MemberId> = alive.iter().map(|h| h.id.clone()).collect();
        let any_alive = self.members.values().any(|m| m.state == MemberState::Alive);
        let was_cut_off = self.cut_off;
        self.cut_off = alive.is_empty() && (any_alive || self.cut_off);
        if self.cut_off && !was_cut_off {
            tracing::warn!(
                members = self.members.len(),
                "no other gossip member answers: cut off from the fleet? keeping the last set"
            );
        } else if was_cut_off && !self.cut_off {
            tracing::info!(members = alive.len(), "hearing from the fleet again");
        }
        for h in alive {
            let published = h.published.unwrap_or_default();
            let state = if published.leaving {
                MemberState::Left
            } else {
                MemberState::Alive
            };
            match self.members.get_mut(&h.id) {
                Some(m) if m.state == state && m.published == published => {}
                Some(m) => {
                    if m.state != state {
                        tracing::info!(member = %h.id.0, from = m.state.as_str(), to = state.as_str(), "gossip member state changed");
                    }
                    *m = record(h.addr, state, published, now, now_ms);
                }
                None => {
                    tracing::info!(member = %h.id.0, addr = %h.addr, role = ?published.role, state = state.as_str(), "gossip member joined");
                    self.members
                        .insert(h.id, record(h.addr, state, published, now, now_ms));
                }
            }
        }
        for (id, m) in &mut self.members {
            if m.state == MemberState::Alive && !heard.contains(id) {
                tracing::warn!(member = %id.0, addr = %m.addr, instances = m.published.instances.len(), "gossip member declared dead");
                m.state = MemberState::Dead;
                m.changed = now;
                m.changed_ms = now_ms;
            }
        }
        self.change(before)
    }

    /// Forgets dead and departed members whose state last changed before
    /// `before_ms`.
    pub fn prune(&mut self, before_ms: u64) {
        self.members
            .retain(|_, m| m.state == MemberState::Alive || m.changed_ms >= before_ms);
    }

    /// The publishing members of each instance, from alive members.
    fn instance_owners(&self) -> BTreeMap<(Arc<str>, SocketAddr), Vec<MemberId>> {
        let mut owners: BTreeMap<_, Vec<MemberId>> = BTreeMap::new();
        for (id, m) in &self.members {
            if m.state == MemberState::Alive {
                for i in &m.published.instances {
                    owners
                        .entry((i.service.clone(), i.address))
                        .or_default()
                        .push(id.clone());
                }
            }
        }
        owners
    }

    fn change(&self, before: BTreeMap<(Arc<str>, SocketAddr), Vec<MemberId>>) -> Change {
        let mut instances = Vec::new();
        let mut seen = BTreeSet::new();
        for m in self.members.values() {
            if m.state != MemberState::Alive {
                continue;
            }
            for i in &m.published.instances {
                if seen.insert((i.service.clone(), i.address)) {
                    instances.push(i.spec());
                }
            }
        }
        let mut explicit = Vec::new();
        let mut causes = BTreeMap::new();
        for (key, owners) in before {
            if seen.contains(&key) {
                continue;
            }
            // Asked for when every member that published it left or named
            // it gone; observed otherwise.
            let mut asked = true;
            let mut why = String::new();
            for id in &owners {
                let Some(m) = self.members.get(id) else {
                    continue;
                };
                match m.state {
                    MemberState::Left => {}
                    MemberState::Dead => {
                        asked = false;
                        why = format!("gossip member {} was declared dead", id.0);
                    }
                    MemberState::Alive if m.published.gone.contains(&key) => {}
                    MemberState::Alive => {
                        asked = false;
                        why = format!("gossip member {} stopped publishing it", id.0);
                    }
                }
            }
            if asked {
                explicit.push(key);
            } else {
                causes.insert(key, why);
            }
        }
        Change {
            cut_off: self.cut_off,
            instances,
            removals: if explicit.is_empty() {
                Removals::Implicit
            } else {
                Removals::Only(explicit)
            },
            causes,
        }
    }

    /// How many proxies (alive) report each instance ejected.
    pub fn ejections(&self) -> BTreeMap<(Arc<str>, SocketAddr), Vec<Arc<str>>> {
        let mut out: BTreeMap<_, Vec<Arc<str>>> = BTreeMap::new();
        for (id, m) in &self.members {
            if m.state == MemberState::Alive && m.published.role == Role::Proxy {
                for k in &m.published.ejected {
                    out.entry(k.clone()).or_default().push(id.0.clone());
                }
            }
        }
        out
    }
}

fn record(
    addr: SocketAddr,
    state: MemberState,
    published: Published,
    now: SystemTime,
    now_ms: u64,
) -> MemberRecord {
    MemberRecord {
        addr,
        state,
        published,
        changed: now,
        changed_ms: now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::PublishedInstance;
    use super::*;

    fn inst(service: &str, port: u16) -> PublishedInstance {
        PublishedInstance {
            service: Arc::from(service),
            id: None,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            tags: Default::default(),
            draining: false,
        }
    }

    fn heard(name: &str, p: Published) -> Heard {
        Heard {
            id: (Arc::from(name), 1),
            addr: SocketAddr::from(([127, 0, 0, 1], 7946)),
            published: Some(p),
        }
    }

    fn agent(instances: Vec<PublishedInstance>) -> Published {
        Published {
            role: Role::Agent,
            instances,
            ..Published::default()
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn dead_member_removals_are_implicit_and_leave_is_explicit() {
        let mut f = Fleet::default();
        let t = SystemTime::now();
        let c = f.observe(
            vec![
                heard("a", agent(vec![inst("api", 1)])),
                heard("b", agent(vec![inst("api", 2)])),
            ],
            t,
            0,
        );
        assert_eq!(c.instances.len(), 2);
        // b is no longer heard: dead, its instance goes implicitly.
        let c = f.observe(vec![heard("a", agent(vec![inst("api", 1)]))], t, 1);
        assert_eq!(c.instances.len(), 1);
        assert_eq!(c.removals, Removals::Implicit);
        assert!(c.causes[&(Arc::from("api"), addr(2))].contains("dead"));
        // a leaves: explicit.
        let leaving = Published {
            leaving: true,
            ..agent(vec![])
        };
        let c = f.observe(vec![heard("a", leaving)], t, 2);
        assert!(c.instances.is_empty());
        assert_eq!(
            c.removals,
            Removals::Only(vec![(Arc::from("api"), addr(1))])
        );
        assert_eq!(f.members()[&(Arc::from("a"), 1)].state, MemberState::Left);
    }

    #[test]
    fn silence_of_every_member_at_once_is_a_cut_off_until_one_is_heard() {
        let mut f = Fleet::default();
        let t = SystemTime::now();
        // Alone from the start (the first member): not cut off.
        assert!(!f.observe(vec![], t, 0).cut_off);
        let both = || {
            vec![
                heard("a", agent(vec![inst("api", 1)])),
                heard("b", agent(vec![inst("api", 2)])),
            ]
        };
        assert!(!f.observe(both(), t, 1).cut_off);
        // Both silent together: cut off, and still while nobody answers.
        assert!(f.observe(vec![], t, 2).cut_off);
        assert!(f.observe(vec![], t, 3).cut_off);
        assert_eq!(f.members()[&(Arc::from("a"), 1)].state, MemberState::Dead);
        // Healed: the union again.
        let c = f.observe(both(), t, 4);
        assert!(!c.cut_off);
        assert_eq!(c.instances.len(), 2);
        // The last other member leaving on purpose is no cut-off.
        let mut f = Fleet::default();
        f.observe(vec![heard("a", agent(vec![inst("api", 1)]))], t, 0);
        let leaving = Published {
            leaving: true,
            ..agent(vec![])
        };
        f.observe(vec![heard("a", leaving)], t, 1);
        assert!(!f.observe(vec![], t, 2).cut_off);
    }

    #[test]
    fn withdrawals_are_explicit_only_when_named_gone_and_shared_instances_stay() {
        let mut f = Fleet::default();
        let t = SystemTime::now();
        f.observe(
            vec![
                heard("a", agent(vec![inst("api", 1), inst("api", 2)])),
                heard("b", agent(vec![inst("api", 2)])),
            ],
            t,
            0,
        );
        let gone = Published {
            gone: vec![(Arc::from("api"), addr(1))],
            ..agent(vec![])
        };
        let c = f.observe(
            vec![heard("a", gone), heard("b", agent(vec![inst("api", 2)]))],
            t,
            1,
        );
        // :2 is still published by b; :1 was named gone.
        assert_eq!(c.instances.len(), 1);
        assert_eq!(
            c.removals,
            Removals::Only(vec![(Arc::from("api"), addr(1))])
        );
        // b drops :2 without naming it: implicit.
        let c = f.observe(
            vec![heard("a", agent(vec![])), heard("b", agent(vec![]))],
            t,
            2,
        );
        assert_eq!(c.removals, Removals::Implicit);
        assert!(c.instances.is_empty());
    }

    #[test]
    fn a_member_that_comes_back_restores_its_instances_and_prune_forgets_the_dead() {
        let mut f = Fleet::default();
        let t = SystemTime::now();
        f.observe(vec![heard("a", agent(vec![inst("api", 1)]))], t, 0);
        f.observe(vec![], t, 10);
        assert_eq!(f.members()[&(Arc::from("a"), 1)].state, MemberState::Dead);
        let c = f.observe(vec![heard("a", agent(vec![inst("api", 1)]))], t, 20);
        assert_eq!(c.instances.len(), 1);
        assert_eq!(f.members()[&(Arc::from("a"), 1)].state, MemberState::Alive);
        f.observe(vec![], t, 30);
        f.prune(31);
        assert!(f.members().is_empty());
    }
}
