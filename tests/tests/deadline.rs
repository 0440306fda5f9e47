//! The API time budget comes from the Lambda deadline: no call starts that cannot finish, a
//! call still waiting is cut where the report has time to go out, and every alert still gets
//! an outcome that says what was and was not done. Latency and hangs are injected by
//! the fault proxy in front of the real server, which cannot be made to do so on demand.

use std::time::{Duration, Instant};

use mesh_remediation::pipeline::Invocation;
use mesh_remediation::remediation::LatencyRestart;
use mesh_remediation::report::{InvocationReport, Outcome, OutcomeKind};
use remediation_testkit::fault_proxy::{Fault, FaultKind};
use remediation_testkit::mesh::reason;
use remediation_testkit::{TestCluster, events};
use serde_json::Value;

/// Each sink gets 0.5 s, so the function keeps 1 s of its time for the report.
const VARS: [(&str, &str); 2] = [("NOTIFY_TIMEOUT_MS", "500"), ("MAX_CONCURRENCY", "1")];

/// The same request id every time: a second call is Lambda's retry of the first.
fn invocation(deadline: Option<Instant>) -> Invocation {
    Invocation::new("req-deadline", None, deadline)
}

/// The sample with four alerts (checkout-v2, orders, payments, and coredns in kube-system),
/// keeping only the alerts for `deployments`.
fn alerts_for(cluster: &TestCluster, deployments: &[&str]) -> Value {
    let mut event = events::fresh("latency-restart-multi.json", &cluster.namespace);
    let mut message = events::message(&event);
    if let Some(alerts) = message["alerts"].as_array_mut() {
        alerts.retain(|a| {
            a["labels"]["deployment"]
                .as_str()
                .is_some_and(|d| deployments.contains(&d))
        });
    }
    events::set_message(&mut event, &message);
    event
}

fn outcome_for<'a>(report: &'a InvocationReport, name: &str) -> &'a Outcome {
    report
        .outcomes
        .iter()
        .find(|o| o.target.as_deref().is_some_and(|t| t.ends_with(name)))
        .unwrap_or_else(|| panic!("no outcome for {name}: {report:#?}"))
}

fn assert_out_of_time(outcome: &Outcome, why: &str) {
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{outcome:#?}");
    assert!(outcome.retryable, "Lambda retries it: {outcome:#?}");
    assert!(reason(outcome).contains(why), "{why:?} not in {outcome:#?}");
}

#[tokio::test]
async fn a_function_timeout_below_the_api_latency_still_gives_every_alert_an_outcome() {
    let cluster = TestCluster::start("deadline-slow").await;
    let faults = cluster.faults();
    let names = ["checkout-v2", "orders", "payments"];
    for name in names {
        cluster.create_deployment(name, true).await;
    }
    // Every read of a Deployment takes 5 s; the function has 3.5 s in all.
    faults.add_fault(
        Fault::latency(5000)
            .method("GET")
            .path_contains("/deployments/"),
    );
    let event = events::fresh("latency-restart-multi.json", &cluster.namespace);
    let deadline = Instant::now() + Duration::from_millis(3500);
    let report = cluster
        .invoke_with(LatencyRestart, &VARS, &event, &invocation(Some(deadline)))
        .await;
    assert!(
        Instant::now() < deadline,
        "answered before Lambda would stop the function"
    );
    assert_eq!(report.outcomes.len(), 4, "every alert: {report:#?}");
    // The first read is cut where the report still has its second; nothing later starts.
    assert_out_of_time(outcome_for(&report, "checkout-v2"), "got no answer");
    for name in ["orders", "payments"] {
        assert_out_of_time(outcome_for(&report, name), "not started");
    }
    assert!(
        report
            .outcomes
            .iter()
            .any(|o| reason(o).contains("kube-system is protected")),
        "the screened alert needs no API: {report:#?}"
    );
    for name in names {
        assert_eq!(cluster.generation(name).await, 1, "{name} unchanged");
    }

    // With no time left at all, nothing is even sent.
    faults.clear_requests();
    let deadline = Instant::now() + Duration::from_millis(1100);
    let report = cluster
        .invoke_with(LatencyRestart, &VARS, &event, &invocation(Some(deadline)))
        .await;
    for name in names {
        assert_out_of_time(outcome_for(&report, name), "not started");
    }
    assert!(
        faults
            .requests()
            .iter()
            .all(|r| !r.path.contains("/deployments/")),
        "no request started: {:?}",
        faults.requests()
    );
}

#[tokio::test]
async fn a_write_cut_at_the_deadline_is_reported_and_the_retry_does_not_redo_what_landed() {
    let cluster = TestCluster::start("deadline-cut").await;
    let faults = cluster.faults();
    for name in ["checkout-v2", "orders"] {
        cluster.create_deployment(name, true).await;
    }
    // checkout-v2's write takes 1.6 s and lands; orders' write never gets an answer.
    faults.add_fault(
        Fault::latency(1600)
            .method("PATCH")
            .path_contains("/deployments/checkout-v2"),
    );
    faults.add_fault(
        Fault::new(FaultKind::Hang)
            .method("PATCH")
            .path_contains("/deployments/orders"),
    );
    let event = alerts_for(&cluster, &["checkout-v2", "orders"]);
    let deadline = Instant::now() + Duration::from_millis(4500);
    let report = cluster
        .invoke_with(LatencyRestart, &VARS, &event, &invocation(Some(deadline)))
        .await;
    assert!(Instant::now() < deadline, "answered in time");
    assert_eq!(report.outcomes.len(), 2, "{report:#?}");
    assert_eq!(
        outcome_for(&report, "checkout-v2").outcome,
        OutcomeKind::Applied,
        "{report:#?}"
    );
    assert_out_of_time(outcome_for(&report, "orders"), "had not landed");
    assert_eq!(cluster.generation("checkout-v2").await, 2);
    assert_eq!(cluster.generation("orders").await, 1);

    // Lambda retries the invocation (same request id): checkout-v2 is reported applied by
    // the earlier attempt, not skipped as a cooldown, and not restarted twice.
    faults.clear_faults();
    let retry = cluster
        .invoke_with(LatencyRestart, &VARS, &event, &invocation(None))
        .await;
    let earlier = outcome_for(&retry, "checkout-v2");
    assert_eq!(earlier.outcome, OutcomeKind::Applied, "{retry:#?}");
    assert!(
        reason(earlier).contains("earlier attempt of this invocation"),
        "{earlier:#?}"
    );
    assert_eq!(
        outcome_for(&retry, "orders").outcome,
        OutcomeKind::Applied,
        "{retry:#?}"
    );
    assert_eq!(cluster.generation("checkout-v2").await, 2, "not twice");
    assert_eq!(cluster.generation("orders").await, 2);
    assert_eq!(cluster.events_about("checkout-v2").await.len(), 1);
    assert_eq!(cluster.events_about("orders").await.len(), 1);
}
