//! DNS discovery: a service's instances are what a DNS name resolves to,
//! A/AAAA records with a configured port, or SRV records (target, port,
//! weight). One task per `[services.NAME.dns]`, reporting under the source
//! name `dns:NAME` so each name's state shows on its own in
//! `GET /v1/sources`.
//!
//! Each resolution is followed by the next one after the answer's TTL,
//! bounded by `min_refresh` and `max_refresh` (a TTL of 0, common for local
//! records, means `min_refresh`). A failed resolution (timeout, server
//! gone, SERVFAIL) keeps the last good set and retries with backoff from
//! `min_refresh` up to `max_refresh`. A name that does not exist (NXDOMAIN,
//! or no record of the asked type) keeps the last set for `nxdomain_grace`;
//! if it still does not exist after that, the set is emptied (an explicit
//! removal: the grace period is the guard). Shrinking answers are implicit
//! removals and go through the self-preservation guard.
//!
//! SRV: only the records with the lowest priority value are used (higher
//! values are backups, RFC 2782); weight 0 counts as 1, weights over 1000
//! as 1000. Target addresses come from the answer's additional section or
//! from an A/AAAA lookup of the target.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use tokio::task::JoinHandle;
use tokio::time::Instant as Clock;

use super::{InstanceSpec, Registry, Removals};
use crate::config::{Config, DnsDiscovery, DnsKind};

/// Source names are this prefix plus the service name.
pub const DNS_SOURCE_PREFIX: &str = "dns:";

/// Time one DNS query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a resolution gave no usable set.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The name (or every SRV target) does not exist or has no records.
    #[error("{name}: no such name or no records (NXDOMAIN/NODATA)")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The lookup failed; the name may well exist.
    #[error("{name}: lookup failed: {source}")]
    Lookup {
        /// The name asked for.
        name: String,
        /// The resolver's error.
        source: NetError,
    },
    /// No resolver could be built (e.g. unreadable resolv.conf).
    #[error("cannot set up a DNS resolver: {0}")]
    Setup(NetError),
}

/// The DNS sources of a running proxy.
#[derive(Debug, Default)]
pub struct DnsSources {
    tasks: BTreeMap<Arc<str>, (DnsDiscovery, JoinHandle<()>)>,
}

impl DnsSources {
    /// Starts a task for each service of `config` with a DNS table.
    pub fn start(registry: &Arc<Registry>, config: &Config) -> DnsSources {
        let mut me = DnsSources::default();
        me.apply(registry, config);
        me
    }

    /// Brings the tasks in line with a reloaded `config`: changed tables
    /// restart, removed ones stop and their instances leave.
    pub fn apply(&mut self, registry: &Arc<Registry>, config: &Config) {
        let wanted: BTreeMap<Arc<str>, DnsDiscovery> = config
            .services
            .values()
            .filter_map(|s| s.dns.clone().map(|d| (s.name.clone(), d)))
            .collect();
        self.tasks.retain(|service, (current, task)| {
            let keep = wanted.get(service) == Some(current);
            if !keep {
                task.abort();
                if !wanted.contains_key(service) {
                    // Removing the table from the file is an explicit act.
                    registry.report(&source_name(service), Vec::new(), Removals::Explicit);
                }
            }
            keep
        });
        for (service, dns) in wanted {
            if self.tasks.contains_key(&service) {
                continue;
            }
            let task = tokio::spawn(follow(
                Arc::downgrade(registry),
                service.clone(),
                dns.clone(),
            ));
            self.tasks.insert(service, (dns, task));
        }
    }
}

impl Drop for DnsSources {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}

fn source_name(service: &str) -> String {
    format!("{DNS_SOURCE_PREFIX}{service}")
}

/// Resolves `dns` for `service` until the registry is dropped.
async fn follow(registry: Weak<Registry>, service: Arc<str>, dns: DnsDiscovery) {
    let source = source_name(&service);
    let mut failures: u32 = 0;
    let mut missing = Missing::default();
    let mut resolver: Option<TokioResolver> = None;
    loop {
        let result = match &resolver {
            Some(r) => resolve(r, &service, &dns).await,
            None => match build_resolver(&dns) {
                Ok(r) => {
                    let out = resolve(&r, &service, &dns).await;
                    resolver = Some(r);
                    out
                }
                Err(e) => Err(DnsError::Setup(e)),
            },
        };
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let wait = match result {
            Ok((specs, valid_until)) => {
                failures = 0;
                missing.found();
                registry.report(&source, specs, Removals::Implicit);
                let ttl = valid_until.saturating_duration_since(Instant::now());
                ttl.clamp(dns.min_refresh, dns.max_refresh)
            }
            Err(e @ DnsError::NotFound { .. }) => {
                failures = 0;
                if missing.still_missing(dns.nxdomain_grace) {
                    tracing::warn!(source, grace = ?dns.nxdomain_grace, "DNS name still missing after its grace period; removing its instances");
                    registry.report(&source, Vec::new(), Removals::Explicit);
                }
                let state = if missing.emptied {
                    "instances removed"
                } else {
                    "last set kept until the grace period ends"
                };
                registry.source_failed(&source, format!("{e}; {state}"));
                dns.min_refresh
            }
            Err(e) => {
                registry.source_failed(&source, format!("{e}; last set kept"));
                failures = failures.saturating_add(1);
                backoff(dns.min_refresh, dns.max_refresh, failures)
            }
        };
        drop(registry);
        tokio::time::sleep(wait).await;
    }
}

/// How long a name has been missing (NXDOMAIN, or no record of the asked
/// type), on tokio's clock.
#[derive(Debug, Default)]
struct Missing {
    since: Option<Clock>,
    /// Its instances were removed when the grace period ended.
    emptied: bool,
}

impl Missing {
    /// The name is missing now: whether its grace period has just ended,
    /// so its instances go now (once per stretch of being missing).
    fn still_missing(&mut self, grace: Duration) -> bool {
        let since = *self.since.get_or_insert_with(Clock::now);
        let ends = !self.emptied && since.elapsed() >= grace;
        self.emptied |= ends;
        ends
    }

    /// The name resolves again.
    fn found(&mut self) {
        *self = Missing::default();
    }
}

/// `min` doubled per failure beyond the first, up to `max`.
fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    min.saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(max)
}

fn build_resolver(dns: &DnsDiscovery) -> Result<TokioResolver, NetError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match dns.nameserver {
        Some(addr) => {
            let connection = |mut c: ConnectionConfig| {
                c.port = addr.port();
                c
            };
            let server = NameServerConfig::new(
                addr.ip(),
                true,
                vec![
                    connection(ConnectionConfig::udp()),
                    connection(ConnectionConfig::tcp()),
                ],
            );
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                provider,
            );
            // The configured server is the authority; /etc/hosts is not.
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        }
        None => TokioResolver::builder(provider)?,
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = QUERY_TIMEOUT;
    opts.attempts = 1;
    builder.build()
}

/// One resolution: the instances and until when the answer is valid.
async fn resolve(
    resolver: &TokioResolver,
    service: &Arc<str>,
    dns: &DnsDiscovery,
) -> Result<(Vec<InstanceSpec>, Instant), DnsError> {
    // Our own refresh schedule decides when to ask again, not the cache.
    resolver.clear_cache();
    match dns.kind {
        DnsKind::A { port } => {
            let (ips, valid_until) = lookup_ips(resolver, &dns.name).await?;
            let specs = ips
                .into_iter()
                .map(|ip| InstanceSpec::new(service.clone(), SocketAddr::new(ip, port)))
                .collect();
            Ok((specs, valid_until))
        }
        DnsKind::Srv => resolve_srv(resolver, service, &dns.name).await,
    }
}

async fn resolve_srv(
    resolver: &TokioResolver,
    service: &Arc<str>,
    name: &str,
) -> Result<(Vec<InstanceSpec>, Instant), DnsError> {
    let lookup = resolver
        .srv_lookup(name)
        .await
        .map_err(|e| classify(name, e))?;
    let records: Vec<_> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) if !srv.target.is_root() => Some(srv.clone()),
            _ => None,
        })
        .collect();
    let Some(best) = records.iter().map(|s| s.priority).min() else {
        return Err(DnsError::NotFound {
            name: name.to_owned(),
        });
    };
    let mut valid_until = lookup.valid_until();
    let mut specs: Vec<InstanceSpec> = Vec::new();
    for srv in records.iter().filter(|s| s.priority == best) {
        let target = srv.target.to_ascii();
        let mut ips: Vec<IpAddr> = lookup
            .additionals()
            .iter()
            .filter(|r| r.name == srv.target)
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        if ips.is_empty() {
            match lookup_ips(resolver, &target).await {
                Ok((found, until)) => {
                    ips = found;
                    valid_until = valid_until.min(until);
                }
                // A target without addresses serves nothing; the others may.
                Err(DnsError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        let id: Arc<str> = Arc::from(target.trim_end_matches('.'));
        for ip in ips {
            let addr = SocketAddr::new(ip, srv.port);
            if specs.iter().any(|s| s.addr == addr) {
                continue;
            }
            let mut spec = InstanceSpec::new(service.clone(), addr);
            spec.weight = u32::from(srv.weight).clamp(1, 1000);
            spec.id = Some(id.clone());
            specs.push(spec);
        }
    }
    if specs.is_empty() {
        return Err(DnsError::NotFound {
            name: name.to_owned(),
        });
    }
    Ok((specs, valid_until))
}

async fn lookup_ips(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(Vec<IpAddr>, Instant), DnsError> {
    let lookup = resolver
        .lookup_ip(name)
        .await
        .map_err(|e| classify(name, e))?;
    let mut ips: Vec<IpAddr> = lookup.iter().collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return Err(DnsError::NotFound {
            name: name.to_owned(),
        });
    }
    Ok((ips, lookup.valid_until()))
}

fn classify(name: &str, e: NetError) -> DnsError {
    if e.is_nx_domain() || e.is_no_records_found() {
        DnsError::NotFound {
            name: name.to_owned(),
        }
    } else {
        DnsError::Lookup {
            name: name.to_owned(),
            source: e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_backoff_doubles_within_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(backoff(min, max, 1), min);
        assert_eq!(backoff(min, max, 2), Duration::from_millis(200));
        assert_eq!(backoff(min, max, 4), Duration::from_millis(800));
        assert_eq!(backoff(min, max, 5), max);
        assert_eq!(backoff(min, max, 1000), max);
    }

    /// The grace period runs on tokio's clock (paused here): the instances
    /// of a missing name go once it has been missing for `nxdomain_grace`,
    /// once; resolving again starts a new grace period.
    #[tokio::test(start_paused = true)]
    async fn missing_name_is_emptied_once_after_its_grace() {
        let grace = Duration::from_secs(30);
        let mut missing = Missing::default();
        assert!(!missing.still_missing(grace));
        tokio::time::advance(Duration::from_millis(29_999)).await;
        assert!(!missing.still_missing(grace));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(missing.still_missing(grace), "grace over: empty it");
        assert!(missing.emptied);
        tokio::time::advance(grace).await;
        assert!(!missing.still_missing(grace), "emptied already");
        missing.found();
        assert!(
            !missing.still_missing(grace),
            "a new stretch of being missing"
        );
        tokio::time::advance(grace).await;
        assert!(missing.still_missing(grace));
    }
}
