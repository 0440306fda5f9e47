//! Where a traffic-policy change goes so that every client of a host takes it: the rules
//! Istio resolves for each class of client ([`super`]), the levels of them it
//! reads, and what stops the change from being in force for all. Used by every remediation
//! that changes DestinationRules (the breaker, the locality drain).
//!
//! A rule's top level is written only where it is the policy Istio keeps for some client
//! (the oldest that sets one, or the first rule when none does); a subset only where its
//! definition is the one used. After the simulated writes every client class must take the
//! change, and nothing else in its policy may move (writing a top level into an older rule
//! that had none would replace a newer rule's policy): otherwise nothing is written.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::DynamicObject;
use serde_json::Value;

use super::hosts::{self, PolicyLevel};
use super::{Client, Merged, Resolver};
use crate::remediation::object::{self, name_of};

/// Where in one rule the change is written.
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

    /// Whether the policy level named `name` by [`hosts::for_each_policy_level`] is written.
    pub fn covers(&self, level: PolicyLevel, name: &str) -> bool {
        match level {
            PolicyLevel::Top => self.top,
            PolicyLevel::Port => {
                self.top && name.starts_with("trafficPolicy")
                    || self
                        .subsets
                        .iter()
                        .any(|s| name.starts_with(&format!("subset {s} ")))
            }
            PolicyLevel::Subset => self.subsets.iter().any(|s| name == format!("subset {s}")),
        }
    }
}

/// A change to DestinationRules' traffic policies.
pub trait PolicyChange {
    /// The function making it, for messages.
    fn function(&self) -> &'static str;

    /// `{"trafficPolicy", "subsets"}` of `rule` with the change written where `writes` says.
    fn written(&self, rule: &DynamicObject, writes: &Writes) -> Value;

    /// Whether the change is in force in `policy`, a level of the kind `level`.
    fn in_force(&self, policy: &Value, level: PolicyLevel) -> bool;

    /// `policy` without the fields the change writes.
    fn beside(&self, policy: &Value) -> Value;
}

/// `policy` without the blocks `blocks` (and, with `locality`, without
/// `loadBalancer.localityLbSetting`), at the top level and in every port-level entry; what
/// is left empty counts as absent.
pub fn without(policy: &Value, blocks: &[&str], locality: bool) -> Value {
    let strip = |level: &mut Value| {
        if let Some(map) = level.as_object_mut() {
            for block in blocks {
                map.remove(*block);
            }
        }
        if locality && let Some(lb) = level.get_mut("loadBalancer").and_then(Value::as_object_mut) {
            lb.remove("localityLbSetting");
        }
        if level
            .get("loadBalancer")
            .and_then(Value::as_object)
            .is_some_and(|lb| lb.is_empty())
            && let Some(map) = level.as_object_mut()
        {
            map.remove("loadBalancer");
        }
    };
    let mut rest = policy.clone();
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

/// The alert's view for planning across every client.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The host, fully qualified.
    pub host: &'a str,
    /// The alert's namespace (how it names the host).
    pub namespace: &'a str,
    /// Namespace of the host's Service or ServiceEntry, when known.
    pub service_namespace: Option<&'a str>,
    /// Istio's root namespace.
    pub root: &'a str,
    /// The namespaces the function may change objects in.
    pub changeable: &'a object::Namespaces,
}

impl Scope<'_> {
    /// Whether the function writes `rule`: opted in, in a namespace it may change, for the
    /// host.
    pub fn writable(&self, rule: &DynamicObject) -> bool {
        self.changeable.changes(rule) && hosts::rule_host_is(rule, self.host)
    }

    fn unwritable(&self, rule: &DynamicObject, _function: &str) -> String {
        self.changeable
            .why_unchanged(rule)
            .unwrap_or_else(|| "its host is not the alert's host as written".to_owned())
    }
}

/// What the change does to the rules of the host, for every client.
#[derive(Debug)]
pub struct Outlook {
    /// Where each rule that will be written gets the change, by `namespace/name`.
    pub writes: BTreeMap<String, Writes>,
    /// Why the change would not be in force for some clients; empty when it is for all.
    pub gaps: Vec<String>,
}

impl Outlook {
    /// The refusal for all gaps, if there are any.
    pub fn refusal(&self, what: &str) -> Option<String> {
        let first = self.gaps.first()?;
        let more = match self.gaps.len() {
            1 => String::new(),
            n => format!(" (and {} more: {})", n - 1, self.gaps[1..].join("; ")),
        };
        Some(format!(
            "{what} would not be in force for every client, so nothing is changed: {first}{more}"
        ))
    }
}

/// Plans where `change` goes in `rules` (every DestinationRule of the cluster) so that every
/// client of the host takes it, and what would stop that.
pub fn outlook(change: &impl PolicyChange, rules: &[DynamicObject], scope: &Scope<'_>) -> Outlook {
    let resolver = Resolver::new(rules, scope.host, scope.service_namespace, scope.root);
    let mut writes: BTreeMap<String, Writes> = BTreeMap::new();
    let mut before: Vec<(Client, Merged<'_>)> = Vec::new();
    let mut gaps = Vec::new();
    for client in resolver.clients() {
        let Some(merged) = resolver.resolve(&client) else {
            gaps.push(format!(
                "{} use no DestinationRule for {}: no rule can carry the change for their calls (export one to them, or define one in the host's namespace or {})",
                client.describe(),
                scope.host,
                scope.root
            ));
            continue;
        };
        let top = merged
            .policy_from
            .or_else(|| merged.rules.iter().copied().find(|r| scope.writable(r)));
        if let Some(rule) = top.filter(|r| scope.writable(r)) {
            writes.entry(name_of(rule)).or_default().top = true;
        }
        for (subset, rule) in &merged.subsets {
            if scope.writable(rule) {
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
                let written = change.written(r, w);
                let mut copy = r.clone();
                for key in ["trafficPolicy", "subsets"] {
                    if !written[key].is_null() {
                        copy.data["spec"][key] = written[key].clone();
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
        if let Some(after) = resolver_after.resolve(client) {
            gaps.extend(gaps_of(change, client, merged, &after, scope));
        }
    }
    gaps.sort();
    gaps.dedup();
    Outlook { writes, gaps }
}

fn ports_in_force(change: &impl PolicyChange, policy: &Value) -> bool {
    policy
        .get("portLevelSettings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|entry| change.in_force(entry, PolicyLevel::Port))
}

/// Why the change is not in force for `client` after the writes.
fn gaps_of(
    change: &impl PolicyChange,
    client: &Client,
    before: &Merged<'_>,
    after: &Merged<'_>,
    scope: &Scope<'_>,
) -> Vec<String> {
    let who = client.describe();
    let function = change.function();
    let mut gaps = Vec::new();
    let policy = after.policy();
    if !change.in_force(&policy, PolicyLevel::Top) || !ports_in_force(change, &policy) {
        gaps.push(match after.policy_from.or_else(|| after.rules.first().copied()) {
            Some(rule) => format!(
                "{who} take the traffic policy for {} from DestinationRule {} (the oldest rule that sets one, by Istio's merge), which {function} cannot change: {}",
                scope.host,
                name_of(rule),
                scope.unwritable(rule, function)
            ),
            None => format!("{who} take no traffic policy for {}", scope.host),
        });
    } else if change.beside(&before.policy()) != change.beside(&policy) {
        gaps.push(format!(
            "writing it would replace the rest of the traffic policy {who} take for {} (from DestinationRule {}) with that of DestinationRule {}, which Istio would then merge first",
            scope.host,
            before
                .policy_from
                .map(name_of)
                .unwrap_or_else(|| "none".into()),
            after.policy_from.map(name_of).unwrap_or_default()
        ));
    }
    for (name, rule) in &after.subsets {
        let Some(own) = after.subset(name).and_then(|s| s.get("trafficPolicy")) else {
            continue;
        };
        if !change.in_force(own, PolicyLevel::Subset) || !ports_in_force(change, own) {
            gaps.push(format!(
                "{who} take subset {name} of {} from DestinationRule {}, whose own policy replaces the top level's and which {function} cannot change: {}",
                scope.host,
                name_of(rule),
                scope.unwritable(rule, function)
            ));
        }
    }
    gaps
}
