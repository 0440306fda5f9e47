//! `db-circuit-break`: turn on circuit breaking for a service whose database timeouts
//! alert fires.
//!
//! Targets every DestinationRule in the alert's namespace that is labelled
//! `auto_remediation=active` and whose `spec.host` is the alert's `service`. The merge
//! patch sets `spec.trafficPolicy.outlierDetection` and `spec.trafficPolicy.connectionPool`
//! fields from [`CircuitBreaker`] settings and keeps everything else in the rule
//! (TLS mode, load balancer, subsets, fields of those two blocks it does not set).
//!
//! Only `consecutive5xxErrors` counts errors: for HTTP it covers every 5xx (gateway
//! errors included) and for opaque TCP (how databases are meshed) connect timeouts and
//! connection failures count towards it. `consecutiveGatewayErrors` is left as the rule
//! has it: at the same threshold it would add nothing, and a stricter value the owner
//! chose stays in force.
//!
//! The record keeps the exact previous `trafficPolicy` (or `null`). A resolved alert
//! restores it exactly when `RESTORE_ON_RESOLVE` is on (the default), unless someone
//! edited the policy since; a revert request does the same on demand.

use kube::api::{ApiResource, DynamicObject};
use serde_json::{Value, json};

use super::hosts;
use super::istio::{self, OnEdit};
use super::{Locator, Plan, PlanContext, Refusal, Remediation};
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::intake::AlertInput;
use crate::record::ActionRecord;

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
        let previous = istio::fragment(object, ["trafficPolicy"]);
        let current = match &previous["trafficPolicy"] {
            Value::Null => json!({}),
            policy => policy.clone(),
        };
        let patch = self.settings.policy_patch();
        let applied = istio::merged(&current, &patch);
        if applied == current {
            return Err(Refusal::Skip(
                "circuit breaker already set as configured".into(),
            ));
        }
        let mut summary = self.settings.summary();
        let overriding = subsets_overriding(object);
        if !overriding.is_empty() {
            summary.push_str(&format!(
                " (note: subsets {} set their own outlierDetection/connectionPool, which take precedence for them)",
                overriding.join(", ")
            ));
        }
        Ok(Plan {
            patch: json!({ "spec": { "trafficPolicy": patch } }),
            summary,
            action: "CircuitBreak",
            previous: Some(previous),
            applied: Some(json!({ "trafficPolicy": applied })),
        })
    }
}

/// Subsets whose own traffic policy overrides the rule-level blocks this sets.
fn subsets_overriding(object: &DynamicObject) -> Vec<String> {
    istio::spec(object)
        .and_then(|s| s.get("subsets"))
        .and_then(Value::as_array)
        .map(|subsets| {
            subsets
                .iter()
                .filter(|s| {
                    let policy = &s["trafficPolicy"];
                    policy.get("outlierDetection").is_some()
                        || policy.get("connectionPool").is_some()
                })
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Remediation for DbCircuitBreak {
    type Facts = ();

    fn name(&self) -> &'static str {
        "db-circuit-break"
    }

    fn locate(&self, input: &AlertInput, config: &Config) -> Result<Locator, String> {
        istio::service_label(input, self.name())?;
        Ok(istio::opted_in_objects(
            istio::destination_rule(config),
            input,
        ))
    }

    fn selects(&self, input: &AlertInput, object: &DynamicObject) -> bool {
        let service = input.alert.label("service").unwrap_or_default();
        hosts::rule_host_is(object, &hosts::alert_host(service, &input.namespace))
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
            .then(|| istio::plan_restore(object, record, self.name(), "Restore", OnEdit::Skip))
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

    #[test]
    fn the_patch_touches_only_the_two_blocks_and_keeps_the_rest() {
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
        assert_eq!(
            plan.patch,
            json!({"spec": {"trafficPolicy": CircuitBreaker::default().policy_patch()}})
        );
        assert_eq!(
            plan.previous,
            Some(json!({"trafficPolicy": {
                "tls": {"mode": "ISTIO_MUTUAL"},
                "outlierDetection": {"consecutiveGatewayErrors": 2},
            }}))
        );
        assert_eq!(
            plan.applied,
            Some(json!({"trafficPolicy": {
                "tls": {"mode": "ISTIO_MUTUAL"},
                "outlierDetection": {
                    "consecutiveGatewayErrors": 2, "consecutive5xxErrors": 5, "interval": "10s",
                    "baseEjectionTime": "30s", "maxEjectionPercent": 50,
                },
                "connectionPool": {
                    "tcp": {"maxConnections": 100, "connectTimeout": "2s"},
                    "http": {"http1MaxPendingRequests": 64},
                },
            }}))
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
    fn subset_overrides_are_pointed_out() {
        let object = rule(json!({"host": "orders", "subsets": [
            {"name": "primary", "labels": {"role": "primary"},
             "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 5}}}}
        ]}));
        let plan = DbCircuitBreak::default()
            .plan_circuit_break(&object)
            .expect("plan");
        assert!(plan.summary.contains("subsets primary"), "{}", plan.summary);
    }
}
