//! Closing the loop on the real control plane, the real Prometheus and moto's SQS: an
//! applied change is scheduled on the verify queue, the queued request comes back as the
//! SQS event Lambda would deliver, and the function judges it on Prometheus (series the
//! test sets through an exporter the real Prometheus scrapes): `verified`, `not recovered`
//! (handed off), `worse` (undone and handed off); faults give `failed`, never a guess.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mesh_remediation::cluster::record::VerificationState::{
    self, NotRecovered, Pending, Verified, Worse,
};
use mesh_remediation::pipeline::{Invocation, Pipeline};
use mesh_remediation::remediation::db_circuit_break::CircuitBreaker;
use mesh_remediation::remediation::region_failover::FailoverSettings;
use mesh_remediation::remediation::{
    DbCircuitBreak, ErrorRollback, LatencyRestart, RegionFailover, Remediation,
};
use mesh_remediation::report::{InvocationReport, OutcomeKind};
use mesh_remediation::verify::Verifier;
use mesh_remediation::verify::aws::AwsAccess;
use remediation_testkit::mesh::{
    Kind, Mesh, assert_escalated_saying, assert_retryable_saying, assert_skipped_for, only,
    only_of_kind, reason, record,
};
use remediation_testkit::moto::Moto;
use remediation_testkit::verify_world::{Exporter, RealPrometheus, VerifyQueue};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const ESCALATED: &str = "auto-remediation.io/escalated";

/// One test's world: the cluster, Prometheus and its exporter, the verify queue, and the
/// checks (`VERIFY_CHECKS`) every invocation is configured with.
struct World {
    cluster: TestCluster,
    exporter: Exporter,
    prometheus: RealPrometheus,
    queue: VerifyQueue,
    moto: Moto,
    checks: String,
    calls: std::sync::atomic::AtomicUsize,
}

/// A gauge per check, labelled with the alert's namespace and service as the checks are.
fn gauge(name: &str, namespace: &str) -> String {
    format!("verify_{name}{{namespace=\"{namespace}\"}}")
}

/// `VERIFY_CHECKS` reading those gauges, templated with the alert's labels.
fn checks(names: &[(&str, f64)]) -> String {
    let list: Vec<Value> = names
        .iter()
        .map(|(name, threshold)| {
            json!({"name": name, "query": format!("max(verify_{name}{{namespace=\"{{{{namespace}}}}\"}})"), "threshold": threshold})
        })
        .collect();
    Value::Array(list).to_string()
}

impl World {
    /// The object `kind`/`name` as the cluster stores it now.
    async fn get(&self, kind: Kind, name: &str) -> Value {
        Mesh::new(&self.cluster).get(kind, name).await
    }

    /// A world whose invocations verify with a check per (gauge, threshold) of `thresholds`.
    async fn start(prefix: &str, thresholds: &[(&str, f64)]) -> World {
        let cluster = TestCluster::start(prefix).await;
        let exporter = Exporter::start();
        let prometheus = RealPrometheus::start(&exporter).await;
        let moto = Moto::start().await;
        let queue = VerifyQueue::create(&moto.url, &cluster.namespace).await;
        World {
            cluster,
            exporter,
            prometheus,
            queue,
            moto,
            checks: checks(thresholds),
            calls: Default::default(),
        }
    }

    fn namespace(&self) -> &str {
        &self.cluster.namespace
    }

    /// Sets a check's gauge and waits until Prometheus has scraped it.
    async fn set(&self, check: &str, value: f64) {
        let series = gauge(check, self.namespace());
        self.exporter.set(&series, value);
        self.prometheus.wait_for(&series, value).await;
    }

    /// Waits until a scrape after `at` stored the gauge (so "before" holds at `at`).
    async fn scraped_after(&self, check: &str, at: DateTime<Utc>) {
        let query = format!("timestamp({})", gauge(check, self.namespace()));
        let started = std::time::Instant::now();
        while self
            .prometheus
            .value(&query)
            .await
            .is_none_or(|t| t <= at.timestamp_millis() as f64 / 1000.0)
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no scrape after {at}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The function's pipeline, verifying through this world (`VERIFY_AFTER_SECONDS=1`).
    fn pipeline<R: Remediation>(&self, remediation: R, vars: &[(&str, &str)]) -> Pipeline<R> {
        let mut all = vec![
            ("VERIFY_AFTER_SECONDS", "1"),
            ("VERIFY_QUEUE_URL", self.queue.url.as_str()),
            ("PROMETHEUS_URL", self.prometheus.url.as_str()),
            ("VERIFY_CHECKS", self.checks.as_str()),
        ];
        all.extend_from_slice(vars);
        let pipeline = self.cluster.pipeline(remediation, &all);
        let aws =
            AwsAccess::with_static_keys("testing", "testing", "us-east-1", Some(&self.moto.url));
        let verifier =
            Verifier::with_access(&pipeline.config().verify, Arc::new(aws)).expect("verifier");
        pipeline.with_verifier(verifier)
    }

    /// Runs `event` as one invocation, with `vars` added to the world's configuration.
    async fn invoke_with<R: Remediation>(
        &self,
        remediation: R,
        vars: &[(&str, &str)],
        event: &Value,
    ) -> InvocationReport {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let invocation = Invocation::new(
            &format!("req-verify-{n}"),
            Some(&format!(
                "Root=1-67a1b2c3-00000000000000000000{n:04};Sampled=1"
            )),
            None,
        );
        self.pipeline(remediation, vars)
            .handle(event, &invocation)
            .await
    }

    async fn invoke<R: Remediation>(&self, remediation: R, event: &Value) -> InvocationReport {
        self.invoke_with(remediation, &[], event).await
    }

    /// The remediation's sample alert (`events/<name>-<state>.json`), fresh, in this namespace.
    fn sample<R: Remediation>(&self, remediation: &R, state: &str) -> Value {
        let name = format!("{}-{state}.json", remediation.name());
        events::fresh(&name, self.namespace())
    }

    /// Fires the remediation's sample alert and asserts it changed something.
    async fn apply<R: Remediation>(&self, remediation: R) {
        let firing = self.sample(&remediation, "firing");
        let report = self.invoke(remediation, &firing).await;
        assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    }

    /// The verify request the applied change queued, as Lambda's SQS event.
    async fn queued(&self) -> Value {
        self.queue
            .receive_event(Duration::from_secs(20))
            .await
            .expect("a verify request on the queue")
    }

    /// The check of the change recorded on `changed`, once the gauges moved to `now` (the
    /// first of them scraped after the change, so its "before" is the value it replaced):
    /// the queued verify request and the report of handling it.
    async fn verify<R: Remediation>(
        &self,
        remediation: R,
        changed: &Value,
        now: &[(&str, f64)],
    ) -> (Value, InvocationReport) {
        let action = record(changed, remediation.name()).expect("record");
        self.scraped_after(now[0].0, action.at).await;
        for (check, value) in now {
            self.set(check, *value).await;
        }
        let request = self.queued().await;
        let report = self.invoke(remediation, &request).await;
        (request, report)
    }

    /// Hands `request` to error-rollback and asserts it is skipped without a write to the
    /// checkout VirtualService (stored as `stored`): the skip's reason and the object after.
    async fn skipped_leaving_checkout(&self, request: &Value, stored: &Value) -> (String, Value) {
        let report = self.invoke(ErrorRollback, request).await;
        let outcome = only_of_kind(&report, OutcomeKind::Skipped);
        let after = self.get(Kind::VirtualService, "checkout").await;
        assert_eq!(
            after["metadata"]["resourceVersion"], stored["metadata"]["resourceVersion"],
            "no write"
        );
        (reason(outcome).to_owned(), after)
    }
}

fn state(object: &Value, remediation: &str) -> Option<VerificationState> {
    record(object, remediation)?.verification.map(|v| v.state)
}

fn escalated(object: &Value) -> bool {
    object["metadata"]["annotations"].get(ESCALATED).is_some()
}

/// Asserts the verification state `remediation` stored on `object`, and whether the object
/// was handed to a person.
fn assert_verdict(
    object: &Value,
    remediation: &str,
    expected: VerificationState,
    handed_off: bool,
) {
    assert_eq!(state(object, remediation), Some(expected), "{object:#}");
    assert_eq!(escalated(object), handed_off, "handed off: {object:#}");
}

fn breaker() -> DbCircuitBreak {
    DbCircuitBreak::new(CircuitBreaker::from_lookup(|_| None).expect("defaults"))
}

fn failover() -> RegionFailover {
    RegionFailover::new(FailoverSettings::from_lookup(|_: &str| None::<String>).expect("defaults"))
}

async fn checkout_split(cluster: &TestCluster) -> Value {
    Mesh::new(cluster)
        .subset_split(
            "checkout",
            &[
                ("v1", json!({"version": "v1"}), 50),
                ("v2", json!({"version": "v2"}), 50),
            ],
            json!({"auto-remediation.io/stable-subset": "v1"}),
            json!({"hosts": ["checkout"]}),
        )
        .await
}

/// A world verifying with `checks` in which error-rollback has just shifted the checkout
/// split, with `error_ratio` at 0.02 when it did; also the split as it was before.
async fn after_a_rollback(prefix: &str, checks: &[(&str, f64)]) -> (World, Value) {
    let world = World::start(prefix, checks).await;
    let before = checkout_split(&world.cluster).await;
    world.set("error_ratio", 0.02).await;
    world.apply(ErrorRollback).await;
    (world, before)
}

#[tokio::test]
async fn a_rollback_that_made_errors_worse_is_undone_handed_off_and_judged_once() {
    let (world, before) = after_a_rollback("verify-worse", &[("error_ratio", 0.005)]).await;
    let changed = world.get(Kind::VirtualService, "checkout").await;
    assert_verdict(&changed, "error-rollback", Pending, false);
    assert_eq!(world.queue.waiting().await, 1, "one verify request queued");

    // The stable version cannot carry the traffic: errors rise well past the margin.
    let (verify, report) = world
        .verify(ErrorRollback, &changed, &[("error_ratio", 0.3)])
        .await;
    let outcome = assert_escalated_saying(&report, &["error_ratio 0.3 > 0.005 (was 0.02)"]);
    assert!(reason(outcome).starts_with("worse: "), "{outcome:#?}");
    let metrics = report.metric_lines(Duration::from_millis(1), 0).join("\n");
    assert!(
        metrics.contains(r#""Verdict":"worse""#) && metrics.contains(r#""Verifications":1"#),
        "{metrics}"
    );
    let evidence = &outcome.verification.as_ref().expect("evidence")["evidence"][0];
    assert_eq!(
        (evidence["before"].as_f64(), evidence["now"].as_f64()),
        (Some(0.02), Some(0.3))
    );

    let undone = world.get(Kind::VirtualService, "checkout").await;
    assert_eq!(
        undone["spec"], before["spec"],
        "the exact previous routes are back"
    );
    assert_verdict(&undone, "error-rollback", Worse, true);
    let stored = record(&undone, "error-rollback").expect("record");
    assert!(stored.verification.as_ref().expect("verification").undone);
    assert!(
        stored.reverted.is_some(),
        "the undo is recorded as a reversal"
    );
    let actions: Vec<Value> = world
        .cluster
        .events_about("checkout")
        .await
        .iter()
        .map(|e| e["action"].clone())
        .collect();
    assert!(actions.contains(&json!("Undone")), "{actions:?}");

    // The same request delivered again changes nothing.
    let (why, _) = world.skipped_leaving_checkout(&verify, &undone).await;
    assert!(why.starts_with("already verified: worse"), "{why}");
    assert_eq!(
        world.queue.waiting().await,
        0,
        "a verdict schedules nothing"
    );
}

#[tokio::test]
async fn a_breaker_that_helped_is_verified_and_stays() {
    let world = World::start(
        "verify-ok",
        &[("db_timeout_ratio", 0.05), ("breaker_rejected_share", 0.05)],
    )
    .await;
    Mesh::new(&world.cluster)
        .create(
            Kind::DestinationRule,
            "orders-db",
            true,
            json!({}),
            json!({"host": format!("orders-db.{}.svc.cluster.local", world.namespace())}),
        )
        .await;
    world.set("db_timeout_ratio", 0.2).await;
    world.set("breaker_rejected_share", 0.0).await;
    world.apply(breaker()).await;
    let changed = world.get(Kind::DestinationRule, "orders-db").await;

    let now = [("db_timeout_ratio", 0.01), ("breaker_rejected_share", 0.02)];
    let (_, report) = world.verify(breaker(), &changed, &now).await;
    let outcome = only(&report);
    assert_skipped_for(
        outcome,
        "verified: recovered: db_timeout_ratio 0.01 <= 0.05 (was 0.2)",
    );
    assert!(outcome.needs_a_report(), "the verdict is reported");
    let verified = world.get(Kind::DestinationRule, "orders-db").await;
    assert_eq!(verified["spec"], changed["spec"], "the breaker stays");
    assert_verdict(&verified, "db-circuit-break", Verified, false);
}

#[tokio::test]
async fn a_drain_that_did_not_help_is_handed_off_and_kept() {
    let world = World::start("verify-flat", &[("error_ratio", 0.005)]).await;
    let mesh = Mesh::new(&world.cluster);
    mesh.create(
        Kind::DestinationRule,
        "frontend",
        true,
        json!({}),
        json!({"host": "frontend", "subsets": [
            {"name": "east", "labels": {"topology.kubernetes.io/region": "us-east-1"}},
            {"name": "west", "labels": {"topology.kubernetes.io/region": "us-west-2"}},
        ]}),
    )
    .await;
    mesh.create(
        Kind::VirtualService,
        "frontend",
        true,
        json!({}),
        json!({"hosts": ["frontend"], "http": [{"route": [
            {"destination": {"host": "frontend", "subset": "east"}, "weight": 50},
            {"destination": {"host": "frontend", "subset": "west"}, "weight": 50},
        ]}]}),
    )
    .await;
    world.set("error_ratio", 0.1).await;
    world.apply(failover()).await;
    let changed = mesh.get(Kind::VirtualService, "frontend").await;

    // Errors stay where they were: not recovered, not worse.
    let (_, report) = world
        .verify(failover(), &changed, &[("error_ratio", 0.11)])
        .await;
    let outcome = only_of_kind(&report, OutcomeKind::Escalated);
    assert!(
        reason(outcome)
            .starts_with("not-recovered: not recovered: error_ratio 0.11 > 0.005 (was 0.1)"),
        "{outcome:#?}"
    );
    let kept = mesh.get(Kind::VirtualService, "frontend").await;
    assert_eq!(kept["spec"], changed["spec"], "the drain stays");
    // Handed to a person now, not after more repeats.
    assert_verdict(&kept, "region-failover", NotRecovered, true);

    // The next firing alert leaves it to the person.
    let firing = world.sample(&failover(), "firing");
    let again = world.invoke(failover(), &firing).await;
    assert_eq!(only(&again).outcome, OutcomeKind::Skipped, "{again:#?}");
}

#[tokio::test]
async fn a_restart_that_made_latency_worse_is_handed_off_not_undone() {
    let world = World::start("verify-restart", &[("p95_latency_ms", 500.0)]).await;
    world.cluster.create_deployment("checkout-v2", true).await;
    world.set("p95_latency_ms", 800.0).await;
    world.apply(LatencyRestart).await;
    let restarted = world.cluster.wait_settled("checkout-v2").await;
    let restarted = serde_json::to_value(restarted).expect("json");

    let (_, report) = world
        .verify(LatencyRestart, &restarted, &[("p95_latency_ms", 2000.0)])
        .await;
    assert_escalated_saying(
        &report,
        &["not undone (latency-restart changes cannot be reverted)"],
    );
    let after = serde_json::to_value(world.cluster.deployment("checkout-v2").await).expect("json");
    assert_eq!(
        after["spec"]["template"], restarted["spec"]["template"],
        "nothing restarts again"
    );
    assert_verdict(&after, "latency-restart", Worse, true);
}

#[tokio::test]
async fn no_answer_or_no_data_fails_retryably_and_leaves_the_record_pending() {
    // `missing` is a series nobody exports: its query answers with an empty result.
    let checks = [("error_ratio", 0.005), ("missing", 1.0)];
    let (mut world, before) = after_a_rollback("verify-faults", &checks).await;
    let verify = world.queued().await;

    let report = world.invoke(ErrorRollback, &verify).await;
    assert_retryable_saying(&report, &["no data: the query returned no series"]);

    world.prometheus.stop().await;
    let report = world.invoke(ErrorRollback, &verify).await;
    assert_retryable_saying(&report, &["unreachable"]);

    let stored = world.get(Kind::VirtualService, "checkout").await;
    assert_verdict(&stored, "error-rollback", Pending, false);
    assert_ne!(
        stored["spec"], before["spec"],
        "the change stands until a verdict"
    );
}

#[tokio::test]
async fn an_object_edited_before_its_verification_is_handed_off_not_overwritten() {
    let (world, _) = after_a_rollback("verify-edited", &[("error_ratio", 0.005)]).await;
    let changed = world.get(Kind::VirtualService, "checkout").await;

    // A person moves the weights by hand before the check.
    let api = Mesh::new(&world.cluster).api(Kind::VirtualService);
    let edit = json!({"spec": {"http": [{"route": [
        {"destination": {"host": "checkout", "subset": "v1"}, "weight": 90},
        {"destination": {"host": "checkout", "subset": "v2"}, "weight": 10},
    ]}]}});
    api.patch(
        "checkout",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&edit),
    )
    .await
    .expect("edit by hand");
    let (_, report) = world
        .verify(ErrorRollback, &changed, &[("error_ratio", 0.3)])
        .await;
    assert_escalated_saying(&report, &["not undone ("]);
    let stored = world.get(Kind::VirtualService, "checkout").await;
    assert_eq!(
        stored["spec"]["http"][0]["route"][0]["weight"], 90,
        "the person's edit stands"
    );
    assert_verdict(&stored, "error-rollback", Worse, true);
}

#[tokio::test]
async fn dry_runs_and_drills_are_not_verified() {
    let world = World::start("verify-dry", &[("error_ratio", 0.005)]).await;
    checkout_split(&world.cluster).await;
    let drill = world.sample(&ErrorRollback, "drill");
    let report = world.invoke(ErrorRollback, &drill).await;
    assert_eq!(only(&report).outcome, OutcomeKind::DryRun, "{report:#?}");
    let firing = world.sample(&ErrorRollback, "firing");
    let report = world
        .invoke_with(ErrorRollback, &[("DRY_RUN", "true")], &firing)
        .await;
    let outcome = only_of_kind(&report, OutcomeKind::DryRun);
    let patch = outcome.patch.as_ref().expect("patch").to_string();
    assert!(
        !patch.contains("verification"),
        "a dry run's record is not pending: {patch}"
    );
    assert_eq!(world.queue.waiting().await, 0, "nothing scheduled");
}

/// The default checks are valid PromQL over the series the shipped rules read: each
/// answers with a number on the real Prometheus once Istio-shaped series exist.
#[tokio::test]
async fn the_default_checks_read_the_rules_series() {
    let exporter = Exporter::start();
    let prometheus = RealPrometheus::start(&exporter).await;
    let dest = r#"reporter="destination",destination_workload="checkout-v2",destination_workload_namespace="shop",destination_service_namespace="shop",destination_service_name="checkout""#;
    for (version, code, rate) in [("v1", "200", 10.0), ("v2", "200", 5.0), ("v2", "503", 1.0)] {
        exporter.counter(&format!("istio_requests_total{{{dest},destination_version=\"{version}\",response_code=\"{code}\"}}"), 0.0, rate);
    }
    for (le, rate) in [("100", 5.0), ("500", 9.0), ("1000", 10.0), ("+Inf", 10.0)] {
        exporter.counter(
            &format!("istio_request_duration_milliseconds_bucket{{{dest},le=\"{le}\"}}"),
            0.0,
            rate,
        );
    }
    let source = r#"reporter="source",source_workload_namespace="shop",source_app="orders",destination_service_name="orders-db""#;
    exporter.counter(
        &format!("istio_requests_total{{{source},response_flags=\"-\"}}"),
        0.0,
        9.0,
    );
    exporter.counter(
        &format!("istio_requests_total{{{source},response_flags=\"UO\"}}"),
        0.0,
        1.0,
    );
    exporter.counter(
        r#"db_client_requests_total{namespace="shop",app="orders",db="orders-db"}"#,
        0.0,
        10.0,
    );
    exporter.counter(
        r#"db_client_timeouts_total{namespace="shop",app="orders",db="orders-db"}"#,
        0.0,
        2.0,
    );

    let labels: std::collections::BTreeMap<String, String> = HashMap::from([
        ("namespace", "shop"),
        ("service", "checkout"),
        ("version", "v2"),
        ("deployment", "checkout-v2"),
        ("db_host", "orders-db"),
        ("region", "us-east-1"),
    ])
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for remediation in [
        "latency-restart",
        "error-rollback",
        "db-circuit-break",
        "region-failover",
    ] {
        let mut labels = labels.clone();
        if remediation == "db-circuit-break" {
            labels.insert("service".into(), "orders".into());
        }
        let checks = mesh_remediation::verify::checks::defaults(remediation);
        for query in mesh_remediation::verify::checks::render(&checks, &labels, false) {
            let value = prometheus.wait_for_data(&query.promql).await;
            assert!(
                value.is_finite() && value >= 0.0,
                "{remediation} {}: {value}",
                query.name
            );
            if query.name == "breaker_rejected_share" {
                assert!(
                    (value - 0.1).abs() < 0.02,
                    "UO is a tenth of the calls: {value}"
                );
            }
            if query.name == "failing_version_share" {
                assert!(value > 0.2, "v2 takes a third of the traffic: {value}");
            }
        }
    }
}

#[tokio::test]
async fn a_change_reverted_by_a_person_before_its_check_is_left_alone() {
    let (world, before) = after_a_rollback("verify-reverted", &[("error_ratio", 0.005)]).await;
    let verify = world.queued().await;

    let revert = world.sample(&ErrorRollback, "revert");
    let report = world.invoke(ErrorRollback, &revert).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    let reverted = world.get(Kind::VirtualService, "checkout").await;
    assert_eq!(reverted["spec"], before["spec"]);

    world.set("error_ratio", 0.3).await;
    let (why, after) = world.skipped_leaving_checkout(&verify, &reverted).await;
    assert!(why.contains("reverted at"), "{why}");
    assert!(
        !escalated(&after),
        "a person's revert is not handed off again"
    );
}
