//! `error-rollback`: route 100 % of a service's traffic to its stable version when the
//! 5xx alert of a (canary) version fires.
//!
//! Targets every VirtualService in the alert's namespace that is labelled
//! `auto_remediation=active` and whose `spec.hosts` name the alert's `service`. In each
//! HTTP route with more than one destination the stable destination gets weight 100 and
//! every other 0 (destinations are kept, so rolling forward again is a weight change).
//! Works for subset splits (`checkout/v1` + `checkout/v2`) and host splits
//! (`checkout-v1` + `checkout-v2`).
//!
//! The stable destination is, in this order:
//! 1. the one the VirtualService's annotations name: `auto-remediation.io/stable-subset`
//!    (a subset) and/or `auto-remediation.io/stable-host` (a host);
//! 2. else the only destination of the route that is not the alert's `version` (a subset
//!    equal to it, or, without a subset, a host with it as a `-`/`.` separated part).
//!
//! Anything else (no annotation and no `version`, two candidates, the stable destination
//! being the failing version) is refused with the reason. A resolved alert changes
//! nothing (rolling forward is a human decision); a revert request restores `spec.http`.

use kube::api::{ApiResource, DynamicObject};
use serde_json::Value;

use super::istio::{self, OnEdit};
use super::{Locator, Plan, PlanContext, Refusal, Remediation};
use crate::config::Config;
use crate::intake::AlertInput;
use crate::names;
use crate::record::ActionRecord;

/// VirtualService annotation naming the stable subset.
pub const STABLE_SUBSET: &str = "auto-remediation.io/stable-subset";
/// VirtualService annotation naming the stable host.
pub const STABLE_HOST: &str = "auto-remediation.io/stable-host";

/// Routes all traffic of the alert's `service` to its stable version.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorRollback;

/// How the stable destination of a route is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stable {
    /// Named by the VirtualService's annotations.
    Annotated {
        /// `auto-remediation.io/stable-subset`.
        subset: Option<String>,
        /// `auto-remediation.io/stable-host`.
        host: Option<String>,
        /// The alert's failing version, if it names one.
        failing: Option<String>,
    },
    /// The only destination that is not this (failing) version.
    NotVersion(String),
}

impl Stable {
    /// From the VirtualService's annotations and the alert's `version` label.
    pub fn of(object: &DynamicObject, version: Option<&str>) -> Result<Stable, String> {
        let annotation = |key: &str| {
            object
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let (subset, host) = (annotation(STABLE_SUBSET), annotation(STABLE_HOST));
        if subset.is_some() || host.is_some() {
            return Ok(Stable::Annotated {
                subset,
                host,
                failing: version.map(str::to_owned),
            });
        }
        version.map(|v| Stable::NotVersion(v.to_owned())).ok_or_else(|| {
            format!(
                "cannot tell the stable destination: annotate the VirtualService with {STABLE_SUBSET} or {STABLE_HOST}, or give the alert a `version` label"
            )
        })
    }

    /// The index of the stable destination among a route's destinations; `None` when
    /// the route does not involve the failing version (it is left alone).
    pub fn find(&self, destinations: &[Value], namespace: &str) -> Result<Option<usize>, String> {
        match self {
            Stable::Annotated {
                subset,
                host,
                failing,
            } => {
                let matching: Vec<usize> = destinations
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| {
                        subset.as_deref().is_none_or(|s| subset_of(d) == Some(s))
                            && host.as_deref().is_none_or(|h| {
                                host_of(d).is_some_and(|dh| istio::host_matches(h, dh, namespace))
                            })
                    })
                    .map(|(i, _)| i)
                    .collect();
                let named = annotated_name(subset.as_deref(), host.as_deref());
                match matching.as_slice() {
                    [] => Err(format!("no destination is the annotated stable {named}")),
                    [one] => {
                        if let Some(version) = failing
                            && is_version(&destinations[*one], version)
                        {
                            return Err(format!(
                                "the annotated stable {named} is the failing version {version}; nothing safer to route to"
                            ));
                        }
                        Ok(Some(*one))
                    }
                    several => Err(format!(
                        "{} destinations match the annotated stable {named}; name the subset too ({STABLE_SUBSET})",
                        several.len()
                    )),
                }
            }
            Stable::NotVersion(version) => {
                if !destinations.iter().any(|d| is_version(d, version)) {
                    return Ok(None);
                }
                let others: Vec<usize> = destinations
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| !is_version(d, version))
                    .map(|(i, _)| i)
                    .collect();
                match others.as_slice() {
                    [] => Err(format!(
                        "every destination is version {version}; there is no stable one"
                    )),
                    [one] => Ok(Some(*one)),
                    several => Err(format!(
                        "{} destinations besides version {version} ({}); cannot tell which is stable: annotate the VirtualService with {STABLE_SUBSET} or {STABLE_HOST}",
                        several.len(),
                        several
                            .iter()
                            .map(|i| istio::destination_name(&destinations[*i]))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            }
        }
    }
}

fn annotated_name(subset: Option<&str>, host: Option<&str>) -> String {
    match (subset, host) {
        (Some(s), Some(h)) => format!("subset {s} of host {h}"),
        (Some(s), None) => format!("subset {s}"),
        (None, Some(h)) => format!("host {h}"),
        (None, None) => "destination".into(),
    }
}

fn subset_of(destination: &Value) -> Option<&str> {
    destination
        .pointer("/destination/subset")
        .and_then(Value::as_str)
}

fn host_of(destination: &Value) -> Option<&str> {
    destination
        .pointer("/destination/host")
        .and_then(Value::as_str)
}

/// Whether a destination is `version`: its subset, or (host splits) a `-`/`.` separated
/// part of its host.
pub fn is_version(destination: &Value, version: &str) -> bool {
    match subset_of(destination) {
        Some(subset) => subset == version,
        None => {
            host_of(destination).is_some_and(|h| h.split(['.', '-']).any(|part| part == version))
        }
    }
}

impl ErrorRollback {
    /// Plans the rollback of one VirtualService; pure.
    pub fn plan_rollback(
        &self,
        object: &DynamicObject,
        version: Option<&str>,
    ) -> Result<Plan, Refusal> {
        let stable = Stable::of(object, version).map_err(Refusal::Fail)?;
        let namespace = istio::namespace_of(object);
        let http = istio::http_routes(object);
        let reweighed = istio::reweigh_routes(&http, |index, destinations| {
            let Some(keep) = stable
                .find(destinations, namespace)
                .map_err(|why| Refusal::Fail(format!("route {index}: {why}")))?
            else {
                return Ok(None);
            };
            Ok(Some(
                (0..destinations.len())
                    .map(|i| if i == keep { 100 } else { 0 })
                    .collect(),
            ))
        })?;
        if reweighed.considered == 0 {
            return Err(Refusal::Skip(match &stable {
                Stable::NotVersion(version) => {
                    format!(
                        "no HTTP route with several destinations sends traffic to version {version}"
                    )
                }
                Stable::Annotated { .. } => {
                    "no HTTP route splits traffic between several destinations".into()
                }
            }));
        }
        if reweighed.changes.is_empty() {
            return Err(Refusal::Skip("already routed to stable".into()));
        }
        Ok(istio::http_plan(
            object,
            reweighed,
            "routed 100% to the stable destination",
            "Rollback",
        ))
    }
}

impl Remediation for ErrorRollback {
    type Facts = ();

    fn name(&self) -> &'static str {
        "error-rollback"
    }

    fn locate(&self, input: &AlertInput, config: &Config) -> Result<Locator, String> {
        istio::service_label(input, self.name())?;
        if let Some(version) = input.alert.label("version") {
            names::label_value("version", version)?;
        }
        Ok(istio::opted_in_objects(
            istio::virtual_service(config),
            input,
        ))
    }

    fn selects(&self, input: &AlertInput, object: &DynamicObject) -> bool {
        input
            .alert
            .label("service")
            .is_some_and(|service| istio::routes_service(object, service))
    }

    fn plan(
        &self,
        input: &AlertInput,
        object: &DynamicObject,
        _context: PlanContext<'_>,
    ) -> Result<Plan, Refusal> {
        self.plan_rollback(object, input.alert.label("version"))
    }

    fn revertible(&self, config: &Config) -> Vec<ApiResource> {
        vec![istio::virtual_service(config)]
    }

    fn plan_revert(&self, object: &DynamicObject, record: &ActionRecord) -> Result<Plan, Refusal> {
        istio::plan_restore(object, record, self.name(), "Revert", OnEdit::Fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vs(annotations: Value, route: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "checkout", "namespace": "shop", "annotations": annotations},
            "spec": {"hosts": ["checkout"], "http": [
                {"match": [{"headers": {"x-canary": {"exact": "1"}}}],
                 "route": [{"destination": {"host": "checkout", "subset": "v2"}}]},
                {"route": route}
            ]}
        }))
        .expect("object")
    }

    fn subsets(v1: i64, v2: i64) -> Value {
        json!([{"destination": {"host": "checkout", "subset": "v1"}, "weight": v1},
               {"destination": {"host": "checkout", "subset": "v2"}, "weight": v2}])
    }

    fn weights(plan: &Plan) -> Vec<i64> {
        plan.patch["spec"]["http"][1]["route"]
            .as_array()
            .expect("route")
            .iter()
            .map(istio::weight)
            .collect()
    }

    #[test]
    fn annotated_stable_subset_gets_all_traffic_and_previous_is_exact() {
        let object = vs(json!({STABLE_SUBSET: "v1"}), subsets(50, 50));
        let plan = ErrorRollback.plan_rollback(&object, None).expect("plan");
        assert_eq!(weights(&plan), vec![100, 0]);
        let http = &plan.patch["spec"]["http"];
        assert_eq!(http.as_array().map(Vec::len), Some(2), "whole array sent");
        assert_eq!(
            http[0], object.data["spec"]["http"][0],
            "other routes untouched"
        );
        assert_eq!(
            plan.previous,
            Some(json!({"http": object.data["spec"]["http"]}))
        );
        assert_eq!(plan.applied, Some(json!({"http": http})));
        assert!(
            plan.summary.contains("checkout/v1 50->100"),
            "{}",
            plan.summary
        );
    }

    #[test]
    fn without_annotation_the_stable_one_is_the_other_version() {
        let object = vs(json!({}), subsets(80, 20));
        let plan = ErrorRollback
            .plan_rollback(&object, Some("v2"))
            .expect("plan");
        assert_eq!(weights(&plan), vec![100, 0]);
        let object = vs(json!({}), subsets(20, 80));
        let plan = ErrorRollback
            .plan_rollback(&object, Some("v1"))
            .expect("plan");
        assert_eq!(weights(&plan), vec![0, 100]);
    }

    #[test]
    fn host_splits_are_recognised() {
        let route = json!([{"destination": {"host": "checkout-v1.shop.svc.cluster.local"}, "weight": 90},
                           {"destination": {"host": "checkout-v2.shop.svc.cluster.local"}, "weight": 10}]);
        let object = vs(json!({}), route.clone());
        assert_eq!(
            weights(
                &ErrorRollback
                    .plan_rollback(&object, Some("v2"))
                    .expect("plan")
            ),
            vec![100, 0]
        );
        let object = vs(json!({STABLE_HOST: "checkout-v1"}), route);
        assert_eq!(
            weights(&ErrorRollback.plan_rollback(&object, None).expect("plan")),
            vec![100, 0]
        );
        // "v2" must be a whole part of the host, not a substring of "v21".
        let route = json!([{"destination": {"host": "checkout-v1"}, "weight": 90},
                           {"destination": {"host": "checkout-v21"}, "weight": 10}]);
        assert!(matches!(
            ErrorRollback.plan_rollback(&vs(json!({}), route), Some("v2")),
            Err(Refusal::Skip(_))
        ));
    }

    #[test]
    fn already_rolled_back_is_skipped() {
        let object = vs(json!({STABLE_SUBSET: "v1"}), subsets(100, 0));
        assert_eq!(
            ErrorRollback.plan_rollback(&object, Some("v2")),
            Err(Refusal::Skip("already routed to stable".into()))
        );
    }

    #[test]
    fn no_stable_destination_is_refused_with_the_reason() {
        let cases = [
            (
                vs(json!({}), subsets(50, 50)),
                None,
                "cannot tell the stable",
            ),
            (
                vs(json!({STABLE_SUBSET: "v3"}), subsets(50, 50)),
                None,
                "no destination is the annotated stable subset v3",
            ),
            (
                vs(json!({STABLE_SUBSET: "v2"}), subsets(50, 50)),
                Some("v2"),
                "is the failing version v2",
            ),
            (
                vs(
                    json!({}),
                    json!([{"destination": {"host": "checkout", "subset": "v1"}, "weight": 40},
                           {"destination": {"host": "checkout", "subset": "v2"}, "weight": 30},
                           {"destination": {"host": "checkout", "subset": "v3"}, "weight": 30}]),
                ),
                Some("v3"),
                "2 destinations besides version v3",
            ),
            (
                vs(
                    json!({}),
                    json!([{"destination": {"host": "checkout", "subset": "v2"}, "weight": 50},
                           {"destination": {"host": "checkout", "subset": "v2"}, "weight": 50}]),
                ),
                Some("v2"),
                "every destination is version v2",
            ),
        ];
        for (object, version, expected) in cases {
            match ErrorRollback.plan_rollback(&object, version) {
                Err(Refusal::Fail(why)) => assert!(why.contains(expected), "{why}"),
                other => panic!("{expected}: {other:?}"),
            }
        }
    }
}
