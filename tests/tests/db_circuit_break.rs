//! db-circuit-break end to end over HTTP against the Kubernetes API (the real control plane
//! scripts/test starts, or a cluster of your own via TEST_KUBECONFIG, behind the test's
//! fault proxy): the breaker, its settings, restore and revert.

use std::collections::HashMap;

use kube::api::{Patch, PatchParams};

use mesh_remediation::remediation::DbCircuitBreak;
use mesh_remediation::remediation::db_circuit_break::CircuitBreaker;
use mesh_remediation::report::OutcomeKind;
use remediation_testkit::cluster::NO_COOLDOWN;
use remediation_testkit::mesh::{
    Kind, Mesh, assert_one_dry_run_patch, assert_one_winner, assert_skipped_saying,
    assert_strict_writes, only, only_of_kind, race, reason, record, spec_text,
};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const FIRING: &str = "db-circuit-break-firing.json";
const RESOLVED: &str = "db-circuit-break-resolved.json";
const REVERT: &str = "db-circuit-break-revert.json";
const DR: &str = "orders-db";

fn breaker(vars: &[(&str, &str)]) -> DbCircuitBreak {
    let map: HashMap<&str, &str> = vars.iter().copied().collect();
    DbCircuitBreak::new(
        CircuitBreaker::from_lookup(|k| map.get(k).map(|v| (*v).to_owned()))
            .expect("valid settings"),
    )
}

fn defaults() -> DbCircuitBreak {
    breaker(&[])
}

/// The demo rule: TLS and subsets the breaker must keep.
fn orders_spec(namespace: &str) -> Value {
    json!({
        "host": format!("orders-db.{namespace}.svc.cluster.local"),
        "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
        "subsets": [{"name": "primary", "labels": {"role": "primary"}}],
    })
}

async fn setup(prefix: &str, opted_in: bool, spec: Option<Value>) -> (TestCluster, Value) {
    let cluster = TestCluster::start(prefix).await;
    let spec = spec.unwrap_or_else(|| orders_spec(&cluster.namespace));
    let before = Mesh::new(&cluster)
        .create(Kind::DestinationRule, DR, opted_in, json!({}), spec)
        .await;
    (cluster, before)
}

async fn rule(cluster: &TestCluster) -> Value {
    Mesh::new(cluster).get(Kind::DestinationRule, DR).await
}

fn breaker_policy() -> Value {
    json!({
        "tls": {"mode": "ISTIO_MUTUAL"},
        "outlierDetection": {
            "consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s",
            "maxEjectionPercent": 50,
        },
        "connectionPool": {
            "tcp": {"maxConnections": 100, "connectTimeout": "2s"},
            "http": {"http1MaxPendingRequests": 64},
        },
        // CB_LOCALITY_LB=preserve: outlier detection does not move traffic to the
        // clients' own regions.
        "loadBalancer": {"localityLbSetting": {"enabled": false}},
    })
}

/// A fact of the real server the functions' writes rest on: by default a field the CRD schema
/// does not list is dropped in silence (the write succeeds without it); under
/// `fieldValidation=Strict`, which the functions ask for, the write is refused and names it.
#[tokio::test]
async fn the_server_drops_an_unknown_field_by_default_and_refuses_it_under_strict() {
    let (cluster, _) = setup("cb-strict", true, None).await;
    let api = Mesh::new(&cluster).api(Kind::DestinationRule);
    let typo = Patch::Merge(json!({"spec": {"trafficPolicy": {
        "outlierDetection": {"consecutiveErrors5xx": 5}}}}));
    let lenient = api
        .patch(DR, &PatchParams::default(), &typo)
        .await
        .expect("the default accepts the write");
    assert_eq!(
        serde_json::to_value(&lenient).expect("json")["spec"]["trafficPolicy"]["outlierDetection"],
        json!({}),
        "stored without the unknown field"
    );
    let strict = api
        .patch(DR, &PatchParams::default().validation_strict(), &typo)
        .await
        .expect_err("Strict refuses the write");
    assert!(
        strict.to_string().contains("consecutiveErrors5xx"),
        "the refusal names the field: {strict}"
    );
}

#[tokio::test]
async fn firing_alert_sets_the_breaker_once_and_keeps_the_rest_of_the_rule() {
    let (cluster, before) = setup("cb-firing", true, None).await;
    let event = events::fresh(FIRING, &cluster.namespace);
    let report = cluster.invoke(defaults(), &[], &event).await;
    let outcome = only_of_kind(&report, OutcomeKind::Applied);
    assert_eq!(
        outcome.target.as_deref(),
        Some(format!("DestinationRule {}/{DR}", cluster.namespace).as_str())
    );
    let after = rule(&cluster).await;
    let mut expected = orders_spec(&cluster.namespace);
    expected["trafficPolicy"] = breaker_policy();
    assert_eq!(after["spec"], expected);
    assert_strict_writes(&cluster.requests());
    let rec = record(&after, "db-circuit-break").expect("record");
    assert_eq!(
        rec.previous,
        Some(json!({"trafficPolicy": before["spec"]["trafficPolicy"]})),
        "the exact previous trafficPolicy"
    );
    assert_eq!(
        rec.applied,
        Some(json!({"trafficPolicy": breaker_policy()}))
    );
    let patch = outcome.patch.as_ref().expect("patch");
    let sent: Vec<&String> = patch["spec"]["trafficPolicy"]
        .as_object()
        .expect("policy patch")
        .keys()
        .collect();
    assert_eq!(
        sent,
        ["connectionPool", "loadBalancer", "outlierDetection"],
        "only the breaker's blocks and the locality switch"
    );
    let events = cluster.events_about(DR).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["action"], "CircuitBreak");
}

#[tokio::test]
async fn settings_come_from_the_environment() {
    let (cluster, _) = setup("cb-settings", true, None).await;
    let custom = breaker(&[
        ("CB_CONSECUTIVE_ERRORS", "3"),
        ("CB_INTERVAL", "5s"),
        ("CB_BASE_EJECTION_TIME", "1m"),
        ("CB_MAX_EJECTION_PERCENT", "34"),
        ("CB_MAX_CONNECTIONS", "20"),
        ("CB_CONNECT_TIMEOUT", "750ms"),
        ("CB_MAX_PENDING_REQUESTS", "8"),
    ]);
    let event = events::fresh(FIRING, &cluster.namespace);
    assert_eq!(
        only(&cluster.invoke(custom, &[], &event).await).outcome,
        OutcomeKind::Applied
    );
    let after = rule(&cluster).await;
    assert_eq!(
        after["spec"]["trafficPolicy"],
        json!({
            "tls": {"mode": "ISTIO_MUTUAL"},
            "outlierDetection": {"consecutive5xxErrors": 3, "interval": "5s",
                                 "baseEjectionTime": "1m", "maxEjectionPercent": 34},
            "connectionPool": {"tcp": {"maxConnections": 20, "connectTimeout": "750ms"},
                               "http": {"http1MaxPendingRequests": 8}},
            "loadBalancer": {"localityLbSetting": {"enabled": false}},
        })
    );
    assert_strict_writes(&cluster.requests());
}

#[tokio::test]
async fn the_same_event_three_times_changes_once() {
    let (cluster, _) = setup("cb-repeat", true, None).await;
    let event = events::fresh(FIRING, &cluster.namespace);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let report = cluster.invoke(defaults(), &[], &event).await;
        seen.push((only(&report).outcome, reason(only(&report)).to_owned()));
    }
    assert_eq!(seen[0].0, OutcomeKind::Applied);
    assert!(
        seen[1..]
            .iter()
            .all(|(k, r)| *k == OutcomeKind::Skipped && r.starts_with("cooldown")),
        "{seen:?}"
    );
    assert_eq!(cluster.events_about(DR).await.len(), 1);
    let report = cluster.invoke(defaults(), &NO_COOLDOWN, &event).await;
    assert!(
        reason(only(&report)).contains("already set as configured"),
        "{report:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_invocations_change_once() {
    let (cluster, _) = setup("cb-race", true, None).await;
    let event = events::fresh(FIRING, &cluster.namespace);
    let (a, b) = race(&cluster, Kind::DestinationRule, DR, defaults, &event).await;
    assert_one_winner(&cluster, &a, &b);
    assert_eq!(cluster.events_about(DR).await.len(), 1);
}

#[tokio::test]
async fn dry_run_stores_nothing_and_reports_the_exact_patch() {
    for (event_name, vars) in events::dry_runs("db-circuit-break") {
        let (cluster, before) = setup("cb-dryrun", true, None).await;
        cluster.clear_requests();

        let event = events::fresh(&event_name, &cluster.namespace);
        let report = cluster.invoke(defaults(), vars, &event).await;
        let outcome = only_of_kind(&report, OutcomeKind::DryRun);
        let patch = outcome.patch.as_ref().expect("patch");
        let mut expected = CircuitBreaker::default().policy_patch();
        expected["loadBalancer"] = json!({"localityLbSetting": {"enabled": false}});
        assert_eq!(patch["spec"]["trafficPolicy"], expected);
        assert_eq!(rule(&cluster).await, before, "nothing stored");
        assert!(cluster.events_about(DR).await.is_empty());
        assert_one_dry_run_patch(&cluster, patch);
    }
}

#[tokio::test]
async fn resolved_alert_restores_the_previous_policy_exactly() {
    let (cluster, before) = setup("cb-resolved", true, None).await;
    let firing = events::fresh(FIRING, &cluster.namespace);
    assert_eq!(
        only(&cluster.invoke(defaults(), &[], &firing).await).outcome,
        OutcomeKind::Applied
    );
    let resolved = events::fresh(RESOLVED, &cluster.namespace);
    let outcome = only(&cluster.invoke(defaults(), &[], &resolved).await).clone();
    assert_eq!(outcome.outcome, OutcomeKind::Applied, "{outcome:#?}");
    let after = rule(&cluster).await;
    assert_eq!(spec_text(&after), spec_text(&before), "byte for byte");
    assert_strict_writes(&cluster.requests());
    let rec = record(&after, "db-circuit-break").expect("record");
    assert!(rec.recovered());
    assert!(
        cluster.has_event(DR, "Restore").await,
        "restore recorded as an Event"
    );
    // Delivered again: nothing more to do.
    let again = only(&cluster.invoke(defaults(), &[], &resolved).await).clone();
    assert_eq!(again.outcome, OutcomeKind::Skipped);
    assert_eq!(
        rule(&cluster).await["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
}

#[tokio::test]
async fn resolved_alert_keeps_the_breaker_when_restore_is_off_or_the_policy_was_edited() {
    let (cluster, _) = setup("cb-keep", true, None).await;
    let firing = events::fresh(FIRING, &cluster.namespace);
    let resolved = events::fresh(RESOLVED, &cluster.namespace);
    let keep = breaker(&[("RESTORE_ON_RESOLVE", "false")]);
    cluster.invoke(defaults(), &[], &firing).await;
    let outcome = only(&cluster.invoke(keep, &[], &resolved).await).clone();
    assert_skipped_saying(&outcome, "recovery recorded");
    assert_eq!(
        rule(&cluster).await["spec"]["trafficPolicy"],
        breaker_policy()
    );

    // Second case: the owner tunes the breaker; resolve leaves the tuning in place.
    let (cluster, _) = setup("cb-edited", true, None).await;
    let firing = events::fresh(FIRING, &cluster.namespace);
    let resolved = events::fresh(RESOLVED, &cluster.namespace);
    cluster.invoke(defaults(), &[], &firing).await;
    Mesh::new(&cluster)
        .edit_spec(
            Kind::DestinationRule,
            DR,
            json!({"trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 400}}}}),
        )
        .await;
    let edited = rule(&cluster).await;
    let outcome = only(&cluster.invoke(defaults(), &[], &resolved).await).clone();
    assert_skipped_saying(&outcome, "was edited after the action");
    assert_eq!(rule(&cluster).await["spec"], edited["spec"]);
}

#[tokio::test]
async fn objects_not_opted_in_are_skipped() {
    let (cluster, before) = setup("cb-optin", false, None).await;
    let event = events::fresh(FIRING, &cluster.namespace);
    let outcome = only(&cluster.invoke(defaults(), &[], &event).await).clone();
    assert_skipped_saying(&outcome, "auto_remediation=active");
    assert_eq!(rule(&cluster).await, before);
}

#[tokio::test]
async fn revert_removes_a_policy_that_was_absent_and_refuses_after_a_foreign_edit() {
    let bare = json!({"host": "orders-db"});
    let (cluster, before) = setup("cb-revert", true, Some(bare)).await;
    let firing = events::fresh(FIRING, &cluster.namespace);
    cluster.invoke(defaults(), &[], &firing).await;
    let changed = rule(&cluster).await;
    assert!(changed["spec"]["trafficPolicy"].is_object());
    assert_eq!(
        record(&changed, "db-circuit-break")
            .expect("record")
            .previous,
        Some(json!({"trafficPolicy": null}))
    );

    let revert = events::fresh(REVERT, &cluster.namespace);
    let report = cluster.invoke(defaults(), &[], &revert).await;
    let outcome = only_of_kind(&report, OutcomeKind::Applied);
    assert_eq!(
        outcome.patch.as_ref().expect("patch")["spec"],
        json!({"trafficPolicy": null}),
        "an absent policy is restored by removing it"
    );
    let reverted = rule(&cluster).await;
    assert_eq!(spec_text(&reverted), spec_text(&before), "byte for byte");
    assert_strict_writes(&cluster.requests());

    // Again, then a foreign edit: refused, edit kept.
    let vars = NO_COOLDOWN;
    assert_eq!(
        only(&cluster.invoke(defaults(), &vars, &firing).await).outcome,
        OutcomeKind::Applied
    );
    Mesh::new(&cluster)
        .edit_spec(
            Kind::DestinationRule,
            DR,
            json!({"trafficPolicy": {"outlierDetection": {"interval": "1s"}}}),
        )
        .await;
    let edited = rule(&cluster).await;
    let refused = only(&cluster.invoke(defaults(), &[], &revert).await).clone();
    assert_eq!(refused.outcome, OutcomeKind::Failed, "{refused:#?}");
    assert!(reason(&refused).contains("was edited after the action"));
    assert_eq!(rule(&cluster).await, edited);
}

#[tokio::test]
async fn revert_through_sns_is_handled_like_a_direct_one() {
    let (cluster, before) = setup("cb-revertsns", true, None).await;
    let firing = events::fresh(FIRING, &cluster.namespace);
    cluster.invoke(defaults(), &[], &firing).await;
    // The revert request as the message of an SNS record, as published to the alert topic.
    let mut event = events::fresh(FIRING, &cluster.namespace);
    let request = events::fresh(REVERT, &cluster.namespace);
    events::set_message(&mut event, &request);
    let report = cluster.invoke(defaults(), &[], &event).await;
    let outcome = only_of_kind(&report, OutcomeKind::Applied);
    assert_eq!(
        outcome.source.message_id.as_deref(),
        Some("c324692e-3640-52fe-b5a8-9b93f7fd71b3")
    );
    assert_eq!(spec_text(&rule(&cluster).await), spec_text(&before));
}
