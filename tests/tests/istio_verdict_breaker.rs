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

// ---- Which rule a client uses: Istio's resolution, judged by its compiler.

/// A namespace of clients beside the test's, created on the API server.
async fn client_namespace(cluster: &TestCluster, suffix: &str) -> String {
    let name = format!("{}-{suffix}", cluster.namespace);
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(cluster.client.clone())
        .create(&kube::api::PostParams::default(), &namespace)
        .await
        .expect("create namespace");
    name
}

/// Stores a DestinationRule in `namespace` (any namespace) and returns it as stored.
async fn store_rule(
    cluster: &TestCluster,
    namespace: &str,
    name: &str,
    opted_in: bool,
    spec: Value,
) -> Value {
    let labels = if opted_in {
        json!({"auto_remediation": "active"})
    } else {
        json!({})
    };
    let object: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec}))
    .expect("rule");
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        cluster.client.clone(),
        namespace,
        &Kind::DestinationRule.resource(),
    );
    let stored = api
        .create(&kube::api::PostParams::default(), &object)
        .await
        .unwrap_or_else(|err| panic!("create DestinationRule {namespace}/{name}: {err}"));
    serde_json::to_value(stored).expect("json")
}

/// The database `orders-db` (one pod per region) and a world with clients in the test
/// namespace, in `others` and in [`remediation_testkit::istio_oracle::CLIENTS_NS`].
async fn database_world(prefix: &str) -> (TestCluster, World, String) {
    let cluster = TestCluster::start(prefix).await;
    let ns = cluster.namespace.clone();
    store_service(&cluster, "orders-db", json!({"app": "orders-db"}), 5432).await;
    let mut world = World::regional(&ns);
    for (i, region) in REGIONS.iter().enumerate() {
        world.pod(
            &ns,
            "orders-db",
            json!({}),
            region,
            &format!("10.{}.0.9", i + 1),
        );
    }
    (cluster, world, format!("orders-db.{ns}.svc.cluster.local"))
}

/// The spec of every stored DestinationRule of `namespaces`, by `namespace/name`.
async fn rule_specs(cluster: &TestCluster, namespaces: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for namespace in namespaces {
        let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
            cluster.client.clone(),
            namespace,
            &Kind::DestinationRule.resource(),
        );
        for rule in api.list(&Default::default()).await.expect("list").items {
            let value = serde_json::to_value(&rule).expect("json");
            out.push((
                format!("{namespace}/{}", rule.metadata.name.unwrap_or_default()),
                remediation_testkit::mesh::spec_text(&value),
            ));
        }
    }
    out
}

#[tokio::test]
async fn a_rule_in_a_client_namespace_takes_precedence_so_the_breaker_is_refused_and_named() {
    let (cluster, mut world, host) = database_world("ivb-client-ns").await;
    let ns = cluster.namespace.clone();
    let web = client_namespace(&cluster, "web").await;
    Mesh::new(&cluster)
        .create(
            Kind::DestinationRule,
            "orders-db",
            true,
            json!({}),
            json!({"host": "orders-db"}),
        )
        .await;
    // The web team's own rule for the database: Istio looks in the client's namespace first.
    let theirs = store_rule(
        &cluster,
        &web,
        "orders-db",
        false,
        json!({"host": host, "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 7}}}}),
    )
    .await;
    world.add(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": web}}));
    let clients = vec![
        remediation_testkit::istio_oracle::Client::sidecar("same-ns", &ns, "us-east-1"),
        remediation_testkit::istio_oracle::Client::sidecar("web", &web, "us-west-2"),
    ];
    let before_specs = rule_specs(&cluster, &[&ns, &web]).await;
    let with_theirs = |w: &World| {
        let mut w = w.clone();
        w.add(theirs.clone());
        w
    };
    let before = with_theirs(&world.with_stored(&cluster).await).compile(&clients);
    let default_cluster = format!("outbound|5432||{host}");
    assert_eq!(
        before
            .proxy("web")
            .cluster(&default_cluster)
            .threshold("max_connections"),
        Some(7),
        "Istio gives web clients their own namespace's rule"
    );

    let report = cluster
        .invoke(DbCircuitBreak::default(), &[], &alert(&ns, "orders-db"))
        .await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{report:#?}");
    let why = remediation_testkit::mesh::reason(outcome);
    assert!(
        why.contains(&format!("clients in namespace {web}"))
            && why.contains(&format!("{web}/orders-db")),
        "{why}"
    );
    assert_eq!(
        rule_specs(&cluster, &[&ns, &web]).await,
        before_specs,
        "nothing changed"
    );
    let after = with_theirs(&world.with_stored(&cluster).await).compile(&clients);
    for client in &clients {
        assert_eq!(
            after
                .proxy(client.name)
                .cluster(&default_cluster)
                .threshold("max_connections"),
            before
                .proxy(client.name)
                .cluster(&default_cluster)
                .threshold("max_connections"),
            "{}",
            client.name
        );
    }
}

#[tokio::test]
async fn an_older_rule_not_opted_in_holds_the_policy_so_writing_a_newer_one_is_refused() {
    let (cluster, world, host) = database_world("ivb-shadowed").await;
    let ns = cluster.namespace.clone();
    let mesh = Mesh::new(&cluster);
    // The same name order as creation order: Istio keeps `a-legacy`'s top-level policy.
    mesh.create(
        Kind::DestinationRule,
        "a-legacy",
        false,
        json!({}),
        json!({"host": "orders-db", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
    )
    .await;
    mesh.create(
        Kind::DestinationRule,
        "b-managed",
        true,
        json!({}),
        json!({"host": "orders-db"}),
    )
    .await;
    let before_specs = rule_specs(&cluster, &[&ns]).await;
    let report = cluster
        .invoke(DbCircuitBreak::default(), &[], &alert(&ns, "orders-db"))
        .await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{report:#?}");
    let why = remediation_testkit::mesh::reason(outcome);
    assert!(
        why.contains(&format!("{ns}/a-legacy"))
            && why.contains("not labelled auto_remediation=active"),
        "{why}"
    );
    assert_eq!(rule_specs(&cluster, &[&ns]).await, before_specs);
    // What the old behaviour (the breaker written into b-managed) would have meant: Istio
    // keeps a-legacy's policy, so no client would have had the breaker.
    let mut planted = world.clone();
    let service =
        kube::Api::<k8s_openapi::api::core::v1::Service>::namespaced(cluster.client.clone(), &ns)
            .get("orders-db")
            .await
            .expect("service");
    let mut service = serde_json::to_value(service).expect("json");
    service["apiVersion"] = json!("v1");
    service["kind"] = json!("Service");
    let mut managed = mesh.get(Kind::DestinationRule, "b-managed").await;
    managed["spec"]["trafficPolicy"] = json!({"connectionPool": {"tcp": {"maxConnections": 100}}});
    planted
        .add(service)
        .add(mesh.get(Kind::DestinationRule, "a-legacy").await)
        .add(managed);
    let compiled = planted.compile(&clients(&ns));
    for client in clients(&ns) {
        assert_eq!(
            compiled
                .proxy(client.name)
                .cluster(&format!("outbound|5432||{host}"))
                .threshold("max_connections"),
            Some(UNLIMITED),
            "{}: a newer rule's top-level policy is dropped by Istio's merge",
            client.name
        );
    }
}

#[tokio::test]
async fn of_two_opted_in_rules_the_breaker_goes_where_istio_reads_it() {
    let (cluster, world, host) = database_world("ivb-two-rules").await;
    let ns = cluster.namespace.clone();
    let mesh = Mesh::new(&cluster);
    mesh.create(
        Kind::DestinationRule,
        "a-primary",
        true,
        json!({}),
        json!({"host": "orders-db", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
               "subsets": [{"name": "primary", "labels": {"role": "primary"}}]}),
    )
    .await;
    let newer = mesh
        .create(
            Kind::DestinationRule,
            "b-replicas",
            true,
            json!({}),
            json!({"host": "orders-db", "trafficPolicy": {"tls": {"mode": "DISABLE"}},
                   "subsets": [{"name": "replicas", "labels": {"role": "replica"}}]}),
        )
        .await;
    let report = cluster
        .invoke(DbCircuitBreak::default(), &[], &alert(&ns, "orders-db"))
        .await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    let stored_newer = mesh.get(Kind::DestinationRule, "b-replicas").await;
    assert_eq!(
        remediation_testkit::mesh::spec_text(&stored_newer),
        remediation_testkit::mesh::spec_text(&newer),
        "the newer rule's policy is not what Istio uses: it is left alone"
    );
    assert!(remediation_testkit::mesh::record(&stored_newer, "db-circuit-break").is_none());
    let compiled = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(compiled.findings(), Vec::<String>::new());
    for client in clients(&ns) {
        let clusters = compiled.proxy(client.name).clusters_of(&host, 5432);
        assert_eq!(
            clusters.len(),
            3,
            "{}: default, primary, replicas",
            client.name
        );
        for (name, c) in clusters {
            assert_eq!(
                c.threshold("max_connections"),
                Some(100),
                "{}: {name}",
                client.name
            );
            assert!(c.outlier_detection.is_some(), "{}: {name}", client.name);
        }
    }
}

#[tokio::test]
async fn ejection_switched_off_is_switched_on_and_a_stricter_connect_timeout_stays() {
    let (cluster, world, host) = database_world("ivb-values").await;
    let ns = cluster.namespace.clone();
    Mesh::new(&cluster)
        .create(
            Kind::DestinationRule,
            "orders-db",
            true,
            json!({}),
            json!({"host": "orders-db", "trafficPolicy": {
                "outlierDetection": {"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 3},
                "connectionPool": {"tcp": {"connectTimeout": "500ms"}}}}),
        )
        .await;
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    let default_cluster = format!("outbound|5432||{host}");
    let outlier = |c: &remediation_testkit::istio_oracle::Compiled, name: &str| {
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
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
    for client in clients(&ns) {
        let od = outlier(&after, client.name);
        assert_eq!(od["consecutive_5xx"], json!(5), "{}: {od}", client.name);
        assert_eq!(
            od["enforcing_consecutive_5xx"],
            json!(100),
            "{}: {od}",
            client.name
        );
        assert_eq!(
            od["consecutive_gateway_failure"],
            json!(3),
            "{}: kept",
            client.name
        );
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

#[tokio::test]
async fn a_dormant_failover_the_breaker_wakes_is_reported_not_called_unchanged() {
    let (cluster, world, host) = database_world("ivb-failover").await;
    let ns = cluster.namespace.clone();
    Mesh::new(&cluster)
        .create(
            Kind::DestinationRule,
            "orders-db",
            true,
            json!({}),
            json!({"host": "orders-db", "trafficPolicy": {"loadBalancer": {"localityLbSetting": {
                "failover": [{"from": "us-east-1", "to": "eu-west-1"}]}}}}),
        )
        .await;
    let default_cluster = format!("outbound|5432||{host}");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    for client in clients(&ns) {
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
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(
        regions_called(&after, "same-ns-east", &default_cluster),
        BTreeSet::from(["us-east-1".to_owned()]),
        "what the outcome says is what Istio does: the client now prefers its own region"
    );
}

#[tokio::test]
async fn a_dormant_failover_of_a_subset_the_breaker_wakes_is_reported() {
    // Found by the 2,000-mesh run (seed 40001168): a subset's own `loadBalancer` with a
    // failover and no outlier detection inherits the outlier detection the breaker puts at
    // the top level, and its failover wakes; the outcome said "as before".
    let (cluster, world, host) = database_world("ivb-subset-failover").await;
    let ns = cluster.namespace.clone();
    Mesh::new(&cluster)
        .create(
            Kind::DestinationRule,
            "orders-db",
            true,
            json!({}),
            json!({"host": "orders-db", "subsets": [{"name": "replicas",
                "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST", "localityLbSetting": {
                    "failover": [{"from": "us-east-1", "to": "eu-west-1"}]}}}}]}),
        )
        .await;
    let replicas = format!("outbound|5432|replicas|{host}");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
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
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
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
    let (cluster, world, host) = database_world("ivb-already-detecting").await;
    let ns = cluster.namespace.clone();
    Mesh::new(&cluster)
        .create(
            Kind::DestinationRule,
            "orders-db",
            true,
            json!({}),
            json!({"host": "orders-db", "trafficPolicy": {"outlierDetection": {}}}),
        )
        .await;
    let default_cluster = format!("outbound|5432||{host}");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(
        regions_called(&before, "same-ns-east", &default_cluster),
        BTreeSet::from(["us-east-1".to_owned()]),
        "outlier detection on: each client prefers its own region"
    );
    let change = break_circuit(&cluster, "preserve", "orders-db").await;
    assert!(change.contains("as before"), "{change}");
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
    for client in clients(&ns) {
        assert_eq!(
            regions_called(&after, client.name, &default_cluster),
            regions_called(&before, client.name, &default_cluster),
            "{}: the outcome says the spread is as before, and it is",
            client.name
        );
    }
}

#[tokio::test]
async fn a_subset_with_its_own_outlier_detection_keeps_preferring_its_clients_region() {
    // Found by the generated meshes: the subset inherits the top level's `loadBalancer`, so
    // keeping the preference off there switched it off for a subset where it already acted.
    let (cluster, world, host) = database_world("ivb-subset-detecting").await;
    let ns = cluster.namespace.clone();
    Mesh::new(&cluster)
        .create(
            Kind::DestinationRule,
            "orders-db",
            true,
            json!({}),
            json!({"host": "orders-db", "subsets": [
                {"name": "replicas", "trafficPolicy": {"outlierDetection": {}}}]}),
        )
        .await;
    let replicas = format!("outbound|5432|replicas|{host}");
    let default_cluster = format!("outbound|5432||{host}");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    let change = break_circuit(&cluster, "preserve", "orders-db").await;
    assert!(change.contains("as before"), "{change}");
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
    for client in clients(&ns) {
        for name in [&replicas, &default_cluster] {
            assert_eq!(
                regions_called(&after, client.name, name),
                regions_called(&before, client.name, name),
                "{}: {name}",
                client.name
            );
        }
        assert_eq!(
            after
                .proxy(client.name)
                .cluster(&replicas)
                .threshold("max_connections"),
            Some(100)
        );
    }
}

#[tokio::test]
async fn a_subset_with_its_own_outlier_detection_keeps_its_preference_on_a_port_entry() {
    // Found by the 2,000-mesh run: on port 5432 the subset's cluster starts from the top
    // level's port entry (Istio's `MergeSubsetTrafficPolicy`), whose preference `preserve`
    // keeps off; the subset's own outlier detection had it on for its clients.
    let (cluster, world, host) = database_world("ivb-subset-port").await;
    let ns = cluster.namespace.clone();
    Mesh::new(&cluster)
        .create(
            Kind::DestinationRule,
            "orders-db",
            true,
            json!({}),
            json!({"host": "orders-db",
                "trafficPolicy": {
                    "outlierDetection": {"consecutive5xxErrors": 6},
                    "portLevelSettings": [
                    {"port": {"number": 5432}, "connectionPool": {"tcp": {"maxConnections": 5}}}]},
                "subsets": [
                {"name": "replicas", "trafficPolicy": {"outlierDetection": {"interval": "1s"}}}]}),
        )
        .await;
    let replicas = format!("outbound|5432|replicas|{host}");
    let default_cluster = format!("outbound|5432||{host}");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    let change = break_circuit(&cluster, "preserve", "orders-db").await;
    assert!(change.contains("as before"), "{change}");
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
    for client in clients(&ns) {
        for name in [&replicas, &default_cluster] {
            assert_eq!(
                regions_called(&after, client.name, name),
                regions_called(&before, client.name, name),
                "{}: {name}",
                client.name
            );
        }
    }
}

#[tokio::test]
async fn a_subset_that_loses_its_preference_is_named_in_the_outcome() {
    // Found by the 2,000-mesh run (seed 40000684): the top level's `loadBalancer` also sets
    // `simple`, which a subset's own `loadBalancer` would drop and the breaker may not copy,
    // so the subset inherits the preference `preserve` keeps off. Its clients, which
    // preferred their own region, now spread: the outcome must say so, not "as before".
    let (cluster, world, host) = database_world("ivb-subset-spreads").await;
    let ns = cluster.namespace.clone();
    Mesh::new(&cluster)
        .create(
            Kind::DestinationRule,
            "orders-db",
            true,
            json!({}),
            json!({"host": "orders-db",
                "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
                "subsets": [
                {"name": "replicas", "trafficPolicy": {"outlierDetection": {}}}]}),
        )
        .await;
    let replicas = format!("outbound|5432|replicas|{host}");
    let default_cluster = format!("outbound|5432||{host}");
    let before = world.with_stored(&cluster).await.compile(&clients(&ns));
    assert_eq!(
        regions_called(&before, "same-ns-east", &replicas),
        BTreeSet::from(["us-east-1".to_owned()]),
        "the subset's own outlier detection: its clients prefer their own region"
    );
    let change = break_circuit(&cluster, "preserve", "orders-db").await;
    assert!(
        change.contains("clients of subsets replicas preferred their own region and now spread"),
        "{change}"
    );
    let after = world.with_stored(&cluster).await.compile(&clients(&ns));
    for client in clients(&ns) {
        assert_eq!(
            regions_called(&after, client.name, &default_cluster),
            regions_called(&before, client.name, &default_cluster),
            "{}: the rest of the rule spreads as before",
            client.name
        );
        assert!(
            regions_called(&after, client.name, &replicas).is_superset(&regions_called(
                &before,
                client.name,
                &replicas
            )),
            "{}",
            client.name
        );
        assert_eq!(
            after
                .proxy(client.name)
                .cluster(&replicas)
                .threshold("max_connections"),
            Some(100)
        );
    }
    assert!(
        regions_called(&after, "same-ns-east", &replicas).len() > 1,
        "what the outcome says is what Istio does: the subset's clients now spread"
    );
}

/// The database world of [`database_world`] with a client namespace `web` whose own rule
/// for the database (opted in when `opted_in`) Istio gives web's clients; the rules as
/// stored, and the clients.
async fn database_with_a_client_rule(
    prefix: &str,
    opted_in: bool,
) -> (TestCluster, World, String, String) {
    let (cluster, mut world, host) = database_world(prefix).await;
    let web = client_namespace(&cluster, "web").await;
    Mesh::new(&cluster)
        .create(
            Kind::DestinationRule,
            "orders-db",
            true,
            json!({}),
            json!({"host": "orders-db"}),
        )
        .await;
    store_rule(
        &cluster,
        &web,
        "orders-db",
        opted_in,
        json!({"host": host, "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 7}}}}),
    )
    .await;
    world.add(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": web}}));
    (cluster, world, host, web)
}

/// `world` with what the API server stores now, the rules of `web` included.
async fn stored_with(cluster: &TestCluster, world: &World, web: &str) -> World {
    let mut world = world.with_stored(cluster).await;
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        cluster.client.clone(),
        web,
        &Kind::DestinationRule.resource(),
    );
    for rule in api.list(&Default::default()).await.expect("list").items {
        world.add(serde_json::to_value(rule).expect("json"));
    }
    world
}

#[tokio::test]
async fn an_opted_in_rule_in_a_client_namespace_gets_the_breaker_where_its_clients_read_it() {
    let (cluster, world, host, web) = database_with_a_client_rule("ivb-client-opted", true).await;
    let ns = cluster.namespace.clone();
    let clients = vec![
        remediation_testkit::istio_oracle::Client::sidecar("same-ns", &ns, "us-east-1"),
        remediation_testkit::istio_oracle::Client::sidecar("web", &web, "us-west-2"),
    ];
    let default_cluster = format!("outbound|5432||{host}");
    let before = stored_with(&cluster, &world, &web).await.compile(&clients);
    assert!(
        before
            .proxy("web")
            .cluster(&default_cluster)
            .outlier_detection
            .is_none()
    );
    let report = cluster
        .invoke(DbCircuitBreak::default(), &[], &alert(&ns, "orders-db"))
        .await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    let after = stored_with(&cluster, &world, &web).await.compile(&clients);
    for client in &clients {
        let compiled = after.proxy(client.name).cluster(&default_cluster);
        assert!(
            compiled.outlier_detection.is_some(),
            "{}: the breaker is in the rule it reads",
            client.name
        );
    }
    assert_eq!(
        after
            .proxy("web")
            .cluster(&default_cluster)
            .threshold("max_connections"),
        Some(7),
        "web's stricter limit stays"
    );
}

#[tokio::test]
async fn an_opted_in_rule_in_a_protected_namespace_is_not_written_and_the_breaker_is_refused() {
    let (cluster, _world, _host, web) =
        database_with_a_client_rule("ivb-client-protected", true).await;
    let ns = cluster.namespace.clone();
    let before = rule_specs(&cluster, &[&ns, &web]).await;
    let protected = format!("kube-system,{web}");
    let report = cluster
        .invoke(
            DbCircuitBreak::default(),
            &[("PROTECTED_NAMESPACES", protected.as_str())],
            &alert(&ns, "orders-db"),
        )
        .await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{report:#?}");
    let why = remediation_testkit::mesh::reason(outcome);
    assert!(
        why.contains(&format!("namespace {web} is protected")),
        "{why}"
    );
    assert_eq!(
        rule_specs(&cluster, &[&ns, &web]).await,
        before,
        "nothing changed"
    );
}

#[tokio::test]
async fn a_pause_on_the_alerts_namespace_holds_the_rule_in_another_namespace_too() {
    let (cluster, _world, _host, web) =
        database_with_a_client_rule("ivb-client-paused", true).await;
    let ns = cluster.namespace.clone();
    let namespaces =
        kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(cluster.client.clone());
    namespaces
        .patch(
            &ns,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {
                "auto-remediation.io/paused": "incident 7"}}})),
        )
        .await
        .expect("pause the alert's namespace");
    let before = rule_specs(&cluster, &[&ns, &web]).await;
    let report = cluster
        .invoke(DbCircuitBreak::default(), &[], &alert(&ns, "orders-db"))
        .await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Skipped, "{report:#?}");
    assert!(
        remediation_testkit::mesh::reason(outcome).contains(&format!("paused for namespace {ns}")),
        "{report:#?}"
    );
    assert_eq!(
        rule_specs(&cluster, &[&ns, &web]).await,
        before,
        "web's rule, in a namespace nobody paused, is held too"
    );
}
