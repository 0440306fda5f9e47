//! error-rollback judged by Istio: for each way a mesh can route a canary, the objects the
//! real API server stores before and after the function acts are compiled by Istio's config
//! compiler (`tests/istio-oracle`) for clients in two namespaces and three regions. After an
//! applied rollback no client's requests reach the failing version's pod; where Istio would
//! still send some of them there whatever the function changed, the function refuses and
//! changes nothing, and the oracle shows why ([`refusals`]).

#[path = "istio_verdict_rollback/refusals.rs"]
mod refusals;

use std::collections::BTreeSet;

use mesh_remediation::remediation::ErrorRollback;
use mesh_remediation::report::{InvocationReport, OutcomeKind};
use remediation_testkit::endpoints::{region_nodes, store_pod};
use remediation_testkit::istio_oracle::{Client, Compiled, World, clients, store_service};
use remediation_testkit::mesh::{Kind, Mesh, assert_failed_saying, only, spec_text};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const PORT: u16 = 8080;
const FAILING_POD: &str = "10.1.0.2";
const STABLE_PODS: [&str; 2] = ["10.1.0.1", "10.2.0.1"];

/// checkout's pods: v1 in us-east-1 and us-west-2, v2 (the failing canary) in us-east-1;
/// the Service `checkout` (every version) is stored on the API server.
async fn checkout(prefix: &str) -> (TestCluster, World) {
    let cluster = TestCluster::start(prefix).await;
    let ns = cluster.namespace.clone();
    store_service(&cluster, "checkout", json!({"app": "checkout"}), PORT).await;
    let mut world = World::regional(&ns);
    for (version, region, ip) in [
        ("v1", "us-east-1", STABLE_PODS[0]),
        ("v1", "us-west-2", STABLE_PODS[1]),
        ("v2", "us-east-1", FAILING_POD),
    ] {
        world.pod(&ns, "checkout", json!({"version": version}), region, ip);
    }
    (cluster, world)
}

/// Checkout's rule with `subsets` (name, version), opted in.
async fn subsets_of(cluster: &TestCluster, subsets: &[(&str, &str)]) {
    let subsets: Vec<Value> = subsets
        .iter()
        .map(|(name, version)| json!({"name": name, "labels": {"version": version}}))
        .collect();
    Mesh::new(cluster)
        .opted_in(
            Kind::DestinationRule,
            "checkout",
            json!({"host": "checkout", "subsets": subsets}),
        )
        .await;
}

/// [`checkout`] with its rule's subsets `stable` (version v1) and `canary` (version v2):
/// named unlike the versions.
async fn checkout_with_subsets(prefix: &str) -> (TestCluster, World) {
    let (cluster, world) = checkout(prefix).await;
    subsets_of(&cluster, &[("stable", "v1"), ("canary", "v2")]).await;
    (cluster, world)
}

/// The opted-in VirtualService `checkout` for the host `checkout`, with `annotations` and
/// the HTTP routes `http`.
async fn route_checkout(cluster: &TestCluster, annotations: Value, http: Value) -> Value {
    let spec = json!({"hosts": ["checkout"], "http": http});
    Mesh::new(cluster)
        .create(Kind::VirtualService, "checkout", true, annotations, spec)
        .await
}

/// checkout's rule with the subsets `stable` (v1), `canary` (v2) and `v0_subset` (v0), and
/// its route split `weights` between `stable` and `canary`, the VirtualService naming
/// `stable_subset` its stable subset.
async fn with_v0_subset(
    cluster: &TestCluster,
    v0_subset: &str,
    stable_subset: &str,
    (stable, canary): (i64, i64),
) {
    subsets_of(
        cluster,
        &[("stable", "v1"), ("canary", "v2"), (v0_subset, "v0")],
    )
    .await;
    let annotations = json!({"auto-remediation.io/stable-subset": stable_subset});
    let http = json!([split("checkout", stable, canary)]);
    route_checkout(cluster, annotations, http).await;
}

fn split(host: &str, stable: i64, canary: i64) -> Value {
    json!({"name": "split", "route": [
        {"destination": {"host": host, "subset": "stable"}, "weight": stable},
        {"destination": {"host": host, "subset": "canary"}, "weight": canary}]})
}

fn fqdn(ns: &str) -> String {
    format!("checkout.{ns}.svc.cluster.local")
}

/// What Istio compiles for `proxies` from `world` and what the API server stores.
async fn compile(cluster: &TestCluster, world: &World, proxies: &[Client]) -> Compiled {
    world.with_stored(cluster).await.compile(proxies)
}

/// The pod IPs each client's requests for checkout reach.
fn reached(compiled: &Compiled, ns: &str, client: &Client) -> BTreeSet<String> {
    compiled
        .proxy(client.name)
        .endpoints_receiving(&fqdn(ns), PORT)
        .into_iter()
        .map(|(ip, _)| ip)
        .collect()
}

fn assert_every_client_reaches_the_canary(compiled: &Compiled, ns: &str) {
    for client in clients(ns) {
        let reached = reached(compiled, ns, &client);
        assert!(
            reached.contains(FAILING_POD),
            "{}: {reached:?}",
            client.name
        );
    }
}

fn assert_only_stable_pods(compiled: &Compiled, ns: &str) {
    for client in clients(ns) {
        assert_eq!(
            reached(compiled, ns, &client),
            STABLE_PODS.iter().map(|p| (*p).to_owned()).collect(),
            "{}: only the stable version's pods take traffic",
            client.name
        );
    }
}

/// The pod IPs the ingress gateway's requests for `shop.example.com` reach.
fn at_gateway(compiled: &Compiled) -> BTreeSet<String> {
    let gateway = compiled.proxy("ingress");
    let clusters = gateway.gateway_clusters_receiving("shop.example.com", 80);
    gateway
        .endpoints_of(&clusters)
        .into_iter()
        .map(|(ip, _)| ip)
        .collect()
}

async fn roll_back(cluster: &TestCluster) -> InvocationReport {
    let event = events::fresh("error-rollback-firing.json", &cluster.namespace);
    cluster.invoke(ErrorRollback, &[], &event).await
}

/// Sends `event` to error-rollback and asserts it applied.
async fn applied(cluster: &TestCluster, event: &Value) {
    let report = cluster.invoke(ErrorRollback, &[], event).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
}

/// Rolls back (the alert's sample), asserts it applied, and that every client then reaches
/// the stable version's pods only.
async fn assert_rolled_back(cluster: &TestCluster, world: &World) {
    let event = events::fresh("error-rollback-firing.json", &cluster.namespace);
    applied(cluster, &event).await;
    let ns = &cluster.namespace;
    assert_only_stable_pods(&compile(cluster, world, &clients(ns)).await, ns);
}

/// The function refuses with `expected` in its reason and the stored objects stay as they were.
async fn assert_refused(cluster: &TestCluster, expected: &str) {
    let before = Mesh::new(cluster).specs(&[Kind::VirtualService]).await;
    assert_failed_saying(&roll_back(cluster).await, &[expected]);
    let after = Mesh::new(cluster).specs(&[Kind::VirtualService]).await;
    assert_eq!(after, before, "nothing changed");
}

#[tokio::test]
async fn subsets_named_unlike_versions_and_a_header_matched_canary_route_are_rolled_back() {
    let (cluster, world) = checkout_with_subsets("ivr-names").await;
    let ns = cluster.namespace.clone();
    route_checkout(
        &cluster,
        json!({}),
        json!([
            {"name": "testers", "match": [{"headers": {"x-canary": {"exact": "1"}}}],
             "route": [{"destination": {"host": "checkout", "subset": "canary"}}]},
            split("checkout", 80, 20)]),
    )
    .await;
    let before = compile(&cluster, &world, &clients(&ns)).await;
    assert_eq!(before.findings(), Vec::<String>::new());
    assert_every_client_reaches_the_canary(&before, &ns);

    let report = roll_back(&cluster).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");

    let after = compile(&cluster, &world, &clients(&ns)).await;
    assert_eq!(after.findings(), Vec::<String>::new());
    assert_only_stable_pods(&after, &ns);
    // The header-matched route, which the tests' own traffic takes, too.
    let testers = after
        .proxy("same-ns-east")
        .routes_to(&fqdn(&ns), PORT)
        .into_iter()
        .filter(|r| {
            r.route_match
                .as_ref()
                .is_some_and(|m| m.get("headers").is_some())
        })
        .flat_map(|r| r.clusters.iter().filter(|c| c.weight > 0))
        .map(|c| c.name.clone())
        .collect::<Vec<_>>();
    assert_eq!(
        testers,
        vec![format!("outbound|{PORT}|stable|{}", fqdn(&ns))]
    );
}

#[tokio::test]
async fn host_splits_are_told_apart_by_the_services_selectors() {
    let (cluster, world) = checkout("ivr-hosts").await;
    // Neither host name says its version: the Services' selectors do.
    for (name, version) in [("checkout-blue", "v1"), ("checkout-green", "v2")] {
        let selector = json!({"app": "checkout", "version": version});
        store_service(&cluster, name, selector, PORT).await;
    }
    route_checkout(
        &cluster,
        json!({}),
        json!([{"route": [
            {"destination": {"host": "checkout-blue"}, "weight": 70},
            {"destination": {"host": "checkout-green"}, "weight": 30}]}]),
    )
    .await;
    let before = compile(&cluster, &world, &clients(&cluster.namespace)).await;
    assert_every_client_reaches_the_canary(&before, &cluster.namespace);
    assert_rolled_back(&cluster, &world).await;
}

#[tokio::test]
async fn fully_qualified_hosts_are_rolled_back() {
    let (cluster, world) = checkout_with_subsets("ivr-fqdn").await;
    let ns = cluster.namespace.clone();
    let host = fqdn(&ns);
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "checkout",
            json!({"hosts": [host], "http": [split(&host, 80, 20)]}),
        )
        .await;
    assert_every_client_reaches_the_canary(&compile(&cluster, &world, &clients(&ns)).await, &ns);
    assert_rolled_back(&cluster, &world).await;
}

#[tokio::test]
async fn a_gateway_only_virtual_service_is_refused_and_rolled_back_once_mesh_is_routed_too() {
    let (cluster, mut world) = checkout_with_subsets("ivr-gateway").await;
    let ns = cluster.namespace.clone();
    let mut proxies = clients(&ns);
    proxies.push(world.ingress_gateway("shop.example.com"));
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "public",
            json!({"hosts": ["shop.example.com"], "gateways": ["istio-system/public"],
                   "http": [split("checkout", 80, 20)]}),
        )
        .await;
    let before = compile(&cluster, &world, &proxies).await;
    assert!(at_gateway(&before).contains(FAILING_POD));
    // Sidecars do not take a gateway-bound VirtualService: they reach every version.
    assert_every_client_reaches_the_canary(&before, &ns);
    assert_refused(&cluster, "sidecars calling").await;

    route_checkout(&cluster, json!({}), json!([split("checkout", 80, 20)])).await;
    let report = roll_back(&cluster).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    let after = compile(&cluster, &world, &proxies).await;
    assert_eq!(
        at_gateway(&after),
        STABLE_PODS.iter().map(|p| (*p).to_owned()).collect()
    );
    assert_only_stable_pods(&after, &ns);
}

#[tokio::test]
async fn a_delegate_virtual_service_is_rolled_back() {
    let (cluster, world) = checkout_with_subsets("ivr-delegate").await;
    let ns = cluster.namespace.clone();
    let mesh = Mesh::new(&cluster);
    mesh.not_opted_in(
        Kind::VirtualService,
        "checkout",
        json!({"hosts": ["checkout"], "http": [{"delegate": {"name": "checkout-routes", "namespace": ns}}]}),
    )
    .await;
    mesh.opted_in(
        Kind::VirtualService,
        "checkout-routes",
        json!({"http": [split("checkout", 80, 20)]}),
    )
    .await;
    let before = compile(&cluster, &world, &clients(&ns)).await;
    assert_every_client_reaches_the_canary(&before, &ns);
    assert_rolled_back(&cluster, &world).await;
}

#[tokio::test]
async fn a_100_kib_virtual_service_is_rolled_back_and_reverted_exactly() {
    let (cluster, world) = checkout_with_subsets("ivr-large").await;
    let ns = cluster.namespace.clone();
    // Hundreds of header-matched routes to the stable version, then the canary split.
    let mut http: Vec<Value> = (0..660)
        .map(|i| {
            json!({"name": format!("tenant-{i:04}"),
                   "match": [{"headers": {"x-tenant": {"exact": format!("tenant-{i:04}-of-the-shop")}}}],
                   "route": [{"destination": {"host": "checkout", "subset": "stable"}}]})
        })
        .collect();
    http.push(split("checkout", 80, 20));
    // As `kubectl apply` stores it: the whole object again in an annotation, so a record
    // holding the routes twice more would cross the API server's 256 KiB annotation limit.
    let spec = json!({"hosts": ["checkout"], "http": http});
    let last_applied = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "checkout", "namespace": ns}, "spec": spec});
    let applied_annotation =
        json!({"kubectl.kubernetes.io/last-applied-configuration": last_applied.to_string()});
    let stored = route_checkout(&cluster, applied_annotation, json!(http)).await;
    let size = spec_text(&stored).len();
    assert!(size >= 100 * 1024, "the VirtualService is {size} bytes");
    let record_size = |object: &Value| {
        object["metadata"]["annotations"]["auto-remediation.io/error-rollback"]
            .as_str()
            .map_or(0, str::len)
    };
    assert_every_client_reaches_the_canary(&compile(&cluster, &world, &clients(&ns)).await, &ns);

    assert_rolled_back(&cluster, &world).await;
    let mesh = Mesh::new(&cluster);
    let changed = mesh.get(Kind::VirtualService, "checkout").await;
    assert!(
        record_size(&changed) < 4096,
        "the record holds the changed routes only: {} bytes",
        record_size(&changed)
    );

    applied(&cluster, &events::fresh("error-rollback-revert.json", &ns)).await;
    let now = mesh.get(Kind::VirtualService, "checkout").await;
    assert_eq!(
        spec_text(&now),
        spec_text(&stored),
        "restored byte for byte"
    );
}

#[tokio::test]
async fn an_annotated_stable_subset_no_route_has_yet_takes_the_traffic_and_the_revert_restores() {
    let (cluster, mut world) = checkout("ivr-annotated").await;
    let ns = cluster.namespace.clone();
    // A third version, v0, the one the owner names stable; no route sends to it yet.
    let v0 = json!({"version": "v0"});
    world.pod(&ns, "checkout", v0, "us-west-2", "10.2.0.5");
    with_v0_subset(&cluster, "previous", "previous", (50, 50)).await;
    let before = compile(&cluster, &world, &clients(&ns)).await;
    applied(&cluster, &events::fresh("error-rollback-firing.json", &ns)).await;
    let after = compile(&cluster, &world, &clients(&ns)).await;
    assert_eq!(after.findings(), Vec::<String>::new());
    for client in clients(&ns) {
        assert_eq!(
            reached(&after, &ns, &client),
            BTreeSet::from(["10.2.0.5".to_owned()]),
            "{}: the annotated stable subset takes every request",
            client.name
        );
    }
    let mut revert = events::fresh("error-rollback-revert.json", &ns);
    revert["revert"]["namespace"] = json!(ns);
    applied(&cluster, &revert).await;
    let restored = compile(&cluster, &world, &clients(&ns)).await;
    for client in clients(&ns) {
        assert_eq!(
            reached(&restored, &ns, &client),
            reached(&before, &ns, &client),
            "{}: the revert gives back what Istio compiled before",
            client.name
        );
    }
}

/// checkout's pods ready on the API server too (error-rollback reads them), and a subset
/// `old` for version v0, which has no pod; the VirtualService names `stable` its stable
/// subset.
async fn with_stored_pods(prefix: &str, stable: &str) -> (TestCluster, World) {
    let (cluster, world) = checkout(prefix).await;
    region_nodes(&cluster.client).await;
    for pod in world.objects_of("Pod") {
        store_pod(&cluster.client, &pod).await.expect("pod");
    }
    with_v0_subset(&cluster, "old", stable, (90, 10)).await;
    (cluster, world)
}

#[tokio::test]
async fn an_annotated_stable_subset_without_a_ready_pod_is_refused() {
    let (cluster, world) = with_stored_pods("ivr-no-pods", "old").await;
    let ns = cluster.namespace.clone();
    let before = compile(&cluster, &world, &clients(&ns)).await;
    assert_every_client_reaches_the_canary(&before, &ns);
    assert_refused(&cluster, "the annotated stable subset old has no ready pod").await;
}

#[tokio::test]
async fn with_its_pods_read_a_stable_subset_that_has_them_takes_the_traffic() {
    let (cluster, world) = with_stored_pods("ivr-pods", "stable").await;
    assert_rolled_back(&cluster, &world).await;
}
