//! Races: concurrent invocations (at-least-once delivery, Lambda scaling out) and different
//! functions acting on one object at the same moment. The record of an action is written
//! with the change, guarded by `resourceVersion`, so exactly one invocation acts and no
//! function's change overwrites another's.

use futures::future::join_all;
use mesh_remediation::remediation::region_failover::FailoverSettings;
use mesh_remediation::remediation::{ErrorRollback, LatencyRestart, RegionFailover};
use mesh_remediation::report::OutcomeKind;
use remediation_testkit::cluster::client_from;
use remediation_testkit::mesh::{
    Kind, Mesh, assert_skipped_for, assert_strict_writes, only, record,
};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const TARGET: &str = "checkout-v2";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_invocations_of_one_alert_restart_once() {
    let cluster = TestCluster::start("race-ten").await;
    let before = cluster.create_deployment(TARGET, true).await;
    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    cluster.clear_requests();
    // The first write is held half a second, so the others read the same version
    // and write too: the precondition decides, not timing luck.
    cluster.faults().add_fault(
        remediation_testkit::fault_proxy::Fault::latency(500)
            .method("PATCH")
            .path_contains(&format!("/deployments/{TARGET}"))
            .times(1),
    );
    // Ten Lambda instances, each with its own connection to the API, all at once.
    let mut pipelines = Vec::new();
    for _ in 0..10 {
        let client = client_from(cluster.kubeconfig_path()).await;
        pipelines.push(mesh_remediation::pipeline::Pipeline::new(
            remediation_testkit::cluster::config(&[]),
            LatencyRestart,
            std::sync::Arc::new(remediation_testkit::cluster::FixedConnector(client)),
        ));
    }
    let reports = join_all(pipelines.iter().enumerate().map(|(i, pipeline)| {
        let event = event.clone();
        async move {
            let invocation =
                mesh_remediation::pipeline::Invocation::new(&format!("req-race-{i}"), None, None);
            pipeline.handle(&event, &invocation).await
        }
    }))
    .await;
    let applied: Vec<_> = reports
        .iter()
        .filter(|r| only(r).outcome == OutcomeKind::Applied)
        .collect();
    assert_eq!(
        applied.len(),
        1,
        "exactly one invocation acts: {reports:#?}"
    );
    for report in &reports {
        let outcome = only(report);
        if outcome.outcome != OutcomeKind::Applied {
            assert_skipped_for(outcome, "cooldown");
        }
    }
    let after = cluster.deployment(TARGET).await;
    assert_eq!(
        after.metadata.generation,
        before.metadata.generation.map(|g| g + 1),
        "one rollout"
    );
    let events = cluster.events_about(TARGET).await;
    assert_eq!(events.len(), 1, "one Event: {events:#?}");
    // The record names the winner.
    let record = mesh_remediation::cluster::record::ActionRecord::from_annotations(
        after.metadata.annotations.as_ref(),
        "latency-restart",
    )
    .expect("readable")
    .expect("record");
    assert_eq!(record.trace_id, applied[0].trace_id);
    let stored: Vec<_> = cluster
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.contains("/deployments/") && r.status == 200)
        .collect();
    assert_eq!(stored.len(), 1, "one write stored: {stored:#?}");
    let refused = cluster.refused_writes("deployments");
    assert!(refused >= 1, "losers were refused by the precondition");
}

/// One VirtualService for `checkout`: a canary route split by version and a default route
/// split by region, so error-rollback and region-failover each change their own route.
fn routes(canary: (i64, i64), regions: (i64, i64, i64)) -> Value {
    json!([
        {"name": "canary",
         "match": [{"headers": {"x-canary": {"exact": "1"}}}],
         "route": [
            {"destination": {"host": "checkout", "subset": "v1"}, "weight": canary.0},
            {"destination": {"host": "checkout", "subset": "v2"}, "weight": canary.1},
         ]},
        {"name": "regional",
         "route": [
            {"destination": {"host": "checkout", "subset": "east"}, "weight": regions.0},
            {"destination": {"host": "checkout", "subset": "west"}, "weight": regions.1},
            {"destination": {"host": "checkout", "subset": "eu"}, "weight": regions.2},
         ]},
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_functions_changing_one_virtual_service_at_once_lose_neither_change() {
    let cluster = TestCluster::start("race-two").await;
    let mesh = Mesh::new(&cluster);
    mesh.opted_in(Kind::DestinationRule, "checkout", json!({"host": "checkout", "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}},
            {"name": "east", "labels": {"version": "v1", "topology.kubernetes.io/region": "us-east-1"}},
            {"name": "west", "labels": {"version": "v1", "topology.kubernetes.io/region": "us-west-2"}},
            {"name": "eu", "labels": {"version": "v1", "topology.kubernetes.io/region": "eu-west-1"}},
        ]}))
    .await;
    mesh.opted_in(
        Kind::VirtualService,
        "checkout",
        json!({"hosts": ["checkout"], "http": routes((50, 50), (60, 30, 10))}),
    )
    .await;

    // 5xx on checkout v2 (error-rollback) and us-east-1 unreachable for checkout
    // (region-failover), delivered at the same moment.
    let rollback = events::fresh("error-rollback-firing.json", &cluster.namespace);
    let mut failover = events::fresh("region-failover-firing.json", &cluster.namespace);
    let mut message = events::message(&failover);
    message["commonLabels"]["service"] = json!("checkout");
    message["alerts"][0]["labels"]["service"] = json!("checkout");
    events::set_message(&mut failover, &message);

    cluster.clear_requests();
    // Whichever writes first is held a second before the server handles its write;
    // meanwhile the other reads the same version and writes. The held write then
    // carries a stale resourceVersion: the precondition, not timing luck, decides.
    cluster.faults().add_fault(
        remediation_testkit::fault_proxy::Fault::latency(1000)
            .method("PATCH")
            .path_contains("/virtualservices/checkout")
            .times(1),
    );
    let region_failover =
        RegionFailover::new(FailoverSettings::from_lookup(|_| None).expect("settings"));
    let (a, b) = tokio::join!(
        cluster.invoke(ErrorRollback, &[], &rollback),
        cluster.invoke(region_failover, &[], &failover),
    );
    assert_eq!(
        only(&a).outcome,
        OutcomeKind::Applied,
        "error-rollback: {a:#?}"
    );
    assert_eq!(
        only(&b).outcome,
        OutcomeKind::Applied,
        "region-failover: {b:#?}"
    );

    let vs = mesh.get(Kind::VirtualService, "checkout").await;
    assert_eq!(
        vs["spec"]["http"],
        routes((100, 0), (0, 75, 25)),
        "both changes are in the object: the canary route rolled back and us-east-1's share moved to west and eu"
    );
    assert_strict_writes(&cluster.requests());
    let rollback_record = record(&vs, "error-rollback").expect("error-rollback's record kept");
    let failover_record = record(&vs, "region-failover").expect("region-failover's record kept");
    assert_eq!(rollback_record.trace_id, a.trace_id);
    assert_eq!(failover_record.trace_id, b.trace_id);
    let refused = cluster.refused_writes("virtualservices");
    assert!(
        refused >= 1,
        "the second writer was refused and re-read instead of overwriting: {:#?}",
        cluster.requests()
    );
}
