//! Hostile and misrouted input never reaches the Kubernetes API: label values that are not
//! valid Kubernetes names, protected or not-allowed namespaces, and records from an
//! unexpected SNS topic are answered with a clear, non-retryable outcome and not a single
//! API request (the fault proxy's request log stays empty).

use mesh_remediation::intake::names;
use mesh_remediation::remediation::db_circuit_break::CircuitBreaker;
use mesh_remediation::remediation::region_failover::FailoverSettings;
use mesh_remediation::remediation::{
    DbCircuitBreak, ErrorRollback, LatencyRestart, RegionFailover, Remediation,
};
use mesh_remediation::report::{InvocationReport, OutcomeKind};
use remediation_testkit::mesh::only_of_kind;
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const TARGET: &str = "checkout-v2";
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:mesh-remediation-alerts";

/// Label values that must never become part of an API path.
const HOSTILE: [&str; 10] = [
    "../kube-system",
    "shop/../../secrets",
    "..",
    "/",
    "Shop",
    "shop\n{\"outcome\":\"applied\"}",
    "shop?dryRun=None",
    "shop%2F..",
    "-shop",
    "",
];

fn long_value() -> String {
    "a".repeat(300)
}

/// The sample event with `label` of its (first) alert set to `value`.
fn with_label(sample: &str, namespace: &str, label: &str, value: &str) -> Value {
    let mut event = events::fresh(sample, namespace);
    let mut message = events::message(&event);
    message["alerts"][0]["labels"][label] = json!(value);
    message["commonLabels"][label] = json!(value);
    events::set_message(&mut event, &message);
    event
}

fn assert_no_request(cluster: &TestCluster, context: &str) {
    let requests = cluster.requests();
    assert!(
        requests.is_empty(),
        "{context}: no API request may be made: {requests:#?}"
    );
}

fn clear(cluster: &TestCluster) {
    cluster.clear_requests();
}

/// Every outcome failed (not retryable) or skipped, with `expected` in the reason.
fn assert_refused(report: &InvocationReport, kind: OutcomeKind, expected: &str, context: &str) {
    assert!(!report.outcomes.is_empty(), "{context}: an outcome");
    for outcome in &report.outcomes {
        assert_eq!(outcome.outcome, kind, "{context}: {outcome:#?}");
        assert!(!outcome.retryable, "{context}: never retried: {outcome:#?}");
        let reason = outcome.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains(expected),
            "{context}: {expected:?} not in {reason:?}"
        );
        assert!(
            !reason.chars().any(char::is_control),
            "{context}: raw control character in {reason:?}"
        );
    }
}

fn name_error(value: &str, label: &str) -> String {
    if value.is_empty() {
        format!("no `{label}` label")
    } else if value.len() > 63 {
        "characters long".into()
    } else {
        "not a valid Kubernetes name".into()
    }
}

#[tokio::test]
async fn invalid_names_in_labels_are_rejected_before_any_request() {
    let cluster = TestCluster::start("hostile-names").await;
    cluster.create_deployment(TARGET, true).await;
    let long = long_value();
    let values = HOSTILE.iter().copied().chain([long.as_str()]);
    for value in values {
        for label in ["namespace", "deployment"] {
            clear(&cluster);
            let event = with_label(
                "latency-restart-firing.json",
                &cluster.namespace,
                label,
                value,
            );
            let report = cluster.invoke(LatencyRestart, &[], &event).await;
            let context = format!("latency-restart {label}={value:?}");
            assert_refused(
                &report,
                OutcomeKind::Failed,
                &name_error(value, label),
                &context,
            );
            assert_no_request(&cluster, &context);
        }
    }
}

/// The Istio functions' `service` (and `region`, `version`) labels get the same treatment.
async fn istio_labels_rejected<R: Remediation>(
    cluster: &TestCluster,
    remediation: impl Fn() -> R,
    sample: &str,
    labels: &[&str],
) {
    let long = long_value();
    for value in HOSTILE.iter().copied().chain([long.as_str()]) {
        for label in labels {
            // `version` and `region` are label values (upper case allowed), `version` is
            // optional (empty means absent): only what their syntax refuses is hostile.
            let refused = match *label {
                "version" => !value.is_empty() && names::label_value(label, value).is_err(),
                "region" => names::label_value(label, value).is_err(),
                _ => true,
            };
            if !refused {
                continue;
            }
            clear(cluster);
            let event = with_label(sample, &cluster.namespace, label, value);
            let report = cluster.invoke(remediation(), &[], &event).await;
            let context = format!("{} {label}={value:?}", remediation().name());
            assert!(!report.outcomes.is_empty(), "{context}: an outcome");
            for outcome in &report.outcomes {
                assert_eq!(
                    outcome.outcome,
                    OutcomeKind::Failed,
                    "{context}: {outcome:#?}"
                );
                assert!(!outcome.retryable, "{context}");
            }
            assert_no_request(cluster, &context);
        }
    }
}

#[tokio::test]
async fn the_istio_functions_reject_invalid_names_before_any_request() {
    let cluster = TestCluster::start("hostile-istio").await;
    istio_labels_rejected(
        &cluster,
        || ErrorRollback,
        "error-rollback-firing.json",
        &["namespace", "service", "version"],
    )
    .await;
    istio_labels_rejected(
        &cluster,
        || DbCircuitBreak::new(CircuitBreaker::from_lookup(|_| None).expect("defaults")),
        "db-circuit-break-firing.json",
        &["namespace", "db_host"],
    )
    .await;
    istio_labels_rejected(
        &cluster,
        || RegionFailover::new(FailoverSettings::from_lookup(|_| None).expect("defaults")),
        "region-failover-firing.json",
        &["namespace", "service", "region"],
    )
    .await;
}

#[tokio::test]
async fn protected_and_not_allowed_namespaces_are_never_touched() {
    let cluster = TestCluster::start("hostile-protected").await;
    // The request log shows no request at all for the protected namespaces, so whether
    // opted-in objects exist there does not matter.
    cluster.create_deployment(TARGET, true).await;
    for (namespace, deployment) in [
        ("kube-system", "coredns"),
        ("istio-system", "istiod"),
        ("kube-public", "x"),
        ("kube-node-lease", "x"),
    ] {
        clear(&cluster);
        let mut event = events::fresh("latency-restart-firing.json", namespace);
        let mut message = events::message(&event);
        message["alerts"][0]["labels"]["deployment"] = json!(deployment);
        events::set_message(&mut event, &message);
        let report = cluster.invoke(LatencyRestart, &[], &event).await;
        assert_refused(
            &report,
            OutcomeKind::Skipped,
            &format!("namespace {namespace} is protected"),
            namespace,
        );
        assert_no_request(&cluster, namespace);
        // The Istio functions too.
        clear(&cluster);
        let report = cluster
            .invoke(
                ErrorRollback,
                &[],
                &events::fresh("error-rollback-firing.json", namespace),
            )
            .await;
        assert_refused(&report, OutcomeKind::Skipped, "is protected", namespace);
        assert_no_request(&cluster, namespace);
    }
    // ALLOWED_NAMESPACES set and not listing the namespace.
    clear(&cluster);
    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let not_listing_it = [("ALLOWED_NAMESPACES", "payments,orders")];
    let report = cluster
        .invoke(LatencyRestart, &not_listing_it, &event)
        .await;
    assert_refused(
        &report,
        OutcomeKind::Skipped,
        "is not in ALLOWED_NAMESPACES",
        "allowed",
    );
    assert_no_request(&cluster, "ALLOWED_NAMESPACES");
    // The same alert in an allowed namespace acts.
    let allowed = cluster.namespace.clone();
    let report = cluster
        .invoke(LatencyRestart, &[("ALLOWED_NAMESPACES", &allowed)], &event)
        .await;
    only_of_kind(&report, OutcomeKind::Applied);
}

#[tokio::test]
async fn records_from_an_unexpected_topic_are_rejected_before_any_request() {
    let cluster = TestCluster::start("hostile-topic").await;
    let before = cluster.create_deployment(TARGET, true).await;
    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    assert_eq!(
        event["Records"][0]["Sns"]["TopicArn"], TOPIC,
        "sample topic"
    );
    clear(&cluster);
    let other = "arn:aws:sns:us-east-1:999999999999:someone-elses-topic";
    let report = cluster
        .invoke(LatencyRestart, &[("ALERT_TOPIC_ARN", other)], &event)
        .await;
    assert_refused(
        &report,
        OutcomeKind::Failed,
        "ALERT_TOPIC_ARN",
        "other topic",
    );
    assert_no_request(&cluster, "other topic");
    cluster.assert_unchanged(TARGET, &before).await;
    // From the expected topic, it acts.
    let report = cluster
        .invoke(LatencyRestart, &[("ALERT_TOPIC_ARN", TOPIC)], &event)
        .await;
    only_of_kind(&report, OutcomeKind::Applied);
}
