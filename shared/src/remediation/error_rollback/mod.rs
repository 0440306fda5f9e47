//! `error-rollback`: send none of a service's traffic to the version whose 5xx alert
//! fires, and all of it to the stable version.
//!
//! Targets every VirtualService in the alert's namespace that is labelled
//! `auto_remediation=active` and either routes the alert's `service` (its hosts cover the
//! service's host, by [`hosts`] rules) or sends traffic to it (a gateway's VirtualService
//! for `shop.example.com` routing to `checkout`). Every HTTP route that can reach the
//! failing version is changed: the stable destination gets weight 100 and every other 0
//! (destinations are kept, so rolling forward is a weight change); a route with no stable
//! destination of its own (a header-matched canary route) gets the stable one added.
//!
//! What a destination reaches is what Istio sends it to: the destination host's Service
//! selector plus, for a subset, the DestinationRule subset's labels. Its `version` label
//! is compared with the alert's `version` (the workload label Istio's
//! `destination_version` comes from), so subsets may be named anything (`stable`,
//! `canary`). A destination whose workloads carry no `version` label reaches every
//! version, the failing one included. A host that is no Service in the namespace falls
//! back to its name: `checkout-v2` is version `v2`.
//!
//! The stable destination is the one the VirtualService's annotations name
//! (`auto-remediation.io/stable-subset` and/or `auto-remediation.io/stable-host`), else
//! the only destination of another version among the routes of the VirtualService.
//!
//! Refused with the reason (nothing changed): no stable destination, the stable one
//! being the failing version, a TCP/TLS route to the failing version, two mesh-bound
//! VirtualServices for the host (Istio then picks one of them, which is undefined), a
//! VirtualService that routes the failing version but is not opted in, and a Service
//! whose every version sidecars would still reach because no opted-in VirtualService
//! bound to `mesh` and exported to every namespace routes it.
//!
//! A resolved alert changes nothing (rolling forward is a human decision); a revert
//! request restores `spec.http`.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::{Value, json};

use super::hosts;
use super::istio::{self, OnEdit};
use super::resolution::Resolver;
use super::{Locator, Plan, PlanContext, Refusal, Remediation};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::intake::AlertInput;
use crate::names;
use crate::record::ActionRecord;

mod reach;
mod rollback;

pub use reach::{Reach, Reaches, RollbackFacts};
use rollback::{Rollback, annotation, route_name};

/// VirtualService annotation naming the stable subset.
pub const STABLE_SUBSET: &str = "auto-remediation.io/stable-subset";
/// VirtualService annotation naming the stable host.
pub const STABLE_HOST: &str = "auto-remediation.io/stable-host";
/// The workload label that names a version (Istio's `destination_version`).
pub const VERSION_LABEL: &str = "version";

/// Routes all traffic of the alert's `service` to its stable version.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorRollback;

impl ErrorRollback {
    /// Plans the rollback of one VirtualService for the service at fully qualified
    /// `service`; pure.
    pub fn plan_rollback(
        &self,
        object: &DynamicObject,
        service: &str,
        version: Option<&str>,
        facts: &RollbackFacts,
    ) -> std::result::Result<Plan, Refusal> {
        let rollback = Rollback {
            object,
            namespace: istio::namespace_of(object),
            service,
            failing: version,
            facts,
            routes_service: hosts::routes_host(object, service),
            alert_namespace: if facts.namespace.is_empty() {
                istio::namespace_of(object)
            } else {
                &facts.namespace
            },
        };
        let annotated = annotation(object, STABLE_SUBSET).is_some()
            || annotation(object, STABLE_HOST).is_some();
        if version.is_none() && !annotated {
            return Err(Refusal::Fail(format!(
                "cannot tell the stable destination: annotate the VirtualService with {STABLE_SUBSET} or {STABLE_HOST}, or give the alert a `version` label"
            )));
        }
        rollback.check_cluster().map_err(Refusal::Fail)?;
        for kind in ["tcp", "tls"] {
            let routes = istio::spec(object)
                .and_then(|s| s.get(kind))
                .and_then(Value::as_array);
            for (index, route) in routes.into_iter().flatten().enumerate() {
                let destinations = route.get("route").and_then(Value::as_array);
                if rollback.carries(destinations.map(Vec::as_slice).unwrap_or_default()) {
                    return Err(Refusal::Fail(format!(
                        "{} reaches the failing version {}; error-rollback changes HTTP routes only",
                        route_name(route, kind, index),
                        version.unwrap_or_default()
                    )));
                }
            }
        }
        let mut out = istio::Reweighed {
            http: rollback.http(),
            considered: 0,
            changes: Vec::new(),
        };
        for (index, route) in out.http.iter_mut().enumerate() {
            let name = route_name(route, "http", index);
            let Some(destinations) = route.get_mut("route").and_then(Value::as_array_mut) else {
                continue;
            };
            let involved = match version {
                Some(_) => rollback.carries(destinations),
                None => destinations.len() > 1,
            };
            if !involved {
                continue;
            }
            let keep = rollback
                .stable(Some(destinations))
                .map_err(|why| Refusal::Fail(format!("{name}: {why}")))?;
            let keep_key = RollbackFacts::key(&keep, rollback.namespace);
            let at = destinations
                .iter()
                .position(|d| RollbackFacts::key(d, rollback.namespace) == keep_key);
            if version.is_none() && at.is_none() {
                continue;
            }
            out.considered += 1;
            let mut moves = Vec::new();
            for (i, destination) in destinations.iter_mut().enumerate() {
                let new = if Some(i) == at { 100 } else { 0 };
                let old = istio::weight(destination);
                if old != new || destination.get("weight").is_none() {
                    moves.push(format!(
                        "{} {old}->{new}",
                        istio::destination_name(destination)
                    ));
                    destination["weight"] = json!(new);
                }
            }
            if at.is_none() {
                let mut added = keep.clone();
                added["weight"] = json!(100);
                moves.push(format!("{} added at 100", istio::destination_name(&added)));
                destinations.push(added);
            }
            if !moves.is_empty() {
                out.changes.push(format!("{name}: {}", moves.join(", ")));
            }
        }
        if out.considered == 0 {
            return Err(match version {
                Some(version) if rollback.names_failing() => Refusal::Skip(format!(
                    "already routed to stable: no HTTP route sends traffic to version {version}"
                )),
                Some(version) => {
                    Refusal::Hold(format!("no HTTP route sends traffic to version {version}"))
                }
                None => Refusal::Hold(
                    "no HTTP route splits traffic between several destinations".into(),
                ),
            });
        }
        if out.changes.is_empty() {
            return Err(Refusal::Skip("already routed to stable".into()));
        }
        Ok(istio::http_plan(
            object,
            out,
            "routed 100% to the stable destination",
            "Rollback",
        ))
    }
}

async fn list_services(client: &kube::Client, namespace: &str) -> Result<Vec<Service>> {
    Api::<Service>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|err| Error::kube(format!("list services in {namespace}"), err))
}

fn alert_host(input: &AlertInput) -> String {
    hosts::alert_host(
        input.alert.label("service").unwrap_or_default(),
        &input.namespace,
    )
}

impl Remediation for ErrorRollback {
    type Facts = RollbackFacts;
    type Observed = ();

    fn name(&self) -> &'static str {
        "error-rollback"
    }

    fn locate(&self, input: &AlertInput, config: &Config) -> std::result::Result<Locator, String> {
        istio::service_label(input, self.name())?;
        if let Some(version) = input.alert.label("version") {
            names::label_value("version", version)?;
        }
        Ok(istio::opted_in_objects(
            istio::virtual_service(config),
            input,
            "service",
        ))
    }

    fn prepare<'a>(
        &'a self,
        input: &'a AlertInput,
        client: &'a kube::Client,
        config: &'a Config,
        _observed: &'a (),
    ) -> BoxFuture<'a, Result<RollbackFacts>> {
        Box::pin(async move {
            let namespace = &input.namespace;
            let host = alert_host(input);
            let mut namespaces = vec![namespace.clone()];
            if let Some(own) = Resolver::service_namespace_of(&host)
                && own != namespace
            {
                namespaces.push(own.to_owned());
            }
            let (vs_kind, rule_kind) = (
                istio::virtual_service(config),
                istio::destination_rule(config),
            );
            let (virtual_services, rules, services) = futures::try_join!(
                istio::list_everywhere(client, &vs_kind),
                istio::list_everywhere(client, &rule_kind),
                futures::future::try_join_all(
                    namespaces.iter().map(|ns| list_services(client, ns))
                ),
            )?;
            let services = services
                .into_iter()
                .flatten()
                .filter_map(|s| {
                    let ns = s.metadata.namespace.clone()?;
                    let name = hosts::qualify(s.metadata.name.as_deref()?, &ns);
                    Some((name, s.spec?.selector?.into_iter().collect()))
                })
                .collect();
            Ok(RollbackFacts {
                virtual_services,
                rules,
                services,
                root: config.istio_root_namespace.clone(),
                namespace: namespace.clone(),
            })
        })
    }

    fn selects(&self, input: &AlertInput, object: &DynamicObject) -> bool {
        let service = alert_host(input);
        hosts::routes_host(object, &service) || hosts::has_destination(object, &service)
    }

    fn plan(
        &self,
        input: &AlertInput,
        object: &DynamicObject,
        context: PlanContext<'_, RollbackFacts>,
    ) -> std::result::Result<Plan, Refusal> {
        self.plan_rollback(
            object,
            &alert_host(input),
            input.alert.label("version"),
            context.facts,
        )
    }

    fn revertible(&self, config: &Config) -> Vec<ApiResource> {
        vec![istio::virtual_service(config)]
    }

    fn plan_revert(
        &self,
        object: &DynamicObject,
        record: &ActionRecord,
    ) -> std::result::Result<Plan, Refusal> {
        istio::plan_restore(object, record, self.name(), "Revert", OnEdit::Fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "checkout.shop.svc.cluster.local";

    fn object(
        kind: &str,
        name: &str,
        labels: Value,
        annotations: Value,
        spec: Value,
    ) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": "shop", "labels": labels, "annotations": annotations},
            "spec": spec
        }))
        .expect("object")
    }

    fn opted() -> Value {
        json!({"auto_remediation": "active"})
    }

    fn vs(annotations: Value, route: Value) -> DynamicObject {
        object(
            "VirtualService",
            "checkout",
            opted(),
            annotations,
            json!({"hosts": ["checkout"], "http": [
                {"name": "testers", "match": [{"headers": {"x-canary": {"exact": "1"}}}],
                 "route": [{"destination": {"host": "checkout", "subset": "canary"}}]},
                {"name": "split", "route": route}
            ]}),
        )
    }

    /// A namespace with Service `checkout` (every version) and subsets `stable` (v1) and
    /// `canary` (v2), holding `virtual_services`.
    fn facts(virtual_services: Vec<DynamicObject>) -> RollbackFacts {
        let rule = object(
            "DestinationRule",
            "checkout",
            json!({}),
            json!({}),
            json!({"host": "checkout", "subsets": [
                {"name": "stable", "labels": {"version": "v1"}},
                {"name": "canary", "labels": {"version": "v2"}}]}),
        );
        RollbackFacts {
            virtual_services,
            rules: vec![rule],
            services: [(
                HOST.to_owned(),
                [("app".to_owned(), "checkout".to_owned())].into(),
            )]
            .into(),
            root: "istio-system".into(),
            namespace: String::new(),
        }
    }

    fn split(stable: i64, canary: i64) -> Value {
        json!([{"destination": {"host": "checkout", "subset": "stable"}, "weight": stable},
               {"destination": {"host": "checkout", "subset": "canary"}, "weight": canary}])
    }

    fn plan(object: &DynamicObject, version: Option<&str>) -> std::result::Result<Plan, Refusal> {
        ErrorRollback.plan_rollback(object, HOST, version, &facts(vec![object.clone()]))
    }

    fn weights(plan: &Plan, route: usize) -> Vec<i64> {
        plan.patch["spec"]["http"][route]["route"]
            .as_array()
            .expect("route")
            .iter()
            .map(istio::weight)
            .collect()
    }

    #[test]
    fn the_version_is_found_through_the_subset_labels_not_the_subset_name() {
        let object = vs(json!({}), split(80, 20));
        let plan = plan(&object, Some("v2")).expect("plan");
        assert_eq!(weights(&plan, 1), vec![100, 0]);
        // The header-matched canary route gets the stable destination added.
        assert_eq!(weights(&plan, 0), vec![0, 100]);
        assert_eq!(
            plan.patch["spec"]["http"][0]["route"][1]["destination"],
            json!({"host": "checkout", "subset": "stable"})
        );
        // Only the changed routes are recorded, by index.
        let http = &object.data["spec"]["http"];
        assert_eq!(
            plan.previous,
            Some(json!({"httpRoutes": {"0": http[0]["route"], "1": http[1]["route"]}}))
        );
        // v1 failing: the subset named "stable" is the bad one, and the canary is stable.
        let plan = self::plan(&object, Some("v1")).expect("plan");
        assert_eq!(weights(&plan, 1), vec![0, 100]);
        // An alert for a version no subset carries changes nothing.
        assert!(matches!(
            self::plan(&object, Some("v7")),
            Err(Refusal::Hold(_))
        ));
    }

    #[test]
    fn an_annotated_stable_subset_that_is_the_failing_version_is_refused() {
        let object = vs(json!({STABLE_SUBSET: "canary"}), split(50, 50));
        match plan(&object, Some("v2")) {
            Err(Refusal::Fail(why)) => {
                assert!(why.contains("reaches the failing version v2"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        let object = vs(json!({STABLE_SUBSET: "stable"}), split(50, 50));
        let plan = plan(&object, None).expect("annotation alone is enough");
        assert_eq!(weights(&plan, 1), vec![100, 0]);
    }

    #[test]
    fn host_splits_are_told_apart_by_the_service_selectors() {
        let route = json!([{"destination": {"host": "checkout-a"}, "weight": 90},
                           {"destination": {"host": "checkout-b"}, "weight": 10}]);
        let object = vs(json!({}), route);
        let mut facts = facts(vec![object.clone()]);
        for (name, version) in [("checkout-a", "v1"), ("checkout-b", "v2")] {
            facts.services.insert(
                hosts::qualify(name, "shop"),
                [("app", "checkout"), ("version", version)]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            );
        }
        let plan = ErrorRollback
            .plan_rollback(&object, HOST, Some("v2"), &facts)
            .expect("plan");
        assert_eq!(weights(&plan, 1), vec![100, 0]);
        // Without Services, host names decide: "v2" must be a whole part of the host.
        let route = json!([{"destination": {"host": "checkout-v1"}, "weight": 90},
                           {"destination": {"host": "checkout-v21"}, "weight": 10}]);
        let object = vs(json!({}), route);
        let bare = RollbackFacts {
            virtual_services: vec![object.clone()],
            ..RollbackFacts::default()
        };
        assert_eq!(
            ErrorRollback.plan_rollback(&object, HOST, Some("v2"), &bare),
            Err(Refusal::Hold(
                "no HTTP route sends traffic to version v2".into()
            )),
            "checkout-v21 is not v2, and an undefined subset reaches nothing"
        );
    }

    #[test]
    fn already_rolled_back_is_skipped() {
        let object = object(
            "VirtualService",
            "checkout",
            opted(),
            json!({}),
            json!({"hosts": ["checkout"], "http": [{"route": split(100, 0)}]}),
        );
        assert_eq!(
            plan(&object, Some("v2")),
            Err(Refusal::Skip(
                "already routed to stable: no HTTP route sends traffic to version v2".into()
            ))
        );
    }

    #[test]
    fn istio_semantics_the_rollback_cannot_cover_are_refused() {
        let mesh = vs(json!({}), split(50, 50));
        let fail = |object: &DynamicObject, others: Vec<DynamicObject>, expected: &str| {
            let mut all = vec![object.clone()];
            all.extend(others);
            match ErrorRollback.plan_rollback(object, HOST, Some("v2"), &facts(all)) {
                Err(Refusal::Fail(why)) => assert!(why.contains(expected), "{why}"),
                other => panic!("{expected}: {other:?}"),
            }
        };
        // Two VirtualServices binding the host to mesh.
        let mut twin = mesh.clone();
        twin.metadata.name = Some("checkout-2".into());
        fail(&mesh, vec![twin.clone()], "which one is undefined");
        // A second one that routes the canary and is not opted in.
        twin.metadata.labels = None;
        twin.data["spec"]["hosts"] = json!(["www.example.com"]);
        twin.data["spec"]["gateways"] = json!(["istio-system/public"]);
        fail(&mesh, vec![twin], "is not labelled auto_remediation=active");
        // Only a gateway's VirtualService: sidecars still reach every version.
        let mut gateway = mesh.clone();
        gateway.data["spec"]["hosts"] = json!(["www.example.com"]);
        gateway.data["spec"]["gateways"] = json!(["istio-system/public"]);
        fail(
            &gateway,
            vec![],
            "sidecars calling checkout.shop.svc.cluster.local would still reach",
        );
        // Exported to its own namespace only: the same for clients elsewhere.
        let mut local = mesh.clone();
        local.data["spec"]["exportTo"] = json!(["."]);
        fail(&local, vec![], "exported to every namespace");
        // A gateway's VirtualService beside a mesh one is rolled back.
        let plan = ErrorRollback
            .plan_rollback(
                &gateway,
                HOST,
                Some("v2"),
                &facts(vec![gateway.clone(), mesh.clone()]),
            )
            .expect("plan");
        assert_eq!(weights(&plan, 1), vec![100, 0]);
        // A TCP route to the canary.
        let mut tcp = mesh.clone();
        tcp.data["spec"]["tcp"] =
            json!([{"route": [{"destination": {"host": "checkout", "subset": "canary"}}]}]);
        fail(&tcp, vec![], "tcp route 0 reaches the failing version");
    }

    #[test]
    fn no_stable_destination_is_refused_with_the_reason() {
        let three = json!([{"destination": {"host": "checkout", "subset": "stable"}, "weight": 40},
                           {"destination": {"host": "checkout", "subset": "canary"}, "weight": 30},
                           {"destination": {"host": "checkout", "subset": "other"}, "weight": 30}]);
        let mut facts = facts(vec![]);
        facts.rules[0].data["spec"]["subsets"]
            .as_array_mut()
            .expect("subsets")
            .push(json!({"name": "other", "labels": {"version": "v3"}}));
        let cases = [
            (vs(json!({}), split(50, 50)), None, "cannot tell the stable"),
            (
                vs(json!({STABLE_SUBSET: "v3"}), split(50, 50)),
                None,
                "the annotated stable subset v3 is a subset no DestinationRule defines",
            ),
            (
                vs(json!({}), three),
                Some("v2"),
                "2 destinations could be the stable one",
            ),
        ];
        for (object, version, expected) in cases {
            let mut facts = facts.clone();
            facts.virtual_services = vec![object.clone()];
            match ErrorRollback.plan_rollback(&object, HOST, version, &facts) {
                Err(Refusal::Fail(why)) => assert!(why.contains(expected), "{why}"),
                other => panic!("{expected}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_annotated_stable_subset_no_route_has_yet_is_added() {
        let mut facts = facts(vec![]);
        facts.rules[0].data["spec"]["subsets"]
            .as_array_mut()
            .expect("subsets")
            .push(json!({"name": "previous", "labels": {"version": "v0"}}));
        let object = vs(json!({STABLE_SUBSET: "previous"}), split(50, 50));
        facts.virtual_services = vec![object.clone()];
        let plan = ErrorRollback
            .plan_rollback(&object, HOST, Some("v2"), &facts)
            .expect("plan");
        let routes = &plan.patch["spec"]["http"];
        for route in routes.as_array().expect("routes") {
            let last = route["route"]
                .as_array()
                .and_then(|r| r.last())
                .expect("last");
            assert_eq!(
                last,
                &json!({"destination": {"host": "checkout", "subset": "previous"}, "weight": 100}),
                "{route}"
            );
            assert!(
                route["route"]
                    .as_array()
                    .expect("route")
                    .iter()
                    .all(|d| d == last || istio::weight(d) == 0),
                "{route}"
            );
        }
    }

    #[test]
    fn a_mirror_to_the_failing_version_is_refused_unless_its_percentage_is_zero() {
        let mut object = vs(json!({}), split(50, 50));
        object.data["spec"]["http"][1]["mirror"] = json!({"host": "checkout", "subset": "canary"});
        let facts = facts(vec![object.clone()]);
        match ErrorRollback.plan_rollback(&object, HOST, Some("v2"), &facts) {
            Err(Refusal::Fail(why)) => {
                assert!(
                    why.contains("http route split mirrors requests to"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        object.data["spec"]["http"][1]["mirrorPercentage"] = json!({"value": 0.0});
        let facts = self::facts(vec![object.clone()]);
        assert!(
            ErrorRollback
                .plan_rollback(&object, HOST, Some("v2"), &facts)
                .is_ok()
        );
    }
}
