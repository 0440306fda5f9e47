//! Action budgets that hold across invocations and functions, on the real API server:
//! ten invocations at once, five of latency-restart and five of db-circuit-break, each acting
//! as its own function group (RBAC and the admission policies apply), never make more changes
//! than the per-function and cluster-wide budgets allow, and what the cluster stores agrees.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use mesh_remediation::guard::budget::{BUDGET_CONFIGMAP, Slot};
use mesh_remediation::remediation::{DbCircuitBreak, LatencyRestart, Remediation};
use mesh_remediation::report::{InvocationReport, OutcomeKind};
use remediation_testkit::mesh::{Kind, Mesh, assert_skipped_for, only, record};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const PER_FUNCTION: usize = 3;
const CLUSTER: usize = 5;
const VARS: [(&str, &str); 2] = [
    ("MAX_ACTIONS_PER_WINDOW", "3"),
    ("MAX_CLUSTER_ACTIONS_PER_WINDOW", "5"),
];

/// A sample event with its one alert's `label` set to `value` and a fingerprint of its own.
fn alert(cluster: &TestCluster, sample: &str, label: &str, value: &str) -> Value {
    let mut event = events::fresh(sample, &cluster.namespace);
    let mut message = events::message(&event);
    message["alerts"][0]["labels"][label] = json!(value);
    message["alerts"][0]["fingerprint"] = json!(format!("fp-{value}"));
    events::set_message(&mut event, &message);
    event
}

/// latency-restart's sample alert for the Deployment `name`.
fn restart_alert(cluster: &TestCluster, name: &str) -> Value {
    alert(cluster, "latency-restart-firing.json", "deployment", name)
}

/// Five concurrent invocations of `remediation`, each with the `sample` alert for its own
/// target: its `label` set to `{prefix}-0` to `{prefix}-4`.
async fn five_alerts<R: Remediation>(
    cluster: &TestCluster,
    remediation: impl Fn() -> R,
    (sample, label, prefix): (&str, &str, &str),
) -> Vec<InvocationReport> {
    futures::future::join_all((0..5).map(|i| {
        let event = alert(cluster, sample, label, &format!("{prefix}-{i}"));
        let remediation = remediation();
        async move { cluster.invoke(remediation, &VARS, &event).await }
    }))
    .await
}

fn applied(reports: &[InvocationReport]) -> usize {
    reports
        .iter()
        .filter(|r| only(r).outcome == OutcomeKind::Applied)
        .count()
}

async fn spent(cluster: &TestCluster) -> BTreeMap<String, Vec<Slot>> {
    let map = Api::<ConfigMap>::namespaced(cluster.client.clone(), &cluster.namespace)
        .get(BUDGET_CONFIGMAP)
        .await
        .expect("the budget ConfigMap");
    map.data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_str(&v).expect("slots")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_invocations_of_two_functions_never_exceed_a_budget() {
    let cluster = TestCluster::start("budgets").await;
    let mesh = Mesh::new(&cluster);
    for i in 0..5 {
        cluster.create_deployment(&format!("app-{i}"), true).await;
        let host = format!("db-{i}.{}.svc.cluster.local", cluster.namespace);
        mesh.opted_in(
            Kind::DestinationRule,
            &format!("db-{i}"),
            json!({"host": host}),
        )
        .await;
    }
    let (restarts, breakers) = futures::join!(
        five_alerts(
            &cluster,
            || LatencyRestart,
            ("latency-restart-firing.json", "deployment", "app"),
        ),
        five_alerts(
            &cluster,
            DbCircuitBreak::default,
            ("db-circuit-break-firing.json", "db_host", "db"),
        ),
    );

    // What the functions said.
    let (restarted, broken) = (applied(&restarts), applied(&breakers));
    assert!(restarted <= PER_FUNCTION, "{restarts:#?}");
    assert!(broken <= PER_FUNCTION, "{breakers:#?}");
    assert_eq!(
        restarted + broken,
        CLUSTER,
        "ten asked, the cluster budget allows five: {restarts:#?} {breakers:#?}"
    );
    for report in restarts.iter().chain(&breakers) {
        let outcome = only(report);
        if outcome.outcome != OutcomeKind::Applied {
            assert_skipped_for(outcome, "budget spent: ");
            assert!(outcome.needs_a_report(), "a spent budget is reported");
        }
    }

    // What the cluster stores: as many changed objects, and as many slots.
    let mut changed = 0;
    for i in 0..5 {
        let d = cluster.deployment(&format!("app-{i}")).await;
        let restarted_at = d
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .is_some_and(|a| a.contains_key("kubectl.kubernetes.io/restartedAt"));
        changed += usize::from(restarted_at);
        let rule = mesh.get(Kind::DestinationRule, &format!("db-{i}")).await;
        changed += usize::from(record(&rule, "db-circuit-break").is_some());
    }
    assert_eq!(changed, CLUSTER, "five objects changed in the cluster");
    let slots = spent(&cluster).await;
    let count = |f: &str| slots.get(f).map_or(0, Vec::len);
    assert_eq!(count("latency-restart"), restarted);
    assert_eq!(count("db-circuit-break"), broken);

    // The budget holds for the next invocation too, whichever function sends it.
    let more = restart_alert(&cluster, "app-0");
    let report = cluster.invoke(LatencyRestart, &VARS, &more).await;
    assert!(
        matches!(only(&report).outcome, OutcomeKind::Skipped),
        "{report:#?}"
    );
}

#[tokio::test]
async fn a_change_that_does_not_land_gives_its_slot_back() {
    // The proxy refuses the write (a fault a real server cannot be told to produce).
    let cluster = TestCluster::start("budgets-refund").await;
    cluster.create_deployment("app-0", true).await;
    let event = restart_alert(&cluster, "app-0");
    let one = [("MAX_ACTIONS_PER_WINDOW", "1")];
    cluster.faults().add_fault(
        remediation_testkit::fault_proxy::Fault::status(403)
            .method("PATCH")
            .path_contains("/deployments/"),
    );
    let report = cluster.invoke(LatencyRestart, &one, &event).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Failed, "{report:#?}");
    assert!(
        spent(&cluster).await.values().all(Vec::is_empty),
        "the slot taken for the refused write is given back"
    );
    cluster.faults().clear_faults();
    let dry = [("MAX_ACTIONS_PER_WINDOW", "1"), ("DRY_RUN", "true")];
    let report = cluster.invoke(LatencyRestart, &dry, &event).await;
    assert_eq!(only(&report).outcome, OutcomeKind::DryRun, "{report:#?}");
    assert!(
        spent(&cluster).await.values().all(Vec::is_empty),
        "a dry run spends nothing"
    );
    let report = cluster.invoke(LatencyRestart, &one, &event).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    assert_eq!(spent(&cluster).await["latency-restart"].len(), 1);
}

#[tokio::test]
async fn an_unreadable_budget_entry_fails_naming_it_and_changes_nothing() {
    let cluster = TestCluster::start("budgets-unreadable").await;
    cluster.create_deployment("app-0", true).await;
    let before = cluster.deployment("app-0").await;
    let budgets = Api::<ConfigMap>::namespaced(cluster.client.clone(), &cluster.namespace);
    let entry = json!({"data": {"error-rollback": "not a list"}});
    budgets
        .patch(
            BUDGET_CONFIGMAP,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&entry),
        )
        .await
        .expect("write an entry no function wrote");
    let event = restart_alert(&cluster, "app-0");
    let report = cluster.invoke(LatencyRestart, &VARS, &event).await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{report:#?}");
    let reason = outcome.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("budget entry \"error-rollback\"")
            && reason.contains("not a list of slots"),
        "the entry and what is wrong with it are named: {reason}"
    );
    assert!(!reason.contains("budget spent"), "{reason}");
    assert!(
        !outcome.retryable,
        "a person must repair the entry: {reason}"
    );
    assert_eq!(
        cluster.deployment("app-0").await.spec,
        before.spec,
        "nothing is changed"
    );
}
