use std::collections::BTreeMap;

use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::*;
use crate::remediation::region_failover::facts::RegionFacts;

const HOST: &str = "frontend.shop.svc.cluster.local";

fn object(kind: &str, namespace: &str, name: &str, opted: bool, spec: Value) -> DynamicObject {
    let labels = if opted {
        json!({"auto_remediation": "active"})
    } else {
        json!({})
    };
    serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec
    }))
    .expect("object")
}

fn region_subsets() -> BTreeMap<String, Labels> {
    ["us-east-1", "us-west-2", "eu-west-1"]
        .iter()
        .map(|r| {
            (
                (*r).to_owned(),
                Labels::from([(REGION_LABEL.to_owned(), (*r).to_owned())]),
            )
        })
        .collect()
}

fn facts() -> RegionFacts {
    RegionFacts {
        subset_regions: ["us-east-1", "us-west-2", "eu-west-1"]
            .iter()
            .map(|r| ((*r).to_owned(), (*r).to_owned()))
            .collect(),
        known_regions: vec!["us-west-2".into(), "eu-west-1".into()],
        ..RegionFacts::default()
    }
}

fn split(subsets: &[(&str, i64)]) -> Value {
    let route: Vec<Value> = subsets
        .iter()
        .map(|(s, w)| json!({"destination": {"host": "frontend", "subset": s}, "weight": w}))
        .collect();
    json!({"name": "split", "route": route})
}

fn nothing_to_refuse_or_drain(paths: &Paths) -> bool {
    paths.unpinned.is_empty() && paths.unmoved.is_empty() && paths.emptied.is_empty()
}

fn read(services: &[DynamicObject], facts: &RegionFacts) -> Paths {
    paths(services, HOST, &region_subsets(), "us-east-1", facts)
}

#[test]
fn a_region_split_the_function_shifts_needs_no_drain() {
    let vs = object(
        "VirtualService",
        "shop",
        "frontend",
        true,
        json!({"hosts": ["frontend"], "http": [split(&[("us-east-1", 50), ("us-west-2", 50)])]}),
    );
    assert!(nothing_to_refuse_or_drain(&read(&[vs], &facts())));
}

#[test]
fn a_route_to_the_whole_service_beside_a_split_needs_the_drain() {
    let vs = object(
        "VirtualService",
        "shop",
        "frontend",
        true,
        json!({"hosts": ["frontend"], "http": [
            {"name": "tenant", "match": [{"headers": {"x-tenant": {"exact": "a"}}}],
             "route": [{"destination": {"host": "frontend"}}]},
            split(&[("us-east-1", 50), ("us-west-2", 50)])]}),
    );
    let found = read(&[vs], &facts());
    assert_eq!(found.unpinned.len(), 1, "{found:?}");
    assert!(found.unpinned[0].contains("http route tenant"), "{found:?}");
    assert!(found.unmoved.is_empty() && found.emptied.is_empty());
}

#[test]
fn no_virtual_service_for_every_sidecar_leaves_the_default_route() {
    let gateway_only = object(
        "VirtualService",
        "shop",
        "frontend-public",
        true,
        json!({"hosts": ["shop.example.com"], "gateways": ["root/public"],
               "http": [split(&[("us-east-1", 50), ("us-west-2", 50)])]}),
    );
    let found = read(&[gateway_only], &facts());
    assert_eq!(found.unpinned.len(), 1, "{found:?}");
    assert!(found.unpinned[0].contains("default route"), "{found:?}");
}

#[test]
fn per_region_hosts_the_function_does_not_change_stay_in_the_degraded_region() {
    let route = json!([
        {"destination": {"host": "frontend-us-east-1"}, "weight": 50},
        {"destination": {"host": "frontend-us-west-2"}, "weight": 50}]);
    let foreign = object(
        "VirtualService",
        "shop",
        "frontend-public",
        false,
        json!({"hosts": ["shop.example.com"], "gateways": ["root/public"],
               "http": [{"route": route}]}),
    );
    let found = read(std::slice::from_ref(&foreign), &facts());
    assert_eq!(found.unmoved.len(), 1, "{found:?}");
    assert!(found.unmoved[0].contains("frontend-us-east-1"), "{found:?}");
    assert!(
        carries(&foreign, HOST),
        "per-region hosts carry the service"
    );
    // Opted in, in the alert's namespace: the weights lever shifts it.
    let owned = object(
        "VirtualService",
        "shop",
        "frontend-public",
        true,
        json!({"hosts": ["shop.example.com"], "gateways": ["root/public"],
               "http": [{"route": route}]}),
    );
    assert!(read(&[owned], &facts()).unmoved.is_empty());
}

#[test]
fn subsets_keyed_on_regions_the_drain_leaves_out_are_emptied() {
    let tenant = object(
        "VirtualService",
        "clients",
        "frontend-tenant",
        false,
        json!({"hosts": ["frontend.shop.svc.cluster.local"], "http": [
            {"route": [{"destination": {"host": "frontend.shop.svc.cluster.local", "subset": "eu-west-1"}}]}]}),
    );
    let healthy = read(std::slice::from_ref(&tenant), &facts());
    assert!(
        nothing_to_refuse_or_drain(&healthy),
        "eu-west-1 is healthy: kept: {healthy:?}"
    );
    let eu_down = RegionFacts {
        checked: true,
        health: BTreeMap::from([
            ("us-west-2".into(), Ok(())),
            ("eu-west-1".into(), Err("HTTP 503".into())),
        ]),
        ..facts()
    };
    let found = read(&[tenant], &eu_down);
    assert_eq!(found.emptied.len(), 1, "{found:?}");
    assert!(found.emptied[0].contains("HTTP 503"), "{found:?}");
}

#[test]
fn a_subset_keyed_on_the_degraded_region_outside_a_split_is_unmoved() {
    let vs = object(
        "VirtualService",
        "shop",
        "frontend",
        true,
        json!({"hosts": ["frontend"], "http": [
            {"name": "tenant", "match": [{"headers": {"x-tenant": {"exact": "a"}}}],
             "route": [{"destination": {"host": "frontend", "subset": "us-east-1"}}]},
            split(&[("us-east-1", 50), ("us-west-2", 50)])]}),
    );
    let found = read(&[vs], &facts());
    assert_eq!(found.unmoved.len(), 1, "{found:?}");
    assert!(found.unmoved[0].contains("http route tenant"), "{found:?}");
}

#[test]
fn locality_keys_and_regional_hosts_are_read() {
    let labels = |k: &str, v: &str| Labels::from([(k.to_owned(), v.to_owned())]);
    assert_eq!(
        keyed_region(&labels("topology.kubernetes.io/zone", "us-east-1a")),
        Some(Some("us-east-1".into()))
    );
    assert_eq!(
        keyed_region(&labels("topology.istio.io/cluster", "c1")),
        Some(None)
    );
    assert_eq!(keyed_region(&labels("version", "v1")), None);
    assert!(regional_variant(
        "frontend-eu-west-1.shop.svc.cluster.local",
        HOST
    ));
    assert!(!regional_variant(
        "frontend-eu-west-1.other.svc.cluster.local",
        HOST
    ));
    assert!(!regional_variant(
        "frontend-v2.shop.svc.cluster.local",
        HOST
    ));
}

#[test]
fn a_region_some_clients_cannot_reach_is_stranded() {
    let rule = |namespace: &str, name: &str, spec: Value| {
        object("DestinationRule", namespace, name, false, spec)
    };
    let subsets = json!([
        {"name": "us-east-1", "labels": {"topology.kubernetes.io/region": "us-east-1"}},
        {"name": "us-west-2", "labels": {"topology.kubernetes.io/region": "us-west-2"}},
        {"name": "eu-west-1", "labels": {"topology.kubernetes.io/region": "eu-west-1"}}]);
    let rules = vec![
        rule(
            "shop",
            "frontend",
            json!({"host": "frontend", "subsets": subsets}),
        ),
        // Clients in namespace `eu` from us-east-1 go to Europe only.
        rule(
            "eu",
            "frontend-eu",
            json!({"host": HOST, "subsets": subsets, "trafficPolicy": {"loadBalancer": {
                "localityLbSetting": {"distribute": [
                    {"from": "us-east-1/*", "to": {"eu-west-1/*": 100}}]}}}}),
        ),
    ];
    let found = stranded(&rules, HOST, "istio-system", &facts().subset_regions);
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        vec!["us-east-1", "us-west-2"],
        "{found:?}"
    );
    assert!(found["us-west-2"].contains("namespace eu"), "{found:?}");
    let only_first = stranded(&rules[..1], HOST, "istio-system", &facts().subset_regions);
    assert!(only_first.is_empty(), "{only_first:?}");
}

#[test]
fn a_subset_whose_pods_run_only_where_the_drain_leaves_out_stays() {
    use crate::remediation::region_failover::endpoints::{Endpoints, ReadyPod};
    let pod = |version: &str, region: &str| ReadyPod {
        labels: Labels::from([("version".to_owned(), version.to_owned())]),
        region: region.to_owned(),
    };
    let versions: BTreeMap<String, Labels> = ["v1", "v2"]
        .iter()
        .map(|v| {
            (
                (*v).to_owned(),
                Labels::from([("version".to_owned(), (*v).to_owned())]),
            )
        })
        .collect();
    let pods = [
        pod("v1", "us-east-1"),
        pod("v1", "us-west-2"),
        pod("v2", "us-east-1"),
    ];
    let known = RegionFacts {
        endpoints: Some(Endpoints::of(&pods, &versions)),
        ..facts()
    };
    let vs = object(
        "VirtualService",
        "shop",
        "frontend",
        true,
        json!({"hosts": ["frontend"], "http": [
            {"name": "tenant", "match": [{"headers": {"x-tenant": {"exact": "a"}}}],
             "route": [{"destination": {"host": "frontend", "subset": "v2"}}]},
            {"route": [{"destination": {"host": "frontend", "subset": "v1"}}]}]}),
    );
    let found = paths(
        std::slice::from_ref(&vs),
        HOST,
        &versions,
        "us-east-1",
        &known,
    );
    assert_eq!(found.unmoved.len(), 1, "{found:?}");
    assert!(
        found.unmoved[0].contains("subset v2") && found.unmoved[0].contains("us-east-1 only"),
        "{found:?}"
    );
    assert_eq!(found.unpinned.len(), 1, "v1 runs in two regions: {found:?}");
    // Without pods known, v2 is read as running everywhere.
    let blind = paths(&[vs], HOST, &versions, "us-east-1", &facts());
    assert!(blind.unmoved.is_empty(), "{blind:?}");
}
