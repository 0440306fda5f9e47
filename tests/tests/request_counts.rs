//! The API requests a storm makes are deterministic, so their number is a test: a change
//! that adds a request per target fails here, without any timing. Counted by the fault
//! proxy in front of the real API server, as latency-restart sends them.
//!
//! Per acting target the safety rules need three requests: GET (its state and the action
//! record: opt-in, cooldown, escalation, rollout), PATCH (the change and the new record in
//! one merge patch, guarded by `resourceVersion`), POST (the Kubernetes Event). A target
//! past the blast-radius cap still needs its GET (its state decides whether it would have
//! acted) and nothing more. The brakes are read once per invocation: the cluster's pause
//! (one ConfigMap) and the namespace's (one Namespace). With the budgets on, the targets
//! take their slots in bulk: every target reads and decides, then one guarded write on the
//! budget ConfigMap (after one read of it) takes the slots for all, in alert order.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ListParams, PostParams};
use mesh_remediation::remediation::LatencyRestart;
use mesh_remediation::remediation::latency_restart::rollout_in_progress;
use mesh_remediation::report::OutcomeKind;
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const TARGETS: usize = 200;
const ALERTS: usize = 500;
/// The Alertmanager template's cap on alerts per message (`deploy/alertmanager/sns.tmpl`).
const PER_MESSAGE: usize = 200;

/// `TARGETS` opted-in Deployments without replicas (a restart is then the function's work
/// alone), observed by the deployment controller.
async fn storm_targets(prefix: &str) -> TestCluster {
    let cluster = TestCluster::start(prefix).await;
    let api = cluster.deployments();
    let create = |i: usize| {
        let api = api.clone();
        async move {
            let name = format!("storm-{i:03}");
            let deployment: Deployment = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"app": name, "auto_remediation": "active"}},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}},
                                      "spec": {"containers": [{"name": "app", "image": "app"}]}}}}))
            .expect("deployment");
            api.create(&PostParams::default(), &deployment)
                .await
                .expect("create deployment");
        }
    };
    futures::stream::iter(0..TARGETS)
        .map(create)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    for _ in 0..600 {
        let list = api.list(&ListParams::default()).await.expect("list");
        if list.items.iter().all(|d| rollout_in_progress(d).is_none()) {
            return cluster;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("the storm's Deployments were not observed");
}

/// `ALERTS` firing alerts over the `TARGETS`, in messages of at most `PER_MESSAGE` alerts,
/// one SNS record each, as Alertmanager and SNS deliver a storm.
fn storm_event(namespace: &str) -> Value {
    let mut event = events::fresh("latency-restart-firing.json", namespace);
    let record = event["Records"][0].clone();
    let message = events::message(&event);
    let alert = message["alerts"][0].clone();
    let alerts: Vec<Value> = (0..ALERTS)
        .map(|i| {
            let mut a = alert.clone();
            let target = format!("storm-{:03}", i % TARGETS);
            a["labels"]["deployment"] = json!(target);
            a["labels"]["pod"] = json!(format!("{target}-7c9d8f6b5-{i:05x}"));
            a["fingerprint"] = json!(format!("{:016x}", 0x2289_218d_565d_99a5_u64 + i as u64));
            a
        })
        .collect();
    let records: Vec<Value> = alerts
        .chunks(PER_MESSAGE)
        .enumerate()
        .map(|(i, chunk)| {
            let mut body = message.clone();
            body["alerts"] = json!(chunk);
            let mut record = record.clone();
            record["Sns"]["MessageId"] = json!(format!("1b90641c-5715-5ab5-a60a-{i:012x}"));
            record["Sns"]["Message"] = json!(body.to_string());
            record
        })
        .collect();
    event["Records"] = json!(records);
    event
}

/// The budgets switched off, and the blast radius at `max_targets`.
fn no_budgets(max_targets: &str) -> [(&str, &str); 3] {
    [
        ("MAX_TARGETS_PER_INVOCATION", max_targets),
        ("MAX_ACTIONS_PER_WINDOW", "0"),
        ("MAX_CLUSTER_ACTIONS_PER_WINDOW", "0"),
    ]
}

/// The budgets on: `per_function` and `cluster_wide` changes per window, and a blast
/// radius that lets every target act.
fn budgets(
    per_function: &'static str,
    cluster_wide: &'static str,
) -> [(&'static str, &'static str); 3] {
    [
        ("MAX_TARGETS_PER_INVOCATION", "200"),
        ("MAX_ACTIONS_PER_WINDOW", per_function),
        ("MAX_CLUSTER_ACTIONS_PER_WINDOW", cluster_wide),
    ]
}

/// The storm's requests by what they are (`get deployments`, `get namespaces`, ...) and
/// the Deployments it restarted, in name order.
async fn storm(prefix: &str, vars: &[(&str, &str)]) -> (BTreeMap<String, usize>, Vec<String>) {
    let cluster = storm_targets(prefix).await;
    let event = storm_event(&cluster.namespace);
    cluster.clear_requests();
    // The budget ConfigMap lives in the test's namespace (the harness sets BUDGET_NAMESPACE).
    let report = cluster.invoke(LatencyRestart, vars, &event).await;
    let mut applied: Vec<String> = report
        .outcomes
        .iter()
        .filter(|o| o.outcome == OutcomeKind::Applied)
        .filter_map(|o| o.target.clone())
        .collect();
    applied.sort();
    assert_eq!(report.outcomes.len(), ALERTS, "{:#?}", report.summary);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for request in cluster.requests() {
        let (verb, _, resource) = request.grant().expect("a resource request");
        *counts.entry(format!("{verb} {resource}")).or_default() += 1;
    }
    (counts, applied)
}

/// Whether the action budgets are on for a storm.
#[derive(Clone, Copy, PartialEq)]
enum Budgets {
    Off,
    On,
}

/// Asserts the storm made exactly the requests the safety rules need: a read per target, a
/// write and an Event per target that acted (`acting`), the brakes read once, and with the
/// budgets on one read and one write of the budget ConfigMap.
fn assert_requests(counts: &BTreeMap<String, usize>, acting: usize, budgets: Budgets) {
    let mut expected = BTreeMap::from([
        ("get deployments".to_owned(), TARGETS),
        ("patch deployments".to_owned(), acting),
        ("create events".to_owned(), acting),
        ("get namespaces".to_owned(), 1),
        // The pause ConfigMap, and with the budgets on the budget ConfigMap: once each.
        ("get configmaps".to_owned(), 1),
    ]);
    if budgets == Budgets::On {
        expected.insert("get configmaps".to_owned(), 2);
        expected.insert("patch configmaps".to_owned(), 1);
    }
    assert_eq!(
        *counts,
        expected,
        "{} requests in all, {} expected",
        counts.values().sum::<usize>(),
        expected.values().sum::<usize>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_500_alerts_over_200_targets_makes_three_requests_per_target_and_two_for_the_brakes()
 {
    let (counts, applied) = storm("count-storm", &no_budgets("200")).await;
    assert_eq!(applied.len(), TARGETS);
    assert_requests(&counts, TARGETS, Budgets::Off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_blast_radius_a_target_costs_one_read() {
    let (counts, applied) = storm("count-capped", &no_budgets("10")).await;
    assert_eq!(applied.len(), 10);
    assert_requests(&counts, 10, Budgets::Off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_budgets_the_storm_takes_every_slot_in_one_write() {
    let (counts, applied) = storm("count-budget", &budgets("1000", "1000")).await;
    assert_eq!(applied.len(), TARGETS);
    assert_requests(&counts, TARGETS, Budgets::On);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_goes_to_the_first_alerts_in_one_write() {
    // The default budget: 20 changes per function; the storm's first 20 alerts name
    // storm-000 to storm-019.
    let (counts, applied) = storm("count-spent", &budgets("20", "40")).await;
    let first: Vec<String> = (0..20).map(|i| format!("storm-{i:03}")).collect();
    let applied: Vec<String> = applied
        .iter()
        .map(|target| target.rsplit('/').next().unwrap_or(target).to_owned())
        .collect();
    assert_eq!(applied, first);
    assert_requests(&counts, 20, Budgets::On);
}
