//! latency-restart end to end over HTTP against the Kubernetes API (the real control plane
//! scripts/test starts, or a cluster of your own via TEST_KUBECONFIG, behind the test's
//! fault proxy): every behaviour the product promises.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use lambda_runtime::{Context, LambdaEvent};
use mesh_remediation::cluster::record::ActionRecord;
use mesh_remediation::remediation::LatencyRestart;
use mesh_remediation::remediation::latency_restart::RESTARTED_AT;
use mesh_remediation::report::{InvocationReport, OutcomeKind};
use remediation_testkit::cluster::NO_COOLDOWN;
use remediation_testkit::fault_proxy::{Fault, FaultKind};
use remediation_testkit::mesh::{
    assert_invocation_fails_transiently, assert_one_dry_run_patch, assert_skipped_for,
    assert_skipped_saying, only, only_of_kind, reason,
};
use remediation_testkit::{TestCluster, events};
use serde_json::json;

const TARGET: &str = "checkout-v2";

fn restarted_at(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(RESTARTED_AT)
        .cloned()
}

fn record(d: &Deployment) -> Option<ActionRecord> {
    ActionRecord::from_annotations(d.metadata.annotations.as_ref(), "latency-restart")
        .expect("readable record")
}

fn kinds(report: &InvocationReport) -> Vec<OutcomeKind> {
    report.outcomes.iter().map(|o| o.outcome).collect()
}

async fn setup(prefix: &str) -> (TestCluster, Deployment) {
    let cluster = TestCluster::start(prefix).await;
    let before = cluster.create_deployment(TARGET, true).await;
    (cluster, before)
}

/// [`setup`] with `fault` injected in front of the API server.
async fn setup_with_fault(prefix: &str, fault: Fault) -> (TestCluster, Deployment) {
    let (cluster, before) = setup(prefix).await;
    cluster.faults().add_fault(fault);
    (cluster, before)
}

#[tokio::test]
async fn firing_alert_restarts_the_deployment_once_with_record_and_event() {
    let (cluster, before) = setup("firing").await;
    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let report = cluster.invoke(LatencyRestart, &[], &event).await;
    let outcome = only_of_kind(&report, OutcomeKind::Applied);
    assert_eq!(
        outcome.target.as_deref(),
        Some(format!("Deployment {}/{TARGET}", cluster.namespace).as_str())
    );
    let fingerprint = events::fingerprint(&event);
    assert_eq!(outcome.source.message_id, Some(events::message_id(&event)));
    assert_eq!(outcome.source.fingerprint.as_ref(), Some(&fingerprint));

    let after = cluster.deployment(TARGET).await;
    let stamp = restarted_at(&after).expect("pod template annotated like kubectl rollout restart");
    assert_ne!(restarted_at(&before), Some(stamp.clone()));
    assert_eq!(
        after.metadata.generation,
        before.metadata.generation.map(|g| g + 1),
        "one new rollout"
    );
    let record = record(&after).expect("action record on the object");
    assert_eq!(record.fingerprint, fingerprint);
    assert_eq!(record.trace_id, report.trace_id);
    assert_eq!(record.trace_id, "1-67a1b2c3-0123456789abcdef01234567");
    assert_eq!(record.streak, 1);
    // The reported patch is exactly what was sent.
    let patch = outcome.patch.as_ref().expect("patch reported");
    assert_eq!(
        patch["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT],
        json!(stamp)
    );
    assert_eq!(
        patch["metadata"]["resourceVersion"],
        json!(before.metadata.resource_version)
    );

    let events = cluster.events_about(TARGET).await;
    assert_eq!(events.len(), 1, "one Event per action: {events:#?}");
    assert_eq!(events[0]["action"], "Restart");
    assert_eq!(events[0]["reason"], "AutoRemediation");
    assert!(
        events[0]["note"]
            .as_str()
            .is_some_and(|n| n.contains(&report.trace_id))
    );
    assert_eq!(events[0]["regarding"]["kind"], "Deployment");
}

#[tokio::test]
async fn the_same_event_three_times_restarts_once() {
    let (cluster, before) = setup("repeat").await;
    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let mut outcomes = Vec::new();
    let mut stamps = Vec::new();
    for _ in 0..3 {
        let report = cluster.invoke(LatencyRestart, &[], &event).await;
        outcomes.push(only(&report).clone());
        stamps.push(restarted_at(&cluster.deployment(TARGET).await));
    }
    assert_eq!(outcomes[0].outcome, OutcomeKind::Applied);
    for repeat in &outcomes[1..] {
        assert_skipped_for(repeat, "cooldown");
    }
    assert!(
        stamps.iter().all(|s| s == &stamps[0]),
        "restartedAt changed: {stamps:?}"
    );
    let after = cluster.deployment(TARGET).await;
    assert_eq!(
        after.metadata.generation,
        before.metadata.generation.map(|g| g + 1)
    );
    assert_eq!(cluster.events_about(TARGET).await.len(), 1);
}

#[tokio::test]
async fn duplicates_within_one_event_act_once() {
    let (cluster, before) = setup("dupes").await;
    let mut event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let record = event["Records"][0].clone();
    event["Records"] = json!([record.clone(), record.clone(), record]);
    let report = cluster.invoke(LatencyRestart, &[], &event).await;
    let mut got = kinds(&report);
    got.sort();
    assert_eq!(
        got,
        vec![
            OutcomeKind::Applied,
            OutcomeKind::Skipped,
            OutcomeKind::Skipped
        ],
        "{report:#?}"
    );
    assert!(
        report
            .outcomes
            .iter()
            .filter(|o| o.outcome == OutcomeKind::Skipped)
            .all(|o| reason(o).starts_with("duplicate"))
    );
    assert_eq!(
        cluster.deployment(TARGET).await.metadata.generation,
        before.metadata.generation.map(|g| g + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_invocations_restart_once() {
    let (cluster, before) = setup("race").await;
    // Hold the first two writes a moment so both invocations read the same
    // resourceVersion and the race is decided by the write precondition.
    cluster.faults().add_fault(
        Fault::latency(300)
            .method("PATCH")
            .path_contains(&format!("/deployments/{TARGET}"))
            .times(2),
    );
    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let (a, b) = tokio::join!(
        cluster.invoke(LatencyRestart, &[], &event),
        cluster.invoke(LatencyRestart, &[], &event)
    );
    let mut got = vec![only(&a).outcome, only(&b).outcome];
    got.sort();
    assert_eq!(
        got,
        vec![OutcomeKind::Applied, OutcomeKind::Skipped],
        "{a:#?} {b:#?}"
    );
    let loser = if only(&a).outcome == OutcomeKind::Skipped {
        only(&a)
    } else {
        only(&b)
    };
    assert!(reason(loser).starts_with("cooldown"), "{loser:#?}");
    assert_eq!(
        cluster.deployment(TARGET).await.metadata.generation,
        before.metadata.generation.map(|g| g + 1)
    );
    let conflicts = cluster.refused_writes("deployments");
    assert_eq!(
        conflicts, 1,
        "the loser's write must have been refused by the precondition"
    );
}

#[tokio::test]
async fn resolved_alert_restarts_nothing() {
    let (cluster, before) = setup("resolved").await;
    let resolved = events::fresh("latency-restart-resolved.json", &cluster.namespace);
    let report = cluster.invoke(LatencyRestart, &[], &resolved).await;
    let outcome = only(&report);
    assert_skipped_for(outcome, "resolved");
    let after = cluster.deployment(TARGET).await;
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "nothing written"
    );

    // After a restart, the resolved alert records recovery but never restarts again.
    let firing = events::fresh("latency-restart-firing.json", &cluster.namespace);
    assert_eq!(
        only(&cluster.invoke(LatencyRestart, &[], &firing).await).outcome,
        OutcomeKind::Applied
    );
    let restarted = cluster.deployment(TARGET).await;
    let report = cluster.invoke(LatencyRestart, &[], &resolved).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Skipped, "{report:#?}");
    let after = cluster.deployment(TARGET).await;
    assert_eq!(
        restarted_at(&after),
        restarted_at(&restarted),
        "no restart on resolve"
    );
    // Not `metadata.generation`: a real API server bumps a Deployment's generation when
    // its annotations change, and the recovery record is an annotation.
    assert_eq!(
        after.spec.as_ref().map(|s| &s.template),
        restarted.spec.as_ref().map(|s| &s.template),
        "pod template untouched"
    );
    assert!(
        record(&after).expect("record").recovered(),
        "recovery recorded"
    );
}

#[tokio::test]
async fn objects_not_opted_in_are_skipped() {
    let cluster = TestCluster::start("optin").await;
    let before = cluster.create_deployment(TARGET, false).await;
    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let outcome = only(&cluster.invoke(LatencyRestart, &[], &event).await).clone();
    assert_skipped_saying(&outcome, "not labelled auto_remediation=active");
    cluster.assert_unchanged(TARGET, &before).await;
}

#[tokio::test]
async fn protected_namespaces_are_never_touched() {
    let (cluster, before) = setup("protected").await;
    cluster.clear_requests();
    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let protected = cluster.namespace.clone();
    let report = cluster
        .invoke(
            LatencyRestart,
            &[("PROTECTED_NAMESPACES", &protected)],
            &event,
        )
        .await;
    let outcome = only(&report);
    assert_skipped_saying(outcome, "is protected");
    // Default protection covers kube-system, whatever the labels say.
    let kube_system = events::fresh("latency-restart-firing.json", "kube-system");
    let outcome = only(&cluster.invoke(LatencyRestart, &[], &kube_system).await).clone();
    assert!(
        reason(&outcome).contains("kube-system is protected"),
        "{outcome:#?}"
    );
    assert!(
        cluster.requests().is_empty(),
        "no API request at all: {:#?}",
        cluster.requests()
    );
    cluster.assert_unchanged(TARGET, &before).await;
}

#[tokio::test]
async fn stale_deliveries_are_skipped() {
    let (cluster, before) = setup("stale").await;
    let published = chrono::Utc::now() - chrono::Duration::minutes(30);
    let event = events::fresh_at("latency-restart-firing.json", &cluster.namespace, published);
    let outcome = only(&cluster.invoke(LatencyRestart, &[], &event).await).clone();
    assert_skipped_for(&outcome, "stale: SNS message published");
    // An alert whose endsAt has passed is stale too.
    let mut ended = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let mut message = events::message(&ended);
    message["alerts"][0]["endsAt"] =
        json!((chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339());
    events::set_message(&mut ended, &message);
    let outcome = only(&cluster.invoke(LatencyRestart, &[], &ended).await).clone();
    assert!(
        reason(&outcome).starts_with("stale: alert already ended"),
        "{outcome:#?}"
    );
    cluster.assert_unchanged(TARGET, &before).await;
}

#[tokio::test]
async fn dry_run_stores_nothing_and_reports_the_exact_patch() {
    for (event_name, vars, why) in [
        (
            "latency-restart-firing.json",
            &[("DRY_RUN", "true")][..],
            "DRY_RUN=true",
        ),
        ("latency-restart-dry-run.json", &[][..], "dry_run label"),
        ("latency-restart-drill.json", &[][..], "drill"),
    ] {
        let (cluster, before) = setup("dryrun").await;
        let event = events::fresh(event_name, &cluster.namespace);
        let report = cluster.invoke(LatencyRestart, vars, &event).await;
        let outcome = only_of_kind(&report, OutcomeKind::DryRun);
        assert!(reason(outcome).starts_with(why), "{outcome:#?}");
        let patch = outcome.patch.as_ref().expect("exact patch reported");
        assert!(patch["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT].is_string());
        let after = cluster.deployment(TARGET).await;
        assert_eq!(
            after.metadata.resource_version, before.metadata.resource_version,
            "nothing stored"
        );
        assert_eq!(restarted_at(&after), restarted_at(&before));
        assert!(
            cluster.events_about(TARGET).await.is_empty(),
            "no Event for a dry run"
        );
        assert_one_dry_run_patch(&cluster, patch);
    }
}

#[tokio::test]
async fn malformed_input_gets_a_clear_error_and_changes_nothing() {
    let (cluster, before) = setup("malformed").await;
    cluster.clear_requests();
    let cases = [
        ("bad-not-json.json", "not JSON"),
        ("bad-default-template.json", "default plain-text"),
        ("bad-truncated.json", "truncated"),
        (
            "bad-unknown-remediation.json",
            "unknown remediation \"rollback\"",
        ),
        ("bad-not-sns.json", "neither a Lambda SNS event"),
        (
            "latency-restart-bad-missing-deployment.json",
            "no `deployment` label",
        ),
        (
            "latency-restart-bad-invalid-names.json",
            "not a valid Kubernetes name",
        ),
    ];
    for (name, expected) in cases {
        let event = events::fresh(name, &cluster.namespace);
        let report = cluster.invoke(LatencyRestart, &[], &event).await;
        assert!(
            !report.outcomes.is_empty(),
            "{name}: every input gets an outcome"
        );
        for outcome in &report.outcomes {
            assert_eq!(outcome.outcome, OutcomeKind::Failed, "{name}: {outcome:#?}");
            assert!(!outcome.retryable, "{name}: bad input must not be retried");
            assert!(reason(outcome).contains(expected), "{name}: {outcome:#?}");
        }
    }
    cluster.assert_unchanged(TARGET, &before).await;
    let writes: Vec<_> = cluster
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(writes.is_empty(), "no write at all: {writes:#?}");
}

#[tokio::test]
async fn api_500_is_a_retryable_failure_that_changes_nothing() {
    let (cluster, before) = setup_with_fault("api500", Fault::status(500).method("PATCH")).await;
    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let report = cluster.invoke(LatencyRestart, &[], &event).await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Failed);
    assert!(outcome.retryable, "a 5xx is transient: {outcome:#?}");
    assert_eq!(report.retryable_failures().count(), 1);
    cluster.faults().clear_faults();
    cluster.assert_unchanged(TARGET, &before).await;
    // Lambda's retry then succeeds.
    assert_eq!(
        only(&cluster.invoke(LatencyRestart, &[], &event).await).outcome,
        OutcomeKind::Applied
    );
}

#[tokio::test]
async fn a_retryable_failure_fails_the_lambda_invocation_and_bad_input_does_not() {
    let (cluster, _) = setup("lambdaerr").await;
    let function = mesh_remediation::lambda::Function::new(cluster.pipeline(LatencyRestart, &[]));
    let bad = events::fresh("bad-not-json.json", &cluster.namespace);
    let ok = function
        .invoke(LambdaEvent::new(bad, Context::default()))
        .await
        .expect("bad input answers normally: retrying cannot fix it");
    assert_eq!(ok["summary"]["failed"], 1);
    cluster
        .faults()
        .add_fault(Fault::status(503).method("PATCH"));
    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    assert_invocation_fails_transiently(&function, event).await;
}

#[tokio::test]
async fn a_409_storm_converges_to_one_restart() {
    let (cluster, before) = setup("storm").await;
    // Someone else writes the object just before each of our first three writes.
    cluster.faults().add_fault(
        Fault::new(FaultKind::ConflictBump)
            .method("PATCH")
            .path_contains("deployments")
            .times(3),
    );
    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let report = cluster.invoke(LatencyRestart, &[], &event).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    let after = cluster.deployment(TARGET).await;
    assert_eq!(
        after.metadata.generation,
        before.metadata.generation.map(|g| g + 1),
        "exactly one restart"
    );
    let refused = cluster
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.status == 409)
        .count();
    assert_eq!(refused, 3);

    // A storm that never ends gives up with a retryable failure, without acting.
    cluster.faults().add_fault(
        Fault::new(FaultKind::ConflictBump)
            .method("PATCH")
            .path_contains("deployments"),
    );
    let settled = cluster.wait_settled(TARGET).await;
    let report = cluster.invoke(LatencyRestart, &NO_COOLDOWN, &event).await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Failed);
    assert!(outcome.retryable);
    assert!(
        reason(outcome).contains("conflicting writes"),
        "{outcome:#?}"
    );
    assert_eq!(
        cluster.deployment(TARGET).await.metadata.generation,
        settled.metadata.generation
    );
}

#[tokio::test]
async fn blast_radius_caps_targets_per_invocation() {
    let cluster = TestCluster::start("blast").await;
    for name in ["checkout-v2", "orders"] {
        cluster.create_deployment(name, true).await;
    }
    let event = events::fresh("latency-restart-multi.json", &cluster.namespace);
    let report = cluster
        .invoke(
            LatencyRestart,
            &[("MAX_TARGETS_PER_INVOCATION", "1")],
            &event,
        )
        .await;
    assert_eq!(report.outcomes.len(), 4, "{report:#?}");
    let applied = report
        .outcomes
        .iter()
        .filter(|o| o.outcome == OutcomeKind::Applied)
        .count();
    assert_eq!(applied, 1, "{report:#?}");
    let reasons: Vec<&str> = report
        .outcomes
        .iter()
        .filter_map(|o| o.reason.as_deref())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("blast radius")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("kube-system is protected")),
        "{reasons:?}"
    );
    // `payments` does not exist in this namespace: failed with reason, not retried.
    assert!(
        reasons.iter().any(|r| r.contains("payments not found")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn a_rollout_in_progress_is_not_restarted() {
    let (cluster, _) = setup("rollout").await;
    // Someone starts a rollout (new image) whose new pod counts as available only after an
    // hour: the real controller keeps the old replica until then, so the rollout stays in
    // progress however long the test takes (the server requires the progress deadline to
    // exceed it).
    let patch = json!({"spec": {"minReadySeconds": 3600, "progressDeadlineSeconds": 7200, "template": {"spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}}}});
    cluster
        .deployments()
        .patch(TARGET, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("patch");
    let before = cluster.deployment(TARGET).await;
    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let outcome = only(&cluster.invoke(LatencyRestart, &[], &event).await).clone();
    assert_skipped_for(&outcome, "held: rollout in progress");
    // The controller keeps writing the status; the function wrote nothing.
    let after = cluster.deployment(TARGET).await;
    assert_eq!(after.metadata.generation, before.metadata.generation);
    let template = |d: &Deployment| d.spec.as_ref().map(|s| s.template.clone());
    assert_eq!(template(&after), template(&before), "no restart");
    assert!(
        !after
            .metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .any(|k| k.starts_with("auto-remediation.io/")),
        "no action record"
    );
    assert!(cluster.events_about(TARGET).await.is_empty(), "no Event");
}

#[tokio::test]
async fn slow_api_within_the_timeout_still_acts() {
    let (cluster, _) = setup_with_fault("slow", Fault::latency(300).method("PATCH")).await;
    let started = std::time::Instant::now();
    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    assert_eq!(
        only(&cluster.invoke(LatencyRestart, &[], &event).await).outcome,
        OutcomeKind::Applied
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}
