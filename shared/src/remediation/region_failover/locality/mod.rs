//! The DestinationRule lever, for services no VirtualService splits per region: an active
//! drain with `localityLbSetting.distribute`. Every client (`from: "*"`) sends its calls to
//! the healthy regions in equal shares and none to the degraded one, at once and whether or
//! not the degraded region's pods still answer (a `failover` entry would only act after
//! outlier detection ejected them, and only for clients in the degraded region).

use kube::api::DynamicObject;
use serde_json::{Map, Value, json};

use super::RegionFailover;
use super::facts::RegionFacts;
use crate::remediation::istio;
use crate::remediation::object::name_of;
use crate::remediation::resolution::hosts::{self, PolicyLevel};
use crate::remediation::resolution::placement::{self, PolicyChange, Scope, Writes};
use crate::remediation::{Plan, Refusal};

/// `distribute` weights: 100 split equally over `regions` (the remainder to the first
/// ones), keyed `<region>/*` as Istio's localities are.
pub fn equal_shares(regions: &[String]) -> Map<String, Value> {
    let count = regions.len().max(1) as u64;
    regions
        .iter()
        .enumerate()
        .map(|(i, region)| {
            let extra = u64::from((i as u64) < 100 % count);
            (format!("{region}/*"), json!(100 / count + extra))
        })
        .collect()
}

/// The region of a locality (`us-east-1/us-east-1a/*` -> `us-east-1`).
fn region_of(locality: &str) -> &str {
    locality.split('/').next().unwrap_or_default()
}

/// The `distribute` entries after draining `degraded`. Without entries: one from every
/// locality to the healthy regions in equal shares. With entries (a distribution per client
/// locality): each keeps its shares, the degraded region's moved to the entry's healthy
/// regions in proportion (to all healthy regions equally when the entry has none), and
/// the known regions no entry's `from` names get the equal shares, so no client is left on
/// the default. Clients whose entries do not send to the degraded region keep theirs.
///
/// `prioritized`: outlier detection is on and the locality preference acts (each client
/// calls its own region first): the clients of each healthy region keep calling it alone,
/// and the degraded region's clients get the equal shares.
fn drained(
    existing: Option<&[Value]>,
    degraded: &str,
    healthy: &[String],
    facts: &RegionFacts,
    prioritized: bool,
) -> Value {
    let equal = Value::Object(equal_shares(healthy));
    let Some(entries) = existing.filter(|e| !e.is_empty()) else {
        if prioritized {
            let mut out: Vec<Value> = healthy
                .iter()
                .map(|r| json!({"from": format!("{r}/*"), "to": {format!("{r}/*"): 100}}))
                .collect();
            out.push(json!({"from": format!("{degraded}/*"), "to": equal}));
            return Value::Array(out);
        }
        return json!([{"from": "*", "to": equal}]);
    };
    let mut out: Vec<Value> = entries
        .iter()
        .map(|entry| {
            let Some(to) = entry.get("to").and_then(Value::as_object) else {
                return entry.clone();
            };
            let keys: Vec<&String> = to.keys().collect();
            let weights: Vec<i64> = to.values().map(|w| w.as_i64().unwrap_or(0)).collect();
            let regions: Vec<String> = keys.iter().map(|k| region_of(k).to_owned()).collect();
            let mut entry = entry.clone();
            entry["to"] = match super::shift_weights(&weights, &regions, degraded, |r| {
                facts.healthy(r).is_ok()
            }) {
                Some(new) => Value::Object(
                    keys.iter()
                        .zip(new)
                        // Istio takes weights of 1 to 100 only; a locality left out gets none.
                        .filter(|(k, w)| region_of(k) != degraded && *w > 0)
                        .map(|(k, w)| ((*k).clone(), json!(w)))
                        .collect(),
                ),
                None => equal.clone(),
            };
            entry
        })
        .collect();
    let named = |region: &str| {
        entries.iter().any(|e| {
            e.get("from")
                .and_then(Value::as_str)
                .is_some_and(|from| from == "*" || region_of(from) == region)
        })
    };
    for region in std::iter::once(degraded).chain(facts.known_regions.iter().map(String::as_str)) {
        if !named(region) && !out.iter().any(|e| e["from"] == format!("{region}/*")) {
            out.push(json!({"from": format!("{region}/*"), "to": equal}));
        }
    }
    Value::Array(out)
}

/// The drain as a change to DestinationRules, for [`placement`].
pub struct Drain<'a> {
    /// The degraded region.
    pub degraded: &'a str,
    /// The regions that take its traffic.
    pub healthy: Vec<String>,
    /// What the alert's checks learnt.
    pub facts: &'a RegionFacts,
}

/// One rule drained where `writes` says.
struct Drained {
    previous: Value,
    after: Value,
    levels: Vec<String>,
    replaced: Vec<String>,
    per_client: Vec<String>,
    own_region: Vec<String>,
    disabled: Option<String>,
}

impl Drain<'_> {
    fn drain(&self, object: &DynamicObject, writes: &Writes) -> Drained {
        let previous = istio::fragment(object, ["trafficPolicy", "subsets"]);
        let mut after = previous.clone();
        let mut out = Drained {
            previous: Value::Null,
            after: Value::Null,
            levels: Vec::new(),
            replaced: Vec::new(),
            per_client: Vec::new(),
            own_region: Vec::new(),
            disabled: None,
        };
        let top_detects = previous
            .pointer("/trafficPolicy/outlierDetection")
            .is_some();
        hosts::for_each_policy_level(&mut after, |policy, level, name| {
            let detects = policy.get("outlierDetection").is_some()
                || level == PolicyLevel::Subset && top_detects;
            // A subset's policy takes the top level's loadBalancer unless it sets its own;
            // the top level and port entries (which inherit nothing) always need it.
            if !writes.covers(level, name)
                || level == PolicyLevel::Subset && policy.get("loadBalancer").is_none()
            {
                return;
            }
            let setting = &mut policy["loadBalancer"]["localityLbSetting"];
            if setting.get("enabled") == Some(&Value::Bool(false)) {
                out.disabled.get_or_insert_with(|| name.to_owned());
                return;
            }
            if setting.is_null() {
                *setting = json!({});
            }
            if let Some(map) = setting.as_object_mut() {
                if map.remove("failover").is_some() {
                    out.replaced.push(name.to_owned());
                }
                let existing = map.get("distribute").and_then(Value::as_array);
                let distribute = drained(
                    existing.map(Vec::as_slice),
                    self.degraded,
                    &self.healthy,
                    self.facts,
                    detects,
                );
                if existing.is_some_and(|e| !e.is_empty()) {
                    out.per_client.push(name.to_owned());
                } else if detects {
                    out.own_region.push(name.to_owned());
                }
                map.insert("distribute".into(), distribute);
            }
            out.levels.push(name.to_owned());
        });
        if !writes.top {
            after["trafficPolicy"] = previous["trafficPolicy"].clone();
        }
        out.previous = previous;
        out.after = after;
        out
    }

    /// Whether every client locality's `distribute` leaves the degraded region out.
    fn drains(&self, setting: Option<&Value>) -> bool {
        let Some(entries) = setting
            .and_then(|s| s.get("distribute"))
            .and_then(Value::as_array)
            .filter(|e| !e.is_empty())
        else {
            return false;
        };
        let spares = entries.iter().all(|e| {
            e.get("to")
                .and_then(Value::as_object)
                .is_some_and(|to| to.keys().all(|k| region_of(k) != self.degraded))
        });
        let from = |region: &str| {
            entries.iter().any(|e| {
                e["from"]
                    .as_str()
                    .is_some_and(|f| f == "*" || region_of(f) == region)
            })
        };
        spares
            && std::iter::once(self.degraded)
                .chain(self.facts.known_regions.iter().map(String::as_str))
                .all(from)
    }
}

impl PolicyChange for Drain<'_> {
    fn function(&self) -> &'static str {
        "region-failover"
    }

    fn written(&self, rule: &DynamicObject, writes: &Writes) -> Value {
        self.drain(rule, writes).after
    }

    fn in_force(&self, policy: &Value, level: PolicyLevel) -> bool {
        if level == PolicyLevel::Subset && policy.get("loadBalancer").is_none() {
            return true;
        }
        self.drains(policy.pointer("/loadBalancer/localityLbSetting"))
    }

    fn beside(&self, policy: &Value) -> Value {
        placement::without(policy, &[], true)
    }
}

/// A routed subset (or the Service) with ready pods that has none in some healthy region:
/// the clients there, kept in their own region by the drain, would reach no endpoint of it
/// (before, Istio's locality preference sent them on to another region).
fn stranded_by_own_region(facts: &RegionFacts, healthy: &[String]) -> Option<String> {
    let endpoints = facts.endpoints.as_ref()?;
    facts.paths.routed.iter().find_map(|subset| {
        let regions = endpoints.regions(subset.as_deref())?;
        let missing = healthy
            .iter()
            .find(|r| !regions.is_empty() && !regions.contains(*r))?;
        let what = match subset {
            Some(name) => format!("subset {name}"),
            None => "the Service".to_owned(),
        };
        let runs: Vec<&str> = regions.iter().map(String::as_str).collect();
        Some(format!(
            "{what} has ready pods in {} only, none in {missing}",
            runs.join(", ")
        ))
    })
}

impl RegionFailover {
    /// Plans the drain of `degraded` on one DestinationRule on its own, at every level; pure.
    pub fn plan_locality_drain(
        &self,
        object: &DynamicObject,
        degraded: &str,
        facts: &RegionFacts,
    ) -> Result<Plan, Refusal> {
        self.plan_drain(object, degraded, facts, None)
    }

    /// Plans the drain of `degraded` on `object` so that every client of the host takes it
    /// (`scope`: resolution across the cluster's rules in `facts.rules`), or on the rule
    /// alone (`None`); pure.
    pub fn plan_drain(
        &self,
        object: &DynamicObject,
        degraded: &str,
        facts: &RegionFacts,
        scope: Option<&Scope<'_>>,
    ) -> Result<Plan, Refusal> {
        if facts.split_by_virtual_service {
            return Err(Refusal::Skip(
                "every request to the service names its region (VirtualService weights shift them); the DestinationRule is left alone"
                    .into(),
            ));
        }
        let healthy: Vec<String> = facts
            .known_regions
            .iter()
            .filter(|r| *r != degraded && facts.healthy(r).is_ok())
            .cloned()
            .collect();
        if healthy.is_empty() {
            return Err(Refusal::Fail(format!(
                "no healthy region to drain {degraded} to ({}); list the regions in REGION_HEALTH_URLS",
                facts.health_report(degraded, &[])
            )));
        }
        let pinned: Vec<&String> = facts
            .paths
            .unmoved
            .iter()
            .chain(&facts.paths.emptied)
            .collect();
        if let Some(first) = pinned.first() {
            return Err(Refusal::Fail(format!(
                "{first}{}: a drain by locality cannot move those requests (it removes {degraded}'s endpoints, and those of every region it leaves out, from every subset of the service, so they would reach no endpoint there, or they go to another host), so nothing is changed; shift them with VirtualService weights (subsets labelled {}, the VirtualService opted in) or drain by hand",
                super::more(pinned.len()),
                super::REGION_LABEL
            )));
        }
        let drain = Drain {
            degraded,
            healthy: healthy.clone(),
            facts,
        };
        let writes = match scope {
            None => Writes::all(object),
            Some(scope) => {
                let me = name_of(object);
                let mut rules: Vec<DynamicObject> = facts
                    .rules
                    .iter()
                    .filter(|r| name_of(r) != me)
                    .cloned()
                    .collect();
                rules.push(object.clone());
                let outlook = placement::outlook(&drain, &rules, scope);
                if let Some(why) = outlook.refusal("the drain") {
                    return Err(Refusal::Fail(why));
                }
                match outlook.writes.get(&me) {
                    Some(writes) => writes.clone(),
                    None => {
                        return Err(Refusal::Skip(format!(
                            "no client takes this rule's policy for {}: Istio merges it into an older rule or another rule applies (the drain goes where clients read it)",
                            scope.host
                        )));
                    }
                }
            }
        };
        let drained = drain.drain(object, &writes);
        if !drained.own_region.is_empty()
            && let Some(why) = stranded_by_own_region(facts, &healthy)
        {
            return Err(Refusal::Fail(format!(
                "{why}: with outlier detection on, the drain keeps each healthy region's clients in their own region (Istio's locality preference, as before), so those requests would reach no endpoint; nothing is changed"
            )));
        }
        if let Some(name) = drained.disabled {
            return Err(Refusal::Fail(format!(
                "locality load balancing is disabled at {name} (localityLbSetting.enabled: false); not enabling it automatically"
            )));
        }
        if drained.after == drained.previous {
            return Err(Refusal::Skip(format!(
                "already drained: {degraded} gets no share in localityLbSetting.distribute"
            )));
        }
        let (previous, applied) = hosts::recorded_policy(&drained.previous, &drained.after);
        let shares = equal_shares(&healthy)
            .iter()
            .map(|(locality, weight)| format!("{} {weight}%", locality.trim_end_matches("/*")))
            .collect::<Vec<_>>()
            .join(", ");
        let mut summary = if !drained.own_region.is_empty() && drained.per_client.is_empty() {
            format!(
                "drained {degraded}: its clients' calls go to {shares}, and the clients of every other region keep calling their own region, as Istio's locality preference (outlier detection on) had them (localityLbSetting.distribute per region, set at {}; while drained they do not fail over to other regions)",
                drained.own_region.join(", ")
            )
        } else if drained.per_client.is_empty() {
            format!(
                "drained {degraded}: every client's calls go to {shares} (localityLbSetting.distribute from *, set at {})",
                drained.levels.join(", ")
            )
        } else {
            format!(
                "drained {degraded}: each client locality keeps its own localityLbSetting.distribute, with {degraded}'s share moved to its healthy regions in proportion, and localities it did not list go to {shares} (set at {})",
                drained.levels.join(", ")
            )
        };
        if !drained.replaced.is_empty() {
            summary.push_str(&format!(
                "; it replaces the passive localityLbSetting.failover at {} (Istio allows only one; a revert or failback restores it)",
                drained.replaced.join(", ")
            ));
        }
        Ok(Plan {
            patch: json!({"spec": istio::merge_diff(&previous, &applied)}),
            summary,
            action: "Failover",
            previous: Some(previous),
            applied: Some(applied),
        })
    }
}

#[cfg(test)]
mod tests;
