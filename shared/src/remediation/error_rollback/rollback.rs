//! One rollback being planned: which destinations carry the failing version, which is the
//! stable one, and what in the rest of the cluster stops a rollback from holding for every
//! client.

use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::reach::{Key, Reach, RollbackFacts, describe_key};
use super::{STABLE_HOST, STABLE_SUBSET, VERSION_LABEL};
use crate::remediation::istio;
use crate::remediation::object::name_of;
use crate::remediation::resolution::hosts;

pub(super) fn route_name(route: &Value, kind: &str, index: usize) -> String {
    match route.get("name").and_then(Value::as_str) {
        Some(name) => format!("{kind} route {name}"),
        None => format!("{kind} route {index}"),
    }
}

/// Istio sends a lone destination all of the route's traffic, whatever its weight.
fn effective_weight(destinations: &[Value], index: usize) -> i64 {
    if destinations.len() == 1 {
        100
    } else {
        istio::weight(&destinations[index])
    }
}

pub(super) fn annotation(object: &DynamicObject, key: &str) -> Option<String> {
    object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// One rollback being planned: the object, the service and what the cluster holds.
#[derive(Clone, Copy)]
pub(super) struct Rollback<'a> {
    pub(super) object: &'a DynamicObject,
    pub(super) namespace: &'a str,
    pub(super) service: &'a str,
    pub(super) failing: Option<&'a str>,
    pub(super) facts: &'a RollbackFacts,
    pub(super) routes_service: bool,
}

impl Rollback<'_> {
    fn related(&self, key: &Key) -> bool {
        self.facts.related(key, self.service, self.routes_service)
    }

    /// Whether any destination with traffic reaches the failing version.
    pub(super) fn carries(&self, destinations: &[Value]) -> bool {
        let Some(failing) = self.failing else {
            return false;
        };
        destinations.iter().enumerate().any(|(i, d)| {
            effective_weight(destinations, i) > 0
                && RollbackFacts::key(d, self.namespace)
                    .is_some_and(|k| self.related(&k) && self.facts.reach(&k).carries(failing))
        })
    }

    /// Whether some HTTP route names a destination of the failing version at all.
    pub(super) fn names_failing(&self) -> bool {
        let Some(failing) = self.failing else {
            return false;
        };
        self.http().iter().any(|route| {
            route
                .get("route")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|d| {
                    RollbackFacts::key(d, self.namespace).is_some_and(|k| {
                        self.related(&k)
                            && self
                                .facts
                                .reach(&k)
                                .0
                                .contains(&Reach::Version(failing.to_owned()))
                    })
                })
        })
    }

    pub(super) fn http(&self) -> Vec<Value> {
        istio::http_routes(self.object)
    }

    /// The stable destination, as a route destination value: the annotated one, else the
    /// only one of another version in the route (`within`), else in the whole object.
    pub(super) fn stable(&self, within: Option<&[Value]>) -> std::result::Result<Value, String> {
        let (subset, host) = (
            annotation(self.object, STABLE_SUBSET),
            annotation(self.object, STABLE_HOST),
        );
        let routes = match within {
            Some(destinations) if subset.is_none() && host.is_none() => {
                vec![json!({ "route": destinations })]
            }
            _ => self.http(),
        };
        let mut candidates: Vec<(Key, Value)> = Vec::new();
        for route in routes {
            for d in route
                .get("route")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(key) = RollbackFacts::key(d, self.namespace) else {
                    continue;
                };
                if !self.related(&key) || candidates.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                let annotated = (subset.is_some() || host.is_some())
                    && subset
                        .as_deref()
                        .is_none_or(|s| key.1.as_deref() == Some(s))
                    && host
                        .as_deref()
                        .is_none_or(|h| hosts::qualify(h, self.namespace) == key.0);
                let wanted = if subset.is_some() || host.is_some() {
                    annotated
                } else {
                    self.facts.reach(&key).is_other_version(self.failing)
                };
                if wanted {
                    let destination = json!({"destination": d["destination"].clone()});
                    candidates.push((key, destination));
                }
            }
        }
        let named = match (&subset, &host) {
            (Some(s), Some(h)) => Some(format!("subset {s} of host {h}")),
            (Some(s), None) => Some(format!("subset {s}")),
            (None, Some(h)) => Some(format!("host {h}")),
            (None, None) => None,
        };
        let failing = self.failing.unwrap_or_default();
        let annotated = |key: &Key, destination: &Value, named: &str| {
            let reach = self.facts.reach(key);
            if self.failing.is_some_and(|f| reach.carries(f)) {
                return Err(format!(
                    "the annotated stable {named} reaches the failing version {failing}; nothing safer to route to"
                ));
            }
            if reach.undefined() {
                return Err(format!(
                    "the annotated stable {named} is a subset no DestinationRule defines; Istio would send it nothing"
                ));
            }
            if reach.empty() {
                return Err(format!(
                    "the annotated stable {named} has no ready pod (for some clients, by the subset they take): all traffic would go to no endpoint"
                ));
            }
            Ok(destination.clone())
        };
        match (candidates.as_slice(), &named) {
            ([(key, destination)], Some(named)) => annotated(key, destination, named),
            ([(_, destination)], None) => Ok(destination.clone()),
            ([], Some(named)) => {
                // The annotation names the stable destination even where no route has it yet:
                // the host as written in this route (or the annotated one), the subset named.
                let written = host.clone().or_else(|| {
                    within.into_iter().flatten().find_map(|d| {
                        let key = RollbackFacts::key(d, self.namespace)?;
                        self.related(&key)
                            .then(|| hosts::destination_host(d).map(str::to_owned))
                            .flatten()
                    })
                });
                let Some(written) = written else {
                    return Err(format!("no destination is the annotated stable {named}"));
                };
                let mut destination = json!({"destination": {"host": written}});
                if let Some(subset) = &subset {
                    destination["destination"]["subset"] = json!(subset);
                }
                let key = RollbackFacts::key(&destination, self.namespace)
                    .ok_or_else(|| format!("no destination is the annotated stable {named}"))?;
                annotated(&key, &destination, named)
            }
            ([], None) if within.is_some() => self.stable(None),
            ([], None) => Err(format!(
                "no destination reaches only a version other than {failing} (by the Service selectors and DestinationRule subset labels); annotate the VirtualService with {STABLE_SUBSET} or {STABLE_HOST}"
            )),
            (several, named) => Err(format!(
                "{} destinations could be the stable one ({}); {}",
                several.len(),
                several
                    .iter()
                    .map(|(k, _)| describe_key(k))
                    .collect::<Vec<_>>()
                    .join(", "),
                match named {
                    Some(_) => format!("name the subset too ({STABLE_SUBSET})"),
                    None =>
                        format!("annotate the VirtualService with {STABLE_SUBSET} or {STABLE_HOST}"),
                }
            )),
        }
    }

    /// A mirror of one of `vs`'s HTTP routes that sends copies to the failing version, in
    /// words. Istio mirrors unless the percentage is an explicit 0.
    fn mirror_to_failing(&self, vs: &DynamicObject) -> Option<String> {
        let failing = self.failing?;
        let namespace = istio::namespace_of(vs);
        let view = Rollback {
            object: vs,
            namespace,
            routes_service: hosts::routes_host(vs, self.service),
            ..*self
        };
        for (index, route) in istio::http_routes(vs).iter().enumerate() {
            let mut mirrors: Vec<(Value, Option<&Value>)> = Vec::new();
            if let Some(mirror) = route.get("mirror") {
                let percent = route
                    .pointer("/mirrorPercentage/value")
                    .or_else(|| route.get("mirrorPercent"));
                mirrors.push((json!({"destination": mirror}), percent));
            }
            for entry in route
                .get("mirrors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                mirrors.push((
                    json!({"destination": entry["destination"].clone()}),
                    entry.pointer("/percentage/value"),
                ));
            }
            for (destination, percent) in mirrors {
                if percent.and_then(Value::as_f64) == Some(0.0) {
                    continue;
                }
                let Some(key) = RollbackFacts::key(&destination, namespace) else {
                    continue;
                };
                if view.related(&key) && self.facts.reach(&key).carries(failing) {
                    return Some(format!(
                        "{} mirrors requests to {} (version {failing})",
                        route_name(route, "http", index),
                        describe_key(&key)
                    ));
                }
            }
        }
        None
    }

    /// Refusals that come from the rest of the cluster (Istio's view of the host).
    pub(super) fn check_cluster(&self) -> std::result::Result<(), String> {
        let Some(failing) = self.failing else {
            return Ok(());
        };
        let me = name_of(self.object);
        let routing: Vec<&DynamicObject> = self
            .facts
            .virtual_services
            .iter()
            .filter(|vs| {
                hosts::routes_host(vs, self.service) || hosts::has_destination(vs, self.service)
            })
            .collect();
        if hosts::binds_mesh(self.object) && hosts::names_host(self.object, self.service) {
            let twins: Vec<String> = routing
                .iter()
                .filter(|vs| {
                    name_of(vs) != me
                        && hosts::binds_mesh(vs)
                        && hosts::names_host(vs, self.service)
                })
                .map(|vs| name_of(vs))
                .collect();
            if !twins.is_empty() {
                return Err(format!(
                    "VirtualServices {me} and {} all bind host {} to mesh; Istio gives sidecars only one of them and which one is undefined: merge them into one",
                    twins.join(", "),
                    self.service
                ));
            }
        }
        for vs in std::iter::once(&self.object).chain(&routing) {
            if let Some(mirror) = self.mirror_to_failing(vs) {
                return Err(format!(
                    "VirtualService {} {mirror}: Istio sends it copies of the requests and counts them, so the failing version keeps its traffic and the alert keeps firing after a rollback of the weights; remove the mirror (error-rollback changes weights only)",
                    name_of(vs)
                ));
            }
        }
        for vs in routing
            .iter()
            .filter(|vs| !self.facts.changeable.changes(vs))
        {
            let view = Rollback {
                object: vs,
                namespace: istio::namespace_of(vs),
                routes_service: hosts::routes_host(vs, self.service),
                ..*self
            };
            if view.http().iter().any(|r| {
                view.carries(
                    r.get("route")
                        .and_then(Value::as_array)
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                )
            }) {
                let why = self.facts.changeable.why_unchanged(vs).unwrap_or_default();
                return Err(format!(
                    "VirtualService {} also routes traffic to version {failing} and {why}; rolling back only some routes would leave it in place",
                    name_of(vs),
                ));
            }
        }
        let default_reaches_every = self
            .facts
            .services
            .get(self.service)
            .is_some_and(|s| !s.contains_key(VERSION_LABEL));
        let covered = routing.iter().any(|vs| {
            hosts::binds_mesh(vs)
                && hosts::exported_everywhere(vs)
                && hosts::routes_host(vs, self.service)
        });
        if default_reaches_every && !covered {
            return Err(format!(
                "sidecars calling {} would still reach version {failing}: no VirtualService bound to mesh and exported to every namespace routes the host, so Istio sends them to every pod of the Service; route it with one (no `gateways`, or `mesh` among them, and no `exportTo` or `*`)",
                self.service
            ));
        }
        Ok(())
    }
}
