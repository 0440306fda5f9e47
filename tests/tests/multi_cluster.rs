//! One deployment, several clusters, on real API servers: three control planes of their own
//! (`remediation_testkit::fleet`), each function reaching each cluster with its own group's
//! kubeconfig (RBAC and the admission policies apply in every cluster).
//!
//! - Alerts are routed by their `cluster` label; an alert naming no known cluster fails and
//!   changes nothing anywhere.
//! - A region drain applies to every cluster of the mesh, each with its own record and Event,
//!   with one health check per region for all of them; Istio's compiler shows that clients in
//!   every cluster stop sending traffic to the degraded region. A revert request names one
//!   cluster or all; failback on resolve follows the drain into every cluster.
//! - With one cluster down, the drain still lands in the others and the outcome says which
//!   clusters were drained and which were not.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mesh_remediation::remediation::region_failover::FailoverSettings;
use mesh_remediation::remediation::{LatencyRestart, RegionFailover};
use mesh_remediation::report::{InvocationReport, Outcome, OutcomeKind};
use remediation_testkit::events;
use remediation_testkit::fleet::{Fleet, Member};
use remediation_testkit::istio_oracle::{REGIONS, World, clients, store_service};
use remediation_testkit::mesh::{
    HealthEndpoint, Kind, Mesh, assert_refused_saying, only, reason, record,
};
use serde_json::{Value, json};

const CLUSTERS: [&str; 3] = ["use1", "usw2", "euw1"];
const PORT: u16 = 8080;
const DEGRADED: &str = "us-east-1";
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// The region-failover sample in `status` (`firing`, `resolved`) for `service`, as seen
/// in use1, the cluster in the degraded region.
fn drain_alert(fleet: &Fleet, status: &str, service: &str) -> Value {
    let mut event = events::fresh(&format!("region-failover-{status}.json"), &fleet.namespace);
    let mut message = events::message(&event);
    set_label(&mut message, "service", Some(service));
    set_label(&mut message, "cluster", Some("use1"));
    message["alerts"][0]["fingerprint"] = json!(format!("fp-{service}"));
    events::set_message(&mut event, &message);
    event
}

/// Sets (or, for `None`, removes) a label of the message's alert and its common labels.
fn set_label(message: &mut Value, key: &str, value: Option<&str>) {
    for pointer in ["/alerts/0/labels", "/commonLabels"] {
        let Some(labels) = message.pointer_mut(pointer).and_then(Value::as_object_mut) else {
            continue;
        };
        match value {
            Some(value) => labels.insert(key.to_owned(), json!(value)),
            None => labels.remove(key),
        };
    }
}

/// The latency-restart sample labelled for `cluster` (`None`: no label).
fn restart_alert(fleet: &Fleet, cluster: Option<&str>) -> Value {
    let mut event = events::fresh("latency-restart-firing.json", &fleet.namespace);
    let mut message = events::message(&event);
    set_label(&mut message, "cluster", cluster);
    events::set_message(&mut event, &message);
    event
}

/// The revert sample for the DestinationRule `service`, for `cluster` (`None`: unnamed).
fn revert(fleet: &Fleet, service: &str, cluster: Option<&str>) -> Value {
    let mut event = events::raw("region-failover-revert.json");
    let request = &mut event["revert"];
    request["namespace"] = json!(fleet.namespace);
    request["kind"] = json!("DestinationRule");
    request["name"] = json!(service);
    if let Some(cluster) = cluster {
        request["cluster"] = json!(cluster);
    }
    event
}

/// A service with one pod per region and a DestinationRule that balances by locality (a
/// passive failover), opted in: what every cluster of the mesh holds for it.
async fn regional_service(member: &Member, service: &str) {
    let cluster = &member.cluster;
    store_service(cluster, service, json!({"app": service}), PORT).await;
    Mesh::new(cluster)
        .opted_in(Kind::DestinationRule, service, json!({"host": service, "trafficPolicy": {
                "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"},
                "loadBalancer": {"localityLbSetting": {"enabled": true,
                    "failover": [{"from": "us-east-1", "to": "us-west-2"}]}}}}))
        .await;
}

/// The mesh world of `service` as each cluster sees it: its pods in every region.
fn world(fleet: &Fleet, service: &str) -> World {
    let ns = &fleet.namespace;
    let mut world = World::regional(ns);
    for (i, region) in REGIONS.iter().enumerate() {
        world.pod(
            ns,
            service,
            json!({"app": service}),
            region,
            &format!("10.{}.0.9", i + 1),
        );
    }
    world
}

/// Regions each client of `member` sends `service`'s calls to, by Istio's compiled config.
async fn regions_reached(
    fleet: &Fleet,
    member: &Member,
    service: &str,
) -> BTreeMap<(String, &'static str), BTreeSet<String>> {
    let ns = &fleet.namespace;
    let host = format!("{service}.{ns}.svc.cluster.local");
    let compiled = world(fleet, service)
        .with_stored(&member.cluster)
        .await
        .compile(&clients(ns));
    assert_eq!(compiled.findings(), Vec::<String>::new());
    clients(ns)
        .iter()
        .map(|client| {
            let regions = compiled
                .proxy(client.name)
                .endpoints_receiving(&host, PORT)
                .into_iter()
                .map(|(_, region)| region)
                .collect();
            (
                (format!("{}/{}", member.name, client.name), client.region),
                regions,
            )
        })
        .collect()
}

/// No client reaches the degraded region; a client in a healthy region keeps its own region
/// (outlier detection turns on Istio's locality preference, which the drain keeps), and the
/// degraded region's clients go to the healthy ones.
fn healthy_regions_only(reached: &BTreeMap<(String, &'static str), BTreeSet<String>>) {
    let healthy = BTreeSet::from(["eu-west-1".to_owned(), "us-west-2".to_owned()]);
    for ((client, region), regions) in reached {
        assert!(
            !regions.is_empty() && regions.is_subset(&healthy),
            "{client}: only the healthy regions take its calls: {regions:?}"
        );
        if *region != DEGRADED {
            assert_eq!(
                regions,
                &BTreeSet::from([region.to_string()]),
                "{client}: a healthy region's clients stay in their region"
            );
        }
    }
}

async fn rule(member: &Member, name: &str) -> Value {
    Mesh::new(&member.cluster)
        .get(Kind::DestinationRule, name)
        .await
}

fn clusters_of(outcome: &Outcome) -> BTreeMap<String, OutcomeKind> {
    outcome.clusters.clone()
}

async fn restarted(member: &Member) -> bool {
    member
        .cluster
        .deployment("checkout-v2")
        .await
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .is_some_and(|a| a.contains_key(RESTARTED_AT))
}

/// Asserts the Deployment was restarted in the cluster `name` and in no other.
async fn assert_restarted_only_in(fleet: &Fleet, name: &str) {
    for member in &fleet.members {
        assert_eq!(
            restarted(member).await,
            member.name == name,
            "{}",
            member.name
        );
    }
}

/// Health endpoints for the two healthy regions, and region-failover checking them.
struct Health {
    west: HealthEndpoint,
    eu: HealthEndpoint,
    failback_on_resolve: bool,
}

impl Health {
    async fn start(failback_on_resolve: bool) -> Health {
        Health {
            west: HealthEndpoint::start(200).await,
            eu: HealthEndpoint::start(200).await,
            failback_on_resolve,
        }
    }

    /// Region failover checking these endpoints, invoked on every cluster of the fleet.
    async fn invoke(&self, fleet: &Fleet, event: &Value) -> InvocationReport {
        fleet.invoke(self.failover(), event).await
    }

    fn failover(&self) -> RegionFailover {
        let urls = format!("us-west-2={},eu-west-1={}", self.west.url(), self.eu.url());
        let failback = self.failback_on_resolve.to_string();
        let vars: HashMap<&str, &str> = HashMap::from([
            ("REGION_HEALTH_URLS", urls.as_str()),
            ("FAILBACK_ON_RESOLVE", failback.as_str()),
        ]);
        RegionFailover::new(
            FailoverSettings::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned()))
                .expect("settings"),
        )
    }
}

/// Each cluster's outcome when everything but the stopped euw1 was done.
fn drained_but_euw1() -> BTreeMap<String, OutcomeKind> {
    BTreeMap::from([
        ("euw1".to_owned(), OutcomeKind::Failed),
        ("use1".to_owned(), OutcomeKind::Applied),
        ("usw2".to_owned(), OutcomeKind::Applied),
    ])
}

fn all_applied(report: &InvocationReport) -> &Outcome {
    let outcome = only(report);
    assert_eq!(outcome.outcome, OutcomeKind::Applied, "{report:#?}");
    assert_eq!(
        clusters_of(outcome),
        CLUSTERS
            .iter()
            .map(|c| ((*c).to_owned(), OutcomeKind::Applied))
            .collect(),
        "{outcome:#?}"
    );
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_go_to_their_cluster_and_a_region_is_drained_in_every_cluster() {
    let fleet = Fleet::start("mc-drain", &CLUSTERS).await;
    for member in &fleet.members {
        member.cluster.create_deployment("checkout-v2", true).await;
        regional_service(member, "frontend").await;
    }

    // An alert acts in the cluster its `cluster` label names, and nowhere else.
    let report = fleet
        .invoke(LatencyRestart, &restart_alert(&fleet, Some("usw2")))
        .await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Applied, "{report:#?}");
    assert_eq!(
        clusters_of(outcome),
        BTreeMap::from([("usw2".to_owned(), OutcomeKind::Applied)])
    );
    let target = outcome.target.as_deref().unwrap_or_default();
    assert!(target.starts_with("usw2: Deployment "), "{outcome:#?}");
    assert_restarted_only_in(&fleet, "usw2").await;
    // No known cluster: failed, not retried, nothing changed anywhere.
    for cluster in [None, Some("apse1")] {
        let report = fleet
            .invoke(LatencyRestart, &restart_alert(&fleet, cluster))
            .await;
        assert_refused_saying(&report, &["unknown cluster", "use1, usw2, euw1"]);
    }
    assert_restarted_only_in(&fleet, "usw2").await;

    // Before: a passive failover, so us-east-1 clients keep calling us-east-1.
    let mut before = BTreeMap::new();
    for member in &fleet.members {
        let reached = regions_reached(&fleet, member, "frontend").await;
        let east = (format!("{}/same-ns-east", member.name), DEGRADED);
        assert!(reached[&east].contains(DEGRADED), "{reached:#?}");
        before.insert(
            member.name.clone(),
            rule(member, "frontend").await["spec"].clone(),
        );
    }

    // One alert, seen in use1, drains us-east-1 in every cluster of the mesh.
    let health = Health::start(true).await;
    let report = health
        .invoke(&fleet, &drain_alert(&fleet, "firing", "frontend"))
        .await;
    let outcome = all_applied(&report);
    for name in CLUSTERS {
        assert!(
            outcome
                .target
                .as_deref()
                .is_some_and(|t| t.contains(&format!("{name}: DestinationRule"))),
            "{outcome:#?}"
        );
    }
    assert_eq!(
        (health.west.hits(), health.eu.hits()),
        (1, 1),
        "each region is checked once per invocation, not once per cluster"
    );
    for member in &fleet.members {
        let stored = rule(member, "frontend").await;
        let recorded = record(&stored, "region-failover").expect("the action record");
        assert_eq!(
            recorded.request_id.as_deref().map(str::is_empty),
            Some(false)
        );
        let events = member.cluster.events_about("frontend").await;
        assert_eq!(events.len(), 1, "{}: one Event: {events:#?}", member.name);
        healthy_regions_only(&regions_reached(&fleet, member, "frontend").await);
    }

    // A revert request names a cluster, or all; one that names none is refused.
    let unnamed = health
        .invoke(&fleet, &revert(&fleet, "frontend", None))
        .await;
    assert_eq!(only(&unnamed).outcome, OutcomeKind::Failed, "{unnamed:#?}");
    assert!(reason(only(&unnamed)).contains("\"all\""), "{unnamed:#?}");
    let reverted = health
        .invoke(&fleet, &revert(&fleet, "frontend", Some("usw2")))
        .await;
    assert_eq!(
        only(&reverted).outcome,
        OutcomeKind::Applied,
        "{reverted:#?}"
    );
    assert_eq!(
        rule(fleet.member("usw2"), "frontend").await["spec"],
        before["usw2"]
    );
    healthy_regions_only(&regions_reached(&fleet, fleet.member("use1"), "frontend").await);

    // The alert resolves: failback restores the rule in every cluster it drained.
    let report = health
        .invoke(&fleet, &drain_alert(&fleet, "resolved", "frontend"))
        .await;
    assert_ne!(only(&report).outcome, OutcomeKind::Failed, "{report:#?}");
    for member in &fleet.members {
        assert_eq!(
            rule(member, "frontend").await["spec"],
            before[&member.name],
            "{}: {report:#?}",
            member.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_down_during_a_drain_does_not_stop_the_others() {
    const SERVICES: [&str; 2] = ["checkout", "cart"];
    let mut fleet = Fleet::start("mc-down", &CLUSTERS).await;
    for member in &fleet.members {
        for service in SERVICES {
            regional_service(member, service).await;
        }
    }
    let mut before = BTreeMap::new();
    for name in ["use1", "usw2"] {
        let spec = rule(fleet.member(name), "checkout").await["spec"].clone();
        before.insert(name, spec);
    }
    fleet.stop("euw1");

    // One message, two services failing over from the same region.
    let health = Health::start(false).await;
    let mut firing = drain_alert(&fleet, "firing", "checkout");
    let mut message = events::message(&firing);
    let mut cart = message["alerts"][0].clone();
    cart["labels"]["service"] = json!("cart");
    cart["fingerprint"] = json!("fp-cart");
    message["alerts"].as_array_mut().expect("alerts").push(cart);
    if let Some(common) = message["commonLabels"].as_object_mut() {
        common.remove("service");
    }
    events::set_message(&mut firing, &message);

    let report = health.invoke(&fleet, &firing).await;
    assert_eq!(report.outcomes.len(), 2, "{report:#?}");
    assert_eq!(
        (health.west.hits(), health.eu.hits()),
        (1, 1),
        "one round of health checks for both alerts and all clusters"
    );
    for (outcome, service) in report.outcomes.iter().zip(SERVICES) {
        assert_eq!(outcome.outcome, OutcomeKind::Failed, "{report:#?}");
        assert!(
            outcome.retryable,
            "Lambda retries the cluster that was down: {outcome:#?}"
        );
        assert!(outcome.needs_a_report());
        assert_eq!(
            clusters_of(outcome),
            drained_but_euw1(),
            "the outcome says which clusters were drained: {outcome:#?}"
        );
        assert!(
            reason(outcome).contains("euw1: DestinationRule"),
            "{outcome:#?}"
        );
        for name in ["use1", "usw2"] {
            let member = fleet.member(name);
            assert!(record(&rule(member, service).await, "region-failover").is_some());
            healthy_regions_only(&regions_reached(&fleet, member, service).await);
        }
    }

    // Lambda's retry finds the drained clusters done (cooldown) and fails only the one
    // still down: nothing is drained twice.
    let retry = health.invoke(&fleet, &firing).await;
    for outcome in &retry.outcomes {
        assert_eq!(outcome.outcome, OutcomeKind::Failed, "{retry:#?}");
        assert_eq!(
            outcome.clusters["use1"],
            OutcomeKind::Skipped,
            "{outcome:#?}"
        );
        assert_eq!(
            outcome.clusters["usw2"],
            OutcomeKind::Skipped,
            "{outcome:#?}"
        );
    }
    for name in ["use1", "usw2"] {
        for service in SERVICES {
            let events = fleet.member(name).cluster.events_about(service).await;
            assert_eq!(events.len(), 1, "{name} {service}: {events:#?}");
        }
    }

    // A revert for all clusters restores every reachable one and fails the one down.
    let all = health
        .invoke(&fleet, &revert(&fleet, "checkout", Some("all")))
        .await;
    let outcome = only(&all);
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{all:#?}");
    assert_eq!(clusters_of(outcome), drained_but_euw1(), "{outcome:#?}");
    for (name, spec) in &before {
        assert_eq!(
            &rule(fleet.member(name), "checkout").await["spec"],
            spec,
            "{name}"
        );
    }
}
