//! The settings of the two membership sources: `[registry.gossip]` (the
//! fleet of proxies and registrar agents that share their registrations by
//! gossip) and `[registry.serf]` (an existing Serf cluster followed through
//! its agent's RPC). Both are read at start.

use std::net::SocketAddr;
use std::time::Duration;

use serde::ser::SerializeStruct;
use serde::Serialize;

use super::serialize;

/// `[registry.gossip]`: this proxy is a member of a gossip fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipSettings {
    /// This member's name in the fleet (unique within it).
    pub name: String,
    /// The UDP address gossip listens on.
    pub bind: SocketAddr,
    /// The address other members reach this one at.
    pub advertise: SocketAddr,
    /// Seeds to join through (`host:port`), retried with backoff until one
    /// answers.
    pub join: Vec<String>,
    /// The cluster name: members of another cluster are ignored.
    pub cluster: String,
    /// The shared secret every datagram is sealed with (authenticated and
    /// encrypted), if set. With `secret_env`, the variable's value (`None`
    /// when only checked and the variable is not set). Never shown.
    pub secret: Option<String>,
    /// `secret_env`: the environment variable the secret is read from.
    pub secret_env: Option<String>,
    /// How soon every member declares a stopped member dead (see
    /// [`GossipSettings::silence`]).
    pub failure_detection: Duration,
    /// Time between gossip rounds.
    pub interval: Duration,
    /// Phi-accrual threshold: a member is declared dead after about
    /// `phi_threshold` × its mean heartbeat interval without one.
    pub phi_threshold: u8,
    /// Longest wait between two attempts to reach the seeds.
    pub retry_join_max: Duration,
    /// How long a leaving member keeps gossiping its departure.
    pub leave_timeout: Duration,
    /// Whether this proxy shares the instances it ejected (shown by every
    /// member's `GET /v1/members`; not acted on by others).
    pub share_ejections: bool,
}

impl GossipSettings {
    /// Rounds the last heartbeat of a member that stopped takes to reach
    /// every other member (measured on loopback with 50 members: two, at
    /// most three), allowed for in [`GossipSettings::silence`].
    pub const SPREAD_ROUNDS: u32 = 2;
    /// Fewest rounds of silence before a member is declared dead. Gaps
    /// between the heartbeats of a member alive are about two thirds of a
    /// round on average and reached 3.3 rounds at worst on a busy machine
    /// (see the README, "Gossip fleet").
    pub const SILENT_ROUNDS: u32 = 4;
    /// Fewest gossip rounds in a `failure_detection` time (a longer
    /// `interval` is refused); the default `interval` is that long.
    pub const MIN_ROUNDS_PER_DETECTION: u32 = Self::SPREAD_ROUNDS + Self::SILENT_ROUNDS;

    /// The default (and longest) `interval` for `failure_detection`, in
    /// whole milliseconds.
    pub fn interval_for(failure_detection: Duration) -> Duration {
        let ms = failure_detection.as_millis() / u128::from(Self::MIN_ROUNDS_PER_DETECTION);
        Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX).max(1))
    }

    /// How long a member may go unheard before this one declares it dead:
    /// `failure_detection` less the rounds its last heartbeat takes to
    /// spread (every member hears it at a different time after it
    /// stopped), so that every member has declared it dead about
    /// `failure_detection` after it stopped.
    pub fn silence(&self) -> Duration {
        self.failure_detection
            .saturating_sub(self.interval * Self::SPREAD_ROUNDS)
            .max(self.interval * Self::SILENT_ROUNDS)
    }
}

impl Serialize for GossipSettings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("GossipSettings", 13)?;
        m.serialize_field("name", &self.name)?;
        m.serialize_field("bind", &self.bind)?;
        m.serialize_field("advertise", &self.advertise)?;
        m.serialize_field("join", &self.join)?;
        m.serialize_field("cluster", &self.cluster)?;
        m.serialize_field("secret", &self.secret.as_ref().map(|_| serialize::REDACTED))?;
        m.serialize_field("secret_env", &self.secret_env)?;
        m.serialize_field(
            "failure_detection",
            &serialize::fmt_duration(self.failure_detection),
        )?;
        m.serialize_field("interval", &serialize::fmt_duration(self.interval))?;
        m.serialize_field("phi_threshold", &self.phi_threshold)?;
        m.serialize_field(
            "retry_join_max",
            &serialize::fmt_duration(self.retry_join_max),
        )?;
        m.serialize_field(
            "leave_timeout",
            &serialize::fmt_duration(self.leave_timeout),
        )?;
        m.serialize_field(
            "observations",
            if self.share_ejections { "share" } else { "off" },
        )?;
        m.end()
    }
}

/// `[registry.serf]`: follow a Serf cluster through one agent's RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerfSettings {
    /// The agent's RPC address (`serf agent -rpc-addr`).
    pub rpc: SocketAddr,
    /// The RPC auth key (`serf agent -rpc-auth`), if the agent needs one.
    /// Never shown.
    pub auth_key: Option<String>,
    /// `auth_key_env`: the environment variable the key is read from.
    pub auth_key_env: Option<String>,
    /// Prefix of the tags that describe a member's instances.
    pub tag_prefix: String,
    /// Longest wait between two attempts to reach the agent.
    pub retry_max: Duration,
}

impl Serialize for SerfSettings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("SerfSettings", 5)?;
        m.serialize_field("rpc", &self.rpc)?;
        m.serialize_field(
            "auth_key",
            &self.auth_key.as_ref().map(|_| serialize::REDACTED),
        )?;
        m.serialize_field("auth_key_env", &self.auth_key_env)?;
        m.serialize_field("tag_prefix", &self.tag_prefix)?;
        m.serialize_field("retry_max", &serialize::fmt_duration(self.retry_max))?;
        m.end()
    }
}
