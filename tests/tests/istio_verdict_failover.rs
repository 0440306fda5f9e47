//! region-failover judged by Istio: the objects the real API server stores before and after
//! the function acts, compiled by Istio's config compiler (`tests/istio-oracle`) for clients in
//! two namespaces and three regions. After the drain no client's calls reach the degraded
//! region while healthy regions exist, whether the mesh splits the service per region by
//! VirtualService (subsets or hosts) or not at all (the DestinationRule's locality settings).

use std::collections::{BTreeSet, HashMap};

use mesh_remediation::remediation::RegionFailover;
use mesh_remediation::remediation::region_failover::FailoverSettings;
use mesh_remediation::report::OutcomeKind;
use remediation_testkit::istio_oracle::{Compiled, REGIONS, World, clients, store_service};
use remediation_testkit::mesh::{HealthEndpoint, Kind, Mesh, only};
use remediation_testkit::{TestCluster, events};
use serde_json::json;

const PORT: u16 = 8080;
const DEGRADED: &str = "us-east-1";

/// frontend's pods, one per region (label `region` too, for Services per region), and the
/// Service `frontend` on the API server.
async fn frontend(prefix: &str) -> (TestCluster, World) {
    let cluster = TestCluster::start(prefix).await;
    let ns = cluster.namespace.clone();
    store_service(&cluster, "frontend", json!({"app": "frontend"}), PORT).await;
    let mut world = World::regional(&ns);
    for (i, region) in REGIONS.iter().enumerate() {
        world.pod(
            &ns,
            "frontend",
            json!({"region": region}),
            region,
            &format!("10.{}.0.9", i + 1),
        );
    }
    (cluster, world)
}

/// Regions a client's calls to `host` reach while every endpoint is healthy.
fn regions_reached(compiled: &Compiled, client: &str, host: &str) -> BTreeSet<String> {
    compiled
        .proxy(client)
        .endpoints_receiving(host, PORT)
        .into_iter()
        .map(|(_, region)| region)
        .collect()
}

/// Runs region-failover for us-east-1 with us-west-2 and eu-west-1 answering their health
/// checks; returns the change it reports.
async fn drain(cluster: &TestCluster) -> String {
    let west = HealthEndpoint::start(200).await;
    let eu = HealthEndpoint::start(200).await;
    let urls = format!("us-west-2={},eu-west-1={}", west.url(), eu.url());
    let vars: HashMap<&str, &str> = HashMap::from([("REGION_HEALTH_URLS", urls.as_str())]);
    let failover = RegionFailover::new(
        FailoverSettings::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned())).expect("settings"),
    );
    let event = events::fresh("region-failover-firing.json", &cluster.namespace);
    let report = cluster.invoke(failover, &[], &event).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    only(&report).change.clone().expect("the change in words")
}

fn assert_drained(compiled: &Compiled, ns: &str, host: &str) {
    assert_eq!(compiled.findings(), Vec::<String>::new());
    for client in clients(ns) {
        assert_eq!(
            regions_reached(compiled, client.name, host),
            BTreeSet::from(["eu-west-1".to_owned(), "us-west-2".to_owned()]),
            "{}: only the healthy regions take its calls",
            client.name
        );
    }
}

#[tokio::test]
async fn a_region_split_by_host_is_drained_for_every_client() {
    let (cluster, world) = frontend("ivf-hosts").await;
    let ns = cluster.namespace.clone();
    let mut route = Vec::new();
    for (region, weight) in REGIONS.iter().zip([60, 30, 10]) {
        let name = format!("frontend-{region}");
        store_service(
            &cluster,
            &name,
            json!({"app": "frontend", "region": region}),
            PORT,
        )
        .await;
        route.push(json!({"destination": {"host": name}, "weight": weight}));
    }
    Mesh::new(&cluster)
        .create(
            Kind::VirtualService,
            "frontend",
            true,
            json!({}),
            json!({"hosts": ["frontend"], "http": [{"route": route}]}),
        )
        .await;
    let host = format!("frontend.{ns}.svc.cluster.local");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    for client in clients(&ns) {
        assert_eq!(
            regions_reached(&before, client.name, &host).len(),
            3,
            "{}",
            client.name
        );
    }
    drain(&cluster).await;
    assert_drained(
        &world.with_stored(&cluster).await.compile(&clients(&ns)),
        &ns,
        &host,
    );
}

#[tokio::test]
async fn without_a_region_split_the_destination_rule_drains_the_region_for_every_client() {
    let (cluster, world) = frontend("ivf-locality").await;
    let ns = cluster.namespace.clone();
    // A passive failover (what Istio's docs suggest), and a port whose settings inherit
    // nothing from the top level.
    Mesh::new(&cluster)
        .create(
            Kind::DestinationRule,
            "frontend",
            true,
            json!({}),
            json!({"host": "frontend", "trafficPolicy": {
                "tls": {"mode": "ISTIO_MUTUAL"},
                "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"},
                "loadBalancer": {"localityLbSetting": {"enabled": true,
                    "failover": [{"from": "us-east-1", "to": "us-west-2"}]}},
                "portLevelSettings": [{"port": {"number": PORT}, "tls": {"mode": "ISTIO_MUTUAL"}}]}}),
        )
        .await;
    let host = format!("frontend.{ns}.svc.cluster.local");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert!(
        regions_reached(&before, "same-ns-east", &host).contains(DEGRADED),
        "the failover is passive: us-east-1 clients still call us-east-1 while its pods answer"
    );
    let change = drain(&cluster).await;
    assert!(change.contains("replaces the passive"), "{change}");
    assert!(change.contains("keep calling their own region"), "{change}");
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(after.findings(), Vec::<String>::new());
    for client in clients(&ns) {
        let reached = regions_reached(&after, client.name, &host);
        let earlier = regions_reached(&before, client.name, &host);
        assert!(
            !reached.contains(DEGRADED) && !reached.is_empty(),
            "{}: {reached:?}",
            client.name
        );
        if !earlier.contains(DEGRADED) {
            assert_eq!(
                reached, earlier,
                "{}: a client that never called {DEGRADED} keeps its regions",
                client.name
            );
        }
    }
}

#[tokio::test]
async fn a_gateway_only_region_split_is_drained_and_sidecars_are_drained_by_the_rule() {
    let (cluster, mut world) = frontend("ivf-gateway").await;
    let ns = cluster.namespace.clone();
    let gateway = world.ingress_gateway("www.example.com");
    let mesh = Mesh::new(&cluster);
    mesh.create(
        Kind::DestinationRule,
        "frontend",
        true,
        json!({}),
        json!({"host": "frontend", "subsets": [
            {"name": "east", "labels": {"topology.kubernetes.io/region": "us-east-1"}},
            {"name": "west", "labels": {"topology.kubernetes.io/region": "us-west-2"}},
            {"name": "eu", "labels": {"topology.kubernetes.io/region": "eu-west-1"}}]}),
    )
    .await;
    mesh.create(
        Kind::VirtualService,
        "public",
        true,
        json!({}),
        json!({"hosts": ["www.example.com"], "gateways": ["istio-system/public"],
               "http": [{"route": [
                   {"destination": {"host": "frontend", "subset": "east"}, "weight": 60},
                   {"destination": {"host": "frontend", "subset": "west"}, "weight": 40}]}]}),
    )
    .await;
    let mut proxies = clients(&ns);
    proxies.push(gateway);
    let at_gateway = |compiled: &Compiled| -> BTreeSet<String> {
        let gateway = compiled.proxy("ingress");
        gateway
            .endpoints_of(&gateway.gateway_clusters_receiving("www.example.com", 80))
            .into_iter()
            .map(|(_, region)| region)
            .collect()
    };
    let host = format!("frontend.{ns}.svc.cluster.local");
    let before = world.with_stored(&cluster).await.compile(&proxies);
    assert!(at_gateway(&before).contains(DEGRADED));
    assert!(regions_reached(&before, "same-ns-west", &host).contains(DEGRADED));

    drain(&cluster).await;
    let after = world.with_stored(&cluster).await.compile(&proxies);
    assert_eq!(at_gateway(&after), BTreeSet::from(["us-west-2".to_owned()]));
    assert_drained(&after, &ns, &host);
}

// ---- What still reaches a region, and the locality policy already in place.

/// Runs region-failover for us-east-1 with us-west-2 and eu-west-1 answering their health
/// checks, and returns the report.
async fn try_drain(cluster: &TestCluster) -> mesh_remediation::report::InvocationReport {
    try_drain_with_eu_answering(cluster, 200).await
}

/// [`try_drain`] with eu-west-1's health check answering `status`.
async fn try_drain_with_eu_answering(
    cluster: &TestCluster,
    status: u16,
) -> mesh_remediation::report::InvocationReport {
    let west = HealthEndpoint::start(200).await;
    let eu = HealthEndpoint::start(status).await;
    let urls = format!("us-west-2={},eu-west-1={}", west.url(), eu.url());
    let vars: HashMap<&str, &str> = HashMap::from([("REGION_HEALTH_URLS", urls.as_str())]);
    let failover = RegionFailover::new(
        FailoverSettings::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned())).expect("settings"),
    );
    let event = events::fresh("region-failover-firing.json", &cluster.namespace);
    cluster.invoke(failover, &[], &event).await
}

/// The spec of every stored VirtualService and DestinationRule of the test namespace.
async fn stored(cluster: &TestCluster) -> Vec<String> {
    let mesh = Mesh::new(cluster);
    let mut out = Vec::new();
    for kind in [Kind::VirtualService, Kind::DestinationRule] {
        for object in mesh
            .api(kind)
            .list(&Default::default())
            .await
            .expect("list")
            .items
        {
            out.push(remediation_testkit::mesh::spec_text(
                &serde_json::to_value(object).expect("json"),
            ));
        }
    }
    out
}

/// Subsets keyed on the region label, one per region.
fn region_subsets() -> serde_json::Value {
    json!([{"name": "east", "labels": {"topology.kubernetes.io/region": "us-east-1"}},
           {"name": "west", "labels": {"topology.kubernetes.io/region": "us-west-2"}},
           {"name": "eu", "labels": {"topology.kubernetes.io/region": "eu-west-1"}}])
}

/// `world` with what the cluster stores, except the DestinationRule `frontend` as the drain
/// by locality alone would leave it (the `unhealthy` regions left out as well): what Istio
/// would do had the function not refused.
async fn with_the_rule_drained_alone(
    cluster: &TestCluster,
    world: &World,
    unhealthy: &[&str],
) -> World {
    let mesh = Mesh::new(cluster);
    let ns = &cluster.namespace;
    let rule = mesh.get(Kind::DestinationRule, "frontend").await;
    let object: kube::api::DynamicObject = serde_json::from_value(rule.clone()).expect("rule");
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
    let facts = mesh_remediation::remediation::region_failover::RegionFacts {
        known_regions: REGIONS.iter().map(|r| (*r).to_owned()).collect(),
        checked: true,
        health,
        ..Default::default()
    };
    let plan = RegionFailover::default()
        .plan_locality_drain(&object, DEGRADED, &facts)
        .expect("the drain on its own");
    let mut drained = rule.clone();
    drained["spec"] =
        mesh_remediation::remediation::istio::merged(&rule["spec"], &plan.patch["spec"]);
    let mut planted = world.clone();
    planted.add(drained);
    for vs in mesh
        .api(Kind::VirtualService)
        .list(&Default::default())
        .await
        .expect("list")
        .items
    {
        planted.add(serde_json::to_value(vs).expect("json"));
    }
    let services =
        kube::Api::<k8s_openapi::api::core::v1::Service>::namespaced(cluster.client.clone(), ns)
            .list(&Default::default())
            .await
            .expect("services");
    for service in services.items {
        let mut service = serde_json::to_value(service).expect("json");
        service["apiVersion"] = json!("v1");
        service["kind"] = json!("Service");
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
    let (cluster, world) = frontend(prefix).await;
    let ns = cluster.namespace.clone();
    let mesh = Mesh::new(&cluster);
    mesh.create(
        Kind::DestinationRule,
        "frontend",
        true,
        json!({}),
        json!({"host": "frontend", "subsets": region_subsets()}),
    )
    .await;
    mesh.create(
        Kind::VirtualService,
        "frontend",
        false,
        json!({}),
        json!({"hosts": ["frontend"], "http": [
            {"name": "acme", "match": [{"headers": {"x-tenant": {"exact": "acme"}}}],
             "route": [{"destination": {"host": "frontend", "subset": subset}}]},
            {"route": [{"destination": {"host": "frontend"}}]}]}),
    )
    .await;
    let host = format!("frontend.{ns}.svc.cluster.local");
    let pinned = format!("outbound|{PORT}|{subset}|{host}");
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

    let before = stored(&cluster).await;
    let report = try_drain_with_eu_answering(&cluster, eu_status).await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{report:#?}");
    let reason = remediation_testkit::mesh::reason(outcome);
    for part in why {
        assert!(reason.contains(part), "{part:?} not in {reason}");
    }
    assert_eq!(stored(&cluster).await, before, "nothing changed");
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
async fn a_route_whose_only_destination_is_the_degraded_region_is_refused() {
    let (cluster, _world) = frontend("ivf-pinned-route").await;
    let mesh = Mesh::new(&cluster);
    mesh.create(
        Kind::DestinationRule,
        "frontend",
        true,
        json!({}),
        json!({"host": "frontend", "subsets": region_subsets()}),
    )
    .await;
    mesh.create(
        Kind::VirtualService,
        "frontend",
        true,
        json!({}),
        json!({"hosts": ["frontend"], "http": [
            {"name": "acme", "match": [{"headers": {"x-tenant": {"exact": "acme"}}}],
             "route": [{"destination": {"host": "frontend", "subset": "east"}}]},
            {"name": "split", "route": [
                {"destination": {"host": "frontend", "subset": "east"}, "weight": 50},
                {"destination": {"host": "frontend", "subset": "west"}, "weight": 25},
                {"destination": {"host": "frontend", "subset": "eu"}, "weight": 25}]}]}),
    )
    .await;
    let before = stored(&cluster).await;
    let report = try_drain(&cluster).await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{report:#?}");
    let why = remediation_testkit::mesh::reason(outcome);
    assert!(
        why.contains("route acme") && why.contains("only destination"),
        "{why}"
    );
    assert_eq!(stored(&cluster).await, before, "nothing changed");
}

#[tokio::test]
async fn a_distribution_per_client_locality_is_kept_for_clients_that_never_reached_the_region() {
    let (cluster, world) = frontend("ivf-per-client").await;
    let ns = cluster.namespace.clone();
    Mesh::new(&cluster)
        .create(
            Kind::DestinationRule,
            "frontend",
            true,
            json!({}),
            json!({"host": "frontend", "trafficPolicy": {"loadBalancer": {"localityLbSetting": {
                "distribute": [
                    {"from": "eu-west-1/*", "to": {"eu-west-1/*": 100}},
                    {"from": "us-east-1/*", "to": {"us-east-1/*": 60, "us-west-2/*": 40}},
                    {"from": "us-west-2/*", "to": {"us-west-2/*": 100}}]}}}}),
        )
        .await;
    let host = format!("frontend.{ns}.svc.cluster.local");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(
        regions_reached(&before, "other-ns-eu", &host),
        BTreeSet::from(["eu-west-1".to_owned()]),
        "Europe stays in Europe"
    );
    let change = drain(&cluster).await;
    assert!(change.contains("keeps its own"), "{change}");
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(after.findings(), Vec::<String>::new());
    for client in clients(&ns) {
        let reached = regions_reached(&after, client.name, &host);
        assert!(!reached.contains(DEGRADED), "{}: {reached:?}", client.name);
        if client.region != DEGRADED {
            assert_eq!(
                reached,
                regions_reached(&before, client.name, &host),
                "{}: a client that never reached {DEGRADED} keeps its distribution",
                client.name
            );
        }
    }
    assert_eq!(
        regions_reached(&after, "same-ns-east", &host),
        BTreeSet::from(["us-west-2".to_owned()])
    );
}

#[tokio::test]
async fn a_region_split_by_host_the_function_does_not_own_blocks_the_drain() {
    // Found by the generated meshes: hosts per region routed by a VirtualService that is not
    // opted in keep sending to the degraded region whatever the service's own rule says.
    let (cluster, _world) = frontend("ivf-foreign-split").await;
    let mut route = Vec::new();
    for (region, weight) in REGIONS.iter().zip([60, 30, 10]) {
        let name = format!("frontend-{region}");
        store_service(
            &cluster,
            &name,
            json!({"app": "frontend", "region": region}),
            PORT,
        )
        .await;
        route.push(json!({"destination": {"host": name}, "weight": weight}));
    }
    let mesh = Mesh::new(&cluster);
    mesh.create(
        Kind::VirtualService,
        "frontend",
        false,
        json!({}),
        json!({"hosts": ["frontend"], "http": [{"route": route}]}),
    )
    .await;
    mesh.create(
        Kind::DestinationRule,
        "frontend",
        true,
        json!({}),
        json!({"host": "frontend"}),
    )
    .await;
    let before = stored(&cluster).await;
    let report = try_drain(&cluster).await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{report:#?}");
    let why = remediation_testkit::mesh::reason(outcome);
    assert!(
        why.contains("frontend-us-east-1") && why.contains("neither lever moves"),
        "{why}"
    );
    assert_eq!(stored(&cluster).await, before, "nothing changed");
}

#[tokio::test]
async fn a_gateways_region_split_by_host_the_function_does_not_own_blocks_the_drain() {
    // Hosts per region routed at the ingress gateway by a VirtualService that is not opted
    // in: the rule's drain moves the sidecars' calls, while the gateway's keep reaching the
    // degraded region through its own host (judged by Istio's compiler), so it is refused.
    let (cluster, mut world) = frontend("ivf-foreign-gateway").await;
    let ns = cluster.namespace.clone();
    let gateway = world.ingress_gateway("www.example.com");
    let mut route = Vec::new();
    for (region, weight) in REGIONS.iter().zip([60, 30, 10]) {
        let name = format!("frontend-{region}");
        store_service(
            &cluster,
            &name,
            json!({"app": "frontend", "region": region}),
            PORT,
        )
        .await;
        route.push(json!({"destination": {"host": name}, "weight": weight}));
    }
    let mesh = Mesh::new(&cluster);
    mesh.create(
        Kind::VirtualService,
        "public",
        false,
        json!({}),
        json!({"hosts": ["www.example.com"], "gateways": ["istio-system/public"],
               "http": [{"route": route}]}),
    )
    .await;
    mesh.create(
        Kind::DestinationRule,
        "frontend",
        true,
        json!({}),
        json!({"host": "frontend"}),
    )
    .await;
    let mut proxies = clients(&ns);
    proxies.push(gateway);
    let at_gateway = |compiled: &Compiled| -> BTreeSet<String> {
        let gateway = compiled.proxy("ingress");
        gateway
            .endpoints_of(&gateway.gateway_clusters_receiving("www.example.com", 80))
            .into_iter()
            .map(|(_, region)| region)
            .collect()
    };
    let planted = with_the_rule_drained_alone(&cluster, &world, &[])
        .await
        .compile(&proxies);
    let host = format!("frontend.{ns}.svc.cluster.local");
    assert_drained(&planted, &ns, &host);
    assert!(
        at_gateway(&planted).contains(DEGRADED),
        "the rule's drain leaves the gateway's route to frontend-{DEGRADED} as it was"
    );

    let before = stored(&cluster).await;
    let report = try_drain(&cluster).await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{report:#?}");
    let why = remediation_testkit::mesh::reason(outcome);
    assert!(
        why.contains("frontend-us-east-1") && why.contains("neither lever moves"),
        "{why}"
    );
    assert_eq!(stored(&cluster).await, before, "nothing changed");
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
async fn with_outlier_detection_on_the_other_regions_clients_keep_their_own_region() {
    // Found by the generated meshes: outlier detection makes each client prefer its own
    // region; a drain from every locality spread the clients of healthy regions out.
    let (cluster, world) = frontend("ivf-preference").await;
    let ns = cluster.namespace.clone();
    Mesh::new(&cluster)
        .create(
            Kind::DestinationRule,
            "frontend",
            true,
            json!({}),
            json!({"host": "frontend", "trafficPolicy": {
                "outlierDetection": {"consecutive5xxErrors": 7},
                "loadBalancer": {"simple": "LEAST_REQUEST",
                                 "localityLbSetting": {"enabled": true}}}}),
        )
        .await;
    let host = format!("frontend.{ns}.svc.cluster.local");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(
        regions_reached(&before, "same-ns-west", &host),
        BTreeSet::from(["us-west-2".to_owned()])
    );
    let change = drain(&cluster).await;
    assert!(change.contains("keep calling their own region"), "{change}");
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(after.findings(), Vec::<String>::new());
    for client in clients(&ns) {
        let reached = regions_reached(&after, client.name, &host);
        if client.region == DEGRADED {
            assert_eq!(
                reached,
                BTreeSet::from(["eu-west-1".to_owned(), "us-west-2".to_owned()]),
                "{}",
                client.name
            );
        } else {
            assert_eq!(
                reached,
                regions_reached(&before, client.name, &host),
                "{}: keeps its own region",
                client.name
            );
        }
    }
}

/// The share of `client`'s requests to `host` that go to a cluster with no endpoint for it.
fn share_to_nowhere(compiled: &Compiled, client: &str, host: &str) -> f64 {
    let proxy = compiled.proxy(client);
    let (mut lost, mut total) = (0u64, 0u64);
    for route in proxy.routes_to(host, PORT) {
        for cluster in &route.clusters {
            total += u64::from(cluster.weight);
            if proxy
                .endpoints_of(&BTreeSet::from([cluster.name.clone()]))
                .is_empty()
            {
                lost += u64::from(cluster.weight);
            }
        }
    }
    lost as f64 / total.max(1) as f64
}

#[tokio::test]
async fn a_split_moves_no_weight_to_a_region_some_clients_cannot_reach() {
    // Found by the generated meshes: the rule's `distribute` sends clients in Europe to
    // us-east-1 and eu-west-1 only, so for them the subset `west` has no endpoint; moving
    // us-east-1's share there would fail their requests.
    let (cluster, world) = frontend("ivf-stranded").await;
    let ns = cluster.namespace.clone();
    let mesh = Mesh::new(&cluster);
    mesh.create(
        Kind::DestinationRule,
        "frontend",
        true,
        json!({}),
        json!({"host": "frontend", "subsets": region_subsets(), "trafficPolicy": {
            "loadBalancer": {"localityLbSetting": {"distribute": [
                {"from": "eu-west-1/*", "to": {"us-east-1/*": 50, "eu-west-1/*": 50}}]}}}}),
    )
    .await;
    mesh.create(
        Kind::VirtualService,
        "frontend",
        true,
        json!({}),
        json!({"hosts": ["frontend"], "http": [{"name": "split", "route": [
            {"destination": {"host": "frontend", "subset": "east"}, "weight": 50},
            {"destination": {"host": "frontend", "subset": "west"}, "weight": 25},
            {"destination": {"host": "frontend", "subset": "eu"}, "weight": 25}]}]}),
    )
    .await;
    let host = format!("frontend.{ns}.svc.cluster.local");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(share_to_nowhere(&before, "other-ns-eu", &host), 0.25);
    let change = drain(&cluster).await;
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(after.findings(), Vec::<String>::new());
    for client in clients(&ns) {
        let reached = regions_reached(&after, client.name, &host);
        assert!(!reached.contains(DEGRADED), "{}: {reached:?}", client.name);
        assert!(
            share_to_nowhere(&after, client.name, &host)
                <= share_to_nowhere(&before, client.name, &host),
            "{}: no more of its requests go nowhere ({change})",
            client.name
        );
    }
    assert_eq!(
        regions_reached(&after, "other-ns-eu", &host),
        BTreeSet::from(["eu-west-1".to_owned()]),
        "us-east-1's share went to eu-west-1, which Europe's clients reach"
    );
}

#[tokio::test]
async fn a_route_to_the_whole_service_beside_a_region_split_is_drained_by_the_rule() {
    // Found by the generated meshes: the split was shifted but a tenant route to the
    // Service itself kept reaching the degraded region.
    let (cluster, world) = frontend("ivf-tenant-whole").await;
    let ns = cluster.namespace.clone();
    let mesh = Mesh::new(&cluster);
    mesh.create(
        Kind::DestinationRule,
        "frontend",
        true,
        json!({}),
        json!({"host": "frontend", "subsets": region_subsets()}),
    )
    .await;
    mesh.create(
        Kind::VirtualService,
        "frontend",
        true,
        json!({}),
        json!({"hosts": ["frontend"], "http": [
            {"name": "acme", "match": [{"headers": {"x-tenant": {"exact": "acme"}}}],
             "route": [{"destination": {"host": "frontend"}}]},
            {"name": "split", "route": [
                {"destination": {"host": "frontend", "subset": "east"}, "weight": 50},
                {"destination": {"host": "frontend", "subset": "west"}, "weight": 25},
                {"destination": {"host": "frontend", "subset": "eu"}, "weight": 25}]}]}),
    )
    .await;
    let host = format!("frontend.{ns}.svc.cluster.local");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert!(regions_reached(&before, "same-ns-west", &host).contains(DEGRADED));
    drain(&cluster).await;
    assert_drained(
        &world.with_stored(&cluster).await.compile(&clients(&ns)),
        &ns,
        &host,
    );
}

/// frontend with pods of v1 in every region and of v2 in `v2_regions`, in Istio's world and
/// ready on the API server (region-failover reads where they run); a rule with subsets by
/// version and a VirtualService whose tenant route goes to v2 alone.
async fn canary_in(prefix: &str, v2_regions: &[&str]) -> (TestCluster, World) {
    let cluster = TestCluster::start(prefix).await;
    let ns = cluster.namespace.clone();
    store_service(&cluster, "frontend", json!({"app": "frontend"}), PORT).await;
    remediation_testkit::endpoints::region_nodes(&cluster.client).await;
    let mut world = World::regional(&ns);
    let pods = REGIONS
        .iter()
        .map(|r| ("v1", *r))
        .chain(v2_regions.iter().map(|r| ("v2", *r)));
    for (i, (version, region)) in pods.enumerate() {
        world.pod(
            &ns,
            "frontend",
            json!({"version": version}),
            region,
            &format!("10.{}.0.{}", i + 1, 9),
        );
    }
    for pod in world.objects_of("Pod") {
        remediation_testkit::endpoints::store_pod(&cluster.client, &pod)
            .await
            .expect("pod");
    }
    let mesh = Mesh::new(&cluster);
    mesh.create(
        Kind::DestinationRule,
        "frontend",
        true,
        json!({}),
        json!({"host": "frontend", "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}}]}),
    )
    .await;
    mesh.create(
        Kind::VirtualService,
        "frontend",
        true,
        json!({}),
        json!({"hosts": ["frontend"], "http": [
            {"name": "tenant", "match": [{"headers": {"x-tenant": {"exact": "acme"}}}],
             "route": [{"destination": {"host": "frontend", "subset": "v2"}}]},
            {"route": [{"destination": {"host": "frontend"}}]}]}),
    )
    .await;
    (cluster, world)
}

#[tokio::test]
async fn a_drain_that_would_leave_a_routed_subset_no_endpoint_is_refused() {
    // Found by the generated meshes: v2 runs only in the degraded region, so the drain by
    // locality would leave the tenant route no endpoint (503s), reported as applied.
    let (cluster, world) = canary_in("ivf-v2-degraded", &[DEGRADED]).await;
    let ns = cluster.namespace.clone();
    let host = format!("frontend.{ns}.svc.cluster.local");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    for client in clients(&ns) {
        assert_eq!(share_to_nowhere(&before, client.name, &host), 0.0);
    }
    let stored_before = stored(&cluster).await;
    let report = try_drain(&cluster).await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{report:#?}");
    let why = remediation_testkit::mesh::reason(outcome);
    assert!(
        why.contains("subset v2") && why.contains("ready pods run in us-east-1 only"),
        "{why}"
    );
    assert_eq!(stored(&cluster).await, stored_before, "nothing changed");
}

#[tokio::test]
async fn a_subset_with_endpoints_in_a_healthy_region_keeps_them_through_the_drain() {
    let (cluster, world) = canary_in("ivf-v2-both", &[DEGRADED, "us-west-2"]).await;
    let ns = cluster.namespace.clone();
    let host = format!("frontend.{ns}.svc.cluster.local");
    drain(&cluster).await;
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
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
    let ns = cluster.namespace.clone();
    Mesh::new(&cluster)
        .api(Kind::DestinationRule)
        .patch(
            "frontend",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"trafficPolicy": {"outlierDetection": {
                "consecutive5xxErrors": 7, "interval": "10s", "baseEjectionTime": "30s"}}}})),
        )
        .await
        .expect("outlier detection on");
    let host = format!("frontend.{ns}.svc.cluster.local");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(share_to_nowhere(&before, "same-ns-east", &host), 0.0);
    let stored_before = stored(&cluster).await;
    let report = try_drain(&cluster).await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{report:#?}");
    let why = remediation_testkit::mesh::reason(outcome);
    assert!(
        why.contains("subset v2 has ready pods in us-west-2 only, none in"),
        "{why}"
    );
    assert_eq!(stored(&cluster).await, stored_before, "nothing changed");
}
