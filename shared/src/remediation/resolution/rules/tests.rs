//! Unit tests of the DestinationRule resolution model: order, indexes, lookup, merge and
//! selection, checked against what istiod does.

use super::*;
use serde_json::json;

const HOST: &str = "db.data.svc.cluster.local";

fn rule(ns: &str, name: &str, at: u32, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": ns,
                     "creationTimestamp": format!("2026-01-01T00:00:{at:02}Z")},
        "spec": spec
    }))
    .expect("rule")
}

fn client(ns: Option<&str>, labels: Option<Value>) -> Client {
    Client {
        namespace: ns.map(str::to_owned),
        labels: labels.map(|l| hosts::labels(Some(&l))),
    }
}

fn from(merged: Option<Merged<'_>>) -> Vec<String> {
    merged
        .map(|m| m.rules.iter().map(|r| object::name_of(r)).collect())
        .unwrap_or_default()
}

#[test]
fn lookup_goes_client_namespace_then_service_then_root() {
    let rules = vec![
        rule("web", "local", 1, json!({"host": HOST})),
        rule("data", "owner", 2, json!({"host": "db"})),
        rule(
            "istio-system",
            "mesh",
            3,
            json!({"host": "*.svc.cluster.local"}),
        ),
    ];
    let r = Resolver::new(&rules, HOST, Some("data"), "istio-system");
    assert_eq!(from(r.resolve(&client(Some("web"), None))), ["web/local"]);
    assert_eq!(from(r.resolve(&client(Some("api"), None))), ["data/owner"]);
    let without_owner = vec![rules[2].clone()];
    let r = Resolver::new(&without_owner, HOST, Some("data"), "istio-system");
    assert_eq!(from(r.resolve(&client(None, None))), ["istio-system/mesh"]);
}

#[test]
fn export_to_limits_who_sees_a_rule_without_falling_back_to_a_wider_host() {
    let rules = vec![
        rule(
            "data",
            "private",
            1,
            json!({"host": "db", "exportTo": ["."]}),
        ),
        rule(
            "data",
            "wide",
            2,
            json!({"host": "*.data.svc.cluster.local"}),
        ),
        rule("istio-system", "mesh", 3, json!({"host": HOST})),
    ];
    let r = Resolver::new(&rules, HOST, Some("data"), "istio-system");
    assert_eq!(
        from(r.resolve(&client(Some("data"), None))),
        ["data/private"]
    );
    // The most specific exported host of `data` is the wildcard.
    assert_eq!(from(r.resolve(&client(Some("web"), None))), ["data/wide"]);
    let named = vec![
        rule(
            "data",
            "to-web",
            1,
            json!({"host": "db", "exportTo": ["web"]}),
        ),
        rule("istio-system", "mesh", 2, json!({"host": HOST})),
    ];
    let r = Resolver::new(&named, HOST, Some("data"), "istio-system");
    assert_eq!(from(r.resolve(&client(Some("web"), None))), ["data/to-web"]);
    assert_eq!(
        from(r.resolve(&client(Some("api"), None))),
        ["istio-system/mesh"]
    );
    assert!(
        r.resolve(&client(Some("data"), None))
            .is_some_and(|m| object::name_of(m.rules[0]) == "istio-system/mesh"),
        "a rule exported only to web is not local to its own namespace"
    );
}

#[test]
fn the_oldest_top_level_policy_wins_and_subsets_merge() {
    let rules = vec![
        rule(
            "data",
            "b-newer",
            5,
            json!({"host": "db",
            "trafficPolicy": {"tls": {"mode": "DISABLE"}},
            "subsets": [{"name": "a", "labels": {"v": "2"}}, {"name": "c", "labels": {"v": "3"}}]}),
        ),
        rule(
            "data",
            "a-older",
            1,
            json!({"host": "db",
            "subsets": [{"name": "a", "labels": {"v": "1"}}]}),
        ),
        rule(
            "data",
            "c-oldest-policy",
            3,
            json!({"host": "db",
            "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
        ),
    ];
    let r = Resolver::new(&rules, HOST, Some("data"), "istio-system");
    let merged = r.resolve(&client(None, None)).expect("merged");
    assert_eq!(
        from(Some(merged.clone())),
        ["data/a-older", "data/c-oldest-policy", "data/b-newer"]
    );
    assert_eq!(merged.policy(), json!({"tls": {"mode": "ISTIO_MUTUAL"}}));
    assert_eq!(
        merged.subset("a"),
        Some(&json!({"name": "a", "labels": {"v": "1"}}))
    );
    assert_eq!(
        merged.subset("c").map(|s| s["labels"]["v"].clone()),
        Some(json!("3"))
    );
}

#[test]
fn a_workload_selector_binds_only_its_own_namespaces_matching_clients() {
    let rules = vec![
        rule(
            "web",
            "canary-clients",
            1,
            json!({"host": HOST,
            "workloadSelector": {"matchLabels": {"track": "canary"}}}),
        ),
        rule("data", "owner", 2, json!({"host": "db"})),
    ];
    let r = Resolver::new(&rules, HOST, Some("data"), "istio-system");
    let classes = r.clients();
    assert!(classes.contains(&client(Some("web"), Some(json!({"track": "canary"})))));
    assert_eq!(
        from(r.resolve(&client(
            Some("web"),
            Some(json!({"track": "canary", "app": "x"}))
        ))),
        ["web/canary-clients"]
    );
    // A client the selector misses in that namespace gets no rule at all.
    assert!(r.resolve(&client(Some("web"), None)).is_none());
    assert_eq!(from(r.resolve(&client(Some("api"), None))), ["data/owner"]);
}

#[test]
fn rules_with_different_export_to_stay_apart_and_the_newest_visible_one_applies() {
    let rules = vec![
        rule(
            "data",
            "old",
            1,
            json!({"host": "db",
            "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
        ),
        rule(
            "data",
            "new-private",
            2,
            json!({"host": "db", "exportTo": ["."],
            "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
        ),
    ];
    let r = Resolver::new(&rules, HOST, Some("data"), "istio-system");
    let own = r.resolve(&client(Some("data"), None)).expect("merged");
    assert_eq!(from(Some(own.clone())), ["data/new-private"]);
    assert_eq!(own.policy(), json!({"tls": {"mode": "DISABLE"}}));
    assert_eq!(from(r.resolve(&client(None, None))), ["data/old"]);
    // A client in the root namespace reads the root's private rules first, then the
    // service's exported ones.
    assert_eq!(
        from(r.resolve(&client(Some("istio-system"), None))),
        ["data/old"]
    );
}

#[test]
fn service_namespace_comes_from_the_service_host() {
    assert_eq!(Resolver::service_namespace_of(HOST), Some("data"));
    assert_eq!(Resolver::service_namespace_of("db.example.com"), None);
}
