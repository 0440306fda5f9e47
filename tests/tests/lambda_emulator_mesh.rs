//! The built bootstraps of the mesh functions under the AWS Lambda Runtime Interface
//! Emulator, fed their sample events, acting on a stand-in seeded with the demo mesh.

use kube_standin::StandIn;
use remediation_testkit::events;
use remediation_testkit::lambda_emulator::{Emulator, function_binary};
use remediation_testkit::mesh::HealthEndpoint;
use serde_json::{Value, json};

const ISTIO: &str = "networking.istio.io/v1";

/// The demo mesh on a fresh stand-in, and a kubeconfig file for the bootstrap.
async fn demo_mesh(name: &str) -> (StandIn, std::path::PathBuf) {
    let standin = StandIn::start().await.expect("stand-in starts");
    kube_standin::seed_demo_mesh(&standin);
    let path =
        std::env::temp_dir().join(format!("kubeconfig-rie-{name}-{}.yaml", std::process::id()));
    std::fs::write(&path, standin.kubeconfig_yaml("shop")).expect("write kubeconfig");
    (standin, path)
}

async fn emulate(function: &str, kubeconfig: &std::path::Path, env: &[(&str, &str)]) -> Emulator {
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let mut vars = vec![
        ("KUBECONFIG", kubeconfig.as_str()),
        ("DRY_RUN", "false"),
        ("RUST_LOG", "info"),
    ];
    vars.extend_from_slice(env);
    Emulator::start(&function_binary(function), &vars).await
}

fn stored(standin: &StandIn, kind: &str, name: &str) -> Value {
    let object = standin
        .get(ISTIO, kind, Some("shop"), name)
        .unwrap_or_else(|| panic!("{kind} shop/{name} stored"));
    if let Err(errors) = kube_standin::validate_istio(kind, "v1", &object) {
        panic!("{kind} shop/{name} invalid: {errors:#?}");
    }
    object
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rollback_bootstrap_rolls_back_and_reverts() {
    let (standin, kubeconfig) = demo_mesh("er").await;
    let before = stored(&standin, "VirtualService", "checkout");
    let emulator = emulate("error-rollback", &kubeconfig, &[]).await;
    let firing = events::fresh("error-rollback-firing.json", "shop");
    let result = outcome(&emulator, &firing, "error-rollback").await;
    assert_eq!(result["outcome"], "applied", "{result}");
    assert_eq!(result["target"], "VirtualService shop/checkout");
    let after = stored(&standin, "VirtualService", "checkout");
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

    let revert = events::fresh("error-rollback-revert.json", "shop");
    let result = outcome(&emulator, &revert, "error-rollback").await;
    assert_eq!(result["outcome"], "applied", "{result}");
    assert_eq!(
        stored(&standin, "VirtualService", "checkout")["spec"],
        before["spec"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_circuit_break_bootstrap_sets_the_breaker_and_reverts() {
    let (standin, kubeconfig) = demo_mesh("cb").await;
    let before = stored(&standin, "DestinationRule", "orders-db");
    let emulator = emulate(
        "db-circuit-break",
        &kubeconfig,
        &[("CB_CONNECT_TIMEOUT", "1s")],
    )
    .await;
    let firing = events::fresh("db-circuit-break-firing.json", "shop");
    let result = outcome(&emulator, &firing, "db-circuit-break").await;
    assert_eq!(result["outcome"], "applied", "{result}");
    let after = stored(&standin, "DestinationRule", "orders-db");
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

    let revert = events::fresh("db-circuit-break-revert.json", "shop");
    let result = outcome(&emulator, &revert, "db-circuit-break").await;
    assert_eq!(result["outcome"], "applied", "{result}");
    assert_eq!(
        stored(&standin, "DestinationRule", "orders-db")["spec"],
        before["spec"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_circuit_break_bootstrap_refuses_to_start_on_a_bad_setting() {
    let (_standin, kubeconfig) = demo_mesh("cbbad").await;
    let emulator = emulate("db-circuit-break", &kubeconfig, &[("CB_INTERVAL", "often")]).await;
    let firing = events::fresh("db-circuit-break-firing.json", "shop");
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
    let (standin, kubeconfig) = demo_mesh("rf").await;
    let before = stored(&standin, "VirtualService", "frontend");
    let west = HealthEndpoint::start(200).await;
    let eu = HealthEndpoint::start(503).await;
    let urls = format!("us-west-2={},eu-west-1={}", west.url(), eu.url());
    let emulator = emulate(
        "region-failover",
        &kubeconfig,
        &[("REGION_HEALTH_URLS", &urls)],
    )
    .await;
    let firing = events::fresh("region-failover-firing.json", "shop");
    let result = outcome(&emulator, &firing, "region-failover").await;
    assert_eq!(result["outcome"], "applied", "{result}");
    let after = stored(&standin, "VirtualService", "frontend");
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

    let revert = events::fresh("region-failover-revert.json", "shop");
    let result = outcome(&emulator, &revert, "region-failover").await;
    assert_eq!(result["outcome"], "applied", "{result}");
    assert_eq!(
        stored(&standin, "VirtualService", "frontend")["spec"],
        before["spec"]
    );
}
