//! db-circuit-break judged by Istio: the DestinationRule of the database host as the real API
//! server stores it before and after the function acts, compiled by Istio's config compiler
//! (`tests/istio-oracle`) for clients in two namespaces and three regions. After the change
//! every Envoy cluster of the database (the default one, each subset's, each port's) carries
//! the breaker for every client, and the spread of calls across regions is what
//! `CB_LOCALITY_LB` says. Which rule a client uses, and so where the breaker may go, is in
//! [`client_rules`].

#[path = "istio_verdict_breaker/client_rules.rs"]
mod client_rules;

use std::collections::BTreeSet;

use mesh_remediation::remediation::DbCircuitBreak;
use mesh_remediation::remediation::db_circuit_break::CircuitBreaker;
use mesh_remediation::report::{InvocationReport, OutcomeKind};
use remediation_testkit::istio_oracle::{Compiled, REGIONS, World, clients, store_service};
use remediation_testkit::mesh::{Kind, Mesh, only};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const UNLIMITED: u64 = u32::MAX as u64;

/// The db-circuit-break sample naming `db_host`.
fn alert(ns: &str, db_host: &str) -> Value {
    let mut event = events::fresh("db-circuit-break-firing.json", ns);
    let mut message = events::message(&event);
    message["commonLabels"]["db_host"] = json!(db_host);
    for alert in message["alerts"].as_array_mut().expect("alerts") {
        alert["labels"]["db_host"] = json!(db_host);
    }
    events::set_message(&mut event, &message);
    event
}

/// Runs db-circuit-break (default settings, `vars` beside) on the alert naming
/// `orders-db`; its report.
async fn invoke(cluster: &TestCluster, vars: &[(&str, &str)]) -> InvocationReport {
    let event = alert(&cluster.namespace, "orders-db");
    cluster
        .invoke(DbCircuitBreak::default(), vars, &event)
        .await
}

/// Runs db-circuit-break with `CB_LOCALITY_LB=locality` on the alert naming `db_host`;
/// returns the change it reports.
async fn break_circuit(cluster: &TestCluster, locality: &str, db_host: &str) -> String {
    let breaker = DbCircuitBreak::new(
        CircuitBreaker::from_lookup(|k| (k == "CB_LOCALITY_LB").then(|| locality.to_owned()))
            .expect("settings"),
    );
    let report = cluster
        .invoke(breaker, &[], &alert(&cluster.namespace, db_host))
        .await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    only(&report).change.clone().expect("the change in words")
}

/// The regions whose endpoints a client's calls go to while all are healthy.
fn regions_called(compiled: &Compiled, client: &str, cluster: &str) -> BTreeSet<String> {
    let proxy = compiled.proxy(client);
    proxy
        .endpoints_of(&BTreeSet::from([cluster.to_owned()]))
        .into_iter()
        .map(|(_, region)| region)
        .collect()
}

/// The connection limit a client's cluster `cluster` has.
fn max_connections(compiled: &Compiled, client: &str, cluster: &str) -> Option<u64> {
    let cluster = compiled.proxy(client).cluster(cluster);
    cluster.threshold("max_connections")
}

/// The Envoy cluster of the database's port 5432 for `subset` ("" for the default one).
fn db_cluster(subset: &str, host: &str) -> String {
    format!("outbound|5432|{subset}|{host}")
}

/// Asserts the client in us-east-1 (`same-ns-east`) calls only its own region through
/// `cluster`: Istio's locality preference acts.
fn assert_east_client_stays_east(compiled: &Compiled, cluster: &str) {
    let regions = regions_called(compiled, "same-ns-east", cluster);
    let own = BTreeSet::from(["us-east-1".to_owned()]);
    assert_eq!(
        regions, own,
        "{cluster}: the east client calls its own region only"
    );
}

/// Asserts every client's calls through each of `clusters` reach the regions they did
/// before.
fn assert_spread_as_before(before: &Compiled, after: &Compiled, ns: &str, clusters: &[&str]) {
    for client in clients(ns) {
        for name in clusters {
            assert_eq!(
                regions_called(after, client.name, name),
                regions_called(before, client.name, name),
                "{}: {name}: the outcome says the spread is as before, and it is",
                client.name
            );
        }
    }
}

/// Breaks the circuit with `preserve`: the outcome says the spread is as before, and each
/// of `clusters` spreads as it did `before`. Returns the config after.
async fn break_preserving(
    cluster: &TestCluster,
    world: &World,
    before: &Compiled,
    clusters: &[&str],
) -> Compiled {
    let change = break_circuit(cluster, "preserve", "orders-db").await;
    assert!(change.contains("as before"), "{change}");
    let after = world.compile_stored(cluster).await;
    assert_spread_as_before(before, &after, &cluster.namespace, clusters);
    after
}

/// The database `orders-db` (the Service on port 5432, and a pod per region labelled
/// `role` from `roles`, at `10.<n>.0.<host_octet>`), in a world of the test namespace and
/// [`remediation_testkit::istio_oracle::CLIENTS_NS`]; its host.
async fn database(prefix: &str, roles: [&str; 3], host_octet: u8) -> (TestCluster, World, String) {
    let cluster = TestCluster::start(prefix).await;
    let ns = cluster.namespace.clone();
    store_service(&cluster, "orders-db", json!({"app": "orders-db"}), 5432).await;
    let mut world = World::regional(&ns);
    for (i, (region, role)) in REGIONS.iter().zip(roles).enumerate() {
        let labels = if role.is_empty() {
            json!({})
        } else {
            json!({ "role": role })
        };
        let ip = format!("10.{}.0.{host_octet}", i + 1);
        world.pod(&ns, "orders-db", labels, region, &ip);
    }
    (cluster, world, format!("orders-db.{ns}.svc.cluster.local"))
}

/// The database of [`database`], its pods unlabelled, with no rule yet.
async fn database_world(prefix: &str) -> (TestCluster, World, String) {
    database(prefix, ["", "", ""], 9).await
}

/// The database of [`database_world`] and its opted-in DestinationRule `orders-db` of `spec`.
async fn database_with_rule(prefix: &str, spec: Value) -> (TestCluster, World, String) {
    let (cluster, world, host) = database_world(prefix).await;
    Mesh::new(&cluster)
        .opted_in(Kind::DestinationRule, "orders-db", spec)
        .await;
    (cluster, world, host)
}

/// The database with a primary pod and two replicas, and its DestinationRule with a
/// `primary` subset that sets its own connection pool and a port that sets its own.
async fn replicated_database(prefix: &str) -> (TestCluster, World, String) {
    let (cluster, world, host) = database(prefix, ["primary", "replica", "replica"], 7).await;
    Mesh::new(&cluster)
        .opted_in(
            Kind::DestinationRule,
            "orders-db",
            json!({"host": "orders-db",
                   "trafficPolicy": {
                       "tls": {"mode": "ISTIO_MUTUAL"},
                       "portLevelSettings": [{"port": {"number": 5432},
                           "connectionPool": {"tcp": {"maxConnections": 1000}}}]},
                   "subsets": [
                       {"name": "primary", "labels": {"role": "primary"},
                        "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 5}}}},
                       {"name": "replicas", "labels": {"role": "replica"}}]}),
        )
        .await;
    (cluster, world, host)
}

#[tokio::test]
async fn the_breaker_reaches_every_subset_and_port_level_and_the_regional_spread_is_kept() {
    let (cluster, world, host) = replicated_database("ivb-levels").await;
    let ns = cluster.namespace.clone();
    let before = world.compile_stored(&cluster).await;
    assert_eq!(before.findings(), Vec::<String>::new());
    let default_cluster = db_cluster("", &host);
    for client in clients(&ns) {
        let proxy = before.proxy(client.name);
        let limits: BTreeSet<(String, Option<u64>)> = proxy
            .clusters_of(&host, 5432)
            .into_iter()
            .map(|(name, c)| (name.clone(), c.threshold("max_connections")))
            .collect();
        assert_eq!(
            limits,
            BTreeSet::from([
                (default_cluster.clone(), Some(1000)),
                (db_cluster("primary", &host), Some(5)),
                (db_cluster("replicas", &host), Some(1000)),
            ]),
            "{}: the port's and the subset's own pools replace the top level's",
            client.name
        );
        assert_eq!(
            regions_called(&before, client.name, &default_cluster).len(),
            3,
            "{}: calls spread over every region before",
            client.name
        );
    }

    let summary = break_circuit(&cluster, "preserve", "orders-db").await;
    assert!(summary.contains("subset primary"), "{summary}");
    assert!(summary.contains("CB_LOCALITY_LB=preserve"), "{summary}");
    let after = world.compile_stored(&cluster).await;
    assert_eq!(after.findings(), Vec::<String>::new());
    for client in clients(&ns) {
        let clusters = after.proxy(client.name).clusters_of(&host, 5432);
        assert_eq!(clusters.len(), 3, "{}", client.name);
        for (name, c) in clusters {
            let expected = if name.contains("|primary|") { 5 } else { 100 };
            let at = format!("{}: {name}", client.name);
            assert_eq!(
                c.threshold("max_connections"),
                Some(expected),
                "{at} (a lower limit the owner set stays)"
            );
            assert_eq!(c.threshold("max_pending_requests"), Some(64), "{at}");
            assert_eq!(c.connect_timeout.as_deref(), Some("2s"), "{at}");
            let outlier = c.outlier_detection.as_ref().expect("outlier detection");
            assert_eq!(outlier["consecutive_5xx"], 5, "{at}");
        }
        assert_eq!(
            regions_called(&after, client.name, &default_cluster).len(),
            3,
            "{}: CB_LOCALITY_LB=preserve keeps calls spread over every region: {summary}",
            client.name
        );
    }
}

#[tokio::test]
async fn prioritize_sends_each_client_to_its_own_region_first() {
    let (cluster, world, host) = replicated_database("ivb-prioritize").await;
    let summary = break_circuit(&cluster, "prioritize", "orders-db").await;
    assert!(summary.contains("CB_LOCALITY_LB=prioritize"), "{summary}");
    let after = world.compile_stored(&cluster).await;
    let default_cluster = db_cluster("", &host);
    for client in clients(&cluster.namespace) {
        assert_eq!(
            regions_called(&after, client.name, &default_cluster),
            BTreeSet::from([client.region.to_owned()]),
            "{}: outlier detection turns on locality-prioritised load balancing",
            client.name
        );
        assert_eq!(
            max_connections(&after, client.name, &default_cluster),
            Some(100)
        );
    }
}

#[tokio::test]
async fn a_managed_database_behind_a_service_entry_gets_the_breaker() {
    let cluster = TestCluster::start("ivb-serviceentry").await;
    let ns = cluster.namespace.clone();
    let host = "orders.cluster-abc.eu-west-1.rds.amazonaws.com";
    let mesh = Mesh::new(&cluster);
    mesh.not_opted_in(
        Kind::ServiceEntry,
        "orders-rds",
        json!({"hosts": [host], "addresses": ["240.240.0.10"], "location": "MESH_EXTERNAL",
               "resolution": "DNS",
               "ports": [{"number": 5432, "name": "tcp-postgres", "protocol": "TCP"}]}),
    )
    .await;
    mesh.opted_in(Kind::DestinationRule, "orders-rds", json!({"host": host}))
        .await;
    let world = World::regional(&ns);
    let cluster_name = db_cluster("", host);
    let before = world.compile_stored(&cluster).await;
    for client in clients(&ns) {
        let limit = max_connections(&before, client.name, &cluster_name);
        assert_eq!(limit, Some(UNLIMITED), "{}", client.name);
    }
    break_circuit(&cluster, "preserve", host).await;
    let after = world.compile_stored(&cluster).await;
    assert_eq!(after.findings(), Vec::<String>::new());
    for client in clients(&ns) {
        let c = after.proxy(client.name).cluster(&cluster_name);
        assert_eq!(c.threshold("max_connections"), Some(100), "{}", client.name);
        let pending = c.threshold("max_pending_requests");
        assert_eq!(pending, Some(64), "{}", client.name);
        assert_eq!(c.connect_timeout.as_deref(), Some("2s"), "{}", client.name);
    }
}

#[tokio::test]
async fn ejection_switched_off_is_switched_on_and_a_stricter_connect_timeout_stays() {
    let (cluster, world, host) = database_with_rule(
        "ivb-values",
        json!({"host": "orders-db", "trafficPolicy": {
            "outlierDetection": {"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 3},
            "connectionPool": {"tcp": {"connectTimeout": "500ms"}}}}),
    )
    .await;
    let before = world.compile_stored(&cluster).await;
    let default_cluster = db_cluster("", &host);
    let outlier = |c: &Compiled, name: &str| {
        c.proxy(name)
            .cluster(&default_cluster)
            .outlier_detection
            .clone()
            .unwrap_or_default()
    };
    assert_eq!(
        outlier(&before, "same-ns-east")["enforcing_consecutive_5xx"],
        json!(0),
        "Istio reads consecutive5xxErrors: 0 as 5xx ejection off"
    );
    break_circuit(&cluster, "preserve", "orders-db").await;
    let after = world.compile_stored(&cluster).await;
    for client in clients(&cluster.namespace) {
        let od = outlier(&after, client.name);
        assert_eq!(od["consecutive_5xx"], json!(5), "{}: {od}", client.name);
        let enforcing = &od["enforcing_consecutive_5xx"];
        assert_eq!(enforcing, &json!(100), "{}: {od}", client.name);
        let gateway = &od["consecutive_gateway_failure"];
        assert_eq!(gateway, &json!(3), "{}: kept", client.name);
        assert_eq!(
            after
                .proxy(client.name)
                .cluster(&default_cluster)
                .connect_timeout
                .as_deref(),
            Some("500ms"),
            "{}: a connect timeout stricter than the breaker's stays",
            client.name
        );
    }
}

// ---- The spread across regions: what the outcome says of it is what Istio does.

#[tokio::test]
async fn a_dormant_failover_the_breaker_wakes_is_reported_not_called_unchanged() {
    let (cluster, world, host) = database_with_rule(
        "ivb-failover",
        json!({"host": "orders-db", "trafficPolicy": {"loadBalancer": {"localityLbSetting": {
            "failover": [{"from": "us-east-1", "to": "eu-west-1"}]}}}}),
    )
    .await;
    let default_cluster = db_cluster("", &host);
    let before = world.compile_stored(&cluster).await;
    for client in clients(&cluster.namespace) {
        assert_eq!(
            regions_called(&before, client.name, &default_cluster).len(),
            3,
            "{}: failover without outlier detection is dormant",
            client.name
        );
    }
    let change = break_circuit(&cluster, "preserve", "orders-db").await;
    assert!(!change.contains("as before"), "{change}");
    assert!(
        change.contains("failover") && change.contains("now active"),
        "{change}"
    );
    // What the outcome says is what Istio does: the client now prefers its own region.
    let after = world.compile_stored(&cluster).await;
    assert_east_client_stays_east(&after, &default_cluster);
}

#[tokio::test]
async fn a_dormant_failover_of_a_subset_the_breaker_wakes_is_reported() {
    // Found by the 2,000-mesh run (seed 40001168): a subset's own `loadBalancer` with a
    // failover and no outlier detection inherits the outlier detection the breaker puts at
    // the top level, and its failover wakes; the outcome said "as before".
    let (cluster, world, host) = database_with_rule(
        "ivb-subset-failover",
        json!({"host": "orders-db", "subsets": [{"name": "replicas",
            "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST", "localityLbSetting": {
                "failover": [{"from": "us-east-1", "to": "eu-west-1"}]}}}}]}),
    )
    .await;
    let ns = cluster.namespace.clone();
    let replicas = db_cluster("replicas", &host);
    let before = world.compile_stored(&cluster).await;
    for client in clients(&ns) {
        assert_eq!(
            regions_called(&before, client.name, &replicas).len(),
            3,
            "{}: the subset's failover without outlier detection is dormant",
            client.name
        );
    }
    let change = break_circuit(&cluster, "preserve", "orders-db").await;
    assert!(
        change.contains("subset replicas") && change.contains("now active"),
        "{change}"
    );
    let after = world.compile_stored(&cluster).await;
    for client in clients(&ns) {
        assert_eq!(
            regions_called(&after, client.name, &replicas),
            BTreeSet::from([client.region.to_owned()]),
            "{}: what the outcome says is what Istio does: the subset's clients now prefer their own region",
            client.name
        );
    }
}

#[tokio::test]
async fn outlier_detection_already_on_keeps_each_clients_own_region_first() {
    // Found by the generated meshes: with outlier detection already on, Istio's locality
    // preference already acts, so "preserve" must not switch it off.
    let (cluster, world, host) = database_with_rule(
        "ivb-already-detecting",
        json!({"host": "orders-db", "trafficPolicy": {"outlierDetection": {}}}),
    )
    .await;
    let default_cluster = db_cluster("", &host);
    // Outlier detection on: each client prefers its own region.
    let before = world.compile_stored(&cluster).await;
    assert_east_client_stays_east(&before, &default_cluster);
    break_preserving(&cluster, &world, &before, &[&default_cluster]).await;
}

#[tokio::test]
async fn a_subset_with_its_own_outlier_detection_keeps_preferring_its_clients_region() {
    // Found by the generated meshes: the subset inherits the top level's `loadBalancer`, so
    // keeping the preference off there switched it off for a subset where it already acted.
    let (cluster, world, host) = database_with_rule(
        "ivb-subset-detecting",
        json!({"host": "orders-db", "subsets": [
            {"name": "replicas", "trafficPolicy": {"outlierDetection": {}}}]}),
    )
    .await;
    let replicas = db_cluster("replicas", &host);
    let default_cluster = db_cluster("", &host);
    let before = world.compile_stored(&cluster).await;
    let after = break_preserving(&cluster, &world, &before, &[&replicas, &default_cluster]).await;
    for client in clients(&cluster.namespace) {
        assert_eq!(max_connections(&after, client.name, &replicas), Some(100));
    }
}

#[tokio::test]
async fn a_subset_with_its_own_outlier_detection_keeps_its_preference_on_a_port_entry() {
    // Found by the 2,000-mesh run: on port 5432 the subset's cluster starts from the top
    // level's port entry (Istio's `MergeSubsetTrafficPolicy`), whose preference `preserve`
    // keeps off; the subset's own outlier detection had it on for its clients.
    let (cluster, world, host) = database_with_rule(
        "ivb-subset-port",
        json!({"host": "orders-db",
            "trafficPolicy": {
                "outlierDetection": {"consecutive5xxErrors": 6},
                "portLevelSettings": [
                {"port": {"number": 5432}, "connectionPool": {"tcp": {"maxConnections": 5}}}]},
            "subsets": [
            {"name": "replicas", "trafficPolicy": {"outlierDetection": {"interval": "1s"}}}]}),
    )
    .await;
    let replicas = db_cluster("replicas", &host);
    let default_cluster = db_cluster("", &host);
    let before = world.compile_stored(&cluster).await;
    break_preserving(&cluster, &world, &before, &[&replicas, &default_cluster]).await;
}

#[tokio::test]
async fn a_subset_that_loses_its_preference_is_named_in_the_outcome() {
    // Found by the 2,000-mesh run (seed 40000684): the top level's `loadBalancer` also sets
    // `simple`, which a subset's own `loadBalancer` would drop and the breaker may not copy,
    // so the subset inherits the preference `preserve` keeps off. Its clients, which
    // preferred their own region, now spread: the outcome must say so, not "as before".
    let (cluster, world, host) = database_with_rule(
        "ivb-subset-spreads",
        json!({"host": "orders-db",
            "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
            "subsets": [
            {"name": "replicas", "trafficPolicy": {"outlierDetection": {}}}]}),
    )
    .await;
    let ns = cluster.namespace.clone();
    let replicas = db_cluster("replicas", &host);
    let default_cluster = db_cluster("", &host);
    // The subset's own outlier detection: its clients prefer their own region.
    let before = world.compile_stored(&cluster).await;
    assert_east_client_stays_east(&before, &replicas);
    let change = break_circuit(&cluster, "preserve", "orders-db").await;
    assert!(
        change.contains("clients of subsets replicas preferred their own region and now spread"),
        "{change}"
    );
    let after = world.compile_stored(&cluster).await;
    // The rest of the rule spreads as before.
    assert_spread_as_before(&before, &after, &ns, &[&default_cluster]);
    for client in clients(&ns) {
        let was = regions_called(&before, client.name, &replicas);
        let now = regions_called(&after, client.name, &replicas);
        assert!(now.is_superset(&was), "{}", client.name);
        assert_eq!(max_connections(&after, client.name, &replicas), Some(100));
    }
    assert!(
        regions_called(&after, "same-ns-east", &replicas).len() > 1,
        "what the outcome says is what Istio does: the subset's clients now spread"
    );
}
