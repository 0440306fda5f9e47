//! Istio's own verdict on each remediation: the objects the real API server stores before and
//! after the function acts are compiled by Istio's config compiler (`tests/istio-oracle`) for
//! client proxies in several namespaces and regions, and each test asserts the effect there:
//! where Envoy sends the requests, which breaker guards them. Runs on the real control plane
//! scripts/test starts (or TEST_KUBECONFIG).

use std::collections::{BTreeSet, HashMap};

use mesh_remediation::remediation::db_circuit_break::CircuitBreaker;
use mesh_remediation::remediation::region_failover::FailoverSettings;
use mesh_remediation::remediation::{DbCircuitBreak, ErrorRollback, RegionFailover};
use mesh_remediation::report::OutcomeKind;
use remediation_testkit::istio_oracle::{Compiled, World, clients};
use remediation_testkit::mesh::{HealthEndpoint, Kind, Mesh, only};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const PORT: u16 = 8080;

fn fqdn(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc.cluster.local")
}

/// The world plus the stored VirtualService and DestinationRule named `name`.
async fn with_stored(cluster: &TestCluster, base: &World, name: &str) -> World {
    let mesh = Mesh::new(cluster);
    let mut world = base.clone();
    world.add(mesh.get(Kind::DestinationRule, name).await);
    if let Ok(vs) = mesh.api(Kind::VirtualService).get(name).await {
        world.add(serde_json::to_value(vs).expect("json"));
    }
    world
}

/// [`with_stored`] compiled for the test namespace's [`clients`].
async fn compiled(cluster: &TestCluster, base: &World, name: &str) -> Compiled {
    let world = with_stored(cluster, base, name).await;
    world.compile(&clients(&cluster.namespace))
}

/// As [`compiled`], asserting Istio finds nothing wrong with the stored rules.
async fn compiled_cleanly(cluster: &TestCluster, base: &World, name: &str) -> Compiled {
    let compiled = compiled(cluster, base, name).await;
    assert_eq!(compiled.findings(), Vec::<String>::new());
    compiled
}

fn addresses(reached: &BTreeSet<(String, String)>) -> BTreeSet<&str> {
    reached.iter().map(|(ip, _)| ip.as_str()).collect()
}

/// checkout split 80/20 between v1 (us-east-1, us-west-2) and v2 (us-east-1) by subsets, the
/// VirtualService for `hosts` (and `gateways` when given). Returns the cluster and the world
/// without the Istio objects, which the tests read back from the API server.
async fn rollback_setup(
    prefix: &str,
    hosts: Value,
    gateways: Option<Value>,
) -> (TestCluster, World) {
    let cluster = TestCluster::start(prefix).await;
    let ns = cluster.namespace.clone();
    let mut spec = json!({ "hosts": hosts });
    if let Some(gateways) = gateways {
        spec["gateways"] = gateways;
    }
    Mesh::new(&cluster)
        .subset_split(
            "checkout",
            &[
                ("v1", json!({"version": "v1"}), 80),
                ("v2", json!({"version": "v2"}), 20),
            ],
            json!({"auto-remediation.io/stable-subset": "v1"}),
            spec,
        )
        .await;
    let mut base = World::regional(&ns);
    base.service(&ns, "checkout", PORT)
        .pod(
            &ns,
            "checkout",
            json!({"version": "v1"}),
            "us-east-1",
            "10.1.0.1",
        )
        .pod(
            &ns,
            "checkout",
            json!({"version": "v1"}),
            "us-west-2",
            "10.2.0.1",
        )
        .pod(
            &ns,
            "checkout",
            json!({"version": "v2"}),
            "us-east-1",
            "10.1.0.2",
        );
    (cluster, base)
}

const FAILING_POD: &str = "10.1.0.2";

async fn roll_back(cluster: &TestCluster) {
    let event = events::fresh("error-rollback-firing.json", &cluster.namespace);
    let report = cluster.invoke(ErrorRollback, &[], &event).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
}

#[tokio::test]
async fn after_error_rollback_no_client_reaches_the_failing_version() {
    let (cluster, base) = rollback_setup("iv-rollback", json!(["checkout"]), None).await;
    let ns = cluster.namespace.clone();
    let host = fqdn("checkout", &ns);
    let failing = FAILING_POD;

    let before = compiled_cleanly(&cluster, &base, "checkout").await;
    for client in clients(&ns) {
        let reached = before.proxy(client.name).endpoints_receiving(&host, PORT);
        assert!(
            addresses(&reached).contains(failing),
            "{}: the canary takes traffic before the rollback: {reached:?}",
            client.name
        );
    }

    roll_back(&cluster).await;

    let after = compiled_cleanly(&cluster, &base, "checkout").await;
    for client in clients(&ns) {
        let reached = after.proxy(client.name).endpoints_receiving(&host, PORT);
        assert_eq!(
            addresses(&reached),
            BTreeSet::from(["10.1.0.1", "10.2.0.1"]),
            "{}: only the stable version's endpoints take traffic",
            client.name
        );
    }
}

#[tokio::test]
async fn after_error_rollback_neither_the_ingress_gateway_nor_sidecars_reach_the_failing_version() {
    let (cluster, mut base) = rollback_setup(
        "iv-rollback-gw",
        json!(["checkout", "shop.example.com"]),
        Some(json!(["istio-system/public", "mesh"])),
    )
    .await;
    let ns = cluster.namespace.clone();
    let mut proxies = clients(&ns);
    proxies.push(base.ingress_gateway("shop.example.com"));
    let host = fqdn("checkout", &ns);
    let at_gateway = |compiled: &Compiled| {
        let gateway = compiled.proxy("ingress");
        gateway.endpoints_of(&gateway.gateway_clusters_receiving("shop.example.com", 80))
    };

    let before = with_stored(&cluster, &base, "checkout")
        .await
        .compile(&proxies);
    assert_eq!(before.findings(), Vec::<String>::new());
    assert!(
        addresses(&at_gateway(&before)).contains(FAILING_POD),
        "the gateway sends to the canary before: {:?}; gateway routes: {:?}",
        at_gateway(&before),
        before
            .proxy("ingress")
            .routes
            .iter()
            .map(|r| (&r.route_config, &r.domains))
            .collect::<Vec<_>>()
    );
    roll_back(&cluster).await;

    let after = with_stored(&cluster, &base, "checkout")
        .await
        .compile(&proxies);
    assert_eq!(
        addresses(&at_gateway(&after)),
        BTreeSet::from(["10.1.0.1", "10.2.0.1"]),
        "the gateway sends only to the stable version"
    );
    for client in clients(&ns) {
        let reached = after.proxy(client.name).endpoints_receiving(&host, PORT);
        assert!(
            !addresses(&reached).contains(FAILING_POD),
            "{}: {reached:?}",
            client.name
        );
    }
}

#[tokio::test]
async fn after_db_circuit_break_every_client_has_the_breaker_on_every_cluster_of_the_host() {
    let cluster = TestCluster::start("iv-breaker").await;
    let ns = cluster.namespace.clone();
    let host = fqdn("orders-db", &ns);
    Mesh::new(&cluster)
        .opted_in(
            Kind::DestinationRule,
            "orders-db",
            json!({"host": host, "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
                   "subsets": [{"name": "primary", "labels": {"role": "primary"}}]}),
        )
        .await;
    let mut base = World::regional(&ns);
    base.service(&ns, "orders-db", PORT);
    for (region, ip) in [
        ("us-east-1", "10.1.0.5"),
        ("us-west-2", "10.2.0.5"),
        ("eu-west-1", "10.3.0.5"),
    ] {
        base.pod(&ns, "orders-db", json!({"role": "primary"}), region, ip);
    }

    let before = compiled(&cluster, &base, "orders-db").await;
    let unlimited = before.proxy("same-ns-east").clusters_of(&host, PORT);
    assert_eq!(
        unlimited.len(),
        2,
        "default and subset cluster: {unlimited:?}"
    );
    for (name, c) in unlimited {
        assert_eq!(
            c.threshold("max_connections"),
            Some(u64::from(u32::MAX)),
            "{name}"
        );
        assert!(c.outlier_detection.is_none(), "{name}");
    }

    let breaker = DbCircuitBreak::new(CircuitBreaker::from_lookup(|_| None).expect("defaults"));
    let event = events::fresh("db-circuit-break-firing.json", &ns);
    let report = cluster.invoke(breaker, &[], &event).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    let stored = Mesh::new(&cluster)
        .get(Kind::DestinationRule, "orders-db")
        .await;
    let pool = &stored["spec"]["trafficPolicy"]["connectionPool"];

    let after = compiled_cleanly(&cluster, &base, "orders-db").await;
    for client in clients(&ns) {
        let proxy = after.proxy(client.name);
        let clusters = proxy.clusters_of(&host, PORT);
        assert_eq!(clusters.len(), 2, "{}: {clusters:?}", client.name);
        for (name, c) in clusters {
            assert_eq!(
                c.threshold("max_connections"),
                pool["tcp"]["maxConnections"].as_u64(),
                "{}: {name}",
                client.name
            );
            assert_eq!(
                c.threshold("max_pending_requests"),
                pool["http"]["http1MaxPendingRequests"].as_u64(),
                "{}: {name}",
                client.name
            );
            assert_eq!(
                c.connect_timeout.as_deref(),
                pool["tcp"]["connectTimeout"].as_str(),
                "{}: {name}",
                client.name
            );
            let outlier = c.outlier_detection.as_ref().expect("outlier detection on");
            assert_eq!(
                outlier["consecutive_5xx"].as_u64(),
                stored["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"]
                    .as_u64(),
                "{}: {name}",
                client.name
            );
        }
    }
}

/// Pods of `frontend` in three regions, subsets named by region label (Istio adds the
/// locality labels to every endpoint, so subsets can select a region).
fn regional_frontend(ns: &str) -> World {
    let mut base = World::regional(ns);
    base.service(ns, "frontend", PORT)
        .pod(ns, "frontend", json!({}), "us-east-1", "10.1.0.9")
        .pod(ns, "frontend", json!({}), "us-west-2", "10.2.0.9")
        .pod(ns, "frontend", json!({}), "eu-west-1", "10.3.0.9");
    base
}

#[tokio::test]
async fn after_region_failover_no_client_reaches_the_degraded_region() {
    let cluster = TestCluster::start("iv-failover").await;
    let ns = cluster.namespace.clone();
    Mesh::new(&cluster)
        .region_split("frontend", &[60, 30, 10])
        .await;
    let base = regional_frontend(&ns);
    let host = fqdn("frontend", &ns);
    let regions_reached = |reached: &BTreeSet<(String, String)>| -> BTreeSet<String> {
        reached.iter().map(|(_, region)| region.clone()).collect()
    };

    let before = compiled(&cluster, &base, "frontend").await;
    for client in clients(&ns) {
        let reached = before.proxy(client.name).endpoints_receiving(&host, PORT);
        assert!(
            regions_reached(&reached).contains("us-east-1"),
            "{}: {reached:?}",
            client.name
        );
    }

    let west = HealthEndpoint::start(200).await;
    let eu = HealthEndpoint::start(200).await;
    let urls = format!("us-west-2={},eu-west-1={}", west.url(), eu.url());
    let vars: HashMap<&str, &str> = HashMap::from([("REGION_HEALTH_URLS", urls.as_str())]);
    let failover = RegionFailover::new(
        FailoverSettings::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned())).expect("settings"),
    );
    let event = events::fresh("region-failover-firing.json", &ns);
    let report = cluster.invoke(failover, &[], &event).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");

    let after = compiled_cleanly(&cluster, &base, "frontend").await;
    for client in clients(&ns) {
        let reached = after.proxy(client.name).endpoints_receiving(&host, PORT);
        assert_eq!(
            regions_reached(&reached),
            BTreeSet::from(["eu-west-1".to_owned(), "us-west-2".to_owned()]),
            "{}: the healthy regions take all traffic: {reached:?}",
            client.name
        );
    }
}

#[tokio::test]
async fn the_oracle_reports_istio_analyzer_findings() {
    let ns = "shop";
    let mut world = regional_frontend(ns);
    world.add(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "frontend", "namespace": ns},
        "spec": {"hosts": ["frontend"], "http": [{"route": [
            {"destination": {"host": "frontend", "subset": "missing"}}]}]}}),
    );
    let compiled = world.compile(&clients(ns));
    let findings = compiled.findings();
    assert!(
        findings.iter().any(|f| f.starts_with("IST0101")),
        "a subset no DestinationRule defines is IST0101: {findings:?}"
    );
    let route: Vec<Value> = compiled
        .proxy("same-ns-east")
        .routes_to(&fqdn("frontend", ns), PORT)
        .iter()
        .map(|r| json!(r.clusters.iter().map(|c| &c.name).collect::<Vec<_>>()))
        .collect();
    assert_eq!(
        route,
        vec![json!([
            "outbound|8080|missing|frontend.shop.svc.cluster.local"
        ])],
        "Istio still routes to the undefined subset's (empty) cluster"
    );
}
