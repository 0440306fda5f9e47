//! The invariants db-circuit-break keeps on a generated mesh, checked on what Istio
//! compiled before the change, after it and after reverting it, and on the objects the API
//! server stores.

use mesh_remediation::report::OutcomeKind;
use remediation_testkit::generated::{Findings, cycle, first_difference, outcome_context};
use remediation_testkit::istio_oracle::{Cluster, Compiled};
use remediation_testkit::mesh_gen::{DB_PORT, GeneratedMesh, Violation};
use serde_json::Value;

use super::{setting_vars, settings};

/// Envoy's own defaults, for a field the compiled cluster leaves out.
const ENVOY_THRESHOLD: u64 = 1024;
const ENVOY_CONNECT_TIMEOUT_S: f64 = 5.0;
const ENVOY_CONSECUTIVE_5XX: u64 = 5;

/// Everything known about one mesh's run.
pub(super) type Trial<'a> = cycle::Trial<'a, GeneratedMesh>;

pub(super) fn check(t: &Trial) -> Vec<Violation> {
    let change = t.outcome.change.clone().unwrap_or_default();
    let context = format!(
        "settings {:?}, {}",
        setting_vars(t.mesh),
        outcome_context(t.outcome)
    );
    t.violations(&context, |after, applied, f| {
        if applied {
            breaker(t, after, f);
        }
        beyond_breaker(t, after, f);
        localities(t, after, &change, f);
    })
}

/// Applied: every cluster of the database host on its port, for every client, carries the
/// breaker.
fn breaker(t: &Trial, after: &Compiled, f: &mut Findings) {
    let host = t.mesh.db_fqdn();
    let settings = settings(t.mesh);
    let max_connections = u64::from(settings.max_connections);
    let max_pending = u64::from(settings.max_pending_requests);
    let connect_timeout_s = go_seconds(&settings.connect_timeout).expect("a duration");
    let consecutive_errors = u64::from(settings.consecutive_errors);
    for client in t.mesh.client_proxies() {
        let before = t.before.proxy(client.name);
        for (name, now) in after.proxy(client.name).clusters_of(&host, DB_PORT) {
            let Some(was) = before.clusters.get(name) else {
                continue;
            };
            let at = format!(
                "{} ({}, {}): {name}",
                client.name, client.namespace, client.region
            );
            let mut wrong = Vec::new();
            let want = threshold(was, "max_connections").min(max_connections);
            let got = threshold(now, "max_connections");
            if got != want {
                wrong.push(format!("max_connections {got}, want {want}"));
            }
            let want = threshold(was, "max_pending_requests").min(max_pending);
            let got = threshold(now, "max_pending_requests");
            if got != want {
                wrong.push(format!("max_pending_requests {got}, want {want}"));
            }
            let want = connect_timeout(was).min(connect_timeout_s);
            let got = connect_timeout(now);
            if (got - want).abs() > 1e-9 {
                wrong.push(format!("connect_timeout {got}s, want {want}s"));
            }
            let ejection = ejects_on_5xx(now, consecutive_errors);
            let untouched = was.circuit_breakers == now.circuit_breakers
                && was.outlier_detection == now.outlier_detection
                && was.connect_timeout == now.connect_timeout;
            if !wrong.is_empty() && untouched {
                f.add(
                    "breaker-missed-a-client",
                    format!("{at}: nothing changed: {}", wrong.join(", ")),
                );
            } else if !wrong.is_empty() {
                f.add("breaker-limit-wrong", format!("{at}: {}", wrong.join(", ")));
            } else if let Err(why) = ejection {
                f.add("no-5xx-ejection", format!("{at}: {why}"));
            }
        }
    }
}

fn threshold(cluster: &Cluster, field: &str) -> u64 {
    cluster.threshold(field).unwrap_or(ENVOY_THRESHOLD)
}

fn connect_timeout(cluster: &Cluster) -> f64 {
    cluster
        .connect_timeout
        .as_deref()
        .map_or(ENVOY_CONNECT_TIMEOUT_S, |d| {
            go_seconds(d).unwrap_or_else(|| panic!("unreadable duration {d}"))
        })
}

/// A Go `time.Duration` string (`2s`, `1.5s`, `500ms`, `1m30s`) in seconds.
fn go_seconds(text: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Whether Envoy ejects an endpoint after consecutive 5xx: outlier detection on, the
/// threshold (Envoy's default 5 when left out) between 1 and the breaker's, and enforced
/// (Istio writes `enforcing_consecutive_5xx: 0` for `consecutive5xxErrors: 0`).
fn ejects_on_5xx(cluster: &Cluster, at_most: u64) -> Result<(), String> {
    let Some(outlier) = &cluster.outlier_detection else {
        return Err("no outlier detection".into());
    };
    let consecutive = outlier
        .get("consecutive_5xx")
        .map_or(Some(ENVOY_CONSECUTIVE_5XX), Value::as_u64)
        .unwrap_or_default();
    let enforcing = outlier
        .get("enforcing_consecutive_5xx")
        .map_or(Some(100), Value::as_u64)
        .unwrap_or_default();
    if !(1..=at_most).contains(&consecutive) || enforcing == 0 {
        return Err(format!(
            "consecutive_5xx {consecutive}, enforcing_consecutive_5xx {enforcing}: {outlier}"
        ));
    }
    Ok(())
}

/// Fields of a database cluster the breaker may change.
const BREAKER_FIELDS: [&str; 5] = [
    "circuit_breakers",
    "outlier_detection",
    "connect_timeout",
    "common_lb_config",
    "localities",
];

/// Routes and every cluster are as before, but for the breaker's fields of the database's
/// clusters.
fn beyond_breaker(t: &Trial, after: &Compiled, f: &mut Findings) {
    let suffix = format!("|{}", t.mesh.db_fqdn());
    for client in t.mesh.client_proxies() {
        let was = t.before.raw_proxy(client.name);
        let now = after.raw_proxy(client.name);
        if let Some(diff) = first_difference(&was["routes"], &now["routes"], "routes") {
            f.add("routes-changed", format!("{}: {diff}", client.name));
        }
        let (Some(was), Some(now)) = (was["clusters"].as_object(), now["clusters"].as_object())
        else {
            continue;
        };
        let names = |m: &serde_json::Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
        if names(was) != names(now) {
            f.add(
                "clusters-changed",
                format!("{}: the set of clusters differs", client.name),
            );
            continue;
        }
        for (name, cluster) in was {
            let (mut a, mut b) = (cluster.clone(), now[name].clone());
            if name.ends_with(&suffix) {
                for field in BREAKER_FIELDS {
                    for c in [&mut a, &mut b] {
                        if let Some(map) = c.as_object_mut() {
                            map.remove(field);
                        }
                    }
                }
            }
            if let Some(diff) = first_difference(&a, &b, name) {
                f.add("beyond-breaker-changed", format!("{}: {diff}", client.name));
            }
        }
    }
}

/// The endpoints each client uses while all are healthy (Envoy priority 0, locality weight
/// above 0) stay as they were when the outcome says "as before". When it says that clients
/// now prefer their own region or fail over, a client may use fewer of them (its own region
/// first), never others; it must say one or the other. A subset the outcome names as now
/// spreading across regions may use more of them, never fewer.
fn localities(t: &Trial, after: &Compiled, change: &str, f: &mut Findings) {
    if t.outcome.outcome != OutcomeKind::Applied {
        return;
    }
    let announced =
        change.contains("prefer endpoints in their own region") || change.contains("failover");
    if !announced && !change.contains("as before") {
        f.add(
            "locality-change-unannounced",
            format!("change says: {change}"),
        );
        return;
    }
    let host = t.mesh.db_fqdn();
    for client in t.mesh.client_proxies() {
        let was = t.before.proxy(client.name);
        let now = after.proxy(client.name);
        for (name, _) in was.clusters_of(&host, DB_PORT) {
            let one = std::collections::BTreeSet::from([name.clone()]);
            let (before, after) = (was.endpoints_of(&one), now.endpoints_of(&one));
            let kept = if spread_subset(change, name) {
                after.is_superset(&before)
            } else if announced {
                after.is_subset(&before)
            } else {
                after == before
            };
            if !kept {
                f.add(
                    "locality-changed-though-said-as-before",
                    format!(
                        "{} ({}, {}): {name}: {before:?} -> {after:?}",
                        client.name, client.namespace, client.region
                    ),
                );
            }
        }
    }
}

/// Whether the outcome says the clients of this cluster's subset (`outbound|port|subset|host`)
/// lost their own-region preference and now spread across regions.
fn spread_subset(change: &str, cluster: &str) -> bool {
    let Some(subset) = cluster.split('|').nth(2).filter(|s| !s.is_empty()) else {
        return false;
    };
    change.split("; ").any(|part| {
        part.strip_prefix("clients of subsets ")
            .and_then(|rest| rest.split_once(" preferred their own region"))
            .is_some_and(|(names, _)| names.split(", ").any(|n| n == subset))
    })
}

#[test]
fn go_durations_read_as_seconds() {
    for (text, seconds) in [
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("10s", 10.0),
    ] {
        assert_eq!(go_seconds(text), Some(seconds), "{text}");
    }
    assert_eq!(go_seconds("2 s"), None);
}
