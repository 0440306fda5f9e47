//! Istio's host, visibility and subset rules, as its config compiler applies them; the
//! three mesh remediations decide which objects matter by these rules only.
//!
//! - A host without a dot is short for `<host>.<namespace of the object>.svc.cluster.local`;
//!   anything with a dot is taken as written (Istio's `ResolveShortnameToFQDN`), so
//!   `checkout.shop` in a VirtualService is *not* the Service `checkout` in `shop`.
//! - A wildcard host (`*`, `*.shop.svc.cluster.local`) matches every host it covers.
//! - A VirtualService without `gateways` is bound to `mesh` (the sidecars) only; one that
//!   lists gateways routes sidecar traffic only when `mesh` is among them.
//! - An object without `exportTo` is visible in every namespace; `.` means its own.
//! - A route's subset is the DestinationRule subset of that name for the destination
//!   host; the workloads it reaches are the Service's selector plus the subset's labels.
//! - A DestinationRule's traffic policy applies at several levels: a subset's own policy
//!   replaces the top level's block by block (`MergeTrafficPolicy`), and a
//!   `portLevelSettings` entry for the port replaces everything and inherits nothing
//!   (`GetPortLevelTrafficPolicy`: what it omits takes Envoy's defaults).

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use serde_json::Value;

use crate::remediation::object::{self as istio, CLUSTER_DOMAIN, strings};

/// Istio's reserved gateway name for the sidecars of the mesh.
pub const MESH_GATEWAY: &str = "mesh";

/// The fully qualified host that `host`, written in an object in `namespace`, means.
pub fn qualify(host: &str, namespace: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host == "*" || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
        host
    } else {
        format!("{host}.{namespace}.svc.{CLUSTER_DOMAIN}")
    }
}

/// Whether the fully qualified `pattern` (possibly a wildcard) covers the fully
/// qualified `host`.
pub fn covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

/// The alert's service as a fully qualified host: a short `service` label is the
/// Service of that name in the alert's namespace.
pub fn alert_host(service: &str, namespace: &str) -> String {
    qualify(service, namespace)
}

/// A VirtualService's `spec.hosts`, fully qualified.
pub fn hosts(object: &DynamicObject) -> Vec<String> {
    let namespace = istio::namespace_of(object);
    strings(object, "hosts")
        .unwrap_or_default()
        .iter()
        .map(|h| qualify(h, namespace))
        .collect()
}

/// Whether a VirtualService's hosts cover `host` (fully qualified).
pub fn routes_host(object: &DynamicObject, host: &str) -> bool {
    hosts(object).iter().any(|pattern| covers(pattern, host))
}

/// Whether a VirtualService names `host` itself (not through a wildcard).
pub fn names_host(object: &DynamicObject, host: &str) -> bool {
    hosts(object).iter().any(|h| h == host)
}

/// Whether any route of a VirtualService sends traffic to `host` (fully qualified).
pub fn has_destination(object: &DynamicObject, host: &str) -> bool {
    let namespace = istio::namespace_of(object);
    route_lists(object).any(|destinations| {
        destinations
            .iter()
            .any(|d| destination_host(d).is_some_and(|h| qualify(h, namespace) == host))
    })
}

/// Every `route` array of a VirtualService's http, tls and tcp routes.
fn route_lists(object: &DynamicObject) -> impl Iterator<Item = &Vec<Value>> {
    let spec = istio::spec(object);
    ["http", "tls", "tcp"]
        .into_iter()
        .filter_map(move |kind| spec.and_then(|s| s.get(kind)).and_then(Value::as_array))
        .flatten()
        .filter_map(|route| route.get("route").and_then(Value::as_array))
}

/// A destination's `destination.host` as written.
pub fn destination_host(destination: &Value) -> Option<&str> {
    destination
        .pointer("/destination/host")
        .and_then(Value::as_str)
}

/// A destination's `destination.subset`.
pub fn destination_subset(destination: &Value) -> Option<&str> {
    destination
        .pointer("/destination/subset")
        .and_then(Value::as_str)
}

/// The gateways a VirtualService is bound to; `["mesh"]` when it names none.
pub fn gateways(object: &DynamicObject) -> Vec<String> {
    strings(object, "gateways")
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| vec![MESH_GATEWAY.to_owned()])
}

/// Whether a VirtualService routes the sidecars' traffic.
pub fn binds_mesh(object: &DynamicObject) -> bool {
    gateways(object).iter().any(|g| g == MESH_GATEWAY)
}

/// The namespaces an object is exported to, as written; `None` means every namespace.
pub fn export_to(object: &DynamicObject) -> Option<Vec<String>> {
    strings(object, "exportTo").filter(|e| !e.is_empty())
}

/// Whether clients in every namespace see the object.
pub fn exported_everywhere(object: &DynamicObject) -> bool {
    export_to(object).is_none_or(|to| to.iter().any(|n| n == "*"))
}

/// Whether a DestinationRule's `spec.host` is `host` (fully qualified).
pub fn rule_host_is(object: &DynamicObject, host: &str) -> bool {
    istio::spec(object)
        .and_then(|s| s.get("host"))
        .and_then(Value::as_str)
        .is_some_and(|h| qualify(h, istio::namespace_of(object)) == host)
}

/// Labels, as a sorted map.
pub type Labels = BTreeMap<String, String>;

/// A label map from a JSON object (non-string values are skipped).
pub fn labels(value: Option<&Value>) -> Labels {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The subsets the DestinationRules define for `host`, by name, with their labels.
/// Rules are taken in the order given; the first definition of a name wins.
pub fn subsets(rules: &[DynamicObject], host: &str) -> BTreeMap<String, Labels> {
    let mut out = BTreeMap::new();
    for rule in rules.iter().filter(|r| rule_host_is(r, host)) {
        let defined = istio::spec(rule)
            .and_then(|s| s.get("subsets"))
            .and_then(Value::as_array);
        for subset in defined.into_iter().flatten() {
            if let Some(name) = subset.get("name").and_then(Value::as_str) {
                out.entry(name.to_owned())
                    .or_insert_with(|| labels(subset.get("labels")));
            }
        }
    }
    out
}

/// Where a traffic policy sits in a DestinationRule, which says what it inherits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyLevel {
    /// `spec.trafficPolicy`.
    Top,
    /// A subset's `trafficPolicy`: its blocks replace the top level's, one by one.
    Subset,
    /// A `portLevelSettings` entry (top level or subset): inherits nothing.
    Port,
}

/// Calls `visit` with every traffic policy of a DestinationRule fragment
/// (`{"trafficPolicy": ..., "subsets": [...]}`), its level and a name for messages: the top
/// level (created when absent), its `portLevelSettings` entries, each subset's own policy
/// (when it has one) and that policy's `portLevelSettings` entries.
pub fn for_each_policy_level(
    fragment: &mut Value,
    mut visit: impl FnMut(&mut Value, PolicyLevel, &str),
) {
    fn ports(
        policy: &mut Value,
        owner: &str,
        visit: &mut impl FnMut(&mut Value, PolicyLevel, &str),
    ) {
        let entries = policy
            .get_mut("portLevelSettings")
            .and_then(Value::as_array_mut);
        for entry in entries.into_iter().flatten() {
            let port = entry
                .pointer("/port/number")
                .and_then(Value::as_u64)
                .unwrap_or_default();
            visit(entry, PolicyLevel::Port, &format!("{owner} port {port}"));
        }
    }
    let top = &mut fragment["trafficPolicy"];
    if top.is_null() {
        *top = Value::Object(serde_json::Map::new());
    }
    visit(top, PolicyLevel::Top, "trafficPolicy");
    ports(top, "trafficPolicy", &mut visit);
    let subsets = fragment.get_mut("subsets").and_then(Value::as_array_mut);
    for (index, subset) in subsets.into_iter().flatten().enumerate() {
        let name = subset["name"]
            .as_str()
            .map_or_else(|| format!("subset {index}"), |n| format!("subset {n}"));
        if let Some(policy) = subset.get_mut("trafficPolicy").filter(|p| p.is_object()) {
            visit(policy, PolicyLevel::Subset, &name);
            ports(policy, &name, &mut visit);
        }
    }
}

/// The record of a change to a DestinationRule fragment walked by
/// [`for_each_policy_level`]: `(previous, applied)` holding `trafficPolicy`, and `subsets`
/// only when they changed.
pub fn recorded_policy(previous: &Value, after: &Value) -> (Value, Value) {
    let keys: Vec<&str> = ["trafficPolicy", "subsets"]
        .into_iter()
        .filter(|k| *k == "trafficPolicy" || after[*k] != previous[*k])
        .collect();
    let pick = |v: &Value| {
        Value::Object(
            keys.iter()
                .map(|k| ((*k).to_owned(), v[*k].clone()))
                .collect(),
        )
    };
    (pick(previous), pick(after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(kind: &str, spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": kind,
            "metadata": {"name": "x", "namespace": "shop"}, "spec": spec
        }))
        .expect("object")
    }

    #[test]
    fn only_dotless_names_are_short() {
        assert_eq!(
            qualify("checkout", "shop"),
            "checkout.shop.svc.cluster.local"
        );
        for literal in [
            "checkout.shop",
            "checkout.shop.svc",
            "checkout.shop.svc.cluster.local",
            "*",
            "*.shop.svc.cluster.local",
            "10.0.0.1",
        ] {
            assert_eq!(qualify(literal, "shop"), literal);
        }
        assert_eq!(
            qualify("Checkout", "shop"),
            "checkout.shop.svc.cluster.local"
        );
    }

    #[test]
    fn wildcards_cover_the_hosts_below_them() {
        let host = "checkout.shop.svc.cluster.local";
        assert!(covers(host, host));
        assert!(covers("*", host));
        assert!(covers("*.shop.svc.cluster.local", host));
        assert!(!covers("*.other.svc.cluster.local", host));
        assert!(!covers("checkout.shop", host));
    }

    #[test]
    fn hosts_are_read_in_the_object_namespace() {
        let vs = object(
            "VirtualService",
            json!({"hosts": ["checkout", "checkout.shop", "www.example.com"]}),
        );
        let host = alert_host("checkout", "shop");
        assert!(names_host(&vs, &host));
        let literal = object("VirtualService", json!({"hosts": ["checkout.shop"]}));
        assert!(
            !routes_host(&literal, &host),
            "checkout.shop is not a Service host"
        );
        let gateway_vs = object(
            "VirtualService",
            json!({"hosts": ["www.example.com"], "gateways": ["istio-system/public"],
                   "http": [{"route": [{"destination": {"host": "checkout"}}]}]}),
        );
        assert!(!routes_host(&gateway_vs, &host));
        assert!(has_destination(&gateway_vs, &host));
        assert!(!binds_mesh(&gateway_vs));
        assert!(binds_mesh(&vs));
    }

    #[test]
    fn export_to_defaults_to_everywhere() {
        assert!(exported_everywhere(&object("VirtualService", json!({}))));
        assert!(exported_everywhere(&object(
            "VirtualService",
            json!({"exportTo": ["*"]})
        )));
        assert!(!exported_everywhere(&object(
            "VirtualService",
            json!({"exportTo": ["."]})
        )));
    }

    #[test]
    fn every_traffic_policy_level_is_visited_with_what_it_inherits() {
        let mut fragment = json!({"trafficPolicy": null, "subsets": [
            {"name": "a", "trafficPolicy": {"portLevelSettings": [{"port": {"number": 5432}}]}},
            {"name": "b"}]});
        let mut seen = Vec::new();
        for_each_policy_level(&mut fragment, |_, level, name| {
            seen.push((level, name.to_owned()))
        });
        assert_eq!(
            seen,
            vec![
                (PolicyLevel::Top, "trafficPolicy".to_owned()),
                (PolicyLevel::Subset, "subset a".to_owned()),
                (PolicyLevel::Port, "subset a port 5432".to_owned()),
            ]
        );
        assert_eq!(fragment["trafficPolicy"], json!({}));
    }

    #[test]
    fn subsets_come_from_the_rules_for_the_host() {
        let rules = vec![
            object(
                "DestinationRule",
                json!({"host": "checkout", "subsets": [
                    {"name": "stable", "labels": {"version": "v1"}},
                    {"name": "canary", "labels": {"version": "v2"}}]}),
            ),
            object(
                "DestinationRule",
                json!({"host": "orders", "subsets": [{"name": "stable", "labels": {"version": "v9"}}]}),
            ),
        ];
        let found = subsets(&rules, "checkout.shop.svc.cluster.local");
        assert_eq!(found.len(), 2);
        assert_eq!(found["canary"]["version"], "v2");
        assert_eq!(found["stable"]["version"], "v1");
    }
}
