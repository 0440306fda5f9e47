//! The brakes an operator pulls without a redeploy: a pause for the whole cluster, a
//! namespace or one object, and an object that accepts only some remediations. Each is read
//! before any change, skips with a reason that says how to lift it, and changes nothing.
//! All run on the real control plane; the cluster-wide one on a control plane of its own,
//! since pausing a shared cluster would pause every other test.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams, PostParams};
use mesh_remediation::remediation::LatencyRestart;
use mesh_remediation::report::{InvocationReport, OutcomeKind};
use remediation_testkit::fleet::Fleet;
use remediation_testkit::mesh::{assert_skipped_for, assert_skipped_saying, only, reason};
use remediation_testkit::{TestCluster, events};
use serde_json::json;

const TARGET: &str = "checkout-v2";
const FIRING: &str = "latency-restart-firing.json";

async fn fire(cluster: &TestCluster) -> InvocationReport {
    let event = events::fresh(FIRING, &cluster.namespace);
    cluster.invoke(LatencyRestart, &[], &event).await
}

/// The restart annotation of the target's pod template: what latency-restart changes.
async fn restarted_at(cluster: &TestCluster) -> Option<String> {
    cluster
        .deployment(TARGET)
        .await
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .and_then(|a| a.get("kubectl.kubernetes.io/restartedAt").cloned())
}

/// A cluster holding the opted-in target, and the target's restart annotation before any
/// alert.
async fn with_target(prefix: &str) -> (TestCluster, Option<String>) {
    let cluster = TestCluster::start(prefix).await;
    cluster.create_deployment(TARGET, true).await;
    let before = restarted_at(&cluster).await;
    (cluster, before)
}

/// Sets (or with `None` removes) an annotation. On a real API server a Deployment's
/// annotation change bumps its `metadata.generation` (the apps strategy compares annotations
/// too), so the tests wait for the controller to observe it before firing: latency-restart
/// skips a Deployment whose rollout it sees in progress.
async fn annotate<K>(api: &Api<K>, name: &str, key: &str, value: Option<&str>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
    )
    .await
    .expect("annotate");
}

fn assert_skipped(report: &InvocationReport, expected: &str) {
    let outcome = only(report);
    assert_skipped_saying(outcome, expected);
}

#[tokio::test]
async fn a_paused_object_or_namespace_is_left_alone_until_the_pause_is_lifted() {
    let (cluster, before) = with_target("pause-object").await;
    let deployments = cluster.deployments();
    annotate(
        &deployments,
        TARGET,
        "auto-remediation.io/paused",
        Some("canary under study"),
    )
    .await;
    assert_skipped(&fire(&cluster).await, "paused: paused for Deployment");
    assert_eq!(restarted_at(&cluster).await, before, "nothing changed");

    annotate(&deployments, TARGET, "auto-remediation.io/paused", None).await;
    cluster.wait_settled(TARGET).await;
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    annotate(
        &namespaces,
        &cluster.namespace,
        "auto-remediation.io/paused",
        Some("change freeze"),
    )
    .await;
    let report = fire(&cluster).await;
    assert_skipped(
        &report,
        &format!("paused for namespace {}", cluster.namespace),
    );
    assert!(
        reason(only(&report)).contains("change freeze"),
        "{report:#?}"
    );
    assert_eq!(restarted_at(&cluster).await, before, "nothing changed");

    annotate(
        &namespaces,
        &cluster.namespace,
        "auto-remediation.io/paused",
        None,
    )
    .await;
    cluster.wait_settled(TARGET).await;
    assert_eq!(only(&fire(&cluster).await).outcome, OutcomeKind::Applied);
    assert_ne!(
        restarted_at(&cluster).await,
        before,
        "restarted once the pause is lifted"
    );
}

#[tokio::test]
async fn an_object_may_accept_only_some_remediations() {
    let (cluster, before) = with_target("pause-only").await;
    let deployments = cluster.deployments();
    let key = "auto-remediation.io/remediations";
    annotate(&deployments, TARGET, key, Some("error-rollback")).await;
    let report = fire(&cluster).await;
    assert_skipped(&report, "accepts only error-rollback");
    // "What a person sees": the list holds the alert like a pause, and is reported as one.
    assert_skipped_for(only(&report), "paused: ");
    assert!(only(&report).needs_a_report(), "{report:#?}");
    assert_eq!(restarted_at(&cluster).await, before);
    annotate(
        &deployments,
        TARGET,
        key,
        Some("error-rollback, latency-restart"),
    )
    .await;
    cluster.wait_settled(TARGET).await;
    assert_eq!(only(&fire(&cluster).await).outcome, OutcomeKind::Applied);
}

#[tokio::test]
async fn the_cluster_switch_pauses_every_namespace() {
    // A control plane of the test's own: the switch pauses everything on a cluster.
    let fleet = Fleet::start("pause-cluster", &["own"]).await;
    let cluster = &fleet.member("own").cluster;
    cluster.create_deployment(TARGET, true).await;
    let before = restarted_at(cluster).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "kube-system");
    let switch: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "mesh-remediation", "namespace": "kube-system"},
        "data": {"paused": "incident 4711: hands off"}}))
    .expect("configmap");
    configmaps
        .create(&PostParams::default(), &switch)
        .await
        .expect("create the switch");
    assert_skipped(&fire(cluster).await, "paused for the whole cluster");
    assert_eq!(restarted_at(cluster).await, before);
    // Lifted by emptying it (or deleting the ConfigMap).
    configmaps
        .patch(
            "mesh-remediation",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"paused": ""}})),
        )
        .await
        .expect("lift");
    assert_eq!(only(&fire(cluster).await).outcome, OutcomeKind::Applied);
}
