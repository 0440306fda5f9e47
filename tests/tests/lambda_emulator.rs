//! The built `latency-restart` bootstrap under the AWS Lambda Runtime Interface Emulator,
//! fed the sample events, acting on the Kubernetes API over HTTP.

use mesh_remediation::remediation::latency_restart::RESTARTED_AT;
use remediation_testkit::lambda_emulator::{Emulator, function_binary};
use remediation_testkit::{TestCluster, events};
use serde_json::Value;

/// The latency-restart bootstrap under the emulator, acting on `cluster` (not in dry run,
/// its budgets in the test namespace), with `vars` beside.
async fn latency_restart_on(cluster: &TestCluster, vars: &[(&str, &str)]) -> Emulator {
    let bootstrap = function_binary("latency-restart");
    let kubeconfig = cluster.kubeconfig_path().to_string_lossy().into_owned();
    let mut all = vec![
        ("KUBECONFIG", kubeconfig.as_str()),
        ("DRY_RUN", "false"),
        ("BUDGET_NAMESPACE", cluster.namespace.as_str()),
    ];
    all.extend_from_slice(vars);
    Emulator::start(&bootstrap, &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_restarts_under_the_lambda_emulator() {
    let cluster = TestCluster::start("rie").await;
    let before = cluster.create_deployment("checkout-v2", true).await;
    let emulator = latency_restart_on(&cluster, &[("RUST_LOG", "info")]).await;

    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let (status, body) = emulator.invoke(&event).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["function"], "latency-restart", "{body}");
    assert_eq!(body["outcomes"][0]["outcome"], "applied", "{body}");
    let after = cluster.deployment("checkout-v2").await;
    let annotations = after
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert!(annotations.contains_key(RESTARTED_AT), "restarted");
    assert_eq!(
        after.metadata.generation,
        before.metadata.generation.map(|g| g + 1)
    );

    // Warm invocation, same event: one restart per cooldown.
    let (_, body) = emulator.invoke(&event).await;
    assert_eq!(body["outcomes"][0]["outcome"], "skipped", "{body}");

    // Bad input answers normally with a failed outcome (not retried).
    let (status, body) = emulator
        .invoke(&events::fresh(
            "bad-default-template.json",
            &cluster.namespace,
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["outcomes"][0]["outcome"], "failed", "{body}");
    assert!(
        body["outcomes"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("JSON message template"))
    );

    // One structured JSON log line per outcome, carrying the trace id and SNS message id.
    let logs = emulator.json_logs();
    let applied: Vec<&Value> = logs.iter().filter(|l| l["outcome"] == "applied").collect();
    assert_eq!(applied.len(), 1, "{}", emulator.logs());
    let line = applied[0];
    assert_eq!(line["message_id"], events::message_id(&event).as_str());
    assert_eq!(line["fingerprint"], events::fingerprint(&event).as_str());
    assert_eq!(
        line["target"],
        format!("Deployment {}/checkout-v2", cluster.namespace)
    );
    assert!(line["trace_id"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(
        line["patch"]
            .as_str()
            .is_some_and(|p| p.contains(RESTARTED_AT))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_api_failure_is_a_function_error_for_lambda_to_retry() {
    let cluster = TestCluster::start("rie-retry").await;
    cluster.create_deployment("checkout-v2", true).await;
    let faults = cluster.faults();
    faults.add_fault(remediation_testkit::fault_proxy::Fault::status(500).method("PATCH"));
    let emulator = latency_restart_on(&cluster, &[]).await;
    let (_, body) = emulator
        .invoke(&events::fresh(
            "latency-restart-firing.json",
            &cluster.namespace,
        ))
        .await;
    assert!(
        body["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("failed transiently")),
        "expected a function error: {body}"
    );
    assert_eq!(
        body["errorType"], "MeshRemediation.Retryable",
        "a typed error: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_stops_the_start_naming_the_variable() {
    let bootstrap = function_binary("latency-restart");
    let emulator = Emulator::start(&bootstrap, &[("DRY_RUN", "perhaps")]).await;
    let (status, body) = emulator
        .invoke(&events::raw("latency-restart-firing.json"))
        .await;
    assert!(
        body.get("outcomes").is_none(),
        "nothing may be handled with a bad configuration: {status} {body}"
    );
    let logs = emulator.logs();
    assert!(
        logs.contains("DRY_RUN"),
        "start failure must name the variable: {logs}"
    );
}
