//! Where the service's requests can go, route by route, and which lever moves each: the
//! VirtualService weights move a region split of an opted-in VirtualService; every other
//! request that reaches the service's own endpoints without naming a region is moved only
//! by the DestinationRule drain, which in turn empties every subset keyed on a region it
//! leaves out.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use serde_json::Value;

pub use super::facts::Paths;
use super::facts::RegionFacts;
use super::{REGION_LABEL, destination_region, route_regions};
use crate::remediation::istio;
use crate::remediation::object::name_of;
use crate::remediation::resolution::Resolver;
use crate::remediation::resolution::hosts::{self, Labels};

/// What a subset's locality labels say of its region: `Some(Some(region))` keyed on a
/// region or zone, `Some(None)` keyed on something that cannot be told (a cluster or network
/// name says nothing of its region), `None` not keyed on a locality.
pub fn keyed_region(labels: &Labels) -> Option<Option<String>> {
    labels.iter().find_map(|(key, value)| match key.as_str() {
        REGION_LABEL | "failure-domain.beta.kubernetes.io/region" => Some(Some(value.clone())),
        "topology.kubernetes.io/zone" | "failure-domain.beta.kubernetes.io/zone" => {
            // An AWS zone is its region and a letter (`us-east-1a`).
            Some(Some(
                value
                    .trim_end_matches(|c: char| c.is_ascii_lowercase())
                    .to_owned(),
            ))
        }
        "topology.istio.io/cluster" | "topology.istio.io/network" => Some(None),
        _ => None,
    })
}

/// Whether `destination` (fully qualified) is a per-region Service of `host`:
/// `frontend-us-west-2.shop.svc.cluster.local` for `frontend.shop.svc.cluster.local`.
pub fn regional_variant(destination: &str, host: &str) -> bool {
    let (Some((name, domain)), Some((own, own_domain))) =
        (destination.split_once('.'), host.split_once('.'))
    else {
        return false;
    };
    domain == own_domain
        && name
            .strip_prefix(own)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(super::looks_like_region)
}

/// Whether a VirtualService carries the service's requests: it routes its host, sends to
/// it, or sends to one of its per-region Services.
pub fn carries(vs: &DynamicObject, host: &str) -> bool {
    let namespace = istio::namespace_of(vs);
    hosts::routes_host(vs, host)
        || route_lists(vs).any(|(_, _, route)| {
            destinations(route).iter().any(|d| {
                hosts::destination_host(d).is_some_and(|h| {
                    let h = hosts::qualify(h, namespace);
                    h == host || regional_variant(&h, host)
                })
            })
        })
}

fn route_lists(vs: &DynamicObject) -> impl Iterator<Item = (&'static str, usize, &Value)> {
    let spec = istio::spec(vs);
    ["http", "tcp", "tls"].into_iter().flat_map(move |kind| {
        spec.and_then(|s| s.get(kind))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .map(move |(index, route)| (kind, index, route))
    })
}

fn destinations(route: &Value) -> &[Value] {
    route
        .get("route")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn route_name(kind: &str, index: usize, route: &Value) -> String {
    route.get("name").and_then(Value::as_str).map_or_else(
        || format!("{kind} route {index}"),
        |n| format!("{kind} route {n}"),
    )
}

/// Reads every route of `services` for the service `host`.
/// `subsets`: the service's subsets by name, with their labels.
pub fn paths(
    services: &[DynamicObject],
    host: &str,
    subsets: &BTreeMap<String, Labels>,
    degraded: &str,
    facts: &RegionFacts,
) -> Paths {
    let mut out = Paths::default();
    out.routed.insert(None);
    let carriers: Vec<&DynamicObject> = services.iter().filter(|vs| carries(vs, host)).collect();
    if !carriers.iter().any(|vs| {
        hosts::routes_host(vs, host) && hosts::binds_mesh(vs) && hosts::exported_everywhere(vs)
    }) {
        out.unpinned.push(format!(
            "sidecars that no VirtualService for {host} reaches take the Service's default route, to every region"
        ));
    }
    for vs in carriers {
        let namespace = istio::namespace_of(vs);
        let owned = facts.changeable.changes(vs);
        for (kind, index, route) in route_lists(vs) {
            let destinations = destinations(route);
            // The weights lever moves the degraded region's share of a region split of an
            // opted-in VirtualService.
            let shifted = owned
                && destinations.len() > 1
                && route_regions(destinations, degraded, facts).is_some();
            let what = format!(
                "VirtualService {} ({namespace}) {}",
                name_of(vs),
                route_name(kind, index, route)
            );
            for destination in destinations {
                // A route with one destination sends it everything, whatever its weight.
                if destinations.len() > 1 && istio::weight(destination) == 0 {
                    continue;
                }
                if hosts::destination_host(destination)
                    .is_some_and(|h| hosts::qualify(h, namespace) == host)
                {
                    out.routed
                        .insert(hosts::destination_subset(destination).map(str::to_owned));
                }
                if let Some(why) = classify(
                    destination,
                    namespace,
                    shifted,
                    host,
                    subsets,
                    degraded,
                    facts,
                ) {
                    let name = match hosts::destination_subset(destination) {
                        Some(subset) => format!("subset {subset}"),
                        None => istio::destination_name(destination),
                    };
                    match why {
                        Reach::Everywhere => out
                            .unpinned
                            .push(format!("{what} sends to {name}, in every region")),
                        Reach::Stays(detail) => out.unmoved.push(format!(
                            "{what} sends to {name}{detail}, and neither lever moves it (only a region split of a VirtualService the function changes, labelled auto_remediation=active, is shifted)"
                        )),
                        Reach::Emptied(detail) => out
                            .emptied
                            .push(format!("{what} sends to {name}{detail}")),
                    }
                }
            }
        }
    }
    if let Some(service) = facts.endpoints.as_ref().map(|e| &e.service)
        && !out.unpinned.is_empty()
        && !service.is_empty()
        && service
            .iter()
            .all(|r| facts.drain_keeps(r, degraded).is_err())
    {
        let names: Vec<&str> = service.iter().map(String::as_str).collect();
        out.unmoved.push(format!(
            "the ready pods of {host} run in {} only, which a drain leaves out: it would leave its requests no endpoint",
            names.join(", ")
        ));
    }
    out
}

/// What the endpoints say of a destination's region, like a subset keyed on it: the one
/// region all its ready endpoints run in; `Some(None)` when they run only in regions the
/// drain leaves out (it would leave the destination no endpoint); `None` when they run in
/// several regions, some kept, or nothing is known.
fn by_endpoints(
    destination: &Value,
    degraded: &str,
    facts: &RegionFacts,
) -> Option<Option<String>> {
    let regions = facts
        .endpoints
        .as_ref()?
        .regions(hosts::destination_subset(destination))?;
    let kept = |region: &String| facts.drain_keeps(region, degraded).is_ok();
    match regions.len() {
        0 => None,
        1 => regions.first().cloned().map(Some),
        _ if !regions.iter().any(kept) => Some(None),
        _ => None,
    }
}

/// Where one destination's requests go, when a lever matters for them.
enum Reach {
    Everywhere,
    Stays(String),
    Emptied(String),
}

fn classify(
    destination: &Value,
    namespace: &str,
    shifted: bool,
    host: &str,
    subsets: &BTreeMap<String, Labels>,
    degraded: &str,
    facts: &RegionFacts,
) -> Option<Reach> {
    let to = hosts::qualify(hosts::destination_host(destination)?, namespace);
    if to != host {
        // Another host in the degraded region (`frontend-us-east-1`): a drain of the
        // service's own endpoints does not reach it.
        let region = destination_region(destination, degraded, facts);
        return (!shifted && region.as_deref() == Some(degraded))
            .then(|| Reach::Stays(format!(" in {degraded}")));
    }
    let labels = hosts::destination_subset(destination).and_then(|s| subsets.get(s));
    let by_labels = labels.and_then(keyed_region);
    let pods = by_labels
        .is_none()
        .then(|| {
            let regions = facts
                .endpoints
                .as_ref()?
                .regions(hosts::destination_subset(destination))?;
            let names: Vec<&str> = regions.iter().map(String::as_str).collect();
            Some(format!(
                ", whose ready pods run in {} only",
                names.join(", ")
            ))
        })
        .flatten()
        .unwrap_or_default();
    let shown = || {
        let labels = labels.map_or_else(String::new, |labels| {
            let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(" ({})", pairs.join(","))
        });
        format!("{labels}{pods}")
    };
    let keyed = by_labels.or_else(|| by_endpoints(destination, degraded, facts));
    match keyed {
        None => Some(Reach::Everywhere),
        // The weights lever takes the degraded region's share away.
        Some(Some(region)) if region == degraded => (!shifted).then(|| Reach::Stays(shown())),
        Some(Some(region)) => facts.drain_keeps(&region, degraded).err().map(|why| {
            Reach::Emptied(format!(
                "{}, in {region}, which the drain leaves out ({why})",
                shown()
            ))
        }),
        Some(None) if !pods.is_empty() => Some(Reach::Stays(format!(
            "{}, and the drain leaves those regions out",
            shown()
        ))),
        Some(None) => Some(Reach::Stays(format!(
            "{}, which may be in {degraded}",
            shown()
        ))),
    }
}

/// Regions whose subsets some clients cannot reach: the `distribute` those clients take
/// (from the rule Istio resolves for them) gives the region no share, so its subset has no
/// endpoint for them. Weight moved to such a subset fails their requests; region -> why.
pub fn stranded(
    rules: &[DynamicObject],
    host: &str,
    root: &str,
    subset_regions: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let resolver = Resolver::new(rules, host, Resolver::service_namespace_of(host), root);
    let mut out = BTreeMap::new();
    for client in resolver.clients() {
        let Some(merged) = resolver.resolve(&client) else {
            continue;
        };
        let top = merged.policy();
        for (subset, region) in subset_regions {
            if out.contains_key(region) {
                continue;
            }
            let Some(definition) = merged.subset(subset) else {
                continue;
            };
            let own = &definition["trafficPolicy"];
            let balancer = if own.get("loadBalancer").is_some() {
                own
            } else {
                &top
            };
            let settings = std::iter::once(&balancer["loadBalancer"]).chain(
                [&top, own]
                    .into_iter()
                    .filter_map(|p| p.get("portLevelSettings").and_then(Value::as_array))
                    .flatten()
                    .map(|entry| &entry["loadBalancer"]),
            );
            for setting in settings.map(|lb| &lb["localityLbSetting"]) {
                if setting.get("enabled") == Some(&Value::Bool(false)) {
                    continue;
                }
                let entries = setting.get("distribute").and_then(Value::as_array);
                let missing = entries.into_iter().flatten().find(|entry| {
                    !entry
                        .get("to")
                        .and_then(Value::as_object)
                        .is_some_and(|to| {
                            to.iter().any(|(locality, weight)| {
                                locality.split('/').next() == Some(region.as_str())
                                    && weight.as_u64().unwrap_or(0) > 0
                            })
                        })
                });
                if let Some(entry) = missing {
                    out.insert(
                        region.clone(),
                        format!(
                            "subset {subset} has no endpoint for {} from {}: the localityLbSetting.distribute they take gives {region} no share",
                            client.describe(),
                            entry["from"].as_str().unwrap_or("*")
                        ),
                    );
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
