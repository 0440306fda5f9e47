//! region-failover end to end over HTTP against the Kubernetes API (the real control plane
//! scripts/test starts, or a cluster of your own via TEST_KUBECONFIG, behind the test's
//! fault proxy), with regional health endpoints on 127.0.0.1.

use std::collections::HashMap;
use std::time::Duration;

use mesh_remediation::remediation::RegionFailover;
use mesh_remediation::remediation::region_failover::FailoverSettings;
use mesh_remediation::report::{Outcome, OutcomeKind};
use remediation_testkit::cluster::NO_COOLDOWN;
use remediation_testkit::mesh::{
    HealthEndpoint, Kind, Mesh, assert_first_route_recorded, assert_one_dry_run_patch,
    assert_one_winner, assert_skipped_saying, assert_strict_writes, only, only_of_kind, race,
    reason, record, spec_text,
};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const FIRING: &str = "region-failover-firing.json";
const RESOLVED: &str = "region-failover-resolved.json";
const REVERT: &str = "region-failover-revert.json";
const NAME: &str = "frontend";

/// Health endpoints for the two regions that may take us-east-1's traffic.
struct Regions {
    west: HealthEndpoint,
    eu: HealthEndpoint,
}

impl Regions {
    async fn start(west: u16, eu: u16) -> Regions {
        Regions {
            west: HealthEndpoint::start(west).await,
            eu: HealthEndpoint::start(eu).await,
        }
    }

    fn urls(&self) -> String {
        format!("us-west-2={},eu-west-1={}", self.west.url(), self.eu.url())
    }
}

fn failover(vars: &[(&str, &str)]) -> RegionFailover {
    let map: HashMap<&str, &str> = vars.iter().copied().collect();
    RegionFailover::new(
        FailoverSettings::from_lookup(|k| map.get(k).map(|v| (*v).to_owned()))
            .expect("valid settings"),
    )
}

fn checked(regions: &Regions) -> RegionFailover {
    failover(&[
        ("REGION_HEALTH_URLS", &regions.urls()),
        // Generous: on a loaded machine a healthy region's answer must not miss it (at 300 ms
        // it did, about one run in five); the slow region's answer comes after 20 s.
        ("HEALTH_CHECK_TIMEOUT_MS", "3000"),
    ])
}

fn routes(east: i64, west: i64, eu: i64) -> Value {
    json!([{"route": [
        {"destination": {"host": "frontend", "subset": "east"}, "weight": east},
        {"destination": {"host": "frontend", "subset": "west"}, "weight": west},
        {"destination": {"host": "frontend", "subset": "eu"}, "weight": eu},
    ], "timeout": "5s"}])
}

/// Subsets named freely and labelled with their region, as the failover must look them up.
fn rule_spec() -> Value {
    json!({"host": "frontend", "subsets": [
        {"name": "east", "labels": {"topology.kubernetes.io/region": "us-east-1"}},
        {"name": "west", "labels": {"topology.kubernetes.io/region": "us-west-2"}},
        {"name": "eu", "labels": {"topology.kubernetes.io/region": "eu-west-1"}},
    ]})
}

async fn setup(prefix: &str, opted_in: bool) -> (TestCluster, Value) {
    let cluster = TestCluster::start(prefix).await;
    let service = json!({"hosts": ["frontend"], "http": routes(60, 30, 10)});
    let before = Mesh::new(&cluster)
        .rule_and_service(NAME, opted_in, rule_spec(), json!({}), service)
        .await;
    (cluster, before)
}

async fn vs(cluster: &TestCluster) -> Value {
    Mesh::new(cluster).get(Kind::VirtualService, NAME).await
}

async fn dr(cluster: &TestCluster) -> Value {
    Mesh::new(cluster).get(Kind::DestinationRule, NAME).await
}

fn weights(object: &Value) -> Vec<i64> {
    object["spec"]["http"][0]["route"]
        .as_array()
        .expect("route")
        .iter()
        .map(|d| d["weight"].as_i64().expect("weight"))
        .collect()
}

async fn fire(cluster: &TestCluster, remediation: RegionFailover) -> Outcome {
    deliver(cluster, remediation, FIRING).await
}

/// Delivers the `sample` event to `remediation`: its one outcome.
async fn deliver(cluster: &TestCluster, remediation: RegionFailover, sample: &str) -> Outcome {
    let event = events::fresh(sample, &cluster.namespace);
    only(&cluster.invoke(remediation, &[], &event).await).clone()
}

/// Fires the alert with `regions` checked, and asserts the function failed over.
async fn fail_over(cluster: &TestCluster, regions: &Regions) {
    let outcome = fire(cluster, checked(regions)).await;
    assert_eq!(outcome.outcome, OutcomeKind::Applied);
}

#[tokio::test]
async fn firing_alert_shifts_the_region_share_to_healthy_regions_in_proportion() {
    let (cluster, before) = setup("rf-firing", true).await;
    let regions = Regions::start(200, 200).await;
    let event = events::fresh(FIRING, &cluster.namespace);
    let report = cluster.invoke(checked(&regions), &[], &event).await;
    let outcome = only_of_kind(&report, OutcomeKind::Applied);
    assert_eq!(
        outcome.source.fingerprint.as_deref(),
        Some("7fb675b975cf0c44")
    );
    assert!(
        reason(outcome).contains("VirtualService weights shift them"),
        "the DestinationRule is left alone: {outcome:#?}"
    );
    let after = vs(&cluster).await;
    assert_eq!(
        after["spec"],
        json!({"hosts": ["frontend"], "http": routes(0, 75, 25)})
    );
    assert_strict_writes(&cluster.requests());
    assert_eq!(dr(&cluster).await["spec"], rule_spec(), "rule untouched");
    assert!(
        regions.west.hits() >= 1 && regions.eu.hits() >= 1,
        "both regions checked"
    );
    let rec = record(&after, "region-failover").expect("record");
    assert_first_route_recorded(&rec, &before, &after);
    let target = format!("VirtualService {}/{NAME}", cluster.namespace);
    let patch = &outcome.patch.as_ref().expect("patches by target")[&target];
    assert_eq!(patch["spec"]["http"], after["spec"]["http"]);
    let events = cluster.events_about(NAME).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["action"], "Failover");
    assert_eq!(events[0]["regarding"]["kind"], "VirtualService");
}

#[tokio::test]
async fn unhealthy_slow_and_unknown_regions_receive_nothing() {
    // eu-west-1 answers 503: us-west-2 takes it all.
    let (cluster, _) = setup("rf-unhealthy", true).await;
    let regions = Regions::start(200, 503).await;
    fail_over(&cluster, &regions).await;
    assert_eq!(weights(&vs(&cluster).await), vec![0, 90, 10]);

    // us-west-2 does not answer within HEALTH_CHECK_TIMEOUT_MS: eu-west-1 takes it all.
    let (cluster, _) = setup("rf-slow", true).await;
    let regions = Regions::start(200, 200).await;
    // An answer far later than the check's timeout: had the check waited for it, the
    // invocation would take 20 s, whatever the machine's load.
    regions.west.set_delay(Duration::from_secs(20));
    let started = std::time::Instant::now();
    fail_over(&cluster, &regions).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the check timed out"
    );
    assert_eq!(weights(&vs(&cluster).await), vec![0, 30, 70]);

    // Health URLs are configured but not for eu-west-1: unknown is not healthy.
    let (cluster, _) = setup("rf-unknown", true).await;
    let west = HealthEndpoint::start(200).await;
    let only_west = format!("us-west-2={}", west.url());
    let remediation = failover(&[("REGION_HEALTH_URLS", &only_west)]);
    assert_eq!(
        fire(&cluster, remediation).await.outcome,
        OutcomeKind::Applied
    );
    assert_eq!(weights(&vs(&cluster).await), vec![0, 90, 10]);

    // No health URLs at all: every other region counts as healthy.
    let (cluster, _) = setup("rf-nourls", true).await;
    assert_eq!(
        fire(&cluster, failover(&[])).await.outcome,
        OutcomeKind::Applied
    );
    assert_eq!(weights(&vs(&cluster).await), vec![0, 75, 25]);
}

#[tokio::test]
async fn no_healthy_region_changes_nothing_and_fails_with_the_reason() {
    let (cluster, before) = setup("rf-nohealthy", true).await;
    let regions = Regions::start(503, 200).await;
    // Far past the check's timeout, whatever the machine's load.
    regions.eu.set_delay(Duration::from_secs(20));
    let outcome = fire(&cluster, checked(&regions)).await;
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{outcome:#?}");
    assert!(!outcome.retryable);
    let why = reason(&outcome);
    assert!(
        why.contains("no healthy region that every client reaches to take us-east-1's traffic"),
        "{why}"
    );
    assert!(why.contains("us-west-2: HTTP 503"), "{why}");
    assert!(why.contains("eu-west-1: no answer"), "{why}");
    assert_eq!(vs(&cluster).await, before, "nothing changed");
    assert!(cluster.events_about(NAME).await.is_empty());
}

#[tokio::test]
async fn the_same_event_three_times_changes_once() {
    let (cluster, _) = setup("rf-repeat", true).await;
    let regions = Regions::start(200, 200).await;
    let event = events::fresh(FIRING, &cluster.namespace);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let report = cluster.invoke(checked(&regions), &[], &event).await;
        seen.push((only(&report).outcome, reason(only(&report)).to_owned()));
    }
    assert_eq!(seen[0].0, OutcomeKind::Applied, "{seen:?}");
    assert!(
        seen[1..]
            .iter()
            .all(|(k, r)| *k == OutcomeKind::Skipped && r.contains("cooldown")),
        "{seen:?}"
    );
    assert_eq!(weights(&vs(&cluster).await), vec![0, 75, 25]);
    assert_eq!(cluster.events_about(NAME).await.len(), 1);
    // Past the cooldown: already at 0.
    let report = cluster
        .invoke(checked(&regions), &NO_COOLDOWN, &event)
        .await;
    assert!(
        reason(only(&report)).contains("already failed over"),
        "{report:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_invocations_change_once() {
    let (cluster, _) = setup("rf-race", true).await;
    let regions = Regions::start(200, 200).await;
    let event = events::fresh(FIRING, &cluster.namespace);
    let (a, b) = race(
        &cluster,
        Kind::VirtualService,
        NAME,
        || checked(&regions),
        &event,
    )
    .await;
    assert_one_winner(&cluster, &a, &b);
    assert_eq!(weights(&vs(&cluster).await), vec![0, 75, 25]);
    assert_eq!(cluster.events_about(NAME).await.len(), 1);
}

#[tokio::test]
async fn dry_run_stores_nothing() {
    for (event_name, vars) in events::dry_runs("region-failover") {
        let (cluster, before) = setup("rf-dryrun", true).await;
        let regions = Regions::start(200, 200).await;
        cluster.clear_requests();

        let event = events::fresh(&event_name, &cluster.namespace);
        let report = cluster.invoke(checked(&regions), vars, &event).await;
        let outcome = only_of_kind(&report, OutcomeKind::DryRun);
        let target = format!("VirtualService {}/{NAME}", cluster.namespace);
        let patch = &outcome.patch.as_ref().expect("patch")[&target];
        assert_eq!(patch["spec"]["http"], routes(0, 75, 25));
        assert_eq!(vs(&cluster).await, before, "nothing stored");
        assert!(cluster.events_about(NAME).await.is_empty());
        assert_one_dry_run_patch(&cluster, patch);
    }
}

#[tokio::test]
async fn resolved_alert_fails_back_only_when_configured() {
    let (cluster, before) = setup("rf-resolved", true).await;
    let regions = Regions::start(200, 200).await;
    fail_over(&cluster, &regions).await;
    // Default: stay failed over, record recovery.
    let outcome = deliver(&cluster, checked(&regions), RESOLVED).await;
    assert_eq!(outcome.outcome, OutcomeKind::Skipped, "{outcome:#?}");
    assert_eq!(weights(&vs(&cluster).await), vec![0, 75, 25]);

    let (cluster, _) = setup("rf-failback", true).await;
    fail_over(&cluster, &regions).await;
    let back = failover(&[("FAILBACK_ON_RESOLVE", "true")]);
    let outcome = deliver(&cluster, back, RESOLVED).await;
    assert_eq!(outcome.outcome, OutcomeKind::Applied, "{outcome:#?}");
    let after = vs(&cluster).await;
    assert_eq!(
        spec_text(&after),
        spec_text(&before),
        "previous weights exactly"
    );
    assert_strict_writes(&cluster.requests());
}

#[tokio::test]
async fn objects_not_opted_in_are_skipped() {
    let (cluster, before) = setup("rf-optin", false).await;
    let outcome = fire(&cluster, failover(&[])).await;
    assert_skipped_saying(&outcome, "auto_remediation=active");
    assert_eq!(vs(&cluster).await, before);
}

#[tokio::test]
async fn without_a_region_split_the_destination_rule_drains_the_region_with_distribute() {
    let cluster = TestCluster::start("rf-locality").await;
    let mesh = Mesh::new(&cluster);
    let spec = json!({"host": "frontend", "trafficPolicy": {
        "tls": {"mode": "ISTIO_MUTUAL"},
        "loadBalancer": {"simple": "ROUND_ROBIN", "localityLbSetting": {"enabled": true}},
    }});
    let before = mesh.opted_in(Kind::DestinationRule, NAME, spec).await;
    // us-west-2 is unhealthy: eu-west-1 takes every client's calls.
    let regions = Regions::start(503, 200).await;
    let outcome = fire(&cluster, checked(&regions)).await;
    assert_eq!(outcome.outcome, OutcomeKind::Applied, "{outcome:#?}");
    let after = dr(&cluster).await;
    assert_eq!(
        after["spec"]["trafficPolicy"],
        json!({
            "tls": {"mode": "ISTIO_MUTUAL"},
            "loadBalancer": {"simple": "ROUND_ROBIN", "localityLbSetting": {
                "enabled": true,
                "distribute": [{"from": "*", "to": {"eu-west-1/*": 100}}],
            }},
        })
    );

    // Revert restores the rule byte for byte.
    let mut revert = events::fresh(REVERT, &cluster.namespace);
    revert["revert"]["kind"] = json!("DestinationRule");
    let outcome = only(&cluster.invoke(failover(&[]), &[], &revert).await).clone();
    assert_eq!(outcome.outcome, OutcomeKind::Applied, "{outcome:#?}");
    let reverted = dr(&cluster).await;
    assert_eq!(spec_text(&reverted), spec_text(&before));
    assert_strict_writes(&cluster.requests());
}

#[tokio::test]
async fn revert_restores_the_weights_byte_for_byte_and_refuses_after_a_foreign_edit() {
    let (cluster, before) = setup("rf-revert", true).await;
    let regions = Regions::start(200, 200).await;
    fail_over(&cluster, &regions).await;
    let outcome = deliver(&cluster, failover(&[]), REVERT).await;
    assert_eq!(outcome.outcome, OutcomeKind::Applied, "{outcome:#?}");
    let reverted = vs(&cluster).await;
    assert_eq!(spec_text(&reverted), spec_text(&before), "byte for byte");
    assert!(
        record(&reverted, "region-failover")
            .expect("record")
            .reverted
            .is_some()
    );

    let vars = NO_COOLDOWN;
    let event = events::fresh(FIRING, &cluster.namespace);
    let report = cluster.invoke(checked(&regions), &vars, &event).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied);
    Mesh::new(&cluster)
        .edit_spec(
            Kind::VirtualService,
            NAME,
            json!({"http": routes(0, 50, 50)}),
        )
        .await;
    let edited = vs(&cluster).await;
    let refused = deliver(&cluster, failover(&[]), REVERT).await;
    assert_eq!(refused.outcome, OutcomeKind::Failed, "{refused:#?}");
    assert!(
        reason(&refused).contains("was edited after the action"),
        "{refused:#?}"
    );
    assert_eq!(vs(&cluster).await, edited);
}
