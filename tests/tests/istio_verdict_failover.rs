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
    assert!(
        change.contains(&format!("trafficPolicy port {PORT}")),
        "{change}"
    );
    assert_drained(
        &world.with_stored(&cluster).await.compile(&clients(&ns)),
        &ns,
        &host,
    );
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
