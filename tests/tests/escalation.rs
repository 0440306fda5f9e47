//! Escalation is a hand-off, on the real API server: after ESCALATE_AFTER actions without
//! recovery the target is marked with `auto-remediation.io/escalated` (reported once), and no
//! action follows until the alert stays resolved for ESCALATION_WINDOW_SECONDS or a person
//! removes the annotation. Time is moved by giving each invocation its own decision time.

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use mesh_remediation::cluster::record::ActionRecord;
use mesh_remediation::guard::escalation::{ESCALATED_ANNOTATION, Escalation};
use mesh_remediation::pipeline::Invocation;
use mesh_remediation::remediation::LatencyRestart;
use mesh_remediation::remediation::latency_restart::RESTARTED_AT;
use mesh_remediation::report::{InvocationReport, OutcomeKind};
use remediation_testkit::mesh::{only, reason};
use remediation_testkit::{TestCluster, events};
use serde_json::json;

const TARGET: &str = "checkout-v2";
const VARS: [(&str, &str); 3] = [
    ("ESCALATE_AFTER", "2"),
    ("COOLDOWN_SECONDS", "60"),
    ("ESCALATION_WINDOW_SECONDS", "3600"),
];

/// One invocation deciding at `at`, with the sample `sample` published then.
async fn at(cluster: &TestCluster, sample: &str, at: DateTime<Utc>) -> InvocationReport {
    let event = events::fresh_at(sample, &cluster.namespace, at);
    let mut invocation = Invocation::new(&format!("req-{}", at.timestamp()), None, None);
    invocation.now = at;
    let report = cluster
        .invoke_with(LatencyRestart, &VARS, &event, &invocation)
        .await;
    // Every write here bumps the Deployment's generation (annotations count): let the
    // controller observe it, or the next alert finds a rollout in progress.
    cluster.wait_settled(TARGET).await;
    report
}

async fn fire(cluster: &TestCluster, when: DateTime<Utc>) -> InvocationReport {
    at(cluster, "latency-restart-firing.json", when).await
}

struct Stored {
    restarted_at: Option<String>,
    escalation: Option<Escalation>,
    record: Option<ActionRecord>,
}

async fn stored(cluster: &TestCluster) -> Stored {
    let d: Deployment = cluster.deployment(TARGET).await;
    let annotations = d.metadata.annotations.clone();
    Stored {
        restarted_at: d
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|a| a.get(RESTARTED_AT).cloned()),
        escalation: annotations
            .as_ref()
            .and_then(|a| a.get(ESCALATED_ANNOTATION))
            .map(|v| serde_json::from_str(v).expect("readable escalation")),
        record: ActionRecord::from_annotations(annotations.as_ref(), "latency-restart")
            .expect("readable record"),
    }
}

fn kind(report: &InvocationReport) -> OutcomeKind {
    only(report).outcome
}

/// Two restarts without recovery, then the third alert escalates; returns when it did.
async fn escalate(cluster: &TestCluster, t0: DateTime<Utc>) -> DateTime<Utc> {
    assert_eq!(kind(&fire(cluster, t0).await), OutcomeKind::Applied);
    let second = fire(cluster, t0 + Duration::minutes(2)).await;
    assert_eq!(kind(&second), OutcomeKind::Applied, "{second:#?}");
    let restarted = stored(cluster).await.restarted_at;
    let escalated_at = t0 + Duration::minutes(4);
    let third = fire(cluster, escalated_at).await;
    assert_eq!(kind(&third), OutcomeKind::Escalated, "{third:#?}");
    assert!(only(&third).needs_a_report(), "the escalation is reported");
    let now = stored(cluster).await;
    assert_eq!(now.restarted_at, restarted, "escalating restarts nothing");
    let escalation = now
        .escalation
        .expect("the hand-off is recorded on the object");
    assert_eq!(
        (escalation.remediation.as_str(), escalation.streak),
        ("latency-restart", 2)
    );
    assert_eq!(escalation.at, escalated_at);
    assert_eq!(
        now.record.and_then(|r| r.escalated_at),
        Some(escalated_at),
        "and in the function's record"
    );
    escalated_at
}

#[tokio::test]
async fn an_escalated_target_waits_until_the_alert_stays_resolved() {
    let cluster = TestCluster::start("handoff-resolved").await;
    cluster.create_deployment(TARGET, true).await;
    let t0 = Utc::now();
    let escalated = escalate(&cluster, t0).await;
    let restarted = stored(&cluster).await.restarted_at;
    assert!(
        cluster.has_event(TARGET, "Escalated").await,
        "the escalation is an Event on the object"
    );

    // Still firing: held, and not reported again.
    let held = fire(&cluster, escalated + Duration::minutes(2)).await;
    assert_eq!(kind(&held), OutcomeKind::Skipped, "{held:#?}");
    assert!(reason(only(&held)).contains("handed off"), "{held:#?}");
    assert!(
        !only(&held).needs_a_report(),
        "reported once, when it escalated"
    );

    // It resolves at +10 min: the hand-off notes when.
    let resolved_at = escalated + Duration::minutes(10);
    at(&cluster, "latency-restart-resolved.json", resolved_at).await;
    let noted = stored(&cluster).await.escalation.expect("still handed off");
    assert_eq!(noted.resolved_at, Some(resolved_at));

    // It fires again 20 minutes later: it did not stay resolved for the hour. Held.
    let flapped = fire(&cluster, resolved_at + Duration::minutes(25)).await;
    assert_eq!(kind(&flapped), OutcomeKind::Skipped);
    assert!(
        reason(only(&flapped)).contains("did not stay resolved"),
        "{flapped:#?}"
    );
    assert_eq!(stored(&cluster).await.restarted_at, restarted);

    // It resolves again, and fires only after 70 quiet minutes: handed back, acted on, and
    // the annotation is gone in the same write.
    let resolved_again = resolved_at + Duration::minutes(30);
    at(&cluster, "latency-restart-resolved.json", resolved_again).await;
    let back = fire(&cluster, resolved_again + Duration::minutes(75)).await;
    assert_eq!(kind(&back), OutcomeKind::Applied, "{back:#?}");
    let now = stored(&cluster).await;
    assert_ne!(now.restarted_at, restarted, "restarted again");
    assert!(now.escalation.is_none(), "the hand-off is over");
    assert_eq!(now.record.map(|r| r.streak), Some(1), "a fresh streak");
}

#[tokio::test]
async fn removing_the_annotation_hands_the_target_back() {
    let cluster = TestCluster::start("handoff-ack").await;
    cluster.create_deployment(TARGET, true).await;
    let escalated = escalate(&cluster, Utc::now()).await;
    let restarted = stored(&cluster).await.restarted_at;
    let held = fire(&cluster, escalated + Duration::minutes(2)).await;
    assert_eq!(kind(&held), OutcomeKind::Skipped);
    assert_eq!(stored(&cluster).await.restarted_at, restarted);

    // A person acknowledges: kubectl annotate deployment checkout-v2 auto-remediation.io/escalated-
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    deployments
        .patch(
            TARGET,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ESCALATED_ANNOTATION: null}}})),
        )
        .await
        .expect("remove the annotation");
    cluster.wait_settled(TARGET).await;
    let acted = fire(&cluster, escalated + Duration::minutes(4)).await;
    assert_eq!(kind(&acted), OutcomeKind::Applied, "{acted:#?}");
    let now = stored(&cluster).await;
    assert_ne!(now.restarted_at, restarted);
    assert_eq!(now.record.as_ref().map(|r| r.streak), Some(1));
    assert_eq!(now.record.and_then(|r| r.escalated_at), None);
}

#[test]
fn invalid_escalation_settings_stop_the_start_with_their_names() {
    let config = |vars: &[(&str, &str)]| {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        mesh_remediation::config::Config::from_lookup(|k| map.get(k).cloned())
    };
    let err = config(&[("COOLDOWN_SECONDS", "0")]).expect_err("cooldown 0 with escalation");
    assert!(err.to_string().contains("COOLDOWN_SECONDS"), "{err}");
    assert!(
        err.to_string().contains("ESCALATE_AFTER=0"),
        "says how to switch it off: {err}"
    );
    let err = config(&[
        ("COOLDOWN_SECONDS", "900"),
        ("ESCALATION_WINDOW_SECONDS", "900"),
    ])
    .expect_err("window not longer than the cooldown");
    assert!(
        err.to_string().contains("ESCALATION_WINDOW_SECONDS"),
        "{err}"
    );
    assert!(config(&[("COOLDOWN_SECONDS", "0"), ("ESCALATE_AFTER", "0")]).is_ok());
}
