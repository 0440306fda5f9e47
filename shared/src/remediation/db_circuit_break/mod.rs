//! `db-circuit-break`: put a circuit breaker in front of a database whose client timeouts
//! alert fires.
//!
//! The alert names the database's mesh host in `db_host` (a Service name in the alert's
//! namespace, or a fully qualified host: another namespace's Service, or a `ServiceEntry`
//! for a managed database). Targets every DestinationRule in the alert's namespace that is
//! labelled `auto_remediation=active` and whose `spec.host` is that host (Istio's host
//! rules: only a dot-less name is short). The breaker throttles the calls to the database,
//! not the calling application's own callers.
//!
//! Which rule a client uses is Istio's decision ([`super::resolution`]): the functions read
//! every DestinationRule in the cluster and plan for every class of client (each namespace,
//! each `workloadSelector`, the service's and the root namespace, any other). The breaker is
//! written where those clients read it: the top level of a rule only where it is the one
//! whose policy Istio keeps (the oldest that sets one), a subset only where its definition
//! is the one used. When some clients would not get the breaker (their rule is in another
//! namespace, not opted in, shadowed, or they have none), or writing it would displace
//! another rule's policy, nothing changes and the alert fails naming the clients and the rule.
//!
//! The breaker is the `connectionPool` limits (`tcp.maxConnections`, `tcp.connectTimeout`,
//! `http.http1MaxPendingRequests`) and `outlierDetection` (`consecutive5xxErrors` and the
//! ejection settings). Istio takes a subset's own block instead of the top level's
//! (`MergeTrafficPolicy`), and a `portLevelSettings` entry for a port inherits nothing at
//! all (`GetPortLevelTrafficPolicy`), so the breaker is set at the top level, in every
//! `portLevelSettings` entry (top level and subsets) and in every block a subset sets
//! itself; everything else in the rule is kept, and a limit the rule already sets lower
//! stays. For a database with one
//! endpoint the pool limits are what bite: Envoy's panic threshold keeps sending to a lone
//! ejected endpoint.
//!
//! Outlier detection switches on Istio's locality-prioritised load balancing for the host
//! (clients prefer endpoints in their own region). `CB_LOCALITY_LB=preserve` (the default)
//! keeps the spread as it was by setting `loadBalancer.localityLbSetting.enabled: false`
//! where the rule has no locality setting of its own and no outlier detection yet (with it,
//! the preference already acts); `prioritize` lets it happen. The
//! outcome says which.
//!
//! Only `consecutive5xxErrors` counts errors: for HTTP it covers every 5xx (gateway
//! errors included) and for opaque TCP (how databases are meshed) connect timeouts and
//! connection failures count towards it.
//!
//! The record keeps the exact previous `trafficPolicy` (and `subsets`, when they change).
//! A resolved alert restores them exactly when `RESTORE_ON_RESOLVE` is on (the default),
//! unless someone edited them since; a revert request does the same on demand.

use futures::future::BoxFuture;
use kube::api::{ApiResource, DynamicObject};

use super::istio;
use super::istio::restore::{self, OnEdit};
use super::object::name_of;
use super::resolution::Resolver;
use super::resolution::hosts;
use super::{Locator, Plan, PlanContext, Refusal, Remediation};
use crate::cluster::record::ActionRecord;
use crate::config::Config;
use crate::error::Result;
use crate::intake::AlertInput;

mod plan;
mod settings;

pub use super::resolution::placement::{Outlook, Scope, Writes};
pub use settings::{CircuitBreaker, LocalityLb};

/// The alert label naming the database's mesh host.
pub const DB_HOST_LABEL: &str = "db_host";

/// Enables circuit breaking on the DestinationRule(s) of the alert's `db_host`.
#[derive(Debug, Clone, Default)]
pub struct DbCircuitBreak {
    /// The settings in force.
    pub settings: CircuitBreaker,
}

/// What the cluster holds about the database host, read once per alert and cluster.
#[derive(Debug, Clone, Default)]
pub struct BreakerFacts {
    /// Every DestinationRule in the cluster.
    pub rules: Vec<DynamicObject>,
    /// The namespace of the host's Service, or of the oldest ServiceEntry declaring it.
    pub service_namespace: Option<String>,
}

impl DbCircuitBreak {
    /// With settings from the process environment.
    pub fn from_env() -> Result<Self> {
        CircuitBreaker::from_env().map(Self::new)
    }

    /// With these settings.
    pub fn new(settings: CircuitBreaker) -> Self {
        DbCircuitBreak { settings }
    }

    /// Plans the circuit breaker for one DestinationRule on its own, at every level; pure.
    pub fn plan_circuit_break(&self, object: &DynamicObject) -> Result<Plan, Refusal> {
        plan::plan_rule(&self.settings, object, &Writes::all(object))
    }

    /// Plans the breaker for `object` so that every client of the host takes it; pure.
    /// `facts.rules` may be older than `object`, which replaces its own entry.
    pub fn plan_for_clients(
        &self,
        object: &DynamicObject,
        facts: &BreakerFacts,
        scope: &Scope<'_>,
    ) -> Result<Plan, Refusal> {
        let me = name_of(object);
        let mut rules: Vec<DynamicObject> = facts
            .rules
            .iter()
            .filter(|r| name_of(r) != me)
            .cloned()
            .collect();
        rules.push(object.clone());
        let outlook = super::resolution::placement::outlook(&self.settings, &rules, scope);
        if let Some(why) = outlook.refusal("the breaker") {
            return Err(Refusal::Fail(why));
        }
        match outlook.writes.get(&me) {
            Some(writes) => plan::plan_rule(&self.settings, object, writes),
            None => Err(Refusal::Skip(format!(
                "no client takes this rule's policy for {}: Istio merges it into an older rule or another rule applies (the breaker goes where clients read it)",
                scope.host
            ))),
        }
    }
}

fn db_host(input: &AlertInput) -> String {
    hosts::alert_host(
        input.alert.label(DB_HOST_LABEL).unwrap_or_default(),
        &input.namespace,
    )
}

impl Remediation for DbCircuitBreak {
    type Facts = BreakerFacts;
    type Observed = ();

    fn name(&self) -> &'static str {
        "db-circuit-break"
    }

    fn locate(&self, input: &AlertInput, config: &Config) -> Result<Locator, String> {
        istio::host_label(input, DB_HOST_LABEL, self.name()).map_err(|why| {
            format!(
                "{why}: the database's mesh host, a Service name or a ServiceEntry host (the shipped DatabaseTimeoutsHigh rule copies it from the counters' `db` label)"
            )
        })?;
        Ok(istio::opted_in_objects(
            istio::destination_rule(config),
            input,
            DB_HOST_LABEL,
        ))
    }

    fn prepare<'a>(
        &'a self,
        input: &'a AlertInput,
        client: &'a kube::Client,
        config: &'a Config,
        _observed: &'a (),
    ) -> BoxFuture<'a, Result<BreakerFacts>> {
        Box::pin(async move {
            let host = db_host(input);
            let (rule_kind, entry_kind) = (
                istio::destination_rule(config),
                istio::service_entry(config),
            );
            let (rules, entries) = futures::try_join!(
                istio::list_everywhere(client, &rule_kind),
                istio::list_everywhere(client, &entry_kind),
            )?;
            let service_namespace = match Resolver::service_namespace_of(&host) {
                Some(ns) => Some(ns.to_owned()),
                None => {
                    let mut declaring: Vec<&DynamicObject> = entries
                        .iter()
                        .filter(|e| hosts::hosts(e).contains(&host))
                        .collect();
                    declaring.sort_by_key(|e| {
                        (
                            e.metadata.creation_timestamp.as_ref().map(|t| t.0),
                            name_of(e),
                        )
                    });
                    declaring.first().map(|e| istio::namespace_of(e).to_owned())
                }
            };
            Ok(BreakerFacts {
                rules,
                service_namespace,
            })
        })
    }

    fn selects(&self, input: &AlertInput, object: &DynamicObject) -> bool {
        hosts::rule_host_is(object, &db_host(input))
    }

    fn plan(
        &self,
        input: &AlertInput,
        object: &DynamicObject,
        context: PlanContext<'_, BreakerFacts>,
    ) -> Result<Plan, Refusal> {
        let host = db_host(input);
        let scope = Scope {
            host: &host,
            namespace: &input.namespace,
            service_namespace: context.facts.service_namespace.as_deref(),
            root: &context.config.istio_root_namespace,
            changeable: &context.config.policy.namespaces(),
        };
        self.plan_for_clients(object, context.facts, &scope)
    }

    fn plan_resolved(
        &self,
        _input: &AlertInput,
        object: &DynamicObject,
        record: &ActionRecord,
        _context: PlanContext<'_>,
    ) -> Option<Result<Plan, Refusal>> {
        self.settings
            .restore_on_resolve
            .then(|| restore::plan_restore(object, record, self.name(), "Restore", OnEdit::Hold))
    }

    fn revertible(&self, config: &Config) -> Vec<ApiResource> {
        vec![istio::destination_rule(config)]
    }

    fn plan_revert(&self, object: &DynamicObject, record: &ActionRecord) -> Result<Plan, Refusal> {
        restore::plan_restore(object, record, self.name(), "Revert", OnEdit::Fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn rule(spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": spec
        }))
        .expect("object")
    }

    fn breaker() -> Value {
        json!({
            "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s",
                                 "baseEjectionTime": "30s", "maxEjectionPercent": 50},
            "connectionPool": {"tcp": {"maxConnections": 100, "connectTimeout": "2s"},
                               "http": {"http1MaxPendingRequests": 64}},
        })
    }

    #[test]
    fn the_patch_sets_the_breaker_keeps_the_rest_and_preserves_the_spread() {
        let object = rule(json!({
            "host": "orders",
            "trafficPolicy": {
                "tls": {"mode": "ISTIO_MUTUAL"},
                "outlierDetection": {"consecutiveGatewayErrors": 2},
            }
        }));
        let plan = DbCircuitBreak::default()
            .plan_circuit_break(&object)
            .expect("plan");
        let mut applied = breaker();
        applied["tls"] = json!({"mode": "ISTIO_MUTUAL"});
        applied["outlierDetection"]["consecutiveGatewayErrors"] = json!(2);
        // Outlier detection was on already, so Istio's locality preference already acted:
        // nothing to keep off.
        assert_eq!(plan.applied, Some(json!({"trafficPolicy": applied})));
        let fresh = DbCircuitBreak::default()
            .plan_circuit_break(&rule(
                json!({"host": "orders", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
            ))
            .expect("plan");
        assert_eq!(
            fresh.applied.expect("applied")["trafficPolicy"]["loadBalancer"],
            json!({"localityLbSetting": {"enabled": false}}),
            "without outlier detection before, preserve keeps the locality preference off"
        );
        assert_eq!(
            plan.previous,
            Some(json!({"trafficPolicy": object.data["spec"]["trafficPolicy"]})),
            "subsets did not change, so they are not recorded"
        );
        let stored = istio::merged(&object.data["spec"], &plan.patch["spec"]);
        assert_eq!(stored["trafficPolicy"], applied);
        assert!(
            plan.summary.contains("CB_LOCALITY_LB=preserve"),
            "{}",
            plan.summary
        );
    }

    #[test]
    fn a_subset_with_its_own_outlier_detection_keeps_its_preference_on_a_port_switched_off() {
        // Found by the generated meshes: on port 5432 the subset's cluster starts from the
        // top level's port entry (Istio's `MergeSubsetTrafficPolicy`), whose preference
        // `preserve` switches off; the subset's own outlier detection had it on.
        let object = rule(json!({"host": "orders",
            "trafficPolicy": {
                "outlierDetection": {"consecutive5xxErrors": 6},
                "portLevelSettings": [
                    {"port": {"number": 5432}, "connectionPool": {"tcp": {"maxConnections": 5}}}]},
            "subsets": [{"name": "replicas", "labels": {"role": "replica"},
                "trafficPolicy": {"outlierDetection": {"interval": "1s"}}}]}));
        let plan = DbCircuitBreak::default()
            .plan_circuit_break(&object)
            .expect("plan");
        let applied = plan.applied.expect("applied");
        assert_eq!(
            applied["trafficPolicy"]["portLevelSettings"][0]["loadBalancer"],
            json!({"localityLbSetting": {"enabled": false}}),
            "{applied}"
        );
        assert_eq!(
            applied["subsets"][0]["trafficPolicy"]["loadBalancer"],
            json!({"localityLbSetting": {"enabled": true}}),
            "{applied}"
        );
    }

    #[test]
    fn absent_policy_is_recorded_as_null_and_a_set_breaker_is_skipped() {
        let plan = DbCircuitBreak::default()
            .plan_circuit_break(&rule(json!({"host": "orders"})))
            .expect("plan");
        assert_eq!(plan.previous, Some(json!({"trafficPolicy": null})));
        let applied = plan.applied.expect("applied")["trafficPolicy"].clone();
        let again = rule(json!({"host": "orders", "trafficPolicy": applied}));
        assert_eq!(
            DbCircuitBreak::default().plan_circuit_break(&again),
            Err(Refusal::Skip(
                "circuit breaker already set as configured".into()
            ))
        );
    }

    #[test]
    fn every_level_istio_would_take_instead_gets_the_breaker() {
        let object = rule(json!({"host": "orders",
            "trafficPolicy": {"portLevelSettings": [
                {"port": {"number": 5432}, "connectionPool": {"tcp": {"maxConnections": 5}}},
                {"port": {"number": 9187}, "tls": {"mode": "DISABLE"}}]},
            "subsets": [
                {"name": "primary", "labels": {"role": "primary"},
                 "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 500}},
                                   "loadBalancer": {"simple": "LEAST_REQUEST"}}},
                {"name": "replica", "labels": {"role": "replica"}}]}));
        let plan = DbCircuitBreak::default()
            .plan_circuit_break(&object)
            .expect("plan");
        let applied = plan.applied.clone().expect("applied");
        let ports = &applied["trafficPolicy"]["portLevelSettings"];
        // A lower limit the owner set stays; the other fields are the breaker's.
        assert_eq!(ports[0]["connectionPool"]["tcp"]["maxConnections"], 5);
        assert_eq!(
            ports[0]["connectionPool"]["http"]["http1MaxPendingRequests"],
            64
        );
        assert_eq!(
            ports[0]["outlierDetection"],
            breaker()["outlierDetection"],
            "a port inherits nothing from the top level"
        );
        assert_eq!(ports[1]["tls"], json!({"mode": "DISABLE"}));
        assert_eq!(ports[1]["connectionPool"], breaker()["connectionPool"]);
        assert_eq!(
            ports[1]["loadBalancer"],
            json!({"localityLbSetting": {"enabled": false}})
        );
        let primary = &applied["subsets"][0]["trafficPolicy"];
        assert_eq!(primary["connectionPool"]["http"]["http2MaxRequests"], 500);
        assert_eq!(primary["connectionPool"]["tcp"]["maxConnections"], 100);
        assert_eq!(
            primary["loadBalancer"],
            json!({"simple": "LEAST_REQUEST", "localityLbSetting": {"enabled": false}})
        );
        assert_eq!(applied["subsets"][1], object.data["spec"]["subsets"][1]);
        assert_eq!(
            plan.previous.expect("previous")["subsets"],
            object.data["spec"]["subsets"]
        );
        assert!(plan.summary.contains("subset primary"), "{}", plan.summary);
    }

    #[test]
    fn prioritize_lets_outlier_detection_prefer_the_clients_region() {
        let settings =
            CircuitBreaker::from_lookup(|k| (k == "CB_LOCALITY_LB").then(|| "prioritize".into()))
                .expect("valid");
        let plan = DbCircuitBreak::new(settings)
            .plan_circuit_break(&rule(json!({"host": "orders"})))
            .expect("plan");
        assert_eq!(plan.applied, Some(json!({"trafficPolicy": breaker()})));
        assert!(
            plan.summary
                .contains("prefer endpoints in their own region"),
            "{}",
            plan.summary
        );
    }
}
