//! What still reaches a region whatever the function changes: a route pinned to a subset a
//! drain would leave without endpoints, a route whose only destination is the region, hosts
//! per region routed by a VirtualService the function does not own, a canary whose pods run
//! in too few regions. The function refuses, says why, and changes nothing; where the
//! reason is Istio's, its compiler shows what the drain on its own would have done.

use std::collections::BTreeSet;

use kube::api::{DynamicObject, Patch, PatchParams};
use mesh_remediation::remediation::RegionFailover;
use mesh_remediation::remediation::istio::merged;
use mesh_remediation::remediation::region_failover::RegionFacts;
use remediation_testkit::TestCluster;
use remediation_testkit::endpoints::{region_nodes, store_pod};
use remediation_testkit::istio_oracle::{REGIONS, World, clients, store_service, stored_services};
use remediation_testkit::mesh::{Kind, Mesh, version_subsets};
use serde_json::{Value, json};

use super::{
    DEGRADED, PORT, assert_drain_refused, assert_drained, at_gateway, drain, frontend,
    frontend_with_region_subsets, host, per_region_hosts, region_split, share_to_nowhere,
    tenant_route, tenant_then_service,
};

/// `world` with what the cluster stores, except the DestinationRule `frontend` as the drain
/// by locality alone would leave it (the `unhealthy` regions left out as well): what Istio
/// would do had the function not refused.
async fn with_the_rule_drained_alone(
    cluster: &TestCluster,
    world: &World,
    unhealthy: &[&str],
) -> World {
    let mesh = Mesh::new(cluster);
    let rule = mesh.get(Kind::DestinationRule, "frontend").await;
    let object: DynamicObject = serde_json::from_value(rule.clone()).expect("rule");
    let health = REGIONS
        .iter()
        .filter(|r| **r != DEGRADED)
        .map(|r| {
            let answer = if unhealthy.contains(r) {
                Err("HTTP 503".to_owned())
            } else {
                Ok(())
            };
            ((*r).to_owned(), answer)
        })
        .collect();
    let facts = RegionFacts {
        known_regions: REGIONS.iter().map(|r| (*r).to_owned()).collect(),
        checked: true,
        health,
        ..Default::default()
    };
    let plan = RegionFailover::default()
        .plan_locality_drain(&object, DEGRADED, &facts)
        .expect("the drain on its own");
    let mut drained = rule.clone();
    drained["spec"] = merged(&rule["spec"], &plan.patch["spec"]);
    let mut planted = world.clone();
    planted.add(drained);
    let routes = mesh
        .api(Kind::VirtualService)
        .list(&Default::default())
        .await;
    for vs in routes.expect("list").items {
        planted.add(serde_json::to_value(vs).expect("json"));
    }
    for service in stored_services(cluster).await {
        planted.add(service);
    }
    planted
}

/// A tenant's requests pinned by a VirtualService the function does not own to the subset
/// of frontend keyed on `region`; `eu_status` is eu-west-1's health check answer. The drain
/// by locality alone would leave that subset no endpoint (judged by Istio's compiler), so
/// the function refuses, saying `why`, and nothing changes.
async fn a_pinned_tenant_blocks_the_drain(
    prefix: &str,
    subset: &str,
    eu_status: u16,
    why: &[&str],
) {
    let (cluster, world) = frontend_with_region_subsets(prefix).await;
    let ns = cluster.namespace.clone();
    let mesh = Mesh::new(&cluster);
    let tenant = tenant_route("acme", json!({"host": "frontend", "subset": subset}));
    let spec = tenant_then_service(tenant);
    mesh.not_opted_in(Kind::VirtualService, "frontend", spec)
        .await;
    let pinned = format!("outbound|{PORT}|{subset}|{}", host(&cluster));
    let unhealthy: &[&str] = if eu_status == 200 {
        &[]
    } else {
        &["eu-west-1"]
    };
    let planted = with_the_rule_drained_alone(&cluster, &world, unhealthy)
        .await
        .compile(&clients(&ns));
    for client in clients(&ns) {
        assert_eq!(
            planted
                .proxy(client.name)
                .endpoints_of(&BTreeSet::from([pinned.clone()])),
            BTreeSet::new(),
            "{}: the tenant's route would reach no endpoint",
            client.name
        );
    }
    assert_drain_refused(&cluster, eu_status, why).await;
}

#[tokio::test]
async fn a_route_to_a_subset_of_the_degraded_region_blocks_a_drain_that_would_empty_it() {
    a_pinned_tenant_blocks_the_drain(
        "ivf-pinned-subset",
        "east",
        200,
        &["subset east", "reach no endpoint"],
    )
    .await;
}

#[tokio::test]
async fn a_route_to_a_subset_of_a_region_failing_its_health_check_blocks_the_drain() {
    // eu-west-1 fails its health check, so the drain sends every client to us-west-2 only.
    a_pinned_tenant_blocks_the_drain(
        "ivf-unhealthy-subset",
        "eu",
        503,
        &["subset eu", "in eu-west-1, which the drain leaves out"],
    )
    .await;
}

#[tokio::test]
async fn a_route_whose_only_destination_is_the_degraded_region_is_refused() {
    let (cluster, _world) = frontend_with_region_subsets("ivf-pinned-route").await;
    let mesh = Mesh::new(&cluster);
    let tenant = tenant_route("acme", json!({"host": "frontend", "subset": "east"}));
    mesh.opted_in(
        Kind::VirtualService,
        "frontend",
        json!({"hosts": ["frontend"], "http": [tenant, region_split()]}),
    )
    .await;
    assert_drain_refused(&cluster, 200, &["route acme", "only destination"]).await;
}

/// frontend's hosts per region routed by a VirtualService `name` the function does not own,
/// for `hosts` (through `gateways`, if any), beside its opted-in rule with no policy.
async fn a_foreign_region_split(
    cluster: &TestCluster,
    name: &str,
    hosts: Value,
    gateways: Option<Value>,
) {
    let route = per_region_hosts(cluster).await;
    let mut spec = json!({"hosts": hosts, "http": [{"route": route}]});
    if let Some(gateways) = gateways {
        spec["gateways"] = gateways;
    }
    let mesh = Mesh::new(cluster);
    mesh.not_opted_in(Kind::VirtualService, name, spec).await;
    mesh.opted_in(
        Kind::DestinationRule,
        "frontend",
        json!({"host": "frontend"}),
    )
    .await;
}

#[tokio::test]
async fn a_region_split_by_host_the_function_does_not_own_blocks_the_drain() {
    // Found by the generated meshes: hosts per region routed by a VirtualService that is not
    // opted in keep sending to the degraded region whatever the service's own rule says.
    let (cluster, _world) = frontend("ivf-foreign-split").await;
    a_foreign_region_split(&cluster, "frontend", json!(["frontend"]), None).await;
    let why = ["frontend-us-east-1", "neither lever moves"];
    assert_drain_refused(&cluster, 200, &why).await;
}

#[tokio::test]
async fn a_gateways_region_split_by_host_the_function_does_not_own_blocks_the_drain() {
    // Hosts per region routed at the ingress gateway by a VirtualService that is not opted
    // in: the rule's drain moves the sidecars' calls, while the gateway's keep reaching the
    // degraded region through its own host (judged by Istio's compiler), so it is refused.
    let (cluster, mut world) = frontend("ivf-foreign-gateway").await;
    let ns = cluster.namespace.clone();
    let gateway = world.ingress_gateway("www.example.com");
    let gateways = json!(["istio-system/public"]);
    a_foreign_region_split(
        &cluster,
        "public",
        json!(["www.example.com"]),
        Some(gateways),
    )
    .await;
    let mut proxies = clients(&ns);
    proxies.push(gateway);
    let planted = with_the_rule_drained_alone(&cluster, &world, &[])
        .await
        .compile(&proxies);
    assert_drained(&planted, &ns, &host(&cluster));
    assert!(
        at_gateway(&planted).contains(DEGRADED),
        "the rule's drain leaves the gateway's route to frontend-{DEGRADED} as it was"
    );
    let why = ["frontend-us-east-1", "neither lever moves"];
    assert_drain_refused(&cluster, 200, &why).await;
}

/// frontend with pods of v1 in every region and of v2 in `v2_regions`, in Istio's world and
/// ready on the API server (region-failover reads where they run); a rule with subsets by
/// version and a VirtualService whose tenant route goes to v2 alone.
async fn canary_in(prefix: &str, v2_regions: &[&str]) -> (TestCluster, World) {
    let cluster = TestCluster::start(prefix).await;
    let ns = cluster.namespace.clone();
    store_service(&cluster, "frontend", json!({"app": "frontend"}), PORT).await;
    region_nodes(&cluster.client).await;
    let mut world = World::regional(&ns);
    let pods = REGIONS
        .iter()
        .map(|r| ("v1", *r))
        .chain(v2_regions.iter().map(|r| ("v2", *r)));
    for (i, (version, region)) in pods.enumerate() {
        let ip = format!("10.{}.0.{}", i + 1, 9);
        world.pod(&ns, "frontend", json!({ "version": version }), region, &ip);
    }
    for pod in world.objects_of("Pod") {
        store_pod(&cluster.client, &pod).await.expect("pod");
    }
    let mesh = Mesh::new(&cluster);
    let subsets = version_subsets("frontend");
    mesh.opted_in(Kind::DestinationRule, "frontend", subsets)
        .await;
    let tenant = tenant_route("tenant", json!({"host": "frontend", "subset": "v2"}));
    let spec = tenant_then_service(tenant);
    mesh.opted_in(Kind::VirtualService, "frontend", spec).await;
    (cluster, world)
}

#[tokio::test]
async fn a_drain_that_would_leave_a_routed_subset_no_endpoint_is_refused() {
    // Found by the generated meshes: v2 runs only in the degraded region, so the drain by
    // locality would leave the tenant route no endpoint (503s), reported as applied.
    let (cluster, world) = canary_in("ivf-v2-degraded", &[DEGRADED]).await;
    let before = world.compile_stored(&cluster).await;
    for client in clients(&cluster.namespace) {
        assert_eq!(share_to_nowhere(&before, client.name, &host(&cluster)), 0.0);
    }
    let why = ["subset v2", "ready pods run in us-east-1 only"];
    assert_drain_refused(&cluster, 200, &why).await;
}

#[tokio::test]
async fn a_subset_with_endpoints_in_a_healthy_region_keeps_them_through_the_drain() {
    let (cluster, world) = canary_in("ivf-v2-both", &[DEGRADED, "us-west-2"]).await;
    let ns = cluster.namespace.clone();
    let host = host(&cluster);
    drain(&cluster).await;
    let after = world.compile_stored(&cluster).await;
    assert_drained(&after, &ns, &host);
    for client in clients(&ns) {
        assert_eq!(
            share_to_nowhere(&after, client.name, &host),
            0.0,
            "{}: every route keeps an endpoint",
            client.name
        );
    }
}

#[tokio::test]
async fn keeping_clients_in_their_own_region_is_refused_where_a_routed_subset_has_no_pod_there() {
    // Found by the 2,000-mesh run: with outlier detection on, the drain keeps each healthy
    // region's clients in their own region; v2 runs only in us-west-2, so us-east-1's
    // clients, whom Istio's preference sent on to us-west-2, would reach no v2 endpoint.
    let (cluster, world) = canary_in("ivf-v2-west", &["us-west-2"]).await;
    Mesh::new(&cluster)
        .api(Kind::DestinationRule)
        .patch(
            "frontend",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"trafficPolicy": {"outlierDetection": {
                "consecutive5xxErrors": 7, "interval": "10s", "baseEjectionTime": "30s"}}}})),
        )
        .await
        .expect("outlier detection on");
    let before = world.compile_stored(&cluster).await;
    assert_eq!(
        share_to_nowhere(&before, "same-ns-east", &host(&cluster)),
        0.0
    );
    let why = ["subset v2 has ready pods in us-west-2 only, none in"];
    assert_drain_refused(&cluster, 200, &why).await;
}
