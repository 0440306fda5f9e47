//! Istio helpers shared by the mesh remediations: resource types, host matching, route
//! weights, recorded spec fragments and their exact restoration.
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
use crate::names;
use crate::record::{ActionRecord, record_annotation};

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

/// A list locator for the opted-in objects of `resource` in the alert's namespace that
/// concern the mesh host the alert's `label` names.
pub fn opted_in_objects(resource: ApiResource, input: &AlertInput, label: &str) -> super::Locator {
    let host = input.alert.label(label).unwrap_or_default();
    super::Locator {
        resource,
        namespace: input.namespace.clone(),
        name: None,
        subject: Some(super::hosts::alert_host(host, &input.namespace)),
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

/// What a plan that restores the recorded `previous` does when the object was edited
/// since the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnEdit {
    /// Refuse with a failure (an explicit revert request that cannot be honoured).
    Fail,
    /// Leave the edit alone and hold, reported (a resolved alert restoring on its own).
    Hold,
}

/// Plans the exact restoration of the recorded `previous` fragment, provided the object
/// still holds the `applied` one. Already restored: skipped.
pub fn plan_restore(
    object: &DynamicObject,
    record: &ActionRecord,
    remediation: &str,
    action: &'static str,
    on_edit: OnEdit,
) -> Result<Plan, Refusal> {
    let (Some(previous), Some(Value::Object(applied))) = (&record.previous, &record.applied) else {
        return Err(Refusal::Fail(format!(
            "the action record ({}) holds no previous/applied configuration to restore",
            record_annotation(remediation)
        )));
    };
    if let (Some(Value::Object(before)), Some(Value::Object(after))) =
        (previous.get(HTTP_ROUTES), applied.get(HTTP_ROUTES))
    {
        return plan_restore_routes(object, record, remediation, action, on_edit, before, after);
    }
    let keys: Vec<&str> = applied.keys().map(String::as_str).collect();
    let fields = keys
        .iter()
        .map(|k| format!("spec.{k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let current = fragment(object, keys.iter().copied());
    if &current == previous {
        return Err(Refusal::Skip(format!(
            "{fields} already equals the configuration from before the action at {}",
            record.at.to_rfc3339()
        )));
    }
    if current != Value::Object(applied.clone()) {
        return Err(edited_refusal(
            object,
            record,
            remediation,
            &fields,
            on_edit,
        ));
    }
    Ok(Plan {
        patch: json!({ "spec": merge_diff(&current, previous) }),
        summary: format!(
            "restored {fields} exactly as before the action at {} (trace {})",
            record.at.to_rfc3339(),
            record.trace_id
        ),
        action,
        previous: Some(current),
        applied: Some(previous.clone()),
    })
}

/// The record key for changed HTTP routes: `{index: route array}`.
pub const HTTP_ROUTES: &str = "httpRoutes";

fn edited_refusal(
    object: &DynamicObject,
    record: &ActionRecord,
    remediation: &str,
    fields: &str,
    on_edit: OnEdit,
) -> Refusal {
    let why = format!(
        "{} was edited after the action at {} ({fields} no longer equals what was applied); \
         not overwriting that edit. The configuration from before the action is in annotation {}",
        object_name(object),
        record.at.to_rfc3339(),
        record_annotation(remediation)
    );
    match on_edit {
        OnEdit::Fail => Refusal::Fail(why),
        OnEdit::Hold => Refusal::Hold(why),
    }
}

/// [`plan_restore`] for a record of changed HTTP routes.
fn plan_restore_routes(
    object: &DynamicObject,
    record: &ActionRecord,
    remediation: &str,
    action: &'static str,
    on_edit: OnEdit,
    before: &Map<String, Value>,
    after: &Map<String, Value>,
) -> Result<Plan, Refusal> {
    let mut http = http_routes(object);
    let fields = after
        .keys()
        .map(|i| format!("spec.http[{i}].route"))
        .collect::<Vec<_>>()
        .join(", ");
    let current: Map<String, Value> = after
        .keys()
        .map(|i| {
            let route = i
                .parse::<usize>()
                .ok()
                .and_then(|i| http.get(i))
                .and_then(|r| r.get("route"))
                .cloned()
                .unwrap_or(Value::Null);
            (i.clone(), route)
        })
        .collect();
    if &current == before {
        return Err(Refusal::Skip(format!(
            "{fields} already equals the configuration from before the action at {}",
            record.at.to_rfc3339()
        )));
    }
    if &current != after {
        return Err(edited_refusal(
            object,
            record,
            remediation,
            &fields,
            on_edit,
        ));
    }
    for (i, route) in before {
        if let Some(slot) = i.parse::<usize>().ok().and_then(|i| http.get_mut(i)) {
            slot["route"] = route.clone();
        }
    }
    Ok(Plan {
        patch: json!({ "spec": { "http": http } }),
        summary: format!(
            "restored {fields} exactly as before the action at {} (trace {})",
            record.at.to_rfc3339(),
            record.trace_id
        ),
        action,
        previous: Some(json!({ HTTP_ROUTES: current })),
        applied: Some(json!({ HTTP_ROUTES: before })),
    })
}

fn object_name(object: &DynamicObject) -> String {
    let kind = object
        .types
        .as_ref()
        .map(|t| t.kind.as_str())
        .unwrap_or("object");
    format!(
        "{kind} {}/{}",
        namespace_of(object),
        object.metadata.name.as_deref().unwrap_or_default()
    )
}

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

    fn vs(hosts: Value, http: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "checkout", "namespace": "shop", "resourceVersion": "1"},
            "spec": {"hosts": hosts, "http": http}
        }))
        .expect("object")
    }

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

    fn record(previous: Value, applied: Value) -> ActionRecord {
        ActionRecord {
            fingerprint: "f".into(),
            trace_id: "t-1".into(),
            request_id: None,
            at: chrono::Utc::now(),
            streak: 1,
            change: "x".into(),
            previous: Some(previous),
            applied: Some(applied),
            recovered_at: None,
            reverted: None,
            escalated_at: None,
        }
    }

    #[test]
    fn restore_needs_the_applied_fragment_and_returns_the_previous_one() {
        let before = json!([{"route": [{"destination": {"host": "a"}, "weight": 50},
                                       {"destination": {"host": "b"}, "weight": 50}]}]);
        let after = json!([{"route": [{"destination": {"host": "a"}, "weight": 100},
                                      {"destination": {"host": "b"}, "weight": 0}]}]);
        let rec = record(json!({"http": before}), json!({"http": after}));
        let plan = plan_restore(
            &vs(json!(["a"]), after.clone()),
            &rec,
            "error-rollback",
            "Revert",
            OnEdit::Fail,
        )
        .expect("plan");
        assert_eq!(plan.patch, json!({"spec": {"http": before}}));
        // Edited since: refused, as a failure or a skip.
        let edited = json!([{"route": [{"destination": {"host": "a"}, "weight": 90},
                                       {"destination": {"host": "b"}, "weight": 10}]}]);
        let object = vs(json!(["a"]), edited);
        match plan_restore(&object, &rec, "error-rollback", "Revert", OnEdit::Fail) {
            Err(Refusal::Fail(why)) => assert!(why.contains("was edited"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan_restore(&object, &rec, "error-rollback", "Revert", OnEdit::Hold),
            Err(Refusal::Hold(_))
        ));
        // Already restored: nothing to do.
        let object = vs(json!(["a"]), before);
        match plan_restore(&object, &rec, "error-rollback", "Revert", OnEdit::Fail) {
            Err(Refusal::Skip(why)) => assert!(why.contains("already equals"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn route_records_hold_only_the_changed_routes_and_restore_them_exactly() {
        let untouched = json!({"name": "tenant", "match": [{"headers": {"x-t": {"exact": "1"}}}],
                               "route": [{"destination": {"host": "a"}}]});
        let split = |a: i64, b: i64| {
            json!({"route": [{"destination": {"host": "a"}, "weight": a},
                                                      {"destination": {"host": "b"}, "weight": b}]})
        };
        let object = vs(json!(["a"]), json!([untouched, split(50, 50)]));
        let reweighed = reweigh_routes(&http_routes(&object), |_, d| {
            Ok(Some(
                (0..d.len()).map(|i| if i == 0 { 100 } else { 0 }).collect(),
            ))
        })
        .expect("reweighed");
        let plan = http_plan(&object, reweighed, "rolled back", "Rollback");
        assert_eq!(
            plan.previous,
            Some(json!({"httpRoutes": {"1": split(50, 50)["route"]}})),
            "the untouched route is not recorded"
        );
        let rec = record(
            plan.previous.clone().expect("previous"),
            plan.applied.clone().expect("applied"),
        );
        let changed = vs(json!(["a"]), plan.patch["spec"]["http"].clone());
        let restore =
            plan_restore(&changed, &rec, "error-rollback", "Revert", OnEdit::Fail).expect("plan");
        assert_eq!(restore.patch["spec"]["http"], object.data["spec"]["http"]);
        // Edited since: refused; restored already: skipped.
        let edited = vs(json!(["a"]), json!([untouched, split(90, 10)]));
        assert!(matches!(
            plan_restore(&edited, &rec, "error-rollback", "Revert", OnEdit::Fail),
            Err(Refusal::Fail(why)) if why.contains("spec.http[1].route")
        ));
        assert!(matches!(
            plan_restore(&object, &rec, "error-rollback", "Revert", OnEdit::Fail),
            Err(Refusal::Skip(_))
        ));
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
