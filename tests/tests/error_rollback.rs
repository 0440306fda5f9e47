//! error-rollback end to end over HTTP against the Kubernetes API (the real control plane
//! scripts/test starts, or a cluster of your own via TEST_KUBECONFIG, behind the test's
//! fault proxy): weights, idempotency, dry run, revert.

use mesh_remediation::remediation::{ErrorRollback, LatencyRestart};
use mesh_remediation::report::OutcomeKind;
use remediation_testkit::cluster::NO_COOLDOWN;
use remediation_testkit::mesh::{
    Kind, Mesh, assert_failed_saying, assert_first_route_recorded, assert_one_dry_run_patch,
    assert_one_winner, assert_refused_saying, assert_skipped_for, assert_skipped_saying,
    assert_strict_writes, only, only_of_kind, race, reason, record, spec_text, version_subsets,
};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const FIRING: &str = "error-rollback-firing.json";
const VS: &str = "checkout";

fn split(v1: i64, v2: i64) -> Value {
    json!([{"name": "default", "route": [
        {"destination": {"host": "checkout", "subset": "v1"}, "weight": v1},
        {"destination": {"host": "checkout", "subset": "v2"}, "weight": v2},
    ], "retries": {"attempts": 2, "perTryTimeout": "2s"}}])
}

async fn setup(prefix: &str, opted_in: bool, annotations: Value) -> (TestCluster, Value) {
    let cluster = TestCluster::start(prefix).await;
    let service = json!({"hosts": ["checkout"], "http": split(50, 50)});
    let before = Mesh::new(&cluster)
        .rule_and_service(
            VS,
            opted_in,
            version_subsets("checkout"),
            annotations,
            service,
        )
        .await;
    (cluster, before)
}

async fn stable_annotated(prefix: &str) -> (TestCluster, Value) {
    setup(
        prefix,
        true,
        json!({"auto-remediation.io/stable-subset": "v1"}),
    )
    .await
}

async fn virtual_service(cluster: &TestCluster) -> Value {
    Mesh::new(cluster).get(Kind::VirtualService, VS).await
}

#[tokio::test]
async fn firing_alert_routes_all_traffic_to_stable_once_with_record_and_event() {
    let (cluster, before) = stable_annotated("er-firing").await;
    let event = events::fresh(FIRING, &cluster.namespace);
    let report = cluster.invoke(ErrorRollback, &[], &event).await;
    let outcome = only_of_kind(&report, OutcomeKind::Applied);
    assert_eq!(
        outcome.target.as_deref(),
        Some(format!("VirtualService {}/{VS}", cluster.namespace).as_str())
    );
    assert_eq!(
        outcome.source.fingerprint.as_deref(),
        Some("87f033c73d9cf5eb")
    );

    let after = virtual_service(&cluster).await;
    assert_eq!(
        after["spec"],
        json!({"hosts": ["checkout"], "http": split(100, 0)}),
        "exactly the stable subset at 100, the rest kept at 0"
    );
    assert_strict_writes(&cluster.requests());
    let record = record(&after, "error-rollback").expect("action record on the object");
    assert_eq!(record.fingerprint, "87f033c73d9cf5eb");
    assert_eq!(record.trace_id, report.trace_id);
    // Only the changed route's destinations are recorded.
    assert_first_route_recorded(&record, &before, &after);
    let patch = outcome.patch.as_ref().expect("patch reported");
    assert_eq!(
        patch["spec"]["http"], after["spec"]["http"],
        "whole array sent"
    );
    assert_eq!(
        patch["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );

    let events = cluster.events_about(VS).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["action"], "Rollback");
    assert_eq!(events[0]["regarding"]["kind"], "VirtualService");
    assert!(
        events[0]["note"]
            .as_str()
            .is_some_and(|n| n.contains(&report.trace_id) && n.contains("checkout/v1 50->100"))
    );
}

#[tokio::test]
async fn without_annotation_the_other_version_is_stable_and_host_splits_work() {
    let cluster = TestCluster::start("er-hosts").await;
    let mesh = Mesh::new(&cluster);
    // Host split without annotation: the alert's version label (v2) picks the other one.
    let spec = json!({
        "hosts": [format!("checkout.{}.svc.cluster.local", cluster.namespace)],
        "http": [{"route": [
            {"destination": {"host": "checkout-v1"}, "weight": 80},
            {"destination": {"host": "checkout-v2", "port": {"number": 8080}}, "weight": 20},
        ]}],
    });
    mesh.opted_in(Kind::VirtualService, VS, spec.clone()).await;
    let event = events::fresh(FIRING, &cluster.namespace);
    let outcome = only(&cluster.invoke(ErrorRollback, &[], &event).await).clone();
    assert_eq!(outcome.outcome, OutcomeKind::Applied, "{outcome:#?}");
    let after = virtual_service(&cluster).await;
    assert_eq!(after["spec"]["http"][0]["route"][0]["weight"], 100);
    assert_eq!(after["spec"]["http"][0]["route"][1]["weight"], 0);
    assert_eq!(
        after["spec"]["http"][0]["route"][1]["destination"],
        spec["http"][0]["route"][1]["destination"]
    );
    assert_strict_writes(&cluster.requests());
}

#[tokio::test]
async fn the_same_event_three_times_changes_once() {
    let (cluster, _) = stable_annotated("er-repeat").await;
    let event = events::fresh(FIRING, &cluster.namespace);
    let mut kinds = Vec::new();
    let mut versions = Vec::new();
    for _ in 0..3 {
        let report = cluster.invoke(ErrorRollback, &[], &event).await;
        kinds.push((only(&report).outcome, reason(only(&report)).to_owned()));
        versions.push(virtual_service(&cluster).await["metadata"]["resourceVersion"].clone());
    }
    assert_eq!(kinds[0].0, OutcomeKind::Applied);
    for (kind, why) in &kinds[1..] {
        assert_eq!(*kind, OutcomeKind::Skipped);
        assert!(why.contains("cooldown"), "{why}");
    }
    assert!(versions.iter().all(|v| v == &versions[0]), "{versions:?}");
    assert_eq!(cluster.events_about(VS).await.len(), 1);
    // Past the cooldown it is already at 100/0: nothing to write.
    let report = cluster.invoke(ErrorRollback, &NO_COOLDOWN, &event).await;
    assert_skipped_saying(only(&report), "already routed to stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_invocations_change_once() {
    let (cluster, _) = stable_annotated("er-race").await;
    let event = events::fresh(FIRING, &cluster.namespace);
    let (a, b) = race(&cluster, Kind::VirtualService, VS, || ErrorRollback, &event).await;
    assert_one_winner(&cluster, &a, &b);
    assert_eq!(cluster.events_about(VS).await.len(), 1);
}

#[tokio::test]
async fn dry_run_stores_nothing_and_reports_the_exact_patch() {
    for (event_name, vars) in events::dry_runs("error-rollback") {
        let (cluster, before) = stable_annotated("er-dryrun").await;
        cluster.clear_requests();

        let event = events::fresh(&event_name, &cluster.namespace);
        let report = cluster.invoke(ErrorRollback, vars, &event).await;
        let outcome = only_of_kind(&report, OutcomeKind::DryRun);
        let patch = outcome.patch.as_ref().expect("exact patch reported");
        assert_eq!(patch["spec"]["http"], split(100, 0));
        let after = virtual_service(&cluster).await;
        assert_eq!(after, before, "nothing stored");
        assert!(cluster.events_about(VS).await.is_empty());
        assert_one_dry_run_patch(&cluster, patch);
    }
}

#[tokio::test]
async fn resolved_alert_keeps_the_rollback_and_records_recovery() {
    let (cluster, _) = stable_annotated("er-resolved").await;
    let firing = events::fresh(FIRING, &cluster.namespace);
    assert_eq!(
        only(&cluster.invoke(ErrorRollback, &[], &firing).await).outcome,
        OutcomeKind::Applied
    );
    let rolled_back = virtual_service(&cluster).await;
    let resolved = events::fresh("error-rollback-resolved.json", &cluster.namespace);
    let outcome = only(&cluster.invoke(ErrorRollback, &[], &resolved).await).clone();
    assert_skipped_for(&outcome, "resolved");
    let after = virtual_service(&cluster).await;
    assert_eq!(
        after["spec"], rolled_back["spec"],
        "rolling forward is a human call"
    );
    assert!(
        record(&after, "error-rollback")
            .expect("record")
            .recovered()
    );
}

#[tokio::test]
async fn objects_not_opted_in_are_skipped() {
    let (cluster, before) = setup(
        "er-optin",
        false,
        json!({"auto-remediation.io/stable-subset": "v1"}),
    )
    .await;
    let event = events::fresh(FIRING, &cluster.namespace);
    let outcome = only(&cluster.invoke(ErrorRollback, &[], &event).await).clone();
    assert_skipped_saying(
        &outcome,
        "labelled auto_remediation=active matches the alert",
    );
    assert!(
        outcome.needs_a_report(),
        "nothing acts on a firing alert: a person hears of it"
    );
    assert_eq!(virtual_service(&cluster).await, before);
}

#[tokio::test]
async fn no_stable_destination_is_refused_with_the_reason() {
    let (cluster, before) = setup("er-nostable", true, json!({})).await;
    // Without the `version` label and without annotation nothing says which is stable.
    let mut event = events::fresh(FIRING, &cluster.namespace);
    let mut message = events::message(&event);
    message["alerts"][0]["labels"]
        .as_object_mut()
        .expect("labels")
        .remove("version");
    events::set_message(&mut event, &message);
    let report = cluster.invoke(ErrorRollback, &[], &event).await;
    assert_refused_saying(&report, &["cannot tell the stable destination"]);
    // The annotated stable subset is the failing version: refused too.
    let mesh = Mesh::new(&cluster);
    mesh.api(Kind::VirtualService)
        .patch(
            VS,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"auto-remediation.io/stable-subset": "v2"}}}),
            ),
        )
        .await
        .expect("annotate");
    let event = events::fresh(FIRING, &cluster.namespace);
    let report = cluster.invoke(ErrorRollback, &[], &event).await;
    assert_failed_saying(&report, &["reaches the failing version v2"]);
    assert_eq!(virtual_service(&cluster).await["spec"], before["spec"]);
}

#[tokio::test]
async fn revert_restores_the_previous_spec_byte_for_byte_and_refuses_after_a_foreign_edit() {
    let (cluster, before) = stable_annotated("er-revert").await;
    let firing = events::fresh(FIRING, &cluster.namespace);
    let applied = cluster.invoke(ErrorRollback, &[], &firing).await;
    assert_eq!(only(&applied).outcome, OutcomeKind::Applied);
    let changed = virtual_service(&cluster).await;
    assert_ne!(spec_text(&changed), spec_text(&before));

    let revert = events::fresh("error-rollback-revert.json", &cluster.namespace);
    let report = cluster.invoke(ErrorRollback, &[], &revert).await;
    let outcome = only_of_kind(&report, OutcomeKind::Applied);
    assert_eq!(outcome.source.alert.as_deref(), Some("RevertRequest"));
    let reverted = virtual_service(&cluster).await;
    assert_eq!(spec_text(&reverted), spec_text(&before), "byte for byte");
    assert_strict_writes(&cluster.requests());
    let rec = record(&reverted, "error-rollback").expect("record");
    let reversal = rec.reverted.expect("revert recorded");
    assert_eq!(reversal.trace_id, report.trace_id);
    assert_eq!(reversal.requested_by.as_deref(), Some("oncall@example.com"));
    let events = cluster.events_about(VS).await;
    assert!(
        events.iter().any(|e| e["action"] == "Revert"
            && e["note"]
                .as_str()
                .is_some_and(|n| n.contains("revert request by oncall@example.com"))),
        "{events:#?}"
    );
    // Asking again: already done.
    let again = only(&cluster.invoke(ErrorRollback, &[], &revert).await).clone();
    assert_skipped_saying(&again, "already reverted");

    // Act again, then someone edits the weights: the revert must not clobber that edit.
    let vars = NO_COOLDOWN;
    assert_eq!(
        only(&cluster.invoke(ErrorRollback, &vars, &firing).await).outcome,
        OutcomeKind::Applied
    );
    let mesh = Mesh::new(&cluster);
    mesh.edit_spec(Kind::VirtualService, VS, json!({"http": split(90, 10)}))
        .await;
    let edited = virtual_service(&cluster).await;
    let refused = cluster.invoke(ErrorRollback, &[], &revert).await;
    assert_refused_saying(&refused, &["was edited after the action"]);
    assert_eq!(virtual_service(&cluster).await, edited, "the edit stands");
}

#[tokio::test]
async fn revert_runs_dry_when_asked_and_checks_the_action_meant() {
    let (cluster, before) = stable_annotated("er-revertdry").await;
    let firing = events::fresh(FIRING, &cluster.namespace);
    cluster.invoke(ErrorRollback, &[], &firing).await;
    let changed = virtual_service(&cluster).await;
    cluster.clear_requests();
    let mut revert = events::fresh("error-rollback-revert.json", &cluster.namespace);
    revert["revert"]["dryRun"] = json!(true);
    let outcome = only(&cluster.invoke(ErrorRollback, &[], &revert).await).clone();
    assert_eq!(outcome.outcome, OutcomeKind::DryRun, "{outcome:#?}");
    assert_eq!(
        outcome.patch.as_ref().expect("patch")["spec"]["http"],
        before["spec"]["http"]
    );
    assert_eq!(virtual_service(&cluster).await, changed, "nothing stored");
    assert_one_dry_run_patch(&cluster, outcome.patch.as_ref().expect("patch"));

    // A trace id that is not the last action's: refused.
    revert["revert"]["dryRun"] = json!(false);
    revert["revert"]["traceId"] = json!("1-00000000-000000000000000000000000");
    let report = cluster.invoke(ErrorRollback, &[], &revert).await;
    assert_failed_saying(&report, &["refusing to revert another action"]);
    assert_eq!(virtual_service(&cluster).await, changed);
}

#[tokio::test]
async fn revert_requests_for_other_kinds_or_functions_fail_clearly() {
    let (cluster, _) = stable_annotated("er-revertbad").await;
    let revert = events::fresh("error-rollback-revert.json", &cluster.namespace);
    let cases = [
        (
            json!({"kind": "DestinationRule"}),
            "reverts VirtualService objects, not DestinationRule",
        ),
        (
            json!({"remediation": "db-circuit-break"}),
            "invoke db-circuit-break",
        ),
        (json!({"reason": ""}), "empty `reason`"),
        (json!({"name": "Bad_Name"}), "not a valid Kubernetes name"),
    ];
    for (patch, expected) in cases {
        let mut event = revert.clone();
        for (key, value) in patch.as_object().expect("object") {
            event["revert"][key] = value.clone();
        }
        let outcome = only(&cluster.invoke(ErrorRollback, &[], &event).await).clone();
        assert_eq!(
            outcome.outcome,
            OutcomeKind::Failed,
            "{patch}: {outcome:#?}"
        );
        assert!(!outcome.retryable);
        assert!(reason(&outcome).contains(expected), "{patch}: {outcome:#?}");
    }
    // Nothing to revert yet.
    let report = cluster.invoke(ErrorRollback, &[], &revert).await;
    assert_failed_saying(&report, &["nothing to revert"]);
    // A restart cannot be reverted.
    let mut restart = revert.clone();
    restart["revert"]["remediation"] = json!("latency-restart");
    restart["revert"]["kind"] = json!("Deployment");
    let report = cluster.invoke(LatencyRestart, &[], &restart).await;
    assert_failed_saying(&report, &["latency-restart changes cannot be reverted"]);
}

#[tokio::test]
async fn one_message_with_alerts_for_two_services_rolls_back_both() {
    // Alertmanager groups by remediation, namespace and alertname: 5xx alerts for two
    // services of one namespace arrive in one message. Each is its own target.
    let (cluster, _) = stable_annotated("er-two-services").await;
    let mesh = Mesh::new(&cluster);
    let subsets = version_subsets("payments");
    mesh.opted_in(Kind::DestinationRule, "payments", subsets)
        .await;
    mesh.opted_in(
        Kind::VirtualService,
        "payments",
        json!({"hosts": ["payments"], "http": [{"route": [
            {"destination": {"host": "payments", "subset": "v1"}, "weight": 70},
            {"destination": {"host": "payments", "subset": "v2"}, "weight": 30}]}]}),
    )
    .await;
    let mut event = events::fresh(FIRING, &cluster.namespace);
    let mut message = events::message(&event);
    let mut second = message["alerts"][0].clone();
    second["labels"]["service"] = json!("payments");
    second["fingerprint"] = json!("0123456789abcdef");
    message["alerts"]
        .as_array_mut()
        .expect("alerts")
        .push(second);
    message["commonLabels"]
        .as_object_mut()
        .expect("labels")
        .remove("service");
    events::set_message(&mut event, &message);

    let report = cluster.invoke(ErrorRollback, &[], &event).await;
    assert_eq!(report.outcomes.len(), 2, "{report:#?}");
    for outcome in &report.outcomes {
        assert_eq!(outcome.outcome, OutcomeKind::Applied, "{report:#?}");
    }
    for name in [VS, "payments"] {
        let stored = mesh.get(Kind::VirtualService, name).await;
        let weights: Vec<i64> = stored["spec"]["http"][0]["route"]
            .as_array()
            .expect("route")
            .iter()
            .map(|d| d["weight"].as_i64().unwrap_or(0))
            .collect();
        assert_eq!(weights, vec![100, 0], "{name}");
    }
}

#[tokio::test]
async fn an_object_another_controller_manages_is_left_alone_unless_its_owner_allows_it() {
    let (cluster, before) = setup(
        "er-controller",
        true,
        json!({"auto-remediation.io/stable-subset": "v1",
               "argo-rollouts.argoproj.io/managed-by-rollouts": "checkout"}),
    )
    .await;
    let event = events::fresh(FIRING, &cluster.namespace);
    let report = cluster.invoke(ErrorRollback, &[], &event).await;
    assert_refused_saying(
        &report,
        &[
            "managed by Argo Rollouts",
            "auto-remediation.io/allow-with-controller=true",
        ],
    );
    assert_eq!(
        spec_text(&virtual_service(&cluster).await),
        spec_text(&before)
    );

    Mesh::new(&cluster)
        .api(Kind::VirtualService)
        .patch(
            VS,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {
                "auto-remediation.io/allow-with-controller": "true"}}})),
        )
        .await
        .expect("allow");
    let event = events::fresh(FIRING, &cluster.namespace);
    let report = cluster.invoke(ErrorRollback, &[], &event).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
}
