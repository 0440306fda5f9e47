//! Reliability under faults: the fault proxy in front of the real API server injects latency, 5xx, 429 with
//! Retry-After, 409 storms, connection resets, lost answers, hangs and a dead API, and
//! latency-restart (and the listing of opted-in rules) must in every case act at most once, give every alert an outcome, and
//! classify transient failures as retryable (so the Lambda invocation fails and Lambda's
//! retries and dead-letter queue apply).
//!
//! These checks need fault injection, which a real API server cannot produce on demand: the
//! real server runs behind the test's fault proxy (`remediation_testkit::fault_proxy`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_runtime::{Context, LambdaEvent};
use mesh_remediation::lambda::{Function, InvocationError};
use mesh_remediation::pipeline::{Invocation, Pipeline};
use mesh_remediation::remediation::db_circuit_break::CircuitBreaker;
use mesh_remediation::remediation::{DbCircuitBreak, LatencyRestart};
use mesh_remediation::report::{InvocationReport, Outcome, OutcomeKind};
use remediation_testkit::cluster::NO_COOLDOWN;
use remediation_testkit::cluster::{FixedConnector, config};
use remediation_testkit::fault_proxy::{Fault, FaultKind, FaultProxy, RecordedRequest};
use remediation_testkit::mesh::{
    Kind, Mesh, assert_invocation_fails_transiently, only, only_of_kind, reason,
};
use remediation_testkit::{TestCluster, events};
use serde_json::Value;
use serde_json::json;

const TARGET: &str = "checkout-v2";
const TRACE: &str = "Root=1-67a1b2c3-0123456789abcdef01234567;Sampled=1";

/// The cluster with the target Deployment, and its generation. These tests inject faults
/// (latency, 5xx, 429, resets, lost answers, hangs) through the fault proxy.
async fn setup_with_faults(prefix: &str) -> (TestCluster, i64) {
    let cluster = TestCluster::start(prefix).await;
    let before = cluster.create_deployment(TARGET, true).await;
    cluster.faults().clear_requests();
    (cluster, before.metadata.generation.expect("generation"))
}

/// A new invocation, with a request id of its own (a Lambda retry would keep the same one).
fn invocation(deadline: Option<Instant>) -> Invocation {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Invocation::new(&format!("req-reliability-{n}"), Some(TRACE), deadline)
}

fn firing(cluster: &TestCluster) -> Value {
    events::fresh("latency-restart-firing.json", &cluster.namespace)
}

/// The firing alert through a fresh pipeline, as one invocation without a deadline.
async fn fire(cluster: &TestCluster, vars: &[(&str, &str)]) -> InvocationReport {
    cluster
        .invoke_with(LatencyRestart, vars, &firing(cluster), &invocation(None))
        .await
}

/// `fault` restricted to reads of Deployments.
fn on_reads(fault: Fault) -> Fault {
    fault.method("GET").path_contains("/deployments/")
}

/// `fault` restricted to writes to Deployments.
fn on_writes(fault: Fault) -> Fault {
    fault.method("PATCH").path_contains("/deployments/")
}

/// A second round after an action: `fault` alone in place of the earlier faults, the request
/// log empty, and the first rollout finished (the real controllers' work: latency-restart
/// holds a Deployment whose rollout is in progress).
async fn next_round(cluster: &TestCluster, fault: Fault) {
    let faults = cluster.faults();
    faults.clear_faults();
    faults.clear_requests();
    cluster.wait_settled(TARGET).await;
    faults.add_fault(fault);
}

/// A retryable failure that changed nothing, with a reason containing `why`.
fn assert_transient(outcome: &Outcome, why: &str) {
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{outcome:#?}");
    assert!(
        outcome.retryable,
        "transient failure must be retryable: {outcome:#?}"
    );
    assert!(reason(outcome).contains(why), "{why:?} not in {outcome:#?}");
}

/// Requests the function sent for the target Deployment (GET/PATCH on its path).
fn target_requests(faults: &FaultProxy, method: &str) -> Vec<RecordedRequest> {
    faults
        .requests()
        .into_iter()
        .filter(|r| r.method == method && r.path.ends_with(&format!("/deployments/{TARGET}")))
        .collect()
}

/// The Lambda function's answer to `event`: `Err` is what makes Lambda retry.
async fn lambda_answer(
    cluster: &TestCluster,
    vars: &[(&str, &str)],
    event: Value,
    deadline: Option<SystemTime>,
) -> Result<Value, InvocationError> {
    let function = Function::new(cluster.timed_pipeline(LatencyRestart, vars).await);
    let mut context = Context::default();
    context.request_id = "req-lambda".into();
    context.xray_trace_id = Some(TRACE.into());
    if let Some(deadline) = deadline {
        context.deadline = deadline
            .duration_since(UNIX_EPOCH)
            .expect("after the epoch")
            .as_millis()
            .try_into()
            .expect("fits");
    }
    function.invoke(LambdaEvent::new(event, context)).await
}

/// After a transient failure the Lambda invocation fails (so Lambda retries it).
async fn assert_lambda_retries(cluster: &TestCluster, vars: &[(&str, &str)], why: &str) {
    let err = lambda_answer(cluster, vars, firing(cluster), None)
        .await
        .expect_err("a transient failure must fail the invocation so Lambda retries it");
    // A typed Lambda error: Lambda reports this errorType for each failed attempt.
    assert_eq!(err.error_type(), "MeshRemediation.Retryable", "{err}");
    let message = err.to_string();
    assert!(message.contains("failed transiently"), "{message}");
    assert!(message.contains(why), "{why:?} not in {message}");
}

/// Exactly one restart happened: generation +1 and one Event.
async fn assert_restarted_once(cluster: &TestCluster, generation_before: i64) {
    assert_eq!(
        cluster.generation(TARGET).await,
        generation_before + 1,
        "exactly one rollout"
    );
    let events = cluster.events_about(TARGET).await;
    assert_eq!(events.len(), 1, "exactly one Event: {events:#?}");
}

async fn assert_untouched(cluster: &TestCluster, generation_before: i64) {
    assert_eq!(
        cluster.generation(TARGET).await,
        generation_before,
        "no rollout"
    );
    assert!(cluster.events_about(TARGET).await.is_empty(), "no Event");
}

#[tokio::test]
async fn latency_spikes_within_the_timeout_still_act_exactly_once() {
    let (cluster, generation_before) = setup_with_faults("rel-latency").await;
    let faults = cluster.faults();
    // Every request (read, write, Event) is slow.
    faults.add_fault(Fault::latency(400));
    let started = Instant::now();
    let report = fire(&cluster, &[]).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "GET + PATCH + Event were slow"
    );
    assert_restarted_once(&cluster, generation_before).await;
    // The same alert again, still slow: one action per cooldown.
    let again = fire(&cluster, &[]).await;
    assert_eq!(only(&again).outcome, OutcomeKind::Skipped, "{again:#?}");
    assert_restarted_once(&cluster, generation_before).await;
}

#[tokio::test]
async fn server_errors_are_retried_twice_then_fail_retryably() {
    let (cluster, generation_before) = setup_with_faults("rel-5xx").await;
    let faults = cluster.faults();
    for code in [500, 503, 504] {
        faults.clear_faults();
        faults.clear_requests();
        faults.add_fault(on_writes(Fault::status(code)));
        let report = fire(&cluster, &[]).await;
        assert_transient(
            only(&report),
            &format!("patch Deployment {}/{TARGET}", cluster.namespace),
        );
        assert_eq!(
            target_requests(faults, "PATCH").len(),
            3,
            "{code}: one write and two retries, no more"
        );
        assert_untouched(&cluster, generation_before).await;
        assert_lambda_retries(&cluster, &[], "patch Deployment").await;
    }
    // Two failed reads, then the API recovers within the invocation: acted on once.
    faults.clear_faults();
    faults.clear_requests();
    faults.add_fault(
        Fault::status(500)
            .method("GET")
            .path_contains(&format!("/deployments/{TARGET}"))
            .times(2),
    );
    let report = fire(&cluster, &[]).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    assert_eq!(target_requests(faults, "GET").len(), 3);
    assert_restarted_once(&cluster, generation_before).await;
}

#[tokio::test]
async fn throttling_honours_retry_after_capped_at_two_seconds() {
    let (cluster, generation_before) = setup_with_faults("rel-429").await;
    let faults = cluster.faults();
    // Retry-After: 1 on two reads: the pipeline waits 1 s each time (not its own ~0.1 s
    // backoff, not the 2 s cap).
    faults.add_fault(on_reads(Fault::throttle(1)).times(2));
    let started = Instant::now();
    let report = fire(&cluster, &[]).await;
    let elapsed = started.elapsed();
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_millis(3500),
        "two waits of Retry-After=1s: {elapsed:?}"
    );
    assert_restarted_once(&cluster, generation_before).await;

    // Retry-After: 30 on every write: each wait is capped at 2 s, then a retryable failure
    // (Lambda retries later) instead of sleeping through the invocation.
    next_round(&cluster, on_writes(Fault::throttle(30))).await;
    let vars = NO_COOLDOWN;
    let generation_now = cluster.generation(TARGET).await;
    let started = Instant::now();
    let report = fire(&cluster, &vars).await;
    let elapsed = started.elapsed();
    assert_transient(only(&report), "Too many requests");
    assert!(
        elapsed >= Duration::from_secs(4) && elapsed < Duration::from_millis(6500),
        "two waits capped at 2 s: {elapsed:?}"
    );
    assert_eq!(target_requests(faults, "PATCH").len(), 3);
    assert_eq!(cluster.generation(TARGET).await, generation_now);
}

#[tokio::test]
async fn conflict_storms_converge_or_give_up_without_acting_twice() {
    let (cluster, generation_before) = setup_with_faults("rel-409").await;
    let faults = cluster.faults();
    // Five refused writes (409 Conflict bodies), the sixth goes through.
    faults.add_fault(on_writes(Fault::status(409)).times(5));
    let report = fire(&cluster, &[]).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    assert_eq!(target_requests(faults, "PATCH").len(), 6);
    assert_restarted_once(&cluster, generation_before).await;

    // A storm that does not end: a bounded number of attempts, then a retryable failure.
    next_round(&cluster, on_writes(Fault::status(409))).await;
    let vars = NO_COOLDOWN;
    let report = fire(&cluster, &vars).await;
    assert_transient(only(&report), "conflicting writes");
    assert_eq!(
        target_requests(faults, "PATCH").len(),
        6,
        "bounded attempts"
    );
    assert_restarted_once(&cluster, generation_before).await;
    assert_lambda_retries(&cluster, &vars, "conflicting writes").await;
}

#[tokio::test]
async fn connection_resets_are_retried_and_never_double_act() {
    let (cluster, generation_before) = setup_with_faults("rel-reset").await;
    let faults = cluster.faults();
    // One write dropped before the server handled it: retried, acted on once.
    faults.add_fault(on_writes(Fault::new(FaultKind::Reset)).times(1));
    let report = fire(&cluster, &[]).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    assert_restarted_once(&cluster, generation_before).await;

    // Every request to the Deployment reset: a retryable failure, nothing changed.
    faults.clear_faults();
    faults.add_fault(Fault::new(FaultKind::Reset).path_contains("/deployments/"));
    let vars = NO_COOLDOWN;
    let report = fire(&cluster, &vars).await;
    assert_transient(
        only(&report),
        &format!("get Deployment {}/{TARGET}", cluster.namespace),
    );
    assert_lambda_retries(&cluster, &vars, "get Deployment").await;
    faults.clear_faults();
    assert_restarted_once(&cluster, generation_before).await;
}

#[tokio::test]
async fn a_lost_answer_after_the_write_landed_is_reported_applied_once() {
    let (cluster, generation_before) = setup_with_faults("rel-lost").await;
    let faults = cluster.faults();
    // The restart is stored, then the connection drops before the answer: the function
    // cannot know whether it acted. The retry re-reads, finds its own record and must
    // neither act again nor report someone else's action.
    faults.add_fault(on_writes(Fault::new(FaultKind::DropResponse)).times(1));
    let report = fire(&cluster, &[]).await;
    let outcome = only(&report);
    assert_eq!(
        outcome.outcome,
        OutcomeKind::Applied,
        "the change this invocation made is reported as applied: {outcome:#?}"
    );
    let change = outcome.change.as_deref().unwrap_or_default();
    assert!(change.contains("rollout restart"), "{outcome:#?}");
    assert_eq!(target_requests(faults, "PATCH").len(), 1, "no second write");
    assert_restarted_once(&cluster, generation_before).await;
}

#[tokio::test]
async fn a_lost_answer_on_the_last_retry_is_confirmed_by_reading_before_the_outcome() {
    let (cluster, generation_before) = setup_with_faults("rel-lost-last").await;
    let faults = cluster.faults();
    // Two writes refused (503), the third, the last one allowed, stored with its answer
    // lost: without a re-read the alert would be reported failed, and the Lambda retry would
    // find the change and call it a cooldown, so it would never be reported applied.
    faults.add_fault(
        on_writes(Fault::new(FaultKind::DropResponse))
            .after(2)
            .times(1),
    );
    faults.add_fault(on_writes(Fault::status(503)).times(2));
    let report = fire(&cluster, &[]).await;
    only_of_kind(&report, OutcomeKind::Applied);
    assert_eq!(target_requests(faults, "PATCH").len(), 3, "no fourth write");
    assert_restarted_once(&cluster, generation_before).await;
    assert_eq!(
        cluster.events_about(TARGET).await.len(),
        1,
        "the Event of the confirmed change"
    );
}

#[tokio::test]
async fn an_api_that_is_down_is_a_quick_retryable_failure() {
    let cluster = TestCluster::start("rel-down").await;
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut kube_config =
        kube::Config::new(format!("http://127.0.0.1:{port}").parse().expect("URL"));
    mesh_remediation::cluster::connect::tune(&mut kube_config, Duration::from_secs(2));
    let down = kube::Client::try_from(kube_config).expect("client");
    let pipeline = Pipeline::new(
        config(&[]),
        LatencyRestart,
        std::sync::Arc::new(FixedConnector(down)),
    );
    let started = Instant::now();
    let report = pipeline.handle(&firing(&cluster), &invocation(None)).await;
    assert_transient(
        only(&report),
        &format!("get Deployment {}/{TARGET}", cluster.namespace),
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused connections fail fast: {:?}",
        started.elapsed()
    );
    assert_invocation_fails_transiently(&Function::new(pipeline), firing(&cluster)).await;
}

#[tokio::test]
async fn a_hanging_api_times_out_into_a_bounded_retryable_failure() {
    let (cluster, generation_before) = setup_with_faults("rel-hang").await;
    let faults = cluster.faults();
    let vars = [("API_TIMEOUT_SECONDS", "1")];
    // One write hangs (the server never handled it): timed out, retried, acted on once.
    faults.add_fault(on_writes(Fault::new(FaultKind::Hang)).times(1));
    let report = fire(&cluster, &vars).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    assert_restarted_once(&cluster, generation_before).await;

    // Every read hangs: three attempts of one second, then a retryable failure.
    faults.clear_faults();
    faults.add_fault(
        Fault::new(FaultKind::Hang)
            .method("GET")
            .path_contains("/deployments/"),
    );
    let vars = [
        ("API_TIMEOUT_SECONDS", "1"),
        ("COOLDOWN_SECONDS", "0"),
        ("ESCALATE_AFTER", "0"),
    ];
    let started = Instant::now();
    let report = fire(&cluster, &vars).await;
    let elapsed = started.elapsed();
    assert_transient(
        only(&report),
        &format!("get Deployment {}/{TARGET}", cluster.namespace),
    );
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(6),
        "three one-second timeouts plus short backoffs: {elapsed:?}"
    );
    assert_lambda_retries(&cluster, &vars, "get Deployment").await;
    faults.clear_faults();
    assert_restarted_once(&cluster, generation_before).await;
}

#[tokio::test]
async fn a_transient_failure_listing_the_opted_in_rules_is_retried_in_the_invocation() {
    // One alert can name several lists (a region split beside its drain): a list that gives
    // up while another acts leaves a half-made change until Lambda retries, so a transient
    // failure of the list is retried at once.
    let cluster = TestCluster::start("rel-list").await;
    let ns = cluster.namespace.clone();
    Mesh::new(&cluster)
        .opted_in(
            Kind::DestinationRule,
            "orders-db",
            json!({"host": format!("orders-db.{ns}.svc.cluster.local")}),
        )
        .await;
    let faults = cluster.faults();
    faults.clear_requests();
    faults.add_fault(
        Fault::new(FaultKind::Reset)
            .method("GET")
            .path_contains("/destinationrules")
            .times(1),
    );
    let event = events::fresh("db-circuit-break-firing.json", &ns);
    let report = cluster
        .invoke_with(
            DbCircuitBreak::new(CircuitBreaker::default()),
            &[],
            &event,
            &invocation(None),
        )
        .await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    let lists = faults
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "GET"
                && r.path.ends_with("/destinationrules")
                && r.query_param("labelSelector").is_some()
        })
        .count();
    assert_eq!(lists, 2, "the reset list and its retry");
    let stored = Mesh::new(&cluster)
        .get(Kind::DestinationRule, "orders-db")
        .await;
    assert!(
        stored
            .pointer("/spec/trafficPolicy/outlierDetection")
            .is_some(),
        "the breaker is stored: {stored:#}"
    );
}
