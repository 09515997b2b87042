//! The typed traffic settings: how a service's instances are chosen
//! beyond the policy's name (`p2c_ewma` decay, `consistent_hash` key and
//! bounded load, per-instance `max_in_flight` and the queue in front of
//! them), which instances a route may reach (`match_tags`, `split`,
//! `subset_by`), and the proxy's own zone.
//!
//! A tag set carries a fingerprint: a hash of its pairs that is the same
//! in every process and for every order of the pairs, so the registry can
//! file subsets under it and a request naming one subset by header finds
//! it without allocating.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Tags (metadata) of an instance or of a selector: `version = "2"`.
pub type Tags = BTreeMap<String, String>;

/// A set of tags an instance must all carry to belong to a subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSet {
    /// The pairs, as written.
    pub tags: Arc<Tags>,
    /// [`TagSet::fingerprint_of`] the pairs.
    pub fingerprint: u64,
}

impl TagSet {
    /// The set of these pairs.
    pub fn new(tags: Tags) -> TagSet {
        let fingerprint =
            TagSet::fingerprint_of(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        TagSet {
            tags: Arc::new(tags),
            fingerprint,
        }
    }

    /// The fingerprint of a set of pairs: the sum of each pair's hash, so
    /// the order does not matter and the set `{k = v}` has exactly
    /// [`pair_hash`]`(k, v)`.
    pub fn fingerprint_of<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
        pairs.fold(0u64, |acc, (k, v)| {
            acc.wrapping_add(pair_hash(k.as_bytes(), v.as_bytes()))
        })
    }

    /// Whether `tags` carries every pair of this set.
    pub fn matches(&self, tags: Option<&Tags>) -> bool {
        self.tags.is_empty()
            || tags.is_some_and(|t| self.tags.iter().all(|(k, v)| t.get(k) == Some(v)))
    }
}

/// The hash of one `key = value` pair (see [`TagSet::fingerprint_of`]).
#[inline]
pub fn pair_hash(key: &[u8], value: &[u8]) -> u64 {
    let h = stable_hash(key);
    mix(h ^ stable_hash(value).rotate_left(29))
}

/// A 64-bit hash of `bytes` that is the same in every process and on every
/// machine (FNV-1a, then a finalizing mix so close inputs spread out). Used
/// for tag fingerprints, hash rings and request keys.
#[inline]
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// Spreads the bits of `h` (the 64-bit finalizer of MurmurHash3).
#[inline]
pub fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A service's traffic settings (`[services.NAME]` keys beyond the
/// policy's name, and what its routes ask of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traffic {
    /// `[services.NAME.p2c_ewma]`.
    pub p2c: P2cEwma,
    /// `[services.NAME.consistent_hash]`.
    pub hash: ConsistentHash,
    /// `max_in_flight`: requests one instance may have at once (0: no
    /// limit).
    pub max_in_flight: u32,
    /// `[services.NAME.queue]`: where requests wait when every candidate
    /// instance is at its `max_in_flight`.
    pub queue: Queue,
    /// The subsets the routes to this service select (`match_tags`,
    /// `split`), precomputed by the registry.
    pub subsets: Vec<TagSet>,
    /// The tag keys whose values the routes' `subset_by` choose by: the
    /// registry keeps one subset per value found.
    pub subset_keys: Vec<Arc<str>>,
    /// The proxy's zone (`[zone]`), when set.
    pub zone: Option<Arc<Zone>>,
    /// `sticky_cookie`: the cookie naming the instance a client sticks
    /// to, set by the proxy.
    pub sticky_cookie: Option<String>,
    /// `hedge_after`: a safe request without a body still waiting this
    /// long gets a second attempt on another instance (`None`: never).
    pub hedge_after: Option<Duration>,
}

/// `[services.NAME.p2c_ewma]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct P2cEwma {
    /// Time constant of the latency average's memory: after a silence
    /// this long the old average keeps 1/e of its weight against the next
    /// response (besides the 0.9 it keeps per response), and an instance
    /// not heard from for this long is compared with 1/e of its own
    /// average, the rest its partner's (neutral).
    pub decay: Duration,
}

/// `[services.NAME.consistent_hash]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistentHash {
    /// What a request is hashed by.
    pub key: HashKey,
    /// Bounded load, in thousandths: no instance takes more than this
    /// times the mean load (in-flight requests, weighted); 0 is unbounded.
    pub load_factor_milli: u32,
}

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header's value (`"header:x-user"`; the name in lower
    /// case).
    Header(String),
    /// A cookie's value (`"cookie:session"`).
    Cookie(String),
    /// The client's IP address (`"client_address"`).
    ClientAddress,
    /// The request path without the query (`"path"`).
    Path,
}

/// `[services.NAME.queue]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    /// Requests that may wait at once (0: none wait; a request that finds
    /// every instance at its limit gets 503 at once).
    pub size: u32,
    /// Longest a request waits before it gets 503 with `Retry-After`.
    pub timeout: Duration,
}

/// What a route asks of its service's instances.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteTraffic {
    /// `match_tags`: only instances carrying these tags.
    pub match_tags: Option<TagSet>,
    /// `split`: requests shared between subsets by weight.
    pub split: Vec<SplitEntry>,
    /// `subset_by`: a request value naming the subset.
    pub subset_by: Option<SubsetBy>,
}

impl RouteTraffic {
    /// Whether the route asks nothing: every instance, by the service's
    /// policy.
    pub fn is_empty(&self) -> bool {
        self.match_tags.is_none() && self.split.is_empty() && self.subset_by.is_none()
    }
}

/// One entry of a route's `split`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitEntry {
    /// The instances of this share.
    pub tags: TagSet,
    /// Its relative share.
    pub weight: u32,
}

/// Most entries in a route's `split`.
pub const MAX_SPLIT: usize = 8;

/// Why a split cannot be used (from the file or the admin API); entries
/// are counted from 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// Fewer than 2 or more than [`MAX_SPLIT`] entries.
    #[error("{0} entries: a split shares requests between 2 to 8 subsets")]
    Entries(usize),
    /// An entry names no tag.
    #[error("entry {0} names no tag: a subset needs at least one (version = \"2\")")]
    NoTags(usize),
    /// An entry has a tag with an empty name.
    #[error("entry {0}: a tag name is empty")]
    EmptyTagName(usize),
    /// A weight outside 0 to 10000.
    #[error("entry {0}: weight {1} is out of range 0..=10000")]
    Weight(usize, i64),
    /// Two entries with the same tags.
    #[error("entry {0}: the same tags twice in one split")]
    Duplicate(usize),
    /// Nothing would be sent.
    #[error("every weight is 0: nothing would be sent")]
    AllZero,
}

impl SplitError {
    /// The entry at fault, if one is.
    pub fn entry(&self) -> Option<usize> {
        match self {
            SplitError::NoTags(i)
            | SplitError::EmptyTagName(i)
            | SplitError::Weight(i, _)
            | SplitError::Duplicate(i) => Some(*i),
            SplitError::Entries(_) | SplitError::AllZero => None,
        }
    }
}

/// Checks a split's `(tags, weight)` entries, the same rules for the file
/// and the admin API.
pub fn check_split(entries: &[(&Tags, i64)]) -> Result<Vec<SplitEntry>, SplitError> {
    if !(2..=MAX_SPLIT).contains(&entries.len()) {
        return Err(SplitError::Entries(entries.len()));
    }
    let mut split: Vec<SplitEntry> = Vec::with_capacity(entries.len());
    for (i, &(tags, weight)) in entries.iter().enumerate() {
        if tags.is_empty() {
            return Err(SplitError::NoTags(i));
        }
        if tags.keys().any(String::is_empty) {
            return Err(SplitError::EmptyTagName(i));
        }
        let weight = u32::try_from(weight)
            .ok()
            .filter(|w| *w <= 10_000)
            .ok_or(SplitError::Weight(i, weight))?;
        let tags = TagSet::new(tags.clone());
        if split.iter().any(|s| s.tags == tags) {
            return Err(SplitError::Duplicate(i));
        }
        split.push(SplitEntry { tags, weight });
    }
    if split.iter().all(|s| s.weight == 0) {
        return Err(SplitError::AllZero);
    }
    Ok(split)
}

/// Why a route's split cannot be changed through the admin API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetSplitError {
    /// No route has the name.
    #[error("no route is named {0:?}")]
    UnknownRoute(String),
    /// The route selects its instances by `match_tags`.
    #[error("route {0:?} has match_tags: split and match_tags exclude each other")]
    MatchTags(String),
}

impl super::Config {
    /// This config with the splits of the routes named in `splits`
    /// replaced, and each service's precomputed subsets following.
    pub fn with_splits(
        &self,
        splits: &BTreeMap<Arc<str>, Vec<SplitEntry>>,
    ) -> Result<super::Config, SetSplitError> {
        let mut out = self.clone();
        for (name, split) in splits {
            let route = out
                .routes
                .iter_mut()
                .find(|r| r.name.as_ref() == Some(name))
                .ok_or_else(|| SetSplitError::UnknownRoute(name.to_string()))?;
            if route.traffic.match_tags.is_some() {
                return Err(SetSplitError::MatchTags(name.to_string()));
            }
            route.traffic.split = split.clone();
        }
        super::validate::reattach_subsets(&mut out.services, &out.routes);
        Ok(out)
    }
}

/// `subset_by = { header = "x-version", tag = "version" }`: the subset of
/// instances whose `tag` equals the request's header (or cookie) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsetBy {
    /// Where the value comes from.
    pub from: RequestValue,
    /// The tag it is compared with.
    pub tag: Arc<str>,
}

/// A value read from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestValue {
    /// A header (name in lower case).
    Header(String),
    /// A cookie.
    Cookie(String),
}

/// `[zone]`: where this proxy runs, and how strongly it keeps traffic
/// there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// This proxy's zone.
    pub name: String,
    /// The instance tag that names an instance's zone.
    pub tag: String,
    /// Traffic stays in the zone while at least this percent of the
    /// zone's instances (of the subset picked from) are available;
    /// below, it spreads over every zone.
    pub min_available_percent: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_order_and_single_pair_is_pair_hash() {
        let a = TagSet::new(Tags::from([
            ("version".into(), "2".into()),
            ("zone".into(), "a".into()),
        ]));
        let fp = TagSet::fingerprint_of([("zone", "a"), ("version", "2")].into_iter());
        assert_eq!(a.fingerprint, fp);
        let one = TagSet::new(Tags::from([("version".into(), "2".into())]));
        assert_eq!(one.fingerprint, pair_hash(b"version", b"2"));
        assert_ne!(pair_hash(b"version", b"2"), pair_hash(b"2", b"version"));
        assert_eq!(stable_hash(b"abc"), stable_hash(b"abc"));
    }

    #[test]
    fn matches_every_pair() {
        let s = TagSet::new(Tags::from([("version".into(), "2".into())]));
        let t = Tags::from([("version".into(), "2".into()), ("zone".into(), "a".into())]);
        assert!(s.matches(Some(&t)));
        assert!(!s.matches(None));
        let t = Tags::from([("version".into(), "1".into())]);
        assert!(!s.matches(Some(&t)));
    }
}
