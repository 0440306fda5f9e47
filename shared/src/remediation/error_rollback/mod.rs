//! `error-rollback`: send none of a service's traffic to the version whose 5xx alert
//! fires, and all of it to the stable version.
//!
//! Targets every VirtualService (in any namespace) that is labelled
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

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::{Value, json};

use super::istio;
use super::istio::restore::{self, OnEdit};
use super::object::name_of;
use super::pods;
use super::resolution::Resolver;
use super::resolution::hosts;
use super::{Locator, Plan, PlanContext, Refusal, Remediation};
use crate::cluster::record::ActionRecord;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::intake::AlertInput;
use crate::intake::names;

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
    /// `service`; pure. All or nothing: when another VirtualService the alert changes
    /// (opted in, routing the service) cannot be rolled back,
    /// this one is not either, since rolling back only some would leave the failing version
    /// its traffic through the others.
    pub fn plan_rollback(
        &self,
        object: &DynamicObject,
        service: &str,
        version: Option<&str>,
        facts: &RollbackFacts,
    ) -> std::result::Result<Plan, Refusal> {
        let plan = self.plan_one(object, service, version, facts)?;
        let me = name_of(object);
        for sibling in facts.virtual_services.iter().filter(|vs| {
            name_of(vs) != me
                && facts.changeable.changes(vs)
                && (hosts::routes_host(vs, service) || hosts::has_destination(vs, service))
        }) {
            if let Err(Refusal::Fail(why)) = self.plan_one(sibling, service, version, facts) {
                return Err(Refusal::Fail(format!(
                    "VirtualService {} cannot be rolled back ({why}); rolling back only the others would leave the failing version its traffic through it, so nothing is changed",
                    name_of(sibling)
                )));
            }
        }
        Ok(plan)
    }

    fn plan_one(
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
            let (virtual_services, rules, services, pods) = futures::try_join!(
                istio::list_everywhere(client, &vs_kind),
                istio::list_everywhere(client, &rule_kind),
                futures::future::try_join_all(
                    namespaces.iter().map(|ns| list_services(client, ns))
                ),
                // Where the rollback sends everything must have a ready pod to land on.
                pods::ready_pods(client, &host),
            )?;
            let ready = pods
                .map(|(_, pods)| {
                    let labels = pods.into_iter().map(|pod| pod.labels).collect();
                    BTreeMap::from([(host.clone(), labels)])
                })
                .unwrap_or_default();
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
                changeable: config.policy.namespaces(),
                virtual_services,
                rules,
                services,
                ready,
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
        restore::plan_restore(object, record, self.name(), "Revert", OnEdit::Fail)
    }
}

#[cfg(test)]
mod tests;
