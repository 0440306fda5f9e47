//! Istio helpers shared by the mesh remediations: resource types, host matching, route
//! weights and recorded spec fragments; their exact restoration is in [`restore`].
//!
//! Every write is a JSON merge patch (RFC 7386). Merge patches replace arrays wholesale,
//! so a weight change sends the whole `spec.http` array; the pipeline's `resourceVersion`
//! precondition guarantees that array is the one just read.
//!
//! `previous` and `applied` in the action record hold only what changed, so the record of a
//! change to any valid object fits in its annotations: for a VirtualService the `route`
//! array of each changed HTTP route, by index (`{"httpRoutes": {"3": [...]}}`); for a
//! DestinationRule the changed spec fields (`{"trafficPolicy": {...}}`, `null` when absent,
//! and `subsets` when they changed). A revert compares the object's current values with
//! `applied` and writes `previous` back exactly. Records that hold a whole `{"http": [...]}`
//! (written before routes were recorded one by one) are restored the same way.

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::{Map, Value, json};

use super::{Plan, Refusal, describe};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::intake::AlertInput;
use crate::intake::names;

pub mod restore;

/// API group of the Istio networking kinds.
pub const GROUP: &str = "networking.istio.io";

pub use super::object::{CLUSTER_DOMAIN, namespace_of, spec};

/// `VirtualService` at `ISTIO_API_VERSION`.
pub fn virtual_service(config: &Config) -> ApiResource {
    resource(config, "VirtualService", "virtualservices")
}

/// `DestinationRule` at `ISTIO_API_VERSION`.
pub fn destination_rule(config: &Config) -> ApiResource {
    resource(config, "DestinationRule", "destinationrules")
}

/// `ServiceEntry` at `ISTIO_API_VERSION`.
pub fn service_entry(config: &Config) -> ApiResource {
    resource(config, "ServiceEntry", "serviceentries")
}

fn resource(config: &Config, kind: &str, plural: &str) -> ApiResource {
    let version = config.istio_api_version.clone();
    ApiResource {
        group: GROUP.into(),
        api_version: format!("{GROUP}/{version}"),
        version,
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Every object of `resource` in the cluster: which rule a client uses depends on every
/// namespace's rules.
pub async fn list_everywhere(
    client: &kube::Client,
    resource: &ApiResource,
) -> Result<Vec<DynamicObject>> {
    Api::<DynamicObject>::all_with(client.clone(), resource)
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|err| {
            Error::kube(
                format!(
                    "list {} in all namespaces (which rule each client uses depends on every namespace's)",
                    resource.plural
                ),
                err,
            )
        })
}

/// The alert's `service` label (a short name or an FQDN), validated as a host name.
pub fn service_label<'a>(input: &'a AlertInput, remediation: &str) -> Result<&'a str, String> {
    host_label(input, "service", remediation)
}

/// The alert's host label `label` (a short name or an FQDN), validated as a host name.
pub fn host_label<'a>(
    input: &'a AlertInput,
    label: &str,
    remediation: &str,
) -> Result<&'a str, String> {
    let host = input
        .alert
        .label(label)
        .ok_or_else(|| format!("alert has no `{label}` label ({remediation} needs it)"))?;
    names::dns_subdomain(label, host)?;
    Ok(host)
}

/// A list locator for the opted-in objects of `resource`, in every namespace, that
/// concern the mesh host the alert's `label` names.
pub fn opted_in_objects(resource: ApiResource, input: &AlertInput, label: &str) -> super::Locator {
    let host = input.alert.label(label).unwrap_or_default();
    super::Locator {
        resource,
        namespace: input.namespace.clone(),
        name: None,
        everywhere: true,
        subject: Some(super::resolution::hosts::alert_host(host, &input.namespace)),
        cluster: None,
    }
}

/// A spec fragment as recorded: `{key: spec[key]}`, `null` for an absent key.
pub fn fragment<'k>(object: &DynamicObject, keys: impl IntoIterator<Item = &'k str>) -> Value {
    let spec = spec(object);
    Value::Object(
        keys.into_iter()
            .map(|key| {
                let value = spec
                    .and_then(|s| s.get(key))
                    .cloned()
                    .unwrap_or(Value::Null);
                (key.to_owned(), value)
            })
            .collect(),
    )
}

/// The RFC 7386 merge patch that turns `from` into `to`: members that differ are set,
/// members missing from `to` are set to `null` (removed), arrays and scalars are
/// replaced whole. `to` must hold no `null` values of its own (Kubernetes objects never do).
pub fn merge_diff(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(from), Value::Object(to)) => {
            let mut patch = Map::new();
            for (key, old) in from {
                match to.get(key) {
                    None => {
                        patch.insert(key.clone(), Value::Null);
                    }
                    Some(new) if new != old => {
                        patch.insert(key.clone(), merge_diff(old, new));
                    }
                    Some(_) => {}
                }
            }
            for (key, new) in to {
                if !from.contains_key(key) {
                    patch.insert(key.clone(), new.clone());
                }
            }
            Value::Object(patch)
        }
        _ => to.clone(),
    }
}

/// `value` with the merge patch applied (RFC 7386), as the API server will store it.
pub fn merged(value: &Value, patch: &Value) -> Value {
    let mut out = value.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// The record key for changed HTTP routes: `{index: route array}`.
pub const HTTP_ROUTES: &str = "httpRoutes";

/// The `spec.http` routes of a VirtualService.
pub fn http_routes(object: &DynamicObject) -> Vec<Value> {
    spec(object)
        .and_then(|s| s.get("http"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// A route destination's weight; absent means 0 (Istio sends a lone destination all
/// traffic whatever its weight, and only routes with several destinations are reweighed).
pub fn weight(destination: &Value) -> i64 {
    destination
        .get("weight")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// A destination in words: `subset v1 of checkout` or `host checkout-v1`.
pub fn destination_name(destination: &Value) -> String {
    let host = destination
        .pointer("/destination/host")
        .and_then(Value::as_str)
        .unwrap_or("?");
    match destination
        .pointer("/destination/subset")
        .and_then(Value::as_str)
    {
        Some(subset) => format!("{host}/{subset}"),
        None => host.to_owned(),
    }
}

/// The HTTP routes after reweighing.
#[derive(Debug, Clone, PartialEq)]
pub struct Reweighed {
    /// The whole new `spec.http`.
    pub http: Vec<Value>,
    /// Routes the rule applied to.
    pub considered: usize,
    /// What changed, one entry per changed route.
    pub changes: Vec<String>,
}

/// Runs `rule` over every HTTP route with more than one destination. The rule returns
/// the route's new weights (one per destination), `None` to leave the route alone, or a
/// refusal for the whole object.
pub fn reweigh_routes(
    http: &[Value],
    mut rule: impl FnMut(usize, &[Value]) -> Result<Option<Vec<i64>>, Refusal>,
) -> Result<Reweighed, Refusal> {
    let mut out = Reweighed {
        http: http.to_vec(),
        considered: 0,
        changes: Vec::new(),
    };
    for (index, route) in out.http.iter_mut().enumerate() {
        let Some(destinations) = route.get_mut("route").and_then(Value::as_array_mut) else {
            continue;
        };
        if destinations.len() < 2 {
            continue;
        }
        let Some(weights) = rule(index, destinations)? else {
            continue;
        };
        out.considered += 1;
        let mut moves = Vec::new();
        for (destination, new) in destinations.iter_mut().zip(weights) {
            let old = weight(destination);
            if old != new || destination.get("weight").is_none() {
                moves.push(format!("{} {old}->{new}", destination_name(destination)));
                destination["weight"] = json!(new);
            }
        }
        if !moves.is_empty() {
            let name = route
                .get("name")
                .and_then(Value::as_str)
                .map(|n| format!("route {n}"))
                .unwrap_or_else(|| format!("route {index}"));
            out.changes.push(format!("{name}: {}", moves.join(", ")));
        }
    }
    Ok(out)
}

/// The plan that writes a new `spec.http`, recording only the `route` arrays that change.
pub fn http_plan(
    object: &DynamicObject,
    reweighed: Reweighed,
    what: &str,
    action: &'static str,
) -> Plan {
    let old = http_routes(object);
    let mut previous = Map::new();
    let mut applied = Map::new();
    for (index, route) in reweighed.http.iter().enumerate() {
        let before = old.get(index).and_then(|r| r.get("route"));
        let after = route.get("route");
        if before != after {
            previous.insert(index.to_string(), before.cloned().unwrap_or(Value::Null));
            applied.insert(index.to_string(), after.cloned().unwrap_or(Value::Null));
        }
    }
    Plan {
        patch: json!({ "spec": { "http": reweighed.http } }),
        summary: format!("{what}: {}", reweighed.changes.join("; ")),
        action,
        previous: Some(json!({ HTTP_ROUTES: previous })),
        applied: Some(json!({ HTTP_ROUTES: applied })),
    }
}

/// The kinds a revert request may name for the mesh remediations.
pub fn revertible(config: &Config) -> Vec<ApiResource> {
    vec![virtual_service(config), destination_rule(config)]
}

/// Checks an Istio duration setting (`10s`, `1.5s`, `500ms`, `1m30s`): Go duration
/// syntax, which the CRDs' `duration()` rule accepts, and at least 1 ms as they demand.
pub fn duration_setting(var: &'static str, raw: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::Config {
        var,
        message: format!("\"{}\" {why}", names::printable(raw)),
    };
    let nanos = duration_nanos(raw).map_err(bad)?;
    if nanos < 1e6 {
        return Err(bad("is shorter than 1ms, which Istio refuses"));
    }
    Ok(raw.to_owned())
}

/// A Go duration (`10s`, `1m30s`, `500ms`) in nanoseconds.
pub fn duration_nanos(raw: &str) -> std::result::Result<f64, &'static str> {
    let mut rest = raw;
    let mut nanos = 0f64;
    if rest.is_empty() {
        return Err("is empty");
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or("has no unit (use e.g. 10s, 500ms, 1m)")?;
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| "is not a duration (use e.g. 10s, 500ms, 1m)")?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3.6e12,
            "m" => 6e10,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return Err("has an unknown unit (use h, m, s, ms)"),
        };
        nanos += number * scale;
        rest = &rest[unit_len..];
    }
    Ok(nanos)
}

/// The target of a plan, for messages.
pub fn target(resource: &ApiResource, object: &DynamicObject) -> String {
    describe(
        resource,
        namespace_of(object),
        object.metadata.name.as_deref().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_diff_turns_one_value_into_the_other() {
        let cases = [
            (
                json!({"a": 1, "b": {"c": 2, "d": 3}}),
                json!({"b": {"c": 2}}),
            ),
            (json!({"a": [1, 2]}), json!({"a": [2], "e": "x"})),
            (
                json!({"trafficPolicy": {"tls": {}}}),
                json!({"trafficPolicy": null}),
            ),
            (
                json!({"trafficPolicy": null}),
                json!({"trafficPolicy": {"x": 1}}),
            ),
            (json!({}), json!({})),
        ];
        for (from, to) in cases {
            let patch = merge_diff(&from, &to);
            let mut got = merged(&from, &patch);
            // A restored `null` member means "absent" in Kubernetes terms.
            if let (Value::Object(g), Value::Object(t)) = (&mut got, &to) {
                for (k, v) in t {
                    if v.is_null() {
                        g.entry(k.clone()).or_insert(Value::Null);
                    }
                }
            }
            assert_eq!(got, to, "{from} -> {to} via {patch}");
        }
        assert_eq!(
            merge_diff(&json!({"a": 1, "b": 2}), &json!({"a": 1})),
            json!({"b": null})
        );
    }

    #[test]
    fn durations_follow_istio() {
        for good in ["10s", "1.5s", "500ms", "1m30s", "2h", "1ms"] {
            assert_eq!(
                duration_setting("CB_INTERVAL", good).ok(),
                Some(good.into())
            );
        }
        for bad in ["10", "s", "ten", "10x", "0s", "500us", "-1s", ""] {
            match duration_setting("CB_INTERVAL", bad) {
                Err(Error::Config { var, .. }) => assert_eq!(var, "CB_INTERVAL"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn reweighing_rewrites_only_split_routes_and_lists_changes() {
        let http = vec![
            json!({"name": "split", "route": [{"destination": {"host": "c", "subset": "v1"}, "weight": 50},
                                               {"destination": {"host": "c", "subset": "v2"}, "weight": 50}]}),
            json!({"route": [{"destination": {"host": "c", "subset": "v1"}}]}),
        ];
        let out = reweigh_routes(&http, |_, d| Ok(Some(vec![100; d.len()]))).expect("ok");
        assert_eq!(out.considered, 1);
        assert_eq!(out.http[1], http[1], "single-destination route untouched");
        assert_eq!(out.changes, vec!["route split: c/v1 50->100, c/v2 50->100"]);
    }
}
