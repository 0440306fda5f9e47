//! db-circuit-break judged by Istio: the DestinationRule of the database host as the real API
//! server stores it before and after the function acts, compiled by Istio's config compiler
//! (`tests/istio-oracle`) for clients in two namespaces and three regions. After the change
//! every Envoy cluster of the database (the default one, each subset's, each port's) carries
//! the breaker for every client, and the spread of calls across regions is what
//! `CB_LOCALITY_LB` says.

use std::collections::BTreeSet;

use mesh_remediation::remediation::DbCircuitBreak;
use mesh_remediation::remediation::db_circuit_break::CircuitBreaker;
use mesh_remediation::report::OutcomeKind;
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

/// Runs db-circuit-break with `CB_LOCALITY_LB=locality`; returns the change it reports.
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

/// The database Service `orders-db` with one pod per region (port 5432), and its
/// DestinationRule with a `primary` subset that sets its own connection pool and a port
/// that sets its own.
async fn replicated_database(prefix: &str) -> (TestCluster, World, String) {
    let cluster = TestCluster::start(prefix).await;
    let ns = cluster.namespace.clone();
    store_service(&cluster, "orders-db", json!({"app": "orders-db"}), 5432).await;
    let mut world = World::regional(&ns);
    for (i, region) in REGIONS.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "replica" };
        world.pod(
            &ns,
            "orders-db",
            json!({"role": role}),
            region,
            &format!("10.{}.0.7", i + 1),
        );
    }
    Mesh::new(&cluster)
        .create(
            Kind::DestinationRule,
            "orders-db",
            true,
            json!({}),
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
    (cluster, world, format!("orders-db.{ns}.svc.cluster.local"))
}

#[tokio::test]
async fn the_breaker_reaches_every_subset_and_port_level_and_the_regional_spread_is_kept() {
    let (cluster, world, host) = replicated_database("ivb-levels").await;
    let ns = cluster.namespace.clone();
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(before.findings(), Vec::<String>::new());
    let default_cluster = format!("outbound|5432||{host}");
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
                (format!("outbound|5432|primary|{host}"), Some(5)),
                (format!("outbound|5432|replicas|{host}"), Some(1000)),
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
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(after.findings(), Vec::<String>::new());
    for client in clients(&ns) {
        let proxy = after.proxy(client.name);
        let clusters = proxy.clusters_of(&host, 5432);
        assert_eq!(clusters.len(), 3, "{}", client.name);
        for (name, c) in clusters {
            let expected = if name.contains("|primary|") { 5 } else { 100 };
            assert_eq!(
                c.threshold("max_connections"),
                Some(expected),
                "{}: {name} (a lower limit the owner set stays)",
                client.name
            );
            assert_eq!(
                c.threshold("max_pending_requests"),
                Some(64),
                "{}: {name}",
                client.name
            );
            assert_eq!(
                c.connect_timeout.as_deref(),
                Some("2s"),
                "{}: {name}",
                client.name
            );
            let outlier = c.outlier_detection.as_ref().expect("outlier detection");
            assert_eq!(outlier["consecutive_5xx"], 5, "{}: {name}", client.name);
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
    let ns = cluster.namespace.clone();
    let summary = break_circuit(&cluster, "prioritize", "orders-db").await;
    assert!(summary.contains("CB_LOCALITY_LB=prioritize"), "{summary}");
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
    let default_cluster = format!("outbound|5432||{host}");
    for client in clients(&ns) {
        assert_eq!(
            regions_called(&after, client.name, &default_cluster),
            BTreeSet::from([client.region.to_owned()]),
            "{}: outlier detection turns on locality-prioritised load balancing",
            client.name
        );
        assert_eq!(
            after
                .proxy(client.name)
                .cluster(&default_cluster)
                .threshold("max_connections"),
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
    mesh.create(
        Kind::ServiceEntry,
        "orders-rds",
        false,
        json!({}),
        json!({"hosts": [host], "addresses": ["240.240.0.10"], "location": "MESH_EXTERNAL", "resolution": "DNS",
               "ports": [{"number": 5432, "name": "tcp-postgres", "protocol": "TCP"}]}),
    )
    .await;
    mesh.create(
        Kind::DestinationRule,
        "orders-rds",
        true,
        json!({}),
        json!({"host": host}),
    )
    .await;
    let world = World::regional(&ns);
    let cluster_name = format!("outbound|5432||{host}");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    for client in clients(&ns) {
        let c = before.proxy(client.name).cluster(&cluster_name);
        assert_eq!(
            c.threshold("max_connections"),
            Some(UNLIMITED),
            "{}",
            client.name
        );
    }
    break_circuit(&cluster, "preserve", host).await;
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(after.findings(), Vec::<String>::new());
    for client in clients(&ns) {
        let c = after.proxy(client.name).cluster(&cluster_name);
        assert_eq!(c.threshold("max_connections"), Some(100), "{}", client.name);
        assert_eq!(
            c.threshold("max_pending_requests"),
            Some(64),
            "{}",
            client.name
        );
        assert_eq!(c.connect_timeout.as_deref(), Some("2s"), "{}", client.name);
    }
}
