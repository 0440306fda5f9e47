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
//! where the rule has no locality setting of its own; `prioritize` lets it happen. The
//! outcome says which.
//!
//! Only `consecutive5xxErrors` counts errors: for HTTP it covers every 5xx (gateway
//! errors included) and for opaque TCP (how databases are meshed) connect timeouts and
//! connection failures count towards it.
//!
//! The record keeps the exact previous `trafficPolicy` (and `subsets`, when they change).
//! A resolved alert restores them exactly when `RESTORE_ON_RESOLVE` is on (the default),
//! unless someone edited them since; a revert request does the same on demand.

use kube::api::{ApiResource, DynamicObject};
use serde_json::{Value, json};

use super::hosts::{self, PolicyLevel};
use super::istio::{self, OnEdit};
use super::{Locator, Plan, PlanContext, Refusal, Remediation};
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::intake::AlertInput;
use crate::record::ActionRecord;

/// The alert label naming the database's mesh host.
pub const DB_HOST_LABEL: &str = "db_host";

/// Circuit-breaker settings, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// `CB_CONSECUTIVE_ERRORS` -> `outlierDetection.consecutive5xxErrors` (default 5).
    pub consecutive_errors: u32,
    /// `CB_INTERVAL` -> `outlierDetection.interval` (default `10s`).
    pub interval: String,
    /// `CB_BASE_EJECTION_TIME` -> `outlierDetection.baseEjectionTime` (default `30s`).
    pub base_ejection_time: String,
    /// `CB_MAX_EJECTION_PERCENT` -> `outlierDetection.maxEjectionPercent` (default 50).
    pub max_ejection_percent: u32,
    /// `CB_MAX_CONNECTIONS` -> `connectionPool.tcp.maxConnections` (default 100).
    pub max_connections: u32,
    /// `CB_CONNECT_TIMEOUT` -> `connectionPool.tcp.connectTimeout` (default `2s`).
    pub connect_timeout: String,
    /// `CB_MAX_PENDING_REQUESTS` -> `connectionPool.http.http1MaxPendingRequests` (default 64).
    pub max_pending_requests: u32,
    /// `RESTORE_ON_RESOLVE`: a resolved alert restores the previous policy (default true).
    pub restore_on_resolve: bool,
    /// `CB_LOCALITY_LB`: what happens to locality-prioritised load balancing, which outlier
    /// detection switches on (default [`LocalityLb::Preserve`]).
    pub locality_lb: LocalityLb,
}

/// `CB_LOCALITY_LB`: whether the breaker may change where traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LocalityLb {
    /// `preserve`: turn locality-prioritised load balancing off where the rule has no
    /// locality setting, so the spread across regions stays as it was.
    #[default]
    Preserve,
    /// `prioritize`: let outlier detection switch it on (clients prefer their region).
    Prioritize,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            consecutive_errors: 5,
            interval: "10s".into(),
            base_ejection_time: "30s".into(),
            max_ejection_percent: 50,
            max_connections: 100,
            connect_timeout: "2s".into(),
            max_pending_requests: 64,
            restore_on_resolve: true,
            locality_lb: LocalityLb::Preserve,
        }
    }
}

/// The largest value an Istio `int32` field takes.
const INT32_MAX: u32 = i32::MAX as u32;

impl CircuitBreaker {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup`; a bad value names its variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = config::trimmed(lookup);
        let defaults = CircuitBreaker::default();
        let duration = |var: &'static str, default: String| match get(var) {
            None => Ok(default),
            Some(raw) => istio::duration_setting(var, &raw),
        };
        let bounded = |var: &'static str, default: u32, min: u32, max: u32| {
            let value = config::number(&get, var, default, min)?;
            if value > max {
                return Err(Error::Config {
                    var,
                    message: format!("{value} is above the maximum {max}"),
                });
            }
            Ok(value)
        };
        Ok(CircuitBreaker {
            consecutive_errors: bounded(
                "CB_CONSECUTIVE_ERRORS",
                defaults.consecutive_errors,
                1,
                INT32_MAX,
            )?,
            interval: duration("CB_INTERVAL", defaults.interval)?,
            base_ejection_time: duration("CB_BASE_EJECTION_TIME", defaults.base_ejection_time)?,
            max_ejection_percent: bounded(
                "CB_MAX_EJECTION_PERCENT",
                defaults.max_ejection_percent,
                1,
                100,
            )?,
            max_connections: bounded("CB_MAX_CONNECTIONS", defaults.max_connections, 1, INT32_MAX)?,
            connect_timeout: duration("CB_CONNECT_TIMEOUT", defaults.connect_timeout)?,
            max_pending_requests: bounded(
                "CB_MAX_PENDING_REQUESTS",
                defaults.max_pending_requests,
                1,
                INT32_MAX,
            )?,
            restore_on_resolve: config::boolean(
                &get,
                "RESTORE_ON_RESOLVE",
                defaults.restore_on_resolve,
            )?,
            locality_lb: match get("CB_LOCALITY_LB").as_deref() {
                None | Some("preserve") => LocalityLb::Preserve,
                Some("prioritize") => LocalityLb::Prioritize,
                Some(other) => {
                    return Err(Error::Config {
                        var: "CB_LOCALITY_LB",
                        message: format!(
                            "\"{}\" is neither preserve nor prioritize",
                            crate::names::printable(other)
                        ),
                    });
                }
            },
        })
    }

    /// The `trafficPolicy` merge patch these settings make.
    pub fn policy_patch(&self) -> Value {
        json!({
            "outlierDetection": {
                "consecutive5xxErrors": self.consecutive_errors,
                "interval": self.interval,
                "baseEjectionTime": self.base_ejection_time,
                "maxEjectionPercent": self.max_ejection_percent,
            },
            "connectionPool": {
                "tcp": {
                    "maxConnections": self.max_connections,
                    "connectTimeout": self.connect_timeout,
                },
                "http": { "http1MaxPendingRequests": self.max_pending_requests },
            },
        })
    }

    fn summary(&self) -> String {
        format!(
            "circuit breaker on: outlierDetection consecutive5xxErrors={} interval={} baseEjectionTime={} maxEjectionPercent={}; \
             connectionPool tcp.maxConnections={} tcp.connectTimeout={} http.http1MaxPendingRequests={}",
            self.consecutive_errors,
            self.interval,
            self.base_ejection_time,
            self.max_ejection_percent,
            self.max_connections,
            self.connect_timeout,
            self.max_pending_requests
        )
    }
}

/// Enables circuit breaking on the DestinationRule(s) of the alert's `service`.
#[derive(Debug, Clone, Default)]
pub struct DbCircuitBreak {
    /// The settings in force.
    pub settings: CircuitBreaker,
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

    /// Plans the circuit breaker for one DestinationRule; pure.
    pub fn plan_circuit_break(&self, object: &DynamicObject) -> Result<Plan, Refusal> {
        let previous = istio::fragment(object, ["trafficPolicy", "subsets"]);
        let mut after = previous.clone();
        let mut levels = Vec::new();
        hosts::for_each_policy_level(&mut after, |policy, level, name| {
            let before = policy.clone();
            // A subset's policy overrides block by block: only the blocks it sets need the
            // breaker. The top level and port entries (which inherit nothing) get all of it.
            self.set_blocks(policy, level != PolicyLevel::Subset);
            if level == PolicyLevel::Top || *policy != before {
                levels.push(name.to_owned());
            }
        });
        if after == previous {
            return Err(Refusal::Skip(
                "circuit breaker already set as configured".into(),
            ));
        }
        // Record only what changes: `subsets` is left out when no subset changes.
        let (previous, applied) = hosts::recorded_policy(&previous, &after);
        let mut summary = self.settings.summary();
        if levels.len() > 1 {
            summary.push_str(&format!(
                "; also where Istio would replace them: {}",
                levels[1..].join(", ")
            ));
        }
        summary.push_str(match self.settings.locality_lb {
            LocalityLb::Preserve => {
                "; locality-prioritised load balancing kept off where the rule did not set it (CB_LOCALITY_LB=preserve), so traffic spreads across regions as before"
            }
            LocalityLb::Prioritize => {
                "; outlier detection switches on locality-prioritised load balancing: clients now prefer endpoints in their own region (CB_LOCALITY_LB=prioritize)"
            }
        });
        Ok(Plan {
            patch: json!({ "spec": istio::merge_diff(&previous, &applied) }),
            summary,
            action: "CircuitBreak",
            previous: Some(previous),
            applied: Some(applied),
        })
    }

    /// `whole`: every block (a level that inherits nothing); else only the blocks set.
    fn set_blocks(&self, level: &mut Value, whole: bool) {
        let wanted = self.settings.policy_patch();
        for block in ["connectionPool", "outlierDetection"] {
            if whole || level.get(block).is_some() {
                let current = level.get(block).cloned().unwrap_or_else(|| json!({}));
                level[block] = keep_lower_limits(&current, &wanted[block]);
            }
        }
        let has_locality = level.pointer("/loadBalancer/localityLbSetting").is_some();
        if self.settings.locality_lb == LocalityLb::Preserve
            && !has_locality
            && (whole || level.get("loadBalancer").is_some())
        {
            level["loadBalancer"]["localityLbSetting"] = json!({"enabled": false});
        }
    }
}

/// Limits a rule already sets lower than the breaker's stay: the breaker never loosens.
const LIMITS: [&str; 3] = [
    "/tcp/maxConnections",
    "/http/http1MaxPendingRequests",
    "/consecutive5xxErrors",
];

fn keep_lower_limits(current: &Value, wanted: &Value) -> Value {
    let mut out = istio::merged(current, wanted);
    for pointer in LIMITS {
        if let (Some(old), Some(slot)) = (
            current.pointer(pointer).and_then(Value::as_u64),
            out.pointer_mut(pointer),
        ) && slot.as_u64().is_some_and(|new| old < new)
        {
            *slot = json!(old);
        }
    }
    out
}

impl Remediation for DbCircuitBreak {
    type Facts = ();
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

    fn selects(&self, input: &AlertInput, object: &DynamicObject) -> bool {
        let host = input.alert.label(DB_HOST_LABEL).unwrap_or_default();
        hosts::rule_host_is(object, &hosts::alert_host(host, &input.namespace))
    }

    fn plan(
        &self,
        _input: &AlertInput,
        object: &DynamicObject,
        _context: PlanContext<'_>,
    ) -> Result<Plan, Refusal> {
        self.plan_circuit_break(object)
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
            .then(|| istio::plan_restore(object, record, self.name(), "Restore", OnEdit::Hold))
    }

    fn revertible(&self, config: &Config) -> Vec<ApiResource> {
        vec![istio::destination_rule(config)]
    }

    fn plan_revert(&self, object: &DynamicObject, record: &ActionRecord) -> Result<Plan, Refusal> {
        istio::plan_restore(object, record, self.name(), "Revert", OnEdit::Fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<CircuitBreaker> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CircuitBreaker::from_lookup(|k| map.get(k).cloned())
    }

    fn rule(spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": spec
        }))
        .expect("object")
    }

    #[test]
    fn defaults_and_overrides() {
        let defaults = settings(&[]).expect("defaults");
        assert_eq!(defaults, CircuitBreaker::default());
        let custom = settings(&[
            ("CB_CONSECUTIVE_ERRORS", "3"),
            ("CB_CONNECT_TIMEOUT", "500ms"),
            ("RESTORE_ON_RESOLVE", "false"),
        ])
        .expect("valid");
        assert_eq!(custom.consecutive_errors, 3);
        assert_eq!(custom.connect_timeout, "500ms");
        assert!(!custom.restore_on_resolve);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("CB_CONSECUTIVE_ERRORS", "0"),
            ("CB_CONSECUTIVE_ERRORS", "five"),
            ("CB_INTERVAL", "10"),
            ("CB_BASE_EJECTION_TIME", "0s"),
            ("CB_MAX_EJECTION_PERCENT", "101"),
            ("CB_MAX_CONNECTIONS", "3000000000"),
            ("CB_CONNECT_TIMEOUT", "fast"),
            ("CB_MAX_PENDING_REQUESTS", "-1"),
            ("RESTORE_ON_RESOLVE", "sometimes"),
        ] {
            match settings(&[(var, value)]) {
                Err(Error::Config { var: got, .. }) => assert_eq!(got, var, "{value}"),
                other => panic!("{var}={value}: {other:?}"),
            }
        }
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
        applied["loadBalancer"] = json!({"localityLbSetting": {"enabled": false}});
        assert_eq!(plan.applied, Some(json!({"trafficPolicy": applied})));
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
        let settings = settings(&[("CB_LOCALITY_LB", "prioritize")]).expect("valid");
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
        assert!(matches!(
            self::settings(&[("CB_LOCALITY_LB", "off")]),
            Err(Error::Config {
                var: "CB_LOCALITY_LB",
                ..
            })
        ));
    }
}
