//! `GET /metrics`: the process's metrics in the Prometheus text format, or
//! OpenMetrics when the scraper's `Accept` asks for
//! `application/openmetrics-text`.
//!
//! Encoding is `prometheus-client`'s (the Prometheus project's own Rust
//! client, OpenMetrics-conformant). Nothing is registered per request:
//! one [`Collector`] reads, at scrape time, the atomics the request path
//! already keeps in the live state of each instance and service of the
//! current snapshot (see [`crate::registry::stats`]), the registry's
//! sources and rebuilds, the proxy's connection gauges, the registration
//! counts and `/proc/self`. An instance that leaves the registry is
//! absent from the next scrape; label values are escaped here.
//!
//! The list of metrics is in the README ("Operating wayfinder").

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;

use crate::proxy::{access_log, observe, retry};
use crate::registry::registrations::COUNTS;
use crate::registry::stats::{Histogram, CLASSES, METHODS};
use crate::registry::{Health, Lifecycle, Registry, ServiceEntry};

mod process;

/// The `Content-Type` of each format.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub(crate) const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metric registry of the admin API: one collector over everything.
pub(crate) fn registry(registry: Arc<Registry>) -> prometheus_client::registry::Registry {
    let mut r = prometheus_client::registry::Registry::default();
    r.register_collector(Box::new(Wayfinder { registry }));
    r
}

/// The exposition for a scraper whose `Accept` is `accept`: the body and
/// its content type.
pub(crate) fn render(
    metrics: &prometheus_client::registry::Registry,
    accept: &str,
) -> (String, &'static str) {
    let mut out = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::text::encode(&mut out, metrics).is_err() {
        out.clear();
    }
    if accept.contains("application/openmetrics-text") {
        (out, OPENMETRICS)
    } else {
        (to_prometheus_text(&out), PROMETHEUS)
    }
}

/// OpenMetrics text to the Prometheus text format (0.0.4): a counter's
/// family is named with its `_total` suffix there, and there is no `# EOF`.
fn to_prometheus_text(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let lines: Vec<&str> = open.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" {
            continue;
        }
        let counter_family = |l: &str| {
            l.strip_prefix("# TYPE ")
                .and_then(|rest| rest.strip_suffix(" counter"))
                .map(str::to_owned)
        };
        // HELP comes right before its TYPE line.
        let family = counter_family(line).or_else(|| {
            line.starts_with("# HELP ")
                .then(|| lines.get(i + 1).and_then(|next| counter_family(next)))
                .flatten()
        });
        match family {
            Some(name) if !name.ends_with("_total") => {
                let (kind, rest) = line.split_at(7);
                let rest = &rest[name.len()..];
                let _ = writeln!(out, "{kind}{name}_total{rest}");
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A label value, escaped as the text formats require.
struct Value<'a>(Cow<'a, str>);

impl EncodeLabelValue for Value<'_> {
    fn encode(&self, enc: &mut LabelValueEncoder) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => enc.write_str("\\\\")?,
                '"' => enc.write_str("\\\"")?,
                '\n' => enc.write_str("\\n")?,
                c => enc.write_char(c)?,
            }
        }
        Ok(())
    }
}

fn v<'a>(s: impl Into<Cow<'a, str>>) -> Value<'a> {
    Value(s.into())
}

type Labels<'a, const N: usize> = [(&'static str, Value<'a>); N];

/// Adds the non-zero request counts of one instance (or, with `instance`
/// empty, of the proxy's own answers) by method and status class.
fn by_method<'a>(
    out: &mut Vec<(Labels<'a, 4>, f64)>,
    service: &'a str,
    instance: &'a str,
    counts: [[u64; 5]; 8],
) {
    for (method, classes) in METHODS.iter().zip(counts) {
        for (class, n) in CLASSES.iter().zip(classes) {
            if n > 0 {
                out.push((
                    [
                        ("service", v(service)),
                        ("instance", v(instance)),
                        ("method", v(*method)),
                        ("code", v(*class)),
                    ],
                    n as f64,
                ));
            }
        }
    }
}

/// Writes one family of counters or gauges.
fn family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    rows: impl IntoIterator<Item = (L, f64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, value) in rows {
        let mut row = m.encode_family(&labels)?;
        match ty {
            MetricType::Counter => row.encode_counter::<NoLabelSet, f64, f64>(&value, None)?,
            _ => row.encode_gauge(&value)?,
        }
    }
    Ok(())
}

/// One value without labels.
fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    value: f64,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    match ty {
        MetricType::Counter => m.encode_counter::<NoLabelSet, f64, f64>(&value, None),
        _ => m.encode_gauge(&value),
    }
}

fn histograms<'a, L: EncodeLabelSet + 'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, &'a Histogram)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        let (sum, count, buckets) = h.read();
        m.encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

use MetricType::{Counter, Gauge};

/// Reads everything at scrape time.
#[derive(Debug)]
struct Wayfinder {
    registry: Arc<Registry>,
}

impl Collector for Wayfinder {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let snapshot = self.registry.load_full();
        let mut services: Vec<&Arc<ServiceEntry>> = snapshot.services().collect();
        services.sort_by(|a, b| a.name().cmp(b.name()));
        // Each member's labels, formatted once per scrape.
        let members: Vec<(&ServiceEntry, Vec<String>)> = services
            .iter()
            .map(|s| {
                let addrs = s
                    .members()
                    .iter()
                    .map(|m| m.instance.addr().to_string())
                    .collect();
                (&***s, addrs)
            })
            .collect();
        let per_instance = |f: &dyn Fn(&crate::registry::Member) -> f64| {
            let mut rows = Vec::new();
            for (s, addrs) in &members {
                for (m, addr) in s.members().iter().zip(addrs) {
                    rows.push((
                        [("service", v(&**s.name())), ("instance", v(addr.as_str()))],
                        f(m),
                    ));
                }
            }
            rows
        };

        family(
            &mut enc,
            "wayfinder_build_info",
            "Build information (the version label), always 1.",
            Gauge,
            [([("version", v(env!("CARGO_PKG_VERSION")))], 1.0)],
        )?;

        // === requests ===
        let mut requests: Vec<(Labels<'_, 4>, f64)> = Vec::new();
        for (s, addrs) in &members {
            for (m, addr) in s.members().iter().zip(addrs) {
                by_method(
                    &mut requests,
                    s.name(),
                    addr,
                    m.instance.stats().responses_by_method(),
                );
            }
            by_method(
                &mut requests,
                s.name(),
                "",
                s.live().stats().local_responses_by_method(),
            );
        }
        family(
            &mut enc,
            "wayfinder_requests",
            "Requests by service, answering instance (empty: answered by the proxy), method (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, other) and status class.",
            Counter,
            requests,
        )?;
        family(
            &mut enc,
            "wayfinder_requests_unrouted",
            "Requests answered before a service was chosen (no route, malformed), by status class.",
            Counter,
            CLASSES
                .iter()
                .zip(observe::unrouted())
                .map(|(c, n)| ([("code", v(*c))], n as f64)),
        )?;
        histograms(
            &mut enc,
            "wayfinder_request_duration_seconds",
            "Time from routing a request to the end of its response, per service.",
            services
                .iter()
                .map(|s| ([("service", v(&**s.name()))], &s.live().stats().duration)),
        )?;
        histograms(
            &mut enc,
            "wayfinder_upstream_ttfb_seconds",
            "Time from sending a request to an instance to its response head, per service.",
            services.iter().map(|s| {
                (
                    [("service", v(&**s.name()))],
                    &s.live().stats().upstream_ttfb,
                )
            }),
        )?;
        family(
            &mut enc,
            "wayfinder_client_connections",
            "Open client connections by protocol and TLS.",
            Gauge,
            observe::connections().into_iter().map(|(p, tls, n)| {
                (
                    [
                        ("protocol", v(p)),
                        ("tls", v(if tls { "true" } else { "false" })),
                    ],
                    n as f64,
                )
            }),
        )?;
        family(
            &mut enc,
            "wayfinder_in_flight_requests",
            "Requests in flight per instance.",
            Gauge,
            per_instance(&|m| m.instance.in_flight() as f64),
        )?;

        // === failures and retries ===
        let failures = |pick: fn((u64, u64, u64)) -> u64| {
            per_instance(&move |m| pick(m.instance.stats().failures()) as f64)
        };
        family(
            &mut enc,
            "wayfinder_upstream_connect_failures",
            "Attempts whose connection to the instance could not be made.",
            Counter,
            failures(|f| f.0),
        )?;
        family(
            &mut enc,
            "wayfinder_upstream_timeouts",
            "Attempts with no response head within the response-header timeout.",
            Counter,
            failures(|f| f.1),
        )?;
        family(
            &mut enc,
            "wayfinder_upstream_resets",
            "Attempts whose connection broke after the request was written, or whose answer could not be relayed.",
            Counter,
            failures(|f| f.2),
        )?;
        family(
            &mut enc,
            "wayfinder_retries",
            "Attempts after the first, per service.",
            Counter,
            services.iter().map(|s| {
                (
                    [("service", v(&**s.name()))],
                    s.live().stats().retries() as f64,
                )
            }),
        )?;
        family(
            &mut enc,
            "wayfinder_retries_refused",
            "Retries the retry budget refused, per service.",
            Counter,
            services
                .iter()
                .map(|s| ([("service", v(&**s.name()))], retry::refused(s) as f64)),
        )?;

        // === health ===
        family(
            &mut enc,
            "wayfinder_ejections",
            "Times passive health ejected the instance.",
            Counter,
            per_instance(&|m| m.instance.ejections() as f64),
        )?;
        family(
            &mut enc,
            "wayfinder_health_transitions",
            "Changes of the instance's health (active checks and ejections).",
            Counter,
            per_instance(&|m| m.instance.stats().health_transitions() as f64),
        )?;
        let now_ms = crate::clock::now_ms();
        let mut health = Vec::new();
        for (s, addrs) in &members {
            for (m, addr) in s.members().iter().zip(addrs) {
                let h = m.instance.health();
                for (state, is) in [
                    ("not_checked", h == Health::NotChecked),
                    ("unknown", h == Health::Unknown),
                    ("healthy", h == Health::Healthy),
                    ("unhealthy", h == Health::Unhealthy),
                ] {
                    health.push((
                        [
                            ("service", v(&**s.name())),
                            ("instance", v(addr.as_str())),
                            ("state", v(state)),
                        ],
                        f64::from(u8::from(is)),
                    ));
                }
            }
        }
        family(
            &mut enc,
            "wayfinder_instance_health",
            "1 for the instance's current active-health state, 0 for the others.",
            Gauge,
            health,
        )?;
        family(
            &mut enc,
            "wayfinder_instance_ejected",
            "1 while passive health has the instance ejected.",
            Gauge,
            per_instance(&|m| f64::from(u8::from(m.instance.is_ejected(now_ms)))),
        )?;
        family(
            &mut enc,
            "wayfinder_instance_draining",
            "1 while the instance takes no new requests (drained or leaving).",
            Gauge,
            per_instance(&|m| f64::from(u8::from(m.instance.lifecycle() != Lifecycle::Serving))),
        )?;
        family(
            &mut enc,
            "wayfinder_service_panic_mode",
            "1 while too few instances are usable and health is ignored.",
            Gauge,
            services.iter().map(|s| {
                (
                    [("service", v(&**s.name()))],
                    f64::from(u8::from(s.live().in_panic())),
                )
            }),
        )?;
        family(
            &mut enc,
            "wayfinder_service_instances",
            "Instances listed per service.",
            Gauge,
            services
                .iter()
                .map(|s| ([("service", v(&**s.name()))], s.members().len() as f64)),
        )?;

        // === registry ===
        single(
            &mut enc,
            "wayfinder_snapshot_version",
            "Version of the published registry snapshot.",
            Gauge,
            snapshot.version() as f64,
        )?;
        let age = SystemTime::now()
            .duration_since(snapshot.built_at())
            .unwrap_or_default();
        single(
            &mut enc,
            "wayfinder_snapshot_age_seconds",
            "Time since the published snapshot was built.",
            Gauge,
            age.as_secs_f64(),
        )?;
        let rebuilds = self.registry.rebuild_stats();
        let (sum, count, buckets) = rebuilds.duration.read();
        enc.encode_descriptor(
            "wayfinder_snapshot_rebuild_seconds",
            "Duration of each rebuild that published a snapshot.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        let sources = self.registry.sources();
        let mut states = Vec::new();
        for s in &sources {
            for state in ["ok", "failing", "stale", "starting"] {
                states.push((
                    [("source", v(&*s.name)), ("state", v(state))],
                    f64::from(u8::from(s.state == state)),
                ));
            }
        }
        family(
            &mut enc,
            "wayfinder_source_state",
            "1 for each source's current state (ok, failing, stale, starting), 0 for the others.",
            Gauge,
            states,
        )?;
        family(
            &mut enc,
            "wayfinder_source_last_success_timestamp_seconds",
            "Unix time of each source's last successful report (absent before the first).",
            Gauge,
            sources.iter().filter_map(|s| {
                let at = s
                    .last_success?
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()?;
                Some(([("source", v(&*s.name))], at.as_secs_f64()))
            }),
        )?;
        family(
            &mut enc,
            "wayfinder_source_instances",
            "Instances in each source's current set.",
            Gauge,
            sources
                .iter()
                .map(|s| ([("source", v(&*s.name))], s.instances as f64)),
        )?;
        family(
            &mut enc,
            "wayfinder_source_held_back_removals",
            "Removals self-preservation holds back, per source.",
            Gauge,
            sources
                .iter()
                .map(|s| ([("source", v(&*s.name))], s.held_back.len() as f64)),
        )?;
        single(
            &mut enc,
            "wayfinder_registrations",
            "New registrations through the admin API.",
            Counter,
            COUNTS.registered.load(Relaxed) as f64,
        )?;
        single(
            &mut enc,
            "wayfinder_deregistrations",
            "Deregistrations through the admin API.",
            Counter,
            COUNTS.deregistered.load(Relaxed) as f64,
        )?;
        single(
            &mut enc,
            "wayfinder_registration_expiries",
            "Registrations removed because their TTL lapsed.",
            Counter,
            COUNTS.expired.load(Relaxed) as f64,
        )?;

        // === access log ===
        single(
            &mut enc,
            "wayfinder_access_log_lines",
            "Access log lines written.",
            Counter,
            access_log::WRITTEN.load(Relaxed) as f64,
        )?;
        single(
            &mut enc,
            "wayfinder_access_log_dropped",
            "Access log lines dropped because the writer's queue was full (or a write failed).",
            Counter,
            access_log::DROPPED.load(Relaxed) as f64,
        )?;

        process::encode(&mut enc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_suffix_in_the_prometheus_format() {
        let open = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total 1\n\
                    # HELP b Gauge.\n# TYPE b gauge\nb 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(open),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\n\
             a_requests_total 1\n# HELP b Gauge.\n# TYPE b gauge\nb 2\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut r = prometheus_client::registry::Registry::default();
        #[derive(Debug)]
        struct One;
        impl Collector for One {
            fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
                family(
                    &mut enc,
                    "x",
                    "X.",
                    Gauge,
                    [([("service", v("a\"b\\c\nd"))], 1.0)],
                )
            }
        }
        r.register_collector(Box::new(One));
        let (text, _) = render(&r, "");
        assert!(text.contains(r#"x{service="a\"b\\c\nd"} 1"#), "{text}");
    }
}
