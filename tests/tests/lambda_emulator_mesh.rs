//! The built bootstraps of the mesh functions under the AWS Lambda Runtime Interface
//! Emulator, fed their sample events, acting with their own identity on the real control
//! plane (through the test's fault proxy) holding the demo mesh's Istio objects.

use kube::api::{DynamicObject, PostParams};
use remediation_testkit::TestCluster;
use remediation_testkit::events;
use remediation_testkit::lambda_emulator::{Emulator, function_binary};
use remediation_testkit::mesh::{HealthEndpoint, Kind, Mesh};
use serde_json::{Value, json};

/// A cluster holding the demo mesh's Istio objects in the test's namespace (the demo's
/// `shop` renamed).
async fn demo_mesh(prefix: &str) -> TestCluster {
    let cluster = TestCluster::start(prefix).await;
    let ns = cluster.namespace.clone();
    let mesh = Mesh::new(&cluster);
    for object in remediation_testkit::demo_mesh::demo_mesh_objects() {
        if object["apiVersion"] != "networking.istio.io/v1" {
            continue;
        }
        let text = serde_json::to_string(&object)
            .expect("json")
            .replace("\"namespace\":\"shop\"", &format!("\"namespace\":\"{ns}\""))
            .replace(".shop.svc.", &format!(".{ns}.svc."));
        let object: DynamicObject = serde_json::from_str(&text).expect("object");
        let kind = istio_kind(object.types.as_ref().map(|t| t.kind.as_str()));
        mesh.api(kind)
            .create(&PostParams::default(), &object)
            .await
            .expect("create the demo mesh object");
    }
    cluster
}

/// The demo mesh's Istio kind named `kind`.
fn istio_kind(kind: Option<&str>) -> Kind {
    match kind {
        Some("VirtualService") => Kind::VirtualService,
        Some("DestinationRule") => Kind::DestinationRule,
        other => panic!("the demo mesh has no {other:?}"),
    }
}

/// `function`'s bootstrap under the emulator, with its own identity and the test's budget.
async fn emulate(cluster: &TestCluster, function: &str, env: &[(&str, &str)]) -> Emulator {
    let kubeconfig = cluster
        .function_kubeconfig_path(function)
        .to_string_lossy()
        .into_owned();
    let mut vars = vec![
        ("KUBECONFIG", kubeconfig.as_str()),
        ("DRY_RUN", "false"),
        ("RUST_LOG", "info"),
        ("BUDGET_NAMESPACE", cluster.namespace.as_str()),
    ];
    vars.extend_from_slice(env);
    Emulator::start(&function_binary(function), &vars).await
}

/// The stored object's JSON.
async fn stored(cluster: &TestCluster, kind: Kind, name: &str) -> Value {
    Mesh::new(cluster).get(kind, name).await
}

/// Invokes `event` and returns the one outcome, asserting the invocation answered 200.
async fn outcome(emulator: &Emulator, event: &Value, function: &str) -> Value {
    let (status, body) = emulator.invoke(event).await;
    assert_eq!(status, 200, "{body}\n{}", emulator.logs());
    assert_eq!(body["function"], function, "{body}");
    let outcomes = body["outcomes"].as_array().expect("outcomes");
    assert_eq!(outcomes.len(), 1, "{body}");
    outcomes[0].clone()
}

/// Sends `function`'s revert sample: applied, and the object stored `before` the alert
/// has its spec back.
async fn assert_revert_restores(
    emulator: &Emulator,
    cluster: &TestCluster,
    function: &str,
    before: &Value,
) {
    let kind = istio_kind(before["kind"].as_str());
    let name = before["metadata"]["name"].as_str().expect("name");
    let revert = events::fresh(&format!("{function}-revert.json"), &cluster.namespace);
    let result = outcome(emulator, &revert, function).await;
    assert_eq!(result["outcome"], "applied", "{result}");
    assert_eq!(stored(cluster, kind, name).await["spec"], before["spec"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rollback_bootstrap_rolls_back_and_reverts() {
    let cluster = demo_mesh("rie-er").await;
    let before = stored(&cluster, Kind::VirtualService, "checkout").await;
    let emulator = emulate(&cluster, "error-rollback", &[]).await;
    let firing = events::fresh("error-rollback-firing.json", &cluster.namespace);
    let result = outcome(&emulator, &firing, "error-rollback").await;
    assert_eq!(result["outcome"], "applied", "{result}");
    assert_eq!(
        result["target"],
        format!("VirtualService {}/checkout", cluster.namespace)
    );
    let after = stored(&cluster, Kind::VirtualService, "checkout").await;
    let weights: Vec<&Value> = after["spec"]["http"][0]["route"]
        .as_array()
        .expect("route")
        .iter()
        .map(|d| &d["weight"])
        .collect();
    assert_eq!(
        weights,
        [&json!(100), &json!(0)],
        "stable subset v1 gets everything"
    );
    // Warm invocation, same event: cooldown.
    assert_eq!(
        outcome(&emulator, &firing, "error-rollback").await["outcome"],
        "skipped"
    );

    assert_revert_restores(&emulator, &cluster, "error-rollback", &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_circuit_break_bootstrap_sets_the_breaker_and_reverts() {
    let cluster = demo_mesh("rie-cb").await;
    let before = stored(&cluster, Kind::DestinationRule, "orders-db").await;
    let emulator = emulate(
        &cluster,
        "db-circuit-break",
        &[("CB_CONNECT_TIMEOUT", "1s")],
    )
    .await;
    let firing = events::fresh("db-circuit-break-firing.json", &cluster.namespace);
    let result = outcome(&emulator, &firing, "db-circuit-break").await;
    assert_eq!(result["outcome"], "applied", "{result}");
    let after = stored(&cluster, Kind::DestinationRule, "orders-db").await;
    let policy = &after["spec"]["trafficPolicy"];
    assert_eq!(
        policy["tls"],
        json!({"mode": "ISTIO_MUTUAL"}),
        "rest of the rule kept"
    );
    assert_eq!(policy["outlierDetection"]["consecutive5xxErrors"], 5);
    assert_eq!(
        policy["connectionPool"]["tcp"]["connectTimeout"], "1s",
        "setting from the environment"
    );

    assert_revert_restores(&emulator, &cluster, "db-circuit-break", &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_circuit_break_bootstrap_refuses_to_start_on_a_bad_setting() {
    let cluster = demo_mesh("rie-cbbad").await;
    let emulator = emulate(&cluster, "db-circuit-break", &[("CB_INTERVAL", "often")]).await;
    let firing = events::fresh("db-circuit-break-firing.json", &cluster.namespace);
    let (status, body) = emulator.invoke(&firing).await;
    assert_ne!(
        body["outcomes"][0]["outcome"], "applied",
        "must not act with a bad setting: {status} {body}"
    );
    assert!(
        emulator.logs().contains("CB_INTERVAL"),
        "the log names the variable: {}",
        emulator.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_failover_bootstrap_checks_health_and_shifts_weights() {
    let cluster = demo_mesh("rie-rf").await;
    let before = stored(&cluster, Kind::VirtualService, "frontend").await;
    let west = HealthEndpoint::start(200).await;
    let eu = HealthEndpoint::start(503).await;
    let urls = format!("us-west-2={},eu-west-1={}", west.url(), eu.url());
    let emulator = emulate(
        &cluster,
        "region-failover",
        &[("REGION_HEALTH_URLS", &urls)],
    )
    .await;
    let firing = events::fresh("region-failover-firing.json", &cluster.namespace);
    let result = outcome(&emulator, &firing, "region-failover").await;
    assert_eq!(result["outcome"], "applied", "{result}");
    let after = stored(&cluster, Kind::VirtualService, "frontend").await;
    let weights: Vec<i64> = after["spec"]["http"][0]["route"]
        .as_array()
        .expect("route")
        .iter()
        .map(|d| d["weight"].as_i64().expect("weight"))
        .collect();
    assert_eq!(
        weights,
        vec![0, 90, 10],
        "eu-west-1 is unhealthy: us-west-2 takes it all"
    );
    assert!(west.hits() >= 1 && eu.hits() >= 1);

    assert_revert_restores(&emulator, &cluster, "region-failover", &before).await;
}
