//! The proxy's own view of the instance, to surface a disagreement with the
//! registrar's check.
//!
//! Proxies that report it add to the JSON of `PUT` and `GET
//! /v1/registry/{service}/{id}`:
//! `"proxy_health": {"state": "unknown"|"healthy"|"unhealthy"|"ejected",
//! "reason": <string or null>, "routable": <bool>}`. Older proxies do not;
//! then there is nothing to compare and nothing is logged.

use serde::Deserialize;

/// What the proxy thinks of the instance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProxyHealth {
    /// Its health state.
    pub state: ProxyState,
    /// Why, when it is not healthy.
    #[serde(default)]
    pub reason: Option<String>,
    /// Whether the proxy would send it requests now.
    #[serde(default)]
    pub routable: Option<bool>,
}

/// The proxy's health state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyState {
    /// Not checked (yet), or no checks configured.
    Unknown,
    /// Passing its checks.
    Healthy,
    /// Failing its active checks.
    Unhealthy,
    /// Ejected by passive checks (outlier detection).
    Ejected,
    /// A state this version does not know.
    #[serde(other)]
    Other,
}

impl ProxyState {
    /// Its name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyState::Unknown => "unknown",
            ProxyState::Healthy => "healthy",
            ProxyState::Unhealthy => "unhealthy",
            ProxyState::Ejected => "ejected",
            ProxyState::Other => "other",
        }
    }

    /// Whether the proxy holds the instance unfit for requests.
    pub fn is_bad(self) -> bool {
        matches!(self, ProxyState::Unhealthy | ProxyState::Ejected)
    }
}

/// The `proxy_health` of a registration's JSON; `None` when the body is not
/// JSON or has no (well-formed) `proxy_health`.
pub fn parse(body: &[u8]) -> Option<ProxyHealth> {
    #[derive(Deserialize)]
    struct Registration {
        #[serde(default)]
        proxy_health: Option<serde_json::Value>,
    }
    let reg: Registration = serde_json::from_slice(body).ok()?;
    serde_json::from_value(reg.proxy_health?).ok()
}

/// What changed between the registrar's check and the proxy's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The proxy now holds the instance unhealthy or ejected while the
    /// registrar's check passes.
    Disagrees(ProxyHealth),
    /// The proxy no longer does.
    Agrees(ProxyHealth),
}

/// Remembers whether the proxy disagrees, so each change is told once.
#[derive(Debug, Default)]
pub struct Agreement {
    disagreeing: bool,
}

impl Agreement {
    /// Takes the proxy's view while the registrar's own check passes; a
    /// change to tell about, if any.
    pub fn observe(&mut self, view: &ProxyHealth) -> Option<Change> {
        let bad = view.state.is_bad();
        if bad == self.disagreeing {
            return None;
        }
        self.disagreeing = bad;
        Some(if bad {
            Change::Disagrees(view.clone())
        } else {
            Change::Agrees(view.clone())
        })
    }

    /// Forgets the proxy's view (the instance was deregistered).
    pub fn reset(&mut self) {
        self.disagreeing = false;
    }

    /// Logs a change.
    pub fn log(change: &Change, service: &str, id: &str) {
        match change {
            Change::Disagrees(v) => tracing::warn!(
                %service,
                %id,
                proxy_state = %v.state.as_str(),
                reason = %v.reason.as_deref().unwrap_or("none given"),
                routable = %v.routable.map_or("unknown", |r| if r { "yes" } else { "no" }),
                "the proxy holds this instance {} while the registrar's check passes",
                v.state.as_str()
            ),
            Change::Agrees(v) => tracing::info!(
                %service,
                %id,
                proxy_state = %v.state.as_str(),
                "the proxy no longer holds this instance unhealthy"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: ProxyState, reason: Option<&str>) -> ProxyHealth {
        ProxyHealth {
            state,
            reason: reason.map(str::to_owned),
            routable: Some(!state.is_bad()),
        }
    }

    #[test]
    fn parses_the_contract_and_ignores_its_absence() {
        let body = br#"{"service":"api","id":"a1","address":"127.0.0.1:9001",
            "proxy_health":{"state":"ejected","reason":"5 consecutive 5xx","routable":false}}"#;
        assert_eq!(
            parse(body),
            Some(ProxyHealth {
                state: ProxyState::Ejected,
                reason: Some("5 consecutive 5xx".into()),
                routable: Some(false),
            })
        );
        let healthy = br#"{"proxy_health":{"state":"healthy","reason":null,"routable":true}}"#;
        assert_eq!(parse(healthy).unwrap().state, ProxyState::Healthy);
        assert_eq!(parse(healthy).unwrap().reason, None);
        // An older proxy: no proxy_health.
        assert_eq!(parse(br#"{"service":"api","id":"a1"}"#), None);
        assert_eq!(parse(br#"{"proxy_health":null}"#), None);
        // Not JSON (a plain-text answer), or a malformed view.
        assert_eq!(parse(b"ok\n"), None);
        assert_eq!(parse(br#"{"proxy_health":{"reason":"x"}}"#), None);
        assert_eq!(parse(br#"{"proxy_health":"healthy"}"#), None);
        // A state from a newer proxy is not an error.
        let newer = br#"{"proxy_health":{"state":"quarantined","reason":"x","routable":false}}"#;
        assert_eq!(parse(newer).unwrap().state, ProxyState::Other);
    }

    #[test]
    fn a_disagreement_is_told_once_and_so_is_its_end() {
        let mut a = Agreement::default();
        assert_eq!(a.observe(&view(ProxyState::Unknown, None)), None);
        assert_eq!(a.observe(&view(ProxyState::Healthy, None)), None);
        let bad = view(ProxyState::Unhealthy, Some("GET /healthz: 500"));
        assert_eq!(a.observe(&bad), Some(Change::Disagrees(bad.clone())));
        // Still unhealthy, or now ejected: no new message.
        assert_eq!(a.observe(&bad), None);
        assert_eq!(a.observe(&view(ProxyState::Ejected, Some("x"))), None);
        let good = view(ProxyState::Healthy, None);
        assert_eq!(a.observe(&good), Some(Change::Agrees(good.clone())));
        assert_eq!(a.observe(&good), None);
        // Unknown (e.g. checks turned off) ends a disagreement too.
        a.observe(&bad);
        let unknown = view(ProxyState::Unknown, None);
        assert_eq!(a.observe(&unknown), Some(Change::Agrees(unknown)));
        // After a deregistration the next disagreement is told again.
        a.observe(&bad);
        a.reset();
        assert_eq!(a.observe(&bad), Some(Change::Disagrees(bad)));
    }
}
