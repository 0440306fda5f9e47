//! region-failover judged by Istio: the objects the real API server stores before and after
//! the function acts, compiled by Istio's config compiler (`tests/istio-oracle`) for clients in
//! two namespaces and three regions. After the drain no client's calls reach the degraded
//! region while healthy regions exist, whether the mesh splits the service per region by
//! VirtualService (subsets or hosts) or not at all (the DestinationRule's locality settings).
//! Where a drain would leave some route nowhere to go, the function refuses: [`refusals`].

#[path = "istio_verdict_failover/refusals.rs"]
mod refusals;

use std::collections::{BTreeSet, HashMap};

use mesh_remediation::remediation::RegionFailover;
use mesh_remediation::remediation::region_failover::FailoverSettings;
use mesh_remediation::report::{InvocationReport, OutcomeKind};
use remediation_testkit::istio_oracle::{Compiled, REGIONS, World, clients, store_service};
use remediation_testkit::mesh::{HealthEndpoint, Kind, Mesh, assert_failed_saying, only};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

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
        let ip = format!("10.{}.0.9", i + 1);
        world.pod(&ns, "frontend", json!({ "region": region }), region, &ip);
    }
    (cluster, world)
}

/// [`frontend`] with its opted-in DestinationRule of `spec`.
async fn frontend_with_rule(prefix: &str, spec: Value) -> (TestCluster, World) {
    let (cluster, world) = frontend(prefix).await;
    Mesh::new(&cluster)
        .opted_in(Kind::DestinationRule, "frontend", spec)
        .await;
    (cluster, world)
}

/// [`frontend`] with its opted-in rule's subsets keyed on the region label, one per region.
async fn frontend_with_region_subsets(prefix: &str) -> (TestCluster, World) {
    frontend_with_rule(
        prefix,
        json!({"host": "frontend", "subsets": region_subsets()}),
    )
    .await
}

/// A VirtualService spec for frontend: the route `tenant` first, then the whole Service.
fn tenant_then_service(tenant: Value) -> Value {
    json!({"hosts": ["frontend"], "http": [
        tenant, {"route": [{"destination": {"host": "frontend"}}]}]})
}

/// frontend's fully qualified host.
fn host(cluster: &TestCluster) -> String {
    format!("frontend.{}.svc.cluster.local", cluster.namespace)
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

/// Regions the ingress gateway's calls for `www.example.com` reach.
fn at_gateway(compiled: &Compiled) -> BTreeSet<String> {
    let gateway = compiled.proxy("ingress");
    gateway
        .endpoints_of(&gateway.gateway_clusters_receiving("www.example.com", 80))
        .into_iter()
        .map(|(_, region)| region)
        .collect()
}

/// Subsets keyed on the region label, one per region.
fn region_subsets() -> Value {
    json!([{"name": "east", "labels": {"topology.kubernetes.io/region": "us-east-1"}},
           {"name": "west", "labels": {"topology.kubernetes.io/region": "us-west-2"}},
           {"name": "eu", "labels": {"topology.kubernetes.io/region": "eu-west-1"}}])
}

/// The HTTP route `split`: half to the degraded region's subset, a quarter to each other's.
fn region_split() -> Value {
    json!({"name": "split", "route": [
        {"destination": {"host": "frontend", "subset": "east"}, "weight": 50},
        {"destination": {"host": "frontend", "subset": "west"}, "weight": 25},
        {"destination": {"host": "frontend", "subset": "eu"}, "weight": 25}]})
}

/// The HTTP route `name`: the tenant acme's requests (by header) to `destination`.
fn tenant_route(name: &str, destination: Value) -> Value {
    json!({"name": name, "match": [{"headers": {"x-tenant": {"exact": "acme"}}}],
           "route": [{ "destination": destination }]})
}

/// A Service per region (`frontend-<region>`, selecting that region's pod) stored on the
/// API server; a route splitting 60/30/10 between them.
async fn per_region_hosts(cluster: &TestCluster) -> Vec<Value> {
    let mut route = Vec::new();
    for (region, weight) in REGIONS.iter().zip([60, 30, 10]) {
        let name = format!("frontend-{region}");
        let selector = json!({"app": "frontend", "region": region});
        store_service(cluster, &name, selector, PORT).await;
        route.push(json!({"destination": {"host": name}, "weight": weight}));
    }
    route
}

/// Runs region-failover for us-east-1 with us-west-2 answering its health check 200 and
/// eu-west-1 `eu_status`; the report.
async fn try_drain(cluster: &TestCluster, eu_status: u16) -> InvocationReport {
    let west = HealthEndpoint::start(200).await;
    let eu = HealthEndpoint::start(eu_status).await;
    let urls = format!("us-west-2={},eu-west-1={}", west.url(), eu.url());
    let vars: HashMap<&str, &str> = HashMap::from([("REGION_HEALTH_URLS", urls.as_str())]);
    let failover = RegionFailover::new(
        FailoverSettings::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned())).expect("settings"),
    );
    let event = events::fresh("region-failover-firing.json", &cluster.namespace);
    cluster.invoke(failover, &[], &event).await
}

/// Runs region-failover for us-east-1 with us-west-2 and eu-west-1 answering their health
/// checks; returns the change it reports.
async fn drain(cluster: &TestCluster) -> String {
    let report = try_drain(cluster, 200).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    only(&report).change.clone().expect("the change in words")
}

/// Drains us-east-1 and compiles the stored rules again, which Istio accepts without a
/// finding: the change in words and the config after.
async fn drain_and_compile(cluster: &TestCluster, world: &World) -> (String, Compiled) {
    let change = drain(cluster).await;
    let after = world.compile_stored(cluster).await;
    assert_eq!(after.findings(), Vec::<String>::new());
    (change, after)
}

/// Asserts region-failover, eu-west-1 answering `eu_status`, refuses saying each of `why`
/// and changes no stored VirtualService or DestinationRule.
async fn assert_drain_refused(cluster: &TestCluster, eu_status: u16, why: &[&str]) {
    let kinds = [Kind::VirtualService, Kind::DestinationRule];
    let before = Mesh::new(cluster).specs(&kinds).await;
    let report = try_drain(cluster, eu_status).await;
    assert_failed_saying(&report, why);
    let after = Mesh::new(cluster).specs(&kinds).await;
    assert_eq!(after, before, "nothing changed");
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
    let route = per_region_hosts(&cluster).await;
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "frontend",
            json!({"hosts": ["frontend"], "http": [{"route": route}]}),
        )
        .await;
    let host = host(&cluster);
    let before = world.compile_stored(&cluster).await;
    for client in clients(&ns) {
        let reached = regions_reached(&before, client.name, &host);
        assert_eq!(reached.len(), 3, "{}", client.name);
    }
    drain(&cluster).await;
    assert_drained(&world.compile_stored(&cluster).await, &ns, &host);
}

#[tokio::test]
async fn without_a_region_split_the_destination_rule_drains_the_region_for_every_client() {
    // A passive failover (what Istio's docs suggest), and a port whose settings inherit
    // nothing from the top level.
    let (cluster, world) = frontend_with_rule(
        "ivf-locality",
        json!({"host": "frontend", "trafficPolicy": {
            "tls": {"mode": "ISTIO_MUTUAL"},
            "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"},
            "loadBalancer": {"localityLbSetting": {"enabled": true,
                "failover": [{"from": "us-east-1", "to": "us-west-2"}]}},
            "portLevelSettings": [{"port": {"number": PORT}, "tls": {"mode": "ISTIO_MUTUAL"}}]}}),
    )
    .await;
    let before = world.compile_stored(&cluster).await;
    assert!(
        regions_reached(&before, "same-ns-east", &host(&cluster)).contains(DEGRADED),
        "the failover is passive: us-east-1 clients still call us-east-1 while its pods answer"
    );
    let (change, after) = drain_and_compile(&cluster, &world).await;
    assert!(change.contains("replaces the passive"), "{change}");
    assert!(change.contains("keep calling their own region"), "{change}");
    for client in clients(&cluster.namespace) {
        let reached = regions_reached(&after, client.name, &host(&cluster));
        let earlier = regions_reached(&before, client.name, &host(&cluster));
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
    let (cluster, mut world) = frontend_with_region_subsets("ivf-gateway").await;
    let ns = cluster.namespace.clone();
    let gateway = world.ingress_gateway("www.example.com");
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "public",
            json!({"hosts": ["www.example.com"], "gateways": ["istio-system/public"],
               "http": [{"route": [
                   {"destination": {"host": "frontend", "subset": "east"}, "weight": 60},
                   {"destination": {"host": "frontend", "subset": "west"}, "weight": 40}]}]}),
        )
        .await;
    let mut proxies = clients(&ns);
    proxies.push(gateway);
    let host = host(&cluster);
    let before = world.with_stored(&cluster).await.compile(&proxies);
    assert!(at_gateway(&before).contains(DEGRADED));
    assert!(regions_reached(&before, "same-ns-west", &host).contains(DEGRADED));

    drain(&cluster).await;
    let after = world.with_stored(&cluster).await.compile(&proxies);
    assert_eq!(at_gateway(&after), BTreeSet::from(["us-west-2".to_owned()]));
    assert_drained(&after, &ns, &host);
}

#[tokio::test]
async fn a_distribution_per_client_locality_is_kept_for_clients_that_never_reached_the_region() {
    let (cluster, world) = frontend_with_rule(
        "ivf-per-client",
        json!({"host": "frontend", "trafficPolicy": {"loadBalancer": {"localityLbSetting": {
            "distribute": [
                {"from": "eu-west-1/*", "to": {"eu-west-1/*": 100}},
                {"from": "us-east-1/*", "to": {"us-east-1/*": 60, "us-west-2/*": 40}},
                {"from": "us-west-2/*", "to": {"us-west-2/*": 100}}]}}}}),
    )
    .await;
    let host = host(&cluster);
    let before = world.compile_stored(&cluster).await;
    assert_eq!(
        regions_reached(&before, "other-ns-eu", &host),
        BTreeSet::from(["eu-west-1".to_owned()]),
        "Europe stays in Europe"
    );
    let (change, after) = drain_and_compile(&cluster, &world).await;
    assert!(change.contains("keeps its own"), "{change}");
    for client in clients(&cluster.namespace) {
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
async fn with_outlier_detection_on_the_other_regions_clients_keep_their_own_region() {
    // Found by the generated meshes: outlier detection makes each client prefer its own
    // region; a drain from every locality spread the clients of healthy regions out.
    let (cluster, world) = frontend_with_rule(
        "ivf-preference",
        json!({"host": "frontend", "trafficPolicy": {
            "outlierDetection": {"consecutive5xxErrors": 7},
            "loadBalancer": {"simple": "LEAST_REQUEST",
                             "localityLbSetting": {"enabled": true}}}}),
    )
    .await;
    let host = host(&cluster);
    let before = world.compile_stored(&cluster).await;
    assert_eq!(
        regions_reached(&before, "same-ns-west", &host),
        BTreeSet::from(["us-west-2".to_owned()])
    );
    let (change, after) = drain_and_compile(&cluster, &world).await;
    assert!(change.contains("keep calling their own region"), "{change}");
    for client in clients(&cluster.namespace) {
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
    let (cluster, world) = frontend_with_rule(
        "ivf-stranded",
        json!({"host": "frontend", "subsets": region_subsets(), "trafficPolicy": {
        "loadBalancer": {"localityLbSetting": {"distribute": [
            {"from": "eu-west-1/*", "to": {"us-east-1/*": 50, "eu-west-1/*": 50}}]}}}}),
    )
    .await;
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "frontend",
            json!({"hosts": ["frontend"], "http": [region_split()]}),
        )
        .await;
    let host = host(&cluster);
    let before = world.compile_stored(&cluster).await;
    assert_eq!(share_to_nowhere(&before, "other-ns-eu", &host), 0.25);
    let (change, after) = drain_and_compile(&cluster, &world).await;
    for client in clients(&cluster.namespace) {
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
    let (cluster, world) = frontend_with_region_subsets("ivf-tenant-whole").await;
    let tenant = tenant_route("acme", json!({"host": "frontend"}));
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "frontend",
            json!({"hosts": ["frontend"], "http": [tenant, region_split()]}),
        )
        .await;
    let host = host(&cluster);
    let before = world.compile_stored(&cluster).await;
    assert!(regions_reached(&before, "same-ns-west", &host).contains(DEGRADED));
    drain(&cluster).await;
    let after = world.compile_stored(&cluster).await;
    assert_drained(&after, &cluster.namespace, &host);
}
