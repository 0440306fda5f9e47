//! Unit tests of the DestinationRule lever: equal shares, the drain at every policy level
//! recorded exactly, and its refusals.

use super::*;
use crate::remediation::region_failover::paths::Paths;

fn rule(spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "frontend", "namespace": "shop"},
        "spec": spec
    }))
    .expect("object")
}

fn facts() -> RegionFacts {
    RegionFacts {
        known_regions: vec!["us-east-1".into(), "us-west-2".into(), "eu-west-1".into()],
        ..RegionFacts::default()
    }
}

#[test]
fn shares_are_equal_and_add_up_to_100() {
    let regions = |n: usize| (0..n).map(|i| format!("r-{i}")).collect::<Vec<_>>();
    for n in 1..=7 {
        let total: u64 = equal_shares(&regions(n))
            .values()
            .filter_map(Value::as_u64)
            .sum();
        assert_eq!(total, 100, "{n} regions");
    }
    assert_eq!(
        Value::Object(equal_shares(&regions(3))),
        json!({"r-0/*": 34, "r-1/*": 33, "r-2/*": 33})
    );
}

#[test]
fn the_drain_replaces_a_passive_failover_at_every_level_and_records_it_exactly() {
    let object = rule(json!({"host": "frontend",
        "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"},
            "loadBalancer": {"simple": "ROUND_ROBIN", "localityLbSetting": {
                "enabled": true, "failover": [{"from": "us-east-1", "to": "us-west-2"}]}},
            "portLevelSettings": [{"port": {"number": 8443}, "tls": {"mode": "SIMPLE"}}]},
        "subsets": [{"name": "v1", "labels": {"version": "v1"},
                     "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}},
                    {"name": "v2", "labels": {"version": "v2"}}]}));
    let plan = RegionFailover::default()
        .plan_locality_drain(&object, "us-east-1", &facts())
        .expect("plan");
    let drain = json!([{"from": "*", "to": {"us-west-2/*": 50, "eu-west-1/*": 50}}]);
    let applied = plan.applied.clone().expect("applied");
    let top = &applied["trafficPolicy"];
    assert_eq!(
        top["loadBalancer"],
        json!({"simple": "ROUND_ROBIN", "localityLbSetting": {"enabled": true, "distribute": drain}})
    );
    assert_eq!(top["tls"], json!({"mode": "ISTIO_MUTUAL"}));
    assert_eq!(
        top["portLevelSettings"][0]["loadBalancer"]["localityLbSetting"]["distribute"],
        drain
    );
    assert_eq!(
        applied["subsets"][0]["trafficPolicy"]["loadBalancer"],
        json!({"simple": "LEAST_REQUEST", "localityLbSetting": {"distribute": drain}})
    );
    assert_eq!(applied["subsets"][1], object.data["spec"]["subsets"][1]);
    assert_eq!(
        plan.previous,
        Some(
            json!({"trafficPolicy": object.data["spec"]["trafficPolicy"],
                    "subsets": object.data["spec"]["subsets"]})
        )
    );
    assert!(
        plan.summary.contains("us-west-2 50%, eu-west-1 50%")
            || plan.summary.contains("eu-west-1 50%, us-west-2 50%"),
        "{}",
        plan.summary
    );
    assert!(
        plan.summary.contains("replaces the passive"),
        "{}",
        plan.summary
    );
    let stored = istio::merged(&object.data["spec"], &plan.patch["spec"]);
    assert_eq!(stored["trafficPolicy"], applied["trafficPolicy"]);
    // Drained already: skipped.
    let again = rule(
        json!({"host": "frontend", "trafficPolicy": applied["trafficPolicy"],
                            "subsets": applied["subsets"]}),
    );
    assert!(matches!(
        RegionFailover::default().plan_locality_drain(&again, "us-east-1", &facts()),
        Err(Refusal::Skip(_))
    ));
}

#[test]
fn refusals_say_why() {
    let plain = rule(json!({"host": "frontend"}));
    let split = RegionFacts {
        split_by_virtual_service: true,
        ..facts()
    };
    assert!(matches!(
        RegionFailover::default().plan_locality_drain(&plain, "us-east-1", &split),
        Err(Refusal::Skip(_))
    ));
    let disabled = rule(
        json!({"host": "frontend", "trafficPolicy": {"loadBalancer": {
        "localityLbSetting": {"enabled": false}}}}),
    );
    match RegionFailover::default().plan_locality_drain(&disabled, "us-east-1", &facts()) {
        Err(Refusal::Fail(why)) => assert!(why.contains("disabled at trafficPolicy"), "{why}"),
        other => panic!("{other:?}"),
    }
    match RegionFailover::default().plan_locality_drain(
        &plain,
        "us-east-1",
        &RegionFacts::default(),
    ) {
        Err(Refusal::Fail(why)) => assert!(why.contains("no healthy region"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_distribution_per_client_locality_keeps_what_never_reached_the_degraded_region() {
    let object = rule(
        json!({"host": "frontend", "trafficPolicy": {"loadBalancer": {
        "localityLbSetting": {"distribute": [
            {"from": "eu-west-1/*", "to": {"eu-west-1/*": 100}},
            {"from": "us-east-1/*", "to": {"us-east-1/*": 60, "us-west-2/*": 40}}]}}}}),
    );
    let plan = RegionFailover::default()
        .plan_locality_drain(&object, "us-east-1", &facts())
        .expect("plan");
    let applied = plan.applied.expect("applied");
    assert_eq!(
        applied["trafficPolicy"]["loadBalancer"]["localityLbSetting"]["distribute"],
        json!([
            {"from": "eu-west-1/*", "to": {"eu-west-1/*": 100}},
            {"from": "us-east-1/*", "to": {"us-west-2/*": 100}},
            {"from": "us-west-2/*", "to": {"us-west-2/*": 50, "eu-west-1/*": 50}}]),
        "Europe stays in Europe; the unlisted locality is drained too"
    );
    assert!(plan.summary.contains("keeps its own"), "{}", plan.summary);
}

#[test]
fn a_routed_subset_keyed_on_a_locality_is_not_emptied() {
    let facts = RegionFacts {
        paths: Paths {
            unmoved: vec![
                "VirtualService frontend (shop) http route 0 sends to frontend/east (topology.istio.io/cluster=c1), which may be in us-east-1".into(),
            ],
            ..Paths::default()
        },
        ..facts()
    };
    match RegionFailover::default().plan_locality_drain(
        &rule(json!({"host": "frontend"})),
        "us-east-1",
        &facts,
    ) {
        Err(Refusal::Fail(why)) => assert!(why.contains("reach no endpoint"), "{why}"),
        other => panic!("{other:?}"),
    }
}
