//! `wayfinder status`: the running proxy's state as a compact table (like
//! HAProxy's `show servers state`), read from its admin API (`GET
//! /v1/status`, `/v1/services`, `/v1/sources`), or those answers as one
//! JSON object with `--json`.

use std::fmt::Write as _;
use std::time::Duration;

use http::{Method, StatusCode, Uri};
use serde_json::Value;

use super::client::Client;

/// What `wayfinder status` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The admin API, `http://HOST:PORT`.
    pub admin: Uri,
    /// Bearer token (needed with `admin.auth_reads`).
    pub token: Option<String>,
    /// Print the raw answers as one JSON object.
    pub json: bool,
    /// Longest wait for each answer.
    pub timeout: Duration,
}

/// Why there is no status to print (one line).
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No answer (refused, timed out...).
    #[error("admin API {admin} unreachable: {reason}")]
    Unreachable {
        /// The admin API.
        admin: String,
        /// What failed.
        reason: String,
    },
    /// An answer that is not a 200 with JSON.
    #[error("admin API {admin}: GET {path}: {reason}")]
    Refused {
        /// The admin API.
        admin: String,
        /// The call.
        path: &'static str,
        /// Its status and body, or what was wrong with it.
        reason: String,
    },
}

/// Reads the three views and renders them: the table, or with
/// `opts.json` one JSON object `{"status", "services", "sources"}`.
pub async fn run(opts: &Options) -> Result<String, StatusError> {
    let client = Client::new(opts.admin.clone(), opts.token.clone());
    let admin = opts.admin.to_string();
    let get = |path: &'static str| {
        let (client, admin) = (&client, &admin);
        async move {
            let answer = client
                .call(Method::GET, path, None, opts.timeout)
                .await
                .map_err(|reason| StatusError::Unreachable {
                    admin: admin.clone(),
                    reason,
                })?;
            if answer.status != StatusCode::OK {
                let hint = if answer.status == StatusCode::UNAUTHORIZED {
                    " (pass --token or set WAYFINDER_TOKEN)"
                } else {
                    ""
                };
                return Err(StatusError::Refused {
                    admin: admin.clone(),
                    path,
                    reason: format!("{}: {}{hint}", answer.status, answer.text()),
                });
            }
            serde_json::from_slice::<Value>(&answer.body).map_err(|e| StatusError::Refused {
                admin: admin.clone(),
                path,
                reason: format!("not JSON: {e}"),
            })
        }
    };
    let status = get("/v1/status").await?;
    let services = get("/v1/services").await?;
    let sources = get("/v1/sources").await?;
    if opts.json {
        let all = serde_json::json!({
            "status": status,
            "services": services,
            "sources": sources,
        });
        return Ok(format!("{all:#}\n"));
    }
    Ok(render(&status, &services, &sources))
}

/// The table: a header line about the process, one line per instance,
/// then one per source.
pub fn render(status: &Value, services: &Value, sources: &Value) -> String {
    let mut out = String::new();
    let snap = &status["snapshot"];
    let _ = writeln!(
        out,
        "wayfinder {} {} up {} snapshot v{} ({} ago) {} services {} instances",
        text(&status["version"]),
        text(&status["phase"]),
        secs(status["uptime_s"].as_f64()),
        text(&snap["version"]),
        secs(snap["age_ms"].as_f64().map(|ms| ms / 1000.0)),
        text(&snap["services"]),
        text(&snap["instances"]),
    );
    if let Some(restart) = status["restart_needed"]
        .as_array()
        .filter(|r| !r.is_empty())
    {
        let names: Vec<String> = restart.iter().map(text).collect();
        let _ = writeln!(out, "restart needed for: {}", names.join(", "));
    }
    out.push('\n');
    let mut rows = vec![row(&[
        "SERVICE", "INSTANCE", "ID", "SOURCE", "HEALTH", "STATE", "WEIGHT", "INFLIGHT", "REQS",
        "ERRS", "H2CONN",
    ])];
    for svc in services["services"].as_array().into_iter().flatten() {
        let name = text(&svc["name"]);
        let instances = svc["instances"].as_array().map_or(&[][..], Vec::as_slice);
        if instances.is_empty() {
            rows.push(row(&[&name, "-", "-", "-", "-", "no instances"]));
        }
        for i in instances {
            rows.push(vec![
                name.clone(),
                text(&i["address"]),
                text(&i["id"]),
                text(&i["source"]),
                text(&i["proxy_health"]["state"]),
                state(svc, i),
                weight(i),
                text(&i["in_flight"]),
                text(&i["requests"]),
                text(&i["errors"]),
                text(&i["h2_connections"]),
            ]);
        }
    }
    table(&mut out, &rows);
    out.push('\n');
    let mut rows = vec![row(&[
        "SOURCE",
        "STATE",
        "INSTANCES",
        "LAST OK",
        "HELD BACK",
        "LAST ERROR",
    ])];
    for s in sources.as_array().into_iter().flatten() {
        let held = s["held_back"].as_array().map_or(0, Vec::len);
        rows.push(vec![
            text(&s["name"]),
            text(&s["state"]),
            text(&s["instances"]),
            s["last_success_ago_s"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |a| format!("{} ago", secs(Some(a)))),
            held.to_string(),
            text(&s["last_error"]),
        ]);
    }
    table(&mut out, &rows);
    out
}

/// What takes an instance out of rotation, comma-separated; `up` when
/// nothing does.
fn state(service: &Value, i: &Value) -> String {
    let mut what = Vec::new();
    if let Some(ms) = i["ejected_for_ms"].as_u64() {
        what.push(format!("ejected({})", secs(Some(ms as f64 / 1000.0))));
    }
    if i["draining"].as_bool() == Some(true) {
        let by: Vec<String> = i["drained_by"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        what.push(if by.is_empty() {
            "draining".to_owned()
        } else {
            format!("draining({})", by.join("+"))
        });
    }
    if !i["held_back"].is_null() {
        what.push("held-back".to_owned());
    }
    if service["panic"].as_bool() == Some(true) {
        what.push("panic".to_owned());
    }
    if what.is_empty() {
        let up = if i["routable"].as_bool() == Some(false) {
            "down"
        } else {
            "up"
        };
        what.push(up.to_owned());
    }
    what.join(",")
}

/// `WEIGHT` or `WEIGHT (P%)` while slow-starting.
fn weight(i: &Value) -> String {
    match i["weight_percent"].as_u64() {
        Some(p) if p < 100 => format!("{} ({p}%)", text(&i["weight"])),
        _ => text(&i["weight"]),
    }
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// A JSON value as a cell: strings bare, `null` as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Seconds, short: `850ms`, `12s`, `3m20s`, `5h2m`, `3d4h`.
fn secs(s: Option<f64>) -> String {
    let Some(s) = s.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "-".to_owned();
    };
    let whole = s as u64;
    match whole {
        0 => format!("{}ms", (s * 1000.0) as u64),
        1..60 => format!("{whole}s"),
        60..3600 => format!("{}m{}s", whole / 60, whole % 60),
        3600..86400 => format!("{}h{}m", whole / 3600, whole % 3600 / 60),
        _ => format!("{}d{}h", whole / 86400, whole % 86400 / 3600),
    }
}

/// Writes `rows` as left-aligned columns two spaces apart.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_instances_with_what_takes_them_out_of_rotation() {
        let status = serde_json::json!({
            "version": "0.1.0", "phase": "ready", "uptime_s": 75.2,
            "snapshot": {"version": 7, "age_ms": 1200, "services": 1, "instances": 2},
            "restart_needed": []
        });
        let services = serde_json::json!({"services": [{
        "name": "web", "panic": false, "instances": [
            {"address": "127.0.0.1:9001", "id": null, "source": "config", "weight": 1,
             "weight_percent": 100, "routable": true, "draining": false, "drained_by": [],
             "held_back": null, "ejected_for_ms": null, "proxy_health": {"state": "healthy"},
             "in_flight": 3, "requests": 10, "errors": 0, "h2_connections": 0},
            {"address": "127.0.0.1:9002", "id": "b", "source": "api", "weight": 2,
             "weight_percent": 40, "routable": false, "draining": true,
             "drained_by": ["operator"], "held_back": null, "ejected_for_ms": 2500,
             "proxy_health": {"state": "ejected"},
             "in_flight": 0, "requests": 4, "errors": 4, "h2_connections": 1}
        ]}]});
        let sources = serde_json::json!([
            {"name": "api", "state": "ok", "instances": 1, "last_success_ago_s": 0.5,
             "last_error": null, "held_back": []}
        ]);
        let out = render(&status, &services, &sources);
        assert!(
            out.starts_with("wayfinder 0.1.0 ready up 1m15s snapshot v7 (1s ago)"),
            "{out}"
        );
        let line = |needle: &str| {
            out.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle}: {out}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            line("9001"),
            [
                "web",
                "127.0.0.1:9001",
                "-",
                "config",
                "healthy",
                "up",
                "1",
                "3",
                "10",
                "0",
                "0"
            ]
        );
        assert_eq!(
            line("9002"),
            [
                "web",
                "127.0.0.1:9002",
                "b",
                "api",
                "ejected",
                "ejected(2s),draining(operator)",
                "2",
                "(40%)",
                "0",
                "4",
                "4",
                "1"
            ]
        );
        assert_eq!(
            line("500ms ago"),
            ["api", "ok", "1", "500ms", "ago", "0", "-"]
        );
    }
}
