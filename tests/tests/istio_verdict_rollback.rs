//! error-rollback judged by Istio: for each way a mesh can route a canary, the objects the
//! real API server stores before and after the function acts are compiled by Istio's config
//! compiler (`tests/istio-oracle`) for clients in two namespaces and three regions. After an
//! applied rollback no client's requests reach the failing version's pod; where Istio would
//! still send some of them there whatever the function changed, the function refuses and
//! changes nothing, and the oracle shows why.

use std::collections::BTreeSet;

use mesh_remediation::remediation::ErrorRollback;
use mesh_remediation::report::{InvocationReport, OutcomeKind};
use remediation_testkit::istio_oracle::{
    CLIENTS_NS, Client, Compiled, World, clients, store_service,
};
use remediation_testkit::mesh::{Kind, Mesh, only, reason, spec_text};
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

/// Subsets `stable` (version v1) and `canary` (version v2): named unlike the versions.
async fn subsets(cluster: &TestCluster) {
    Mesh::new(cluster)
        .opted_in(
            Kind::DestinationRule,
            "checkout",
            json!({"host": "checkout", "subsets": [
                {"name": "stable", "labels": {"version": "v1"}},
                {"name": "canary", "labels": {"version": "v2"}}]}),
        )
        .await;
}

fn split(host: &str, stable: i64, canary: i64) -> Value {
    json!({"name": "split", "route": [
        {"destination": {"host": host, "subset": "stable"}, "weight": stable},
        {"destination": {"host": host, "subset": "canary"}, "weight": canary}]})
}

fn fqdn(ns: &str) -> String {
    format!("checkout.{ns}.svc.cluster.local")
}

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

async fn roll_back(cluster: &TestCluster) -> InvocationReport {
    let event = events::fresh("error-rollback-firing.json", &cluster.namespace);
    cluster.invoke(ErrorRollback, &[], &event).await
}

async fn stored_specs(cluster: &TestCluster) -> Vec<String> {
    let list = Mesh::new(cluster)
        .api(Kind::VirtualService)
        .list(&Default::default())
        .await
        .expect("list");
    list.items
        .iter()
        .map(|o| spec_text(&serde_json::to_value(o).expect("json")))
        .collect()
}

/// The function refuses with `expected` in its reason and the stored objects stay as they were.
async fn assert_refused(cluster: &TestCluster, expected: &str) {
    let before = stored_specs(cluster).await;
    let report = roll_back(cluster).await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{report:#?}");
    assert!(reason(outcome).contains(expected), "{report:#?}");
    assert_eq!(stored_specs(cluster).await, before, "nothing changed");
}

#[tokio::test]
async fn subsets_named_unlike_versions_and_a_header_matched_canary_route_are_rolled_back() {
    let (cluster, world) = checkout("ivr-names").await;
    let ns = cluster.namespace.clone();
    subsets(&cluster).await;
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "checkout",
            json!({"hosts": ["checkout"], "http": [
                {"name": "testers", "match": [{"headers": {"x-canary": {"exact": "1"}}}],
                 "route": [{"destination": {"host": "checkout", "subset": "canary"}}]},
                split("checkout", 80, 20)]}),
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
    let ns = cluster.namespace.clone();
    // Neither host name says its version: the Services' selectors do.
    store_service(
        &cluster,
        "checkout-blue",
        json!({"app": "checkout", "version": "v1"}),
        PORT,
    )
    .await;
    store_service(
        &cluster,
        "checkout-green",
        json!({"app": "checkout", "version": "v2"}),
        PORT,
    )
    .await;
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "checkout",
            json!({"hosts": ["checkout"], "http": [{"route": [
                {"destination": {"host": "checkout-blue"}, "weight": 70},
                {"destination": {"host": "checkout-green"}, "weight": 30}]}]}),
        )
        .await;
    let before = compile(&cluster, &world, &clients(&ns)).await;
    assert_every_client_reaches_the_canary(&before, &ns);
    let report = roll_back(&cluster).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    assert_only_stable_pods(&compile(&cluster, &world, &clients(&ns)).await, &ns);
}

#[tokio::test]
async fn fully_qualified_hosts_are_rolled_back() {
    let (cluster, world) = checkout("ivr-fqdn").await;
    let ns = cluster.namespace.clone();
    subsets(&cluster).await;
    let host = fqdn(&ns);
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "checkout",
            json!({"hosts": [host], "http": [split(&host, 80, 20)]}),
        )
        .await;
    assert_every_client_reaches_the_canary(&compile(&cluster, &world, &clients(&ns)).await, &ns);
    let report = roll_back(&cluster).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    assert_only_stable_pods(&compile(&cluster, &world, &clients(&ns)).await, &ns);
}

#[tokio::test]
async fn a_namespace_qualified_host_is_no_service_host_and_is_refused() {
    let (cluster, world) = checkout("ivr-nsq").await;
    let ns = cluster.namespace.clone();
    subsets(&cluster).await;
    let qualified = format!("checkout.{ns}");
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "checkout",
            json!({"hosts": [qualified], "http": [split("checkout", 80, 20)]}),
        )
        .await;
    // Istio takes `checkout.<ns>` literally: the VirtualService routes no Service, and every
    // client reaches both versions through the Service's default route.
    let before = compile(&cluster, &world, &clients(&ns)).await;
    for client in clients(&ns) {
        let clusters = before
            .proxy(client.name)
            .clusters_receiving(&fqdn(&ns), PORT);
        assert_eq!(
            clusters,
            BTreeSet::from([format!("outbound|{PORT}||{}", fqdn(&ns))]),
            "{}",
            client.name
        );
    }
    assert_every_client_reaches_the_canary(&before, &ns);
    assert_refused(&cluster, "would still reach version v2").await;
}

#[tokio::test]
async fn a_virtual_service_exported_only_to_its_namespace_is_refused() {
    let (cluster, world) = checkout("ivr-export").await;
    let ns = cluster.namespace.clone();
    subsets(&cluster).await;
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "checkout",
            json!({"hosts": ["checkout"], "exportTo": ["."], "http": [split("checkout", 100, 0)]}),
        )
        .await;
    // Even at 100/0, clients in other namespaces do not see the VirtualService and reach
    // the canary through the Service: rolling back this object cannot stop that.
    let compiled = compile(&cluster, &world, &clients(&ns)).await;
    for client in clients(&ns) {
        let reaches = reached(&compiled, &ns, &client).contains(FAILING_POD);
        assert_eq!(reaches, client.namespace == CLIENTS_NS, "{}", client.name);
    }
    assert_refused(&cluster, "exported to every namespace").await;
}

#[tokio::test]
async fn a_gateway_only_virtual_service_is_refused_and_rolled_back_once_mesh_is_routed_too() {
    let (cluster, mut world) = checkout("ivr-gateway").await;
    let ns = cluster.namespace.clone();
    subsets(&cluster).await;
    let mut proxies = clients(&ns);
    proxies.push(world.ingress_gateway("shop.example.com"));
    let mesh = Mesh::new(&cluster);
    mesh.opted_in(
        Kind::VirtualService,
        "public",
        json!({"hosts": ["shop.example.com"], "gateways": ["istio-system/public"],
               "http": [split("checkout", 80, 20)]}),
    )
    .await;
    let at_gateway = |compiled: &Compiled| -> BTreeSet<String> {
        let gateway = compiled.proxy("ingress");
        gateway
            .endpoints_of(&gateway.gateway_clusters_receiving("shop.example.com", 80))
            .into_iter()
            .map(|(ip, _)| ip)
            .collect()
    };
    let before = compile(&cluster, &world, &proxies).await;
    assert!(at_gateway(&before).contains(FAILING_POD));
    // Sidecars do not take a gateway-bound VirtualService: they reach every version.
    assert_every_client_reaches_the_canary(&before, &ns);
    assert_refused(&cluster, "sidecars calling").await;

    mesh.opted_in(
        Kind::VirtualService,
        "checkout",
        json!({"hosts": ["checkout"], "http": [split("checkout", 80, 20)]}),
    )
    .await;
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
async fn two_virtual_services_for_one_sidecar_host_are_refused() {
    let (cluster, world) = checkout("ivr-twins").await;
    let ns = cluster.namespace.clone();
    subsets(&cluster).await;
    let mesh = Mesh::new(&cluster);
    for (name, canary) in [("checkout-a", 20), ("checkout-b", 50)] {
        mesh.opted_in(
            Kind::VirtualService,
            name,
            json!({"hosts": ["checkout"], "http": [split("checkout", 100 - canary, canary)]}),
        )
        .await;
    }
    let compiled = compile(&cluster, &world, &clients(&ns)).await;
    let weights: Vec<Vec<u32>> = compiled
        .proxy("same-ns-east")
        .routes_to(&fqdn(&ns), PORT)
        .iter()
        .map(|r| r.clusters.iter().map(|c| c.weight).collect())
        .collect();
    assert_eq!(
        weights.len(),
        1,
        "Istio gives sidecars the routes of only one of the two: {weights:?}"
    );
    assert_refused(&cluster, "which one is undefined").await;
}

#[tokio::test]
async fn a_delegate_virtual_service_is_rolled_back() {
    let (cluster, world) = checkout("ivr-delegate").await;
    let ns = cluster.namespace.clone();
    subsets(&cluster).await;
    let mesh = Mesh::new(&cluster);
    mesh.not_opted_in(Kind::VirtualService, "checkout", json!({"hosts": ["checkout"], "http": [{"delegate": {"name": "checkout-routes", "namespace": ns}}]}))
    .await;
    mesh.opted_in(
        Kind::VirtualService,
        "checkout-routes",
        json!({"http": [split("checkout", 80, 20)]}),
    )
    .await;
    let before = compile(&cluster, &world, &clients(&ns)).await;
    assert_every_client_reaches_the_canary(&before, &ns);
    let report = roll_back(&cluster).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    assert_only_stable_pods(&compile(&cluster, &world, &clients(&ns)).await, &ns);
}

#[tokio::test]
async fn a_100_kib_virtual_service_is_rolled_back_and_reverted_exactly() {
    let (cluster, world) = checkout("ivr-large").await;
    let ns = cluster.namespace.clone();
    subsets(&cluster).await;
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
    let stored = Mesh::new(&cluster)
        .create(
            Kind::VirtualService,
            "checkout",
            true,
            json!({"kubectl.kubernetes.io/last-applied-configuration": last_applied.to_string()}),
            spec,
        )
        .await;
    let size = spec_text(&stored).len();
    assert!(size >= 100 * 1024, "the VirtualService is {size} bytes");
    let record_size = |object: &Value| {
        object["metadata"]["annotations"]["auto-remediation.io/error-rollback"]
            .as_str()
            .map_or(0, str::len)
    };
    assert_every_client_reaches_the_canary(&compile(&cluster, &world, &clients(&ns)).await, &ns);

    let report = roll_back(&cluster).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    assert_only_stable_pods(&compile(&cluster, &world, &clients(&ns)).await, &ns);
    let changed = Mesh::new(&cluster)
        .get(Kind::VirtualService, "checkout")
        .await;
    assert!(
        record_size(&changed) < 4096,
        "the record holds the changed routes only: {} bytes",
        record_size(&changed)
    );

    let revert = events::fresh("error-rollback-revert.json", &ns);
    let report = cluster.invoke(ErrorRollback, &[], &revert).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    let now = Mesh::new(&cluster)
        .get(Kind::VirtualService, "checkout")
        .await;
    assert_eq!(
        spec_text(&now),
        spec_text(&stored),
        "restored byte for byte"
    );
}

// ---- What still reaches a version, for every client: Istio's resolution.

#[tokio::test]
async fn an_annotated_stable_subset_no_route_has_yet_takes_the_traffic_and_the_revert_restores() {
    let (cluster, mut world) = checkout("ivr-annotated").await;
    let ns = cluster.namespace.clone();
    // A third version, v0, the one the owner names stable; no route sends to it yet.
    world.pod(
        &ns,
        "checkout",
        json!({"version": "v0"}),
        "us-west-2",
        "10.2.0.5",
    );
    Mesh::new(&cluster)
        .opted_in(
            Kind::DestinationRule,
            "checkout",
            json!({"host": "checkout", "subsets": [
                {"name": "stable", "labels": {"version": "v1"}},
                {"name": "canary", "labels": {"version": "v2"}},
                {"name": "previous", "labels": {"version": "v0"}}]}),
        )
        .await;
    Mesh::new(&cluster)
        .create(
            Kind::VirtualService,
            "checkout",
            true,
            json!({"auto-remediation.io/stable-subset": "previous"}),
            json!({"hosts": ["checkout"], "http": [split("checkout", 50, 50)]}),
        )
        .await;
    let before = compile(&cluster, &world, &clients(&ns)).await;
    let report = roll_back(&cluster).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
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
    let report = cluster.invoke(ErrorRollback, &[], &revert).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
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

#[tokio::test]
async fn a_mirror_to_the_failing_version_is_refused_and_nothing_changes() {
    let (cluster, _world) = checkout("ivr-mirror").await;
    subsets(&cluster).await;
    let mut route = split("checkout", 80, 20);
    route["mirror"] = json!({"host": "checkout", "subset": "canary"});
    route["mirrorPercentage"] = json!({"value": 10.0});
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "checkout",
            json!({"hosts": ["checkout"], "http": [route]}),
        )
        .await;
    assert_refused(&cluster, "mirrors requests to").await;
}

#[tokio::test]
async fn a_client_namespace_own_virtual_service_to_the_failing_version_is_refused_and_named() {
    let (cluster, _world) = checkout("ivr-client-vs").await;
    let ns = cluster.namespace.clone();
    subsets(&cluster).await;
    let mesh = Mesh::new(&cluster);
    mesh.opted_in(
        Kind::VirtualService,
        "checkout",
        json!({"hosts": ["checkout"], "http": [split("checkout", 80, 20)]}),
    )
    .await;
    // The web team routes checkout for their own clients (exportTo "."), canary included.
    let web = format!("{ns}-web");
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": web}})).expect("namespace");
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(cluster.client.clone())
        .create(&Default::default(), &namespace)
        .await
        .expect("create namespace");
    let theirs: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "checkout-for-web", "namespace": web,
                     "labels": {"auto_remediation": "active"}},
        "spec": {"hosts": [fqdn(&ns)], "exportTo": ["."], "http": [split(&fqdn(&ns), 50, 50)]}}))
    .expect("vs");
    kube::Api::<kube::api::DynamicObject>::namespaced_with(
        cluster.client.clone(),
        &web,
        &Kind::VirtualService.resource(),
    )
    .create(&Default::default(), &theirs)
    .await
    .expect("create");
    assert_refused(&cluster, &format!("{web}/checkout-for-web")).await;
}

#[tokio::test]
async fn when_one_virtual_service_cannot_be_rolled_back_none_is() {
    // Found by the generated meshes: `checkout` has no stable destination to roll back to,
    // while `public` (another host, routing to checkout) could be; rolling back only
    // `public` would leave the sidecars on v2 and change an object of a failed alert.
    let (cluster, _world) = checkout("ivr-all-or-nothing").await;
    let ns = cluster.namespace.clone();
    Mesh::new(&cluster)
        .opted_in(
            Kind::DestinationRule,
            "checkout",
            json!({"host": "checkout", "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}}]}),
        )
        .await;
    let mesh = Mesh::new(&cluster);
    mesh.opted_in(
        Kind::VirtualService,
        "checkout",
        json!({"hosts": ["checkout"], "http": [
            {"route": [{"destination": {"host": "checkout", "subset": "v2"}}]}]}),
    )
    .await;
    mesh.opted_in(
        Kind::VirtualService,
        "public",
        json!({"hosts": [format!("{ns}.example.com")], "http": [{"route": [
            {"destination": {"host": "checkout", "subset": "v1"}, "weight": 0},
            {"destination": {"host": "checkout", "subset": "v2"}, "weight": 100}]}]}),
    )
    .await;
    assert_refused(&cluster, "VirtualService").await;
}

/// checkout's pods ready on the API server too (error-rollback reads them), and a subset
/// `old` for version v0, which has no pod.
async fn with_stored_pods(cluster: &TestCluster, world: &World) {
    remediation_testkit::endpoints::region_nodes(&cluster.client).await;
    for pod in world.objects_of("Pod") {
        remediation_testkit::endpoints::store_pod(&cluster.client, &pod)
            .await
            .expect("pod");
    }
    Mesh::new(cluster)
        .opted_in(
            Kind::DestinationRule,
            "checkout",
            json!({"host": "checkout", "subsets": [
                {"name": "stable", "labels": {"version": "v1"}},
                {"name": "canary", "labels": {"version": "v2"}},
                {"name": "old", "labels": {"version": "v0"}}]}),
        )
        .await;
}

#[tokio::test]
async fn an_annotated_stable_subset_without_a_ready_pod_is_refused() {
    let (cluster, world) = checkout("ivr-no-pods").await;
    let ns = cluster.namespace.clone();
    with_stored_pods(&cluster, &world).await;
    Mesh::new(&cluster)
        .create(
            Kind::VirtualService,
            "checkout",
            true,
            json!({"auto-remediation.io/stable-subset": "old"}),
            json!({"hosts": ["checkout"], "http": [split("checkout", 90, 10)]}),
        )
        .await;
    let before = compile(&cluster, &world, &clients(&ns)).await;
    assert_every_client_reaches_the_canary(&before, &ns);
    assert_refused(&cluster, "the annotated stable subset old has no ready pod").await;
}

#[tokio::test]
async fn with_its_pods_read_a_stable_subset_that_has_them_takes_the_traffic() {
    let (cluster, world) = checkout("ivr-pods").await;
    let ns = cluster.namespace.clone();
    with_stored_pods(&cluster, &world).await;
    Mesh::new(&cluster)
        .create(
            Kind::VirtualService,
            "checkout",
            true,
            json!({"auto-remediation.io/stable-subset": "stable"}),
            json!({"hosts": ["checkout"], "http": [split("checkout", 90, 10)]}),
        )
        .await;
    let report = roll_back(&cluster).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    assert_only_stable_pods(&compile(&cluster, &world, &clients(&ns)).await, &ns);
}
