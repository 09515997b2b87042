//! Finding where a checked request goes, for both codecs: the router picks
//! a service name (and the prefix to strip, and the upgrades the route
//! allows), the snapshot resolves it to the service's entry. One `load` of
//! the snapshot per request.

use std::sync::Arc;

use super::error::ProxyError;
use super::policy::request::protocol_name;
use super::policy::target::Target;
use super::policy::Fields;
use super::Proxy;
use crate::balance::Choice;
use crate::config::RequireTls;
use crate::registry::ServiceEntry;

/// The https URL of a plain-HTTP request: its host (without the port), the
/// TLS listener's port unless it is 443, and its path and query.
fn https_location(target: &Target<'_>, port: Option<u16>) -> String {
    let authority = target.authority;
    let host = if authority.starts_with('[') {
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let pq = match target.path_and_query {
        "*" => "/",
        pq => pq,
    };
    match port {
        Some(443) | None => format!("https://{host}{pq}"),
        Some(p) => format!("https://{host}:{p}{pq}"),
    }
}

/// Where a request goes.
#[derive(Debug)]
pub(crate) struct Routed<'a> {
    pub service: Arc<ServiceEntry>,
    /// Leading bytes of the path removed before forwarding.
    pub strip: usize,
    /// The upgrade to forward: what the client asked for, if the route
    /// allows it.
    pub upgrade: Option<&'a [u8]>,
    /// What the request asks of the balancer (subsets, hash key).
    pub choice: Choice,
}

impl Proxy {
    /// Routes a request for `target` that asked to upgrade to `upgrade`;
    /// `tls`: it came over TLS (a route that requires TLS redirects or
    /// refuses it otherwise). `fields` and `client_ip` give what the
    /// route's subsets and the service's hash key read.
    pub(crate) fn route<'a, F: Fields + ?Sized>(
        &self,
        target: &Target<'_>,
        upgrade: Option<&'a [u8]>,
        tls: bool,
        fields: &F,
        client_ip: &str,
    ) -> Result<Routed<'a>, ProxyError> {
        let snapshot = self.registry.load();
        let path = target.path();
        let Some(to) = snapshot.router().route(Some(target.authority), path) else {
            return Err(ProxyError::NoRoute {
                host: target.authority.to_owned(),
                path: path.to_owned(),
            });
        };
        match (tls, to.require_tls) {
            (false, Some(RequireTls::Redirect)) => {
                return Err(ProxyError::TlsRedirect {
                    location: https_location(target, self.settings.https_port),
                })
            }
            (false, Some(RequireTls::Refuse)) => return Err(ProxyError::TlsRequired),
            _ => {}
        }
        let Some(service) = snapshot.service(&to.service) else {
            return Err(ProxyError::UnknownService(to.service.into_owned()));
        };
        let upgrade = upgrade.filter(|u| to.allows_upgrade(protocol_name(u)));
        let choice = super::traffic::choice(service, to.traffic, fields, path, client_ip);
        Ok(Routed {
            service: service.clone(),
            strip: if target.path_and_query == "*" {
                0
            } else {
                to.strip
            },
            upgrade,
            choice,
        })
    }
}
