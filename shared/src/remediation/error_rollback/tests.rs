//! Unit tests of `error-rollback` planning, without I/O: what each destination reaches,
//! which one is stable, and the Istio semantics a rollback refuses.

use super::*;

const HOST: &str = "checkout.shop.svc.cluster.local";

fn object(kind: &str, name: &str, labels: Value, annotations: Value, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": kind,
        "metadata": {"name": name, "namespace": "shop", "labels": labels, "annotations": annotations},
        "spec": spec
    }))
    .expect("object")
}

fn opted() -> Value {
    json!({"auto_remediation": "active"})
}

fn vs(annotations: Value, route: Value) -> DynamicObject {
    object(
        "VirtualService",
        "checkout",
        opted(),
        annotations,
        json!({"hosts": ["checkout"], "http": [
            {"name": "testers", "match": [{"headers": {"x-canary": {"exact": "1"}}}],
             "route": [{"destination": {"host": "checkout", "subset": "canary"}}]},
            {"name": "split", "route": route}
        ]}),
    )
}

/// A namespace with Service `checkout` (every version) and subsets `stable` (v1) and
/// `canary` (v2), holding `virtual_services`.
fn facts(virtual_services: Vec<DynamicObject>) -> RollbackFacts {
    let rule = object(
        "DestinationRule",
        "checkout",
        json!({}),
        json!({}),
        json!({"host": "checkout", "subsets": [
            {"name": "stable", "labels": {"version": "v1"}},
            {"name": "canary", "labels": {"version": "v2"}}]}),
    );
    RollbackFacts {
        virtual_services,
        rules: vec![rule],
        services: [(
            HOST.to_owned(),
            [("app".to_owned(), "checkout".to_owned())].into(),
        )]
        .into(),
        root: "istio-system".into(),
        namespace: String::new(),
        changeable: Default::default(),
        ready: Default::default(),
    }
}

fn split(stable: i64, canary: i64) -> Value {
    json!([{"destination": {"host": "checkout", "subset": "stable"}, "weight": stable},
           {"destination": {"host": "checkout", "subset": "canary"}, "weight": canary}])
}

fn plan(object: &DynamicObject, version: Option<&str>) -> std::result::Result<Plan, Refusal> {
    ErrorRollback.plan_rollback(object, HOST, version, &facts(vec![object.clone()]))
}

fn weights(plan: &Plan, route: usize) -> Vec<i64> {
    plan.patch["spec"]["http"][route]["route"]
        .as_array()
        .expect("route")
        .iter()
        .map(istio::weight)
        .collect()
}

#[test]
fn the_version_is_found_through_the_subset_labels_not_the_subset_name() {
    let object = vs(json!({}), split(80, 20));
    let plan = plan(&object, Some("v2")).expect("plan");
    assert_eq!(weights(&plan, 1), vec![100, 0]);
    // The header-matched canary route gets the stable destination added.
    assert_eq!(weights(&plan, 0), vec![0, 100]);
    assert_eq!(
        plan.patch["spec"]["http"][0]["route"][1]["destination"],
        json!({"host": "checkout", "subset": "stable"})
    );
    // Only the changed routes are recorded, by index.
    let http = &object.data["spec"]["http"];
    assert_eq!(
        plan.previous,
        Some(json!({"httpRoutes": {"0": http[0]["route"], "1": http[1]["route"]}}))
    );
    // v1 failing: the subset named "stable" is the bad one, and the canary is stable.
    let plan = self::plan(&object, Some("v1")).expect("plan");
    assert_eq!(weights(&plan, 1), vec![0, 100]);
    // An alert for a version no subset carries changes nothing.
    assert!(matches!(
        self::plan(&object, Some("v7")),
        Err(Refusal::Hold(_))
    ));
}

#[test]
fn an_annotated_stable_subset_that_is_the_failing_version_is_refused() {
    let object = vs(json!({STABLE_SUBSET: "canary"}), split(50, 50));
    match plan(&object, Some("v2")) {
        Err(Refusal::Fail(why)) => {
            assert!(why.contains("reaches the failing version v2"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    let object = vs(json!({STABLE_SUBSET: "stable"}), split(50, 50));
    let plan = plan(&object, None).expect("annotation alone is enough");
    assert_eq!(weights(&plan, 1), vec![100, 0]);
}

#[test]
fn host_splits_are_told_apart_by_the_service_selectors() {
    let route = json!([{"destination": {"host": "checkout-a"}, "weight": 90},
                       {"destination": {"host": "checkout-b"}, "weight": 10}]);
    let object = vs(json!({}), route);
    let mut facts = facts(vec![object.clone()]);
    for (name, version) in [("checkout-a", "v1"), ("checkout-b", "v2")] {
        facts.services.insert(
            hosts::qualify(name, "shop"),
            [("app", "checkout"), ("version", version)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        );
    }
    let plan = ErrorRollback
        .plan_rollback(&object, HOST, Some("v2"), &facts)
        .expect("plan");
    assert_eq!(weights(&plan, 1), vec![100, 0]);
    // Without Services, host names decide: "v2" must be a whole part of the host.
    let route = json!([{"destination": {"host": "checkout-v1"}, "weight": 90},
                       {"destination": {"host": "checkout-v21"}, "weight": 10}]);
    let object = vs(json!({}), route);
    let bare = RollbackFacts {
        virtual_services: vec![object.clone()],
        ..RollbackFacts::default()
    };
    assert_eq!(
        ErrorRollback.plan_rollback(&object, HOST, Some("v2"), &bare),
        Err(Refusal::Hold(
            "no HTTP route sends traffic to version v2".into()
        )),
        "checkout-v21 is not v2, and an undefined subset reaches nothing"
    );
}

#[test]
fn already_rolled_back_is_skipped() {
    let object = object(
        "VirtualService",
        "checkout",
        opted(),
        json!({}),
        json!({"hosts": ["checkout"], "http": [{"route": split(100, 0)}]}),
    );
    assert_eq!(
        plan(&object, Some("v2")),
        Err(Refusal::Skip(
            "already routed to stable: no HTTP route sends traffic to version v2".into()
        ))
    );
}

#[test]
fn istio_semantics_the_rollback_cannot_cover_are_refused() {
    let mesh = vs(json!({}), split(50, 50));
    let fail = |object: &DynamicObject, others: Vec<DynamicObject>, expected: &str| {
        let mut all = vec![object.clone()];
        all.extend(others);
        match ErrorRollback.plan_rollback(object, HOST, Some("v2"), &facts(all)) {
            Err(Refusal::Fail(why)) => assert!(why.contains(expected), "{why}"),
            other => panic!("{expected}: {other:?}"),
        }
    };
    // Two VirtualServices binding the host to mesh.
    let mut twin = mesh.clone();
    twin.metadata.name = Some("checkout-2".into());
    fail(&mesh, vec![twin.clone()], "which one is undefined");
    // A second one that routes the canary and is not opted in.
    twin.metadata.labels = None;
    twin.data["spec"]["hosts"] = json!(["www.example.com"]);
    twin.data["spec"]["gateways"] = json!(["istio-system/public"]);
    fail(&mesh, vec![twin], "is not labelled auto_remediation=active");
    // Only a gateway's VirtualService: sidecars still reach every version.
    let mut gateway = mesh.clone();
    gateway.data["spec"]["hosts"] = json!(["www.example.com"]);
    gateway.data["spec"]["gateways"] = json!(["istio-system/public"]);
    fail(
        &gateway,
        vec![],
        "sidecars calling checkout.shop.svc.cluster.local would still reach",
    );
    // Exported to its own namespace only: the same for clients elsewhere.
    let mut local = mesh.clone();
    local.data["spec"]["exportTo"] = json!(["."]);
    fail(&local, vec![], "exported to every namespace");
    // A gateway's VirtualService beside a mesh one is rolled back.
    let plan = ErrorRollback
        .plan_rollback(
            &gateway,
            HOST,
            Some("v2"),
            &facts(vec![gateway.clone(), mesh.clone()]),
        )
        .expect("plan");
    assert_eq!(weights(&plan, 1), vec![100, 0]);
    // A TCP route to the canary.
    let mut tcp = mesh.clone();
    tcp.data["spec"]["tcp"] =
        json!([{"route": [{"destination": {"host": "checkout", "subset": "canary"}}]}]);
    fail(&tcp, vec![], "tcp route 0 reaches the failing version");
}

#[test]
fn no_stable_destination_is_refused_with_the_reason() {
    let three = json!([{"destination": {"host": "checkout", "subset": "stable"}, "weight": 40},
                       {"destination": {"host": "checkout", "subset": "canary"}, "weight": 30},
                       {"destination": {"host": "checkout", "subset": "other"}, "weight": 30}]);
    let mut facts = facts(vec![]);
    facts.rules[0].data["spec"]["subsets"]
        .as_array_mut()
        .expect("subsets")
        .push(json!({"name": "other", "labels": {"version": "v3"}}));
    let cases = [
        (vs(json!({}), split(50, 50)), None, "cannot tell the stable"),
        (
            vs(json!({STABLE_SUBSET: "v3"}), split(50, 50)),
            None,
            "the annotated stable subset v3 is a subset no DestinationRule defines",
        ),
        (
            vs(json!({}), three),
            Some("v2"),
            "2 destinations could be the stable one",
        ),
    ];
    for (object, version, expected) in cases {
        let mut facts = facts.clone();
        facts.virtual_services = vec![object.clone()];
        match ErrorRollback.plan_rollback(&object, HOST, version, &facts) {
            Err(Refusal::Fail(why)) => assert!(why.contains(expected), "{why}"),
            other => panic!("{expected}: {other:?}"),
        }
    }
}

#[test]
fn an_annotated_stable_subset_no_route_has_yet_is_added() {
    let mut facts = facts(vec![]);
    facts.rules[0].data["spec"]["subsets"]
        .as_array_mut()
        .expect("subsets")
        .push(json!({"name": "previous", "labels": {"version": "v0"}}));
    let object = vs(json!({STABLE_SUBSET: "previous"}), split(50, 50));
    facts.virtual_services = vec![object.clone()];
    let plan = ErrorRollback
        .plan_rollback(&object, HOST, Some("v2"), &facts)
        .expect("plan");
    let routes = &plan.patch["spec"]["http"];
    for route in routes.as_array().expect("routes") {
        let last = route["route"]
            .as_array()
            .and_then(|r| r.last())
            .expect("last");
        assert_eq!(
            last,
            &json!({"destination": {"host": "checkout", "subset": "previous"}, "weight": 100}),
            "{route}"
        );
        assert!(
            route["route"]
                .as_array()
                .expect("route")
                .iter()
                .all(|d| d == last || istio::weight(d) == 0),
            "{route}"
        );
    }
}

#[test]
fn a_mirror_to_the_failing_version_is_refused_unless_its_percentage_is_zero() {
    let mut object = vs(json!({}), split(50, 50));
    object.data["spec"]["http"][1]["mirror"] = json!({"host": "checkout", "subset": "canary"});
    let facts = facts(vec![object.clone()]);
    match ErrorRollback.plan_rollback(&object, HOST, Some("v2"), &facts) {
        Err(Refusal::Fail(why)) => {
            assert!(
                why.contains("http route split mirrors requests to"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    object.data["spec"]["http"][1]["mirrorPercentage"] = json!({"value": 0.0});
    let facts = self::facts(vec![object.clone()]);
    assert!(
        ErrorRollback
            .plan_rollback(&object, HOST, Some("v2"), &facts)
            .is_ok()
    );
}
