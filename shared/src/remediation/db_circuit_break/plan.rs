//! Planning the breaker: where in each rule Istio will read it (the top level, port-level
//! entries, the blocks a subset sets), and whether the rules written put it in force for
//! every client of the database host (resolution by [`crate::remediation::resolution`]).

use std::collections::{BTreeMap, BTreeSet};

use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::settings::{CircuitBreaker, LocalityLb};
use crate::remediation::hosts::{self, PolicyLevel};
use crate::remediation::istio;
use crate::remediation::object::{self, name_of, namespace_of};
use crate::remediation::resolution::{Client, Merged, Resolver};
use crate::remediation::{Plan, Refusal};

/// Where in one rule the breaker is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    /// The top-level policy (and its port-level entries): some client takes it.
    pub top: bool,
    /// The subsets whose definition some client takes.
    pub subsets: BTreeSet<String>,
}

impl Writes {
    /// Everything: a rule planned on its own.
    pub fn all(object: &DynamicObject) -> Writes {
        let subsets = object::spec(object)
            .and_then(|s| s.get("subsets"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .collect();
        Writes { top: true, subsets }
    }
}

/// One rule with the breaker written where `writes` says.
#[derive(Debug, Clone)]
pub struct Written {
    /// `{"trafficPolicy", "subsets"}` before.
    pub previous: Value,
    /// The same after.
    pub after: Value,
    /// The policy levels changed besides the top level, for the summary.
    pub levels: Vec<String>,
    /// Levels whose locality setting wakes up now that outlier detection is on.
    pub woken: Vec<String>,
}

/// Limits a rule already sets stricter than the breaker's stay: the breaker never loosens.
const LIMITS: [&str; 2] = ["/tcp/maxConnections", "/http/http1MaxPendingRequests"];

/// Whether a locality setting changes where traffic goes once outlier detection is on:
/// failover (explicit or Istio's default by locality) acts only with outlier detection;
/// `distribute` acts without it, and `enabled: false` switches it off.
fn wakes(locality: Option<&Value>) -> bool {
    let Some(setting) = locality else {
        return false;
    };
    let distributes = setting
        .get("distribute")
        .and_then(Value::as_array)
        .is_some_and(|d| !d.is_empty());
    setting.get("enabled") != Some(&json!(false)) && !distributes
}

impl CircuitBreaker {
    /// The rule's policy fragment with the breaker written where `writes` says; pure.
    pub fn write(&self, object: &DynamicObject, writes: &Writes) -> Written {
        let previous = istio::fragment(object, ["trafficPolicy", "subsets"]);
        let mut after = previous.clone();
        let top_detects = previous
            .pointer("/trafficPolicy/outlierDetection")
            .is_some();
        let top_locality = previous
            .pointer("/trafficPolicy/loadBalancer/localityLbSetting")
            .cloned();
        let mut levels = Vec::new();
        let mut woken = Vec::new();
        hosts::for_each_policy_level(&mut after, |policy, level, name| {
            let wanted = match level {
                PolicyLevel::Top => writes.top,
                PolicyLevel::Port => {
                    writes.top && name.starts_with("trafficPolicy")
                        || writes
                            .subsets
                            .iter()
                            .any(|s| name.starts_with(&format!("subset {s} ")))
                }
                PolicyLevel::Subset => writes.subsets.iter().any(|s| name == format!("subset {s}")),
            };
            if !wanted {
                return;
            }
            let before = policy.clone();
            let detected = match level {
                PolicyLevel::Subset => policy.get("outlierDetection").is_some() || top_detects,
                _ => policy.get("outlierDetection").is_some(),
            };
            let locality = match level {
                PolicyLevel::Subset if policy.get("loadBalancer").is_none() => top_locality.clone(),
                _ => policy.pointer("/loadBalancer/localityLbSetting").cloned(),
            };
            // A subset's policy overrides block by block: only the blocks it sets need the
            // breaker. The top level and port entries (which inherit nothing) get all of it.
            self.set_blocks(policy, level != PolicyLevel::Subset);
            if !detected && policy.get("outlierDetection").is_some() && wakes(locality.as_ref()) {
                woken.push(name.to_owned());
            }
            if level != PolicyLevel::Top && *policy != before {
                levels.push(name.to_owned());
            }
        });
        if !writes.top {
            // No client takes this rule's top level: it stays as it was.
            after["trafficPolicy"] = previous["trafficPolicy"].clone();
        }
        Written {
            previous,
            after,
            levels,
            woken,
        }
    }

    /// `whole`: every block (a level that inherits nothing); else only the blocks set.
    fn set_blocks(&self, level: &mut Value, whole: bool) {
        let wanted = self.policy_patch();
        for block in ["connectionPool", "outlierDetection"] {
            if whole || level.get(block).is_some() {
                let current = level.get(block).cloned().unwrap_or_else(|| json!({}));
                level[block] = keep_stricter(&current, &wanted[block]);
            }
        }
        let has_locality = level.pointer("/loadBalancer/localityLbSetting").is_some();
        if self.locality_lb == LocalityLb::Preserve
            && !has_locality
            && (whole || level.get("loadBalancer").is_some())
        {
            level["loadBalancer"]["localityLbSetting"] = json!({"enabled": false});
        }
    }

    /// Whether the breaker is in force in `policy` (a level of the kind `whole` says): writing
    /// it again would change nothing.
    pub fn in_force(&self, policy: &Value, whole: bool) -> bool {
        let mut again = if policy.is_null() {
            json!({})
        } else {
            policy.clone()
        };
        self.set_blocks(&mut again, whole);
        again == *policy
    }
}

/// The breaker's values, except where the rule is already stricter: lower connection and
/// pending-request limits, a shorter connect timeout, fewer consecutive errors (a
/// `consecutive5xxErrors: 0` is ejection switched off, not a strict limit).
fn keep_stricter(current: &Value, wanted: &Value) -> Value {
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
    if let (Some(old), Some(slot)) = (
        current.get("consecutive5xxErrors").and_then(Value::as_u64),
        out.get_mut("consecutive5xxErrors"),
    ) && old > 0
        && slot.as_u64().is_some_and(|new| old < new)
    {
        *slot = json!(old);
    }
    let nanos = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(|d| istio::duration_nanos(d).ok())
    };
    if let (Some(old), Some(new)) = (
        nanos(current.pointer("/tcp/connectTimeout")),
        nanos(out.pointer("/tcp/connectTimeout")),
    ) && old < new
    {
        out["tcp"]["connectTimeout"] = current["tcp"]["connectTimeout"].clone();
    }
    out
}

/// The alert's view for planning across every client.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The database host, fully qualified.
    pub host: &'a str,
    /// The alert's namespace: the rules there that are opted in are the ones written.
    pub namespace: &'a str,
    /// Namespace of the host's Service or ServiceEntry, when known.
    pub service_namespace: Option<&'a str>,
    /// Istio's root namespace.
    pub root: &'a str,
}

/// What the breaker does to the rules of the host, for every client.
#[derive(Debug)]
pub struct Outlook {
    /// Where each rule that will be written gets the breaker, by `namespace/name`.
    pub writes: BTreeMap<String, Writes>,
    /// Why the breaker would not be in force for some clients; empty when it is for all.
    pub gaps: Vec<String>,
}

/// Why a rule that a client takes cannot be written.
fn unwritable(rule: &DynamicObject, scope: &Scope<'_>) -> String {
    if namespace_of(rule) != scope.namespace {
        format!(
            "it is in namespace {}, and db-circuit-break changes the rules in the alert's namespace {} only",
            namespace_of(rule),
            scope.namespace
        )
    } else if !object::opted_in(rule) {
        "it is not labelled auto_remediation=active".to_owned()
    } else {
        "its host is not the alert's db_host as written".to_owned()
    }
}

/// Everything of a policy except what the breaker writes.
fn beside_breaker(policy: &Value) -> Value {
    let mut rest = policy.clone();
    let strip = |level: &mut Value| {
        if let Some(map) = level.as_object_mut() {
            map.remove("connectionPool");
            map.remove("outlierDetection");
        }
        if let Some(lb) = level.get_mut("loadBalancer").and_then(Value::as_object_mut) {
            lb.remove("localityLbSetting");
            if lb.is_empty()
                && let Some(map) = level.as_object_mut()
            {
                map.remove("loadBalancer");
            }
        }
    };
    strip(&mut rest);
    for entry in rest
        .get_mut("portLevelSettings")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        strip(entry);
    }
    if rest.as_object().is_some_and(|m| m.is_empty()) {
        Value::Null
    } else {
        rest
    }
}

impl CircuitBreaker {
    /// Plans where the breaker goes in `rules` (every DestinationRule of the cluster) so
    /// that every client of the host takes it, and what would stop that.
    pub fn outlook(&self, rules: &[DynamicObject], scope: &Scope<'_>) -> Outlook {
        let writable = |r: &DynamicObject| {
            namespace_of(r) == scope.namespace
                && object::opted_in(r)
                && hosts::rule_host_is(r, scope.host)
        };
        let resolver = Resolver::new(rules, scope.host, scope.service_namespace, scope.root);
        let clients = resolver.clients();
        let mut writes: BTreeMap<String, Writes> = BTreeMap::new();
        let mut before: Vec<(Client, Merged<'_>)> = Vec::new();
        let mut gaps = Vec::new();
        for client in clients {
            let Some(merged) = resolver.resolve(&client) else {
                gaps.push(format!(
                    "{} use no DestinationRule for {}: no rule can put a breaker in front of their calls (export one to them, or define one in the host's namespace or {})",
                    client.describe(),
                    scope.host,
                    scope.root
                ));
                continue;
            };
            let top = merged
                .policy_from
                .or_else(|| merged.rules.iter().copied().find(|r| writable(r)));
            if let Some(rule) = top.filter(|r| writable(r)) {
                writes.entry(name_of(rule)).or_default().top = true;
            }
            for (subset, rule) in &merged.subsets {
                if writable(rule) {
                    writes
                        .entry(name_of(rule))
                        .or_default()
                        .subsets
                        .insert(subset.clone());
                }
            }
            before.push((client, merged));
        }
        let after_rules: Vec<DynamicObject> = rules
            .iter()
            .map(|r| match writes.get(&name_of(r)) {
                Some(w) => {
                    let written = self.write(r, w);
                    let mut copy = r.clone();
                    for key in ["trafficPolicy", "subsets"] {
                        if !written.after[key].is_null() {
                            copy.data["spec"][key] = written.after[key].clone();
                        }
                    }
                    copy
                }
                None => r.clone(),
            })
            .collect();
        let resolver_after = Resolver::new(
            &after_rules,
            scope.host,
            scope.service_namespace,
            scope.root,
        );
        for (client, merged) in &before {
            let Some(after) = resolver_after.resolve(client) else {
                continue;
            };
            gaps.extend(self.gaps_of(client, merged, &after, scope));
        }
        gaps.sort();
        gaps.dedup();
        Outlook { writes, gaps }
    }

    /// Why the breaker is not in force for `client` after the writes.
    fn gaps_of(
        &self,
        client: &Client,
        before: &Merged<'_>,
        after: &Merged<'_>,
        scope: &Scope<'_>,
    ) -> Vec<String> {
        let who = client.describe();
        let mut gaps = Vec::new();
        let policy = after.policy();
        if !self.in_force(&policy, true) || !ports_in_force(self, &policy) {
            let rule = after.policy_from.or_else(|| after.rules.first().copied());
            gaps.push(match rule {
                Some(rule) => format!(
                    "{who} take the traffic policy for {} from DestinationRule {} (the oldest rule that sets one, by Istio's merge), which cannot get the breaker: {}",
                    scope.host,
                    name_of(rule),
                    unwritable(rule, scope)
                ),
                None => format!("{who} take no traffic policy for {}", scope.host),
            });
        } else if beside_breaker(&before.policy()) != beside_breaker(&policy) {
            gaps.push(format!(
                "writing the breaker would replace the rest of the traffic policy {who} take for {} (from DestinationRule {}) with that of DestinationRule {}, which Istio would then merge first",
                scope.host,
                before.policy_from.map(name_of).unwrap_or_else(|| "none".into()),
                after.policy_from.map(name_of).unwrap_or_default()
            ));
        }
        for (name, rule) in &after.subsets {
            let Some(own) = after.subset(name).and_then(|s| s.get("trafficPolicy")) else {
                continue;
            };
            if !self.in_force(own, false) || !ports_in_force(self, own) {
                gaps.push(format!(
                    "{who} take subset {name} of {} from DestinationRule {}, whose own policy replaces the breaker and cannot get it: {}",
                    scope.host,
                    name_of(rule),
                    unwritable(rule, scope)
                ));
            }
        }
        gaps
    }
}

fn ports_in_force(breaker: &CircuitBreaker, policy: &Value) -> bool {
    policy
        .get("portLevelSettings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|entry| breaker.in_force(entry, true))
}

/// The plan for one rule from the outlook; pure.
pub fn plan_rule(
    breaker: &CircuitBreaker,
    object: &DynamicObject,
    writes: &Writes,
) -> Result<Plan, Refusal> {
    let written = breaker.write(object, writes);
    if written.after == written.previous {
        return Err(Refusal::Skip(
            "circuit breaker already set as configured".into(),
        ));
    }
    // Record only what changes: `subsets` is left out when no subset changes.
    let (previous, applied) = hosts::recorded_policy(&written.previous, &written.after);
    let mut summary = breaker.summary();
    if !written.levels.is_empty() {
        summary.push_str(&format!(
            "; also where Istio would replace them: {}",
            written.levels.join(", ")
        ));
    }
    if !writes.top {
        summary.push_str(
            "; the top-level policy is left alone: Istio takes another rule's for every client",
        );
    }
    summary.push_str(&match (breaker.locality_lb, written.woken.is_empty()) {
        (LocalityLb::Preserve, true) => "; locality-prioritised load balancing kept off where the rule did not set it (CB_LOCALITY_LB=preserve), so traffic spreads across regions as before".to_owned(),
        (LocalityLb::Preserve, false) => format!(
            "; the locality failover set at {} acts only with outlier detection and is now active: clients prefer endpoints in their own region and fail over as it says (CB_LOCALITY_LB=preserve keeps off only what the rule did not set)",
            written.woken.join(", ")
        ),
        (LocalityLb::Prioritize, _) => "; outlier detection switches on locality-prioritised load balancing: clients now prefer endpoints in their own region (CB_LOCALITY_LB=prioritize)".to_owned(),
    });
    Ok(Plan {
        patch: json!({ "spec": istio::merge_diff(&previous, &applied) }),
        summary,
        action: "CircuitBreak",
        previous: Some(previous),
        applied: Some(applied),
    })
}
