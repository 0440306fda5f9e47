//! Which rule a client uses, as Istio resolves it and its compiler shows: a rule in the
//! client's own namespace before the database's, the oldest of several rules for one host.
//! The breaker goes where each client reads its policy, or the function refuses, names the
//! rule in the way, and changes nothing.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use mesh_remediation::report::OutcomeKind;
use remediation_testkit::TestCluster;
use remediation_testkit::istio_oracle::{
    Client, World, client_namespace, clients, stored_services,
};
use remediation_testkit::mesh::{
    Kind, Mesh, assert_failed_saying, assert_skipped_saying, only, record, spec_text,
};
use serde_json::json;

use super::{UNLIMITED, database_world, db_cluster, invoke, max_connections};

/// The spec of every stored DestinationRule of `namespaces`, by `namespace/name`.
async fn rule_specs(cluster: &TestCluster, namespaces: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for namespace in namespaces {
        for rule in rules_in(cluster, namespace).await {
            let value = serde_json::to_value(&rule).expect("json");
            let name = rule.metadata.name.unwrap_or_default();
            out.push((format!("{namespace}/{name}"), spec_text(&value)));
        }
    }
    out
}

/// [`rule_specs`] of the alert's namespace and the client namespace `web`.
async fn both_rules(cluster: &TestCluster, web: &str) -> Vec<(String, String)> {
    rule_specs(cluster, &[&cluster.namespace, web]).await
}

/// The DestinationRules stored in `namespace`.
async fn rules_in(cluster: &TestCluster, namespace: &str) -> Vec<DynamicObject> {
    let api = Mesh::in_namespace(cluster, namespace).api(Kind::DestinationRule);
    api.list(&ListParams::default()).await.expect("list").items
}

/// The database world of [`database_world`] with its opted-in rule `orders-db`, and a
/// client namespace `web` whose own rule for the database (opted in when `opted_in`), with
/// a connection limit of 7, Istio gives web's clients; the rules as stored, and the clients.
async fn database_with_a_client_rule(
    prefix: &str,
    opted_in: bool,
) -> (TestCluster, World, String, String) {
    let (cluster, mut world, host) = database_world(prefix).await;
    let web = client_namespace(&cluster, "web").await;
    Mesh::new(&cluster)
        .opted_in(
            Kind::DestinationRule,
            "orders-db",
            json!({"host": "orders-db"}),
        )
        .await;
    Mesh::in_namespace(&cluster, &web)
        .create(
            Kind::DestinationRule,
            "orders-db",
            opted_in,
            json!({}),
            json!({"host": host, "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 7}}}}),
        )
        .await;
    world.add(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": web}}));
    (cluster, world, host, web)
}

/// A client in the test namespace and one in `web`.
fn web_clients(ns: &str, web: &str) -> Vec<Client> {
    vec![
        Client::sidecar("same-ns", ns, "us-east-1"),
        Client::sidecar("web", web, "us-west-2"),
    ]
}

/// `world` with what the API server stores now, the rules of `web` included.
async fn stored_with(cluster: &TestCluster, world: &World, web: &str) -> World {
    let mut world = world.with_stored(cluster).await;
    for rule in rules_in(cluster, web).await {
        world.add(serde_json::to_value(rule).expect("json"));
    }
    world
}

#[tokio::test]
async fn a_rule_in_a_client_namespace_takes_precedence_so_the_breaker_is_refused_and_named() {
    // The web team's own rule for the database: Istio looks in the client's namespace first.
    let (cluster, world, host, web) = database_with_a_client_rule("ivb-client-ns", false).await;
    let ns = cluster.namespace.clone();
    let clients = web_clients(&ns, &web);
    let before_specs = both_rules(&cluster, &web).await;
    let before = stored_with(&cluster, &world, &web).await.compile(&clients);
    let default_cluster = db_cluster("", &host);
    assert_eq!(
        max_connections(&before, "web", &default_cluster),
        Some(7),
        "Istio gives web clients their own namespace's rule"
    );

    let report = invoke(&cluster, &[]).await;
    let in_web = format!("clients in namespace {web}");
    assert_failed_saying(&report, &[&in_web, &format!("{web}/orders-db")]);
    let after_specs = both_rules(&cluster, &web).await;
    assert_eq!(after_specs, before_specs, "nothing changed");
    let after = stored_with(&cluster, &world, &web).await.compile(&clients);
    for client in &clients {
        assert_eq!(
            max_connections(&after, client.name, &default_cluster),
            max_connections(&before, client.name, &default_cluster),
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
    mesh.not_opted_in(
        Kind::DestinationRule,
        "a-legacy",
        json!({"host": "orders-db", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
    )
    .await;
    mesh.opted_in(
        Kind::DestinationRule,
        "b-managed",
        json!({"host": "orders-db"}),
    )
    .await;
    let before_specs = rule_specs(&cluster, &[&ns]).await;
    let report = invoke(&cluster, &[]).await;
    let legacy = format!("{ns}/a-legacy");
    assert_failed_saying(&report, &[&legacy, "not labelled auto_remediation=active"]);
    assert_eq!(rule_specs(&cluster, &[&ns]).await, before_specs);
    // What the old behaviour (the breaker written into b-managed) would have meant: Istio
    // keeps a-legacy's policy, so no client would have had the breaker.
    let mut planted = world.clone();
    let services = stored_services(&cluster).await;
    let service = services
        .into_iter()
        .find(|s| s["metadata"]["name"] == "orders-db");
    let mut managed = mesh.get(Kind::DestinationRule, "b-managed").await;
    managed["spec"]["trafficPolicy"] = json!({"connectionPool": {"tcp": {"maxConnections": 100}}});
    planted
        .add(service.expect("service"))
        .add(mesh.get(Kind::DestinationRule, "a-legacy").await)
        .add(managed);
    let compiled = planted.compile(&clients(&ns));
    for client in clients(&ns) {
        assert_eq!(
            max_connections(&compiled, client.name, &db_cluster("", &host)),
            Some(UNLIMITED),
            "{}: a newer rule's top-level policy is dropped by Istio's merge",
            client.name
        );
    }
}

#[tokio::test]
async fn of_two_opted_in_rules_the_breaker_goes_where_istio_reads_it() {
    let (cluster, world, host) = database_world("ivb-two-rules").await;
    let mesh = Mesh::new(&cluster);
    mesh.opted_in(
        Kind::DestinationRule,
        "a-primary",
        json!({"host": "orders-db", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
               "subsets": [{"name": "primary", "labels": {"role": "primary"}}]}),
    )
    .await;
    let newer = mesh
        .opted_in(
            Kind::DestinationRule,
            "b-replicas",
            json!({"host": "orders-db", "trafficPolicy": {"tls": {"mode": "DISABLE"}},
                   "subsets": [{"name": "replicas", "labels": {"role": "replica"}}]}),
        )
        .await;
    let report = invoke(&cluster, &[]).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    let stored_newer = mesh.get(Kind::DestinationRule, "b-replicas").await;
    assert_eq!(
        spec_text(&stored_newer),
        spec_text(&newer),
        "the newer rule's policy is not what Istio uses: it is left alone"
    );
    assert!(record(&stored_newer, "db-circuit-break").is_none());
    let compiled = world.compile_stored(&cluster).await;
    assert_eq!(compiled.findings(), Vec::<String>::new());
    for client in clients(&cluster.namespace) {
        let clusters = compiled.proxy(client.name).clusters_of(&host, 5432);
        let count = clusters.len();
        assert_eq!(count, 3, "{}: default, primary, replicas", client.name);
        for (name, c) in clusters {
            let at = format!("{}: {name}", client.name);
            assert_eq!(c.threshold("max_connections"), Some(100), "{at}");
            assert!(c.outlier_detection.is_some(), "{at}");
        }
    }
}

#[tokio::test]
async fn an_opted_in_rule_in_a_client_namespace_gets_the_breaker_where_its_clients_read_it() {
    let (cluster, world, host, web) = database_with_a_client_rule("ivb-client-opted", true).await;
    let clients = web_clients(&cluster.namespace, &web);
    let default_cluster = db_cluster("", &host);
    let before = stored_with(&cluster, &world, &web).await.compile(&clients);
    let web_before = before.proxy("web").cluster(&default_cluster);
    assert!(web_before.outlier_detection.is_none());
    let report = invoke(&cluster, &[]).await;
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
        max_connections(&after, "web", &default_cluster),
        Some(7),
        "web's stricter limit stays"
    );
}

#[tokio::test]
async fn an_opted_in_rule_in_a_protected_namespace_is_not_written_and_the_breaker_is_refused() {
    let (cluster, _world, _host, web) =
        database_with_a_client_rule("ivb-client-protected", true).await;
    let before = both_rules(&cluster, &web).await;
    let protected = format!("kube-system,{web}");
    let report = invoke(&cluster, &[("PROTECTED_NAMESPACES", protected.as_str())]).await;
    assert_failed_saying(&report, &[&format!("namespace {web} is protected")]);
    assert_eq!(both_rules(&cluster, &web).await, before, "nothing changed");
}

#[tokio::test]
async fn a_pause_on_the_alerts_namespace_holds_the_rule_in_another_namespace_too() {
    let (cluster, _world, _host, web) =
        database_with_a_client_rule("ivb-client-paused", true).await;
    let ns = cluster.namespace.clone();
    let namespaces = Api::<Namespace>::all(cluster.client.clone());
    namespaces
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "auto-remediation.io/paused": "incident 7"}}})),
        )
        .await
        .expect("pause the alert's namespace");
    let before = both_rules(&cluster, &web).await;
    let report = invoke(&cluster, &[]).await;
    assert_skipped_saying(only(&report), &format!("paused for namespace {ns}"));
    assert_eq!(
        both_rules(&cluster, &web).await,
        before,
        "web's rule, in a namespace nobody paused, is held too"
    );
}
