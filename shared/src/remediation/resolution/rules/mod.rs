//! Which DestinationRules Istio applies to a client, and what they merge into: the model
//! every mesh remediation plans DestinationRule changes against. It follows `istiod`
//! (`pilot/pkg/model/push_context.go`: `setDestinationRules`, `mergeDestinationRule`,
//! `destinationRule`; `sidecar.go`: `SidecarScope.DestinationRule`):
//!
//! - **Order.** Rules with a `workloadSelector` first, then oldest first
//!   (`creationTimestamp`), then by name, then by namespace.
//! - **Indexes.** A namespace's *local* rules are those whose `exportTo` is absent or names
//!   `*`, `.` or the namespace itself; its *exported* rules are all but those exported to
//!   their own namespace only. A rule with a `workloadSelector` is private to its namespace.
//! - **Lookup** for a client in namespace N and a host: N's local rules (for a client in
//!   the root namespace: the root's private rules); else the service namespace's exported
//!   rules visible to N; else the root namespace's (`ISTIO_ROOT_NAMESPACE`). A rule in any
//!   other namespace never applies. In each index the most specific host wins (exact, then
//!   the longest wildcard); if it is not exported to N, that index gives nothing.
//! - **Merge.** A rule merges into an older one with the same `exportTo` (or one its own
//!   covers) and the same selector: subsets are concatenated (the first definition of a
//!   name wins) and the top-level `trafficPolicy` is the first one set; later ones are
//!   dropped. Rules that do not merge stay separate entries.
//! - **Selection.** A client takes the first entry of its own namespace whose selector its
//!   labels match, else the last entry without selector, else none at all: a client a
//!   selector misses gets no rule even when the service's namespace has one.

use std::collections::BTreeSet;

use kube::api::DynamicObject;
use serde_json::Value;

use super::hosts::{self, Labels};
use crate::remediation::object::{self, namespace_of};

/// A class of clients that Istio resolves alike.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Client {
    /// The client's namespace; `None`: any namespace that no rule names.
    pub namespace: Option<String>,
    /// The client's workload labels, for rules with a `workloadSelector`; `None`: a
    /// workload no selector matches.
    pub labels: Option<Labels>,
}

impl Client {
    /// The class in words: `clients in namespace shop (workloads app=web)`.
    pub fn describe(&self) -> String {
        let place = match &self.namespace {
            Some(ns) => format!("clients in namespace {ns}"),
            None => "clients in other namespaces".to_owned(),
        };
        match &self.labels {
            Some(labels) => format!(
                "{place} (workloads {})",
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            None => place,
        }
    }
}

/// One rule as resolution sees it.
#[derive(Debug, Clone)]
struct Rule<'a> {
    object: &'a DynamicObject,
    host: String,
    /// `exportTo` as Istio keeps it: the names as written, `.` for a rule with a selector.
    export: BTreeSet<String>,
    selector: Option<Labels>,
}

impl Rule<'_> {
    fn namespace(&self) -> &str {
        namespace_of(self.object)
    }

    /// In its namespace's local index: visible to its own namespace.
    fn local(&self) -> bool {
        self.export.is_empty()
            || self.export.contains("*")
            || self.export.contains(".")
            || self.export.contains(self.namespace())
    }

    /// Exported to its own namespace only (a rule with a selector always is).
    fn private(&self) -> bool {
        self.export.len() == 1
            && (self.export.contains(".") || self.export.contains(self.namespace()))
    }
}

/// The rules Istio merged into one, for one client.
#[derive(Debug, Clone)]
pub struct Merged<'a> {
    /// The rules merged, in Istio's order; the first is the one the others merged into.
    pub rules: Vec<&'a DynamicObject>,
    /// The rule whose top-level `trafficPolicy` is in force; `None` when none sets one.
    pub policy_from: Option<&'a DynamicObject>,
    /// The subsets in force, by name, with the rule whose definition is used.
    pub subsets: Vec<(String, &'a DynamicObject)>,
}

impl Merged<'_> {
    /// The top-level traffic policy in force (`null` when none).
    pub fn policy(&self) -> Value {
        self.policy_from
            .and_then(|r| object::spec(r)?.get("trafficPolicy").cloned())
            .unwrap_or(Value::Null)
    }

    /// The definition of the subset `name` in force.
    pub fn subset(&self, name: &str) -> Option<&Value> {
        let (_, rule) = self.subsets.iter().find(|(n, _)| n == name)?;
        subset_definitions(rule).find(|s| s["name"] == name)
    }
}

fn subset_definitions(rule: &DynamicObject) -> impl Iterator<Item = &Value> {
    object::spec(rule)
        .and_then(|s| s.get("subsets"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// One entry of an index (`ConsolidatedDestRule`): a rule and the rules merged into it.
#[derive(Debug, Clone)]
struct Entry<'r, 'a> {
    rules: Vec<&'r Rule<'a>>,
}

impl<'a> Entry<'_, 'a> {
    fn first(&self) -> &Rule<'a> {
        self.rules[0]
    }

    fn merged(&self) -> Merged<'a> {
        let mut subsets: Vec<(String, &'a DynamicObject)> = Vec::new();
        for rule in &self.rules {
            for subset in subset_definitions(rule.object) {
                if let Some(name) = subset["name"].as_str()
                    && !subsets.iter().any(|(n, _)| n == name)
                {
                    subsets.push((name.to_owned(), rule.object));
                }
            }
        }
        Merged {
            rules: self.rules.iter().map(|r| r.object).collect(),
            policy_from: self
                .rules
                .iter()
                .find(|r| object::spec(r.object).is_some_and(|s| s.get("trafficPolicy").is_some()))
                .map(|r| r.object),
            subsets,
        }
    }
}

/// The DestinationRules of a cluster for one host, ready to resolve for any client.
#[derive(Debug, Clone)]
pub struct Resolver<'a> {
    rules: Vec<Rule<'a>>,
    host: String,
    service_namespace: Option<String>,
    root: String,
}

/// Istio's order of rules: those with a selector first, then oldest first, then by name,
/// then by namespace (`sortConfigBySelectorAndCreationTime`).
fn order_key(rule: &Rule<'_>) -> (bool, String, String, String) {
    let object = rule.object;
    (
        rule.selector.is_none(),
        object
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
        namespace_of(object).to_owned(),
    )
}

/// Which index a lookup reads.
#[derive(Debug, Clone, Copy)]
enum Index<'n> {
    /// The rules a namespace's own clients see.
    Local(&'n str),
    /// The root namespace's rules exported to it alone (for clients in it).
    RootLocal,
    /// A namespace's rules exported beyond it.
    Exported(&'n str),
}

impl<'a> Resolver<'a> {
    /// The resolver for the fully qualified `host`, from every DestinationRule in the
    /// cluster, the namespace of the host's Service or ServiceEntry (when known) and the
    /// root namespace.
    pub fn new(
        rules: &'a [DynamicObject],
        host: &str,
        service_namespace: Option<&str>,
        root: &str,
    ) -> Self {
        let mut kept: Vec<Rule<'a>> = rules
            .iter()
            .filter_map(|object| {
                let spec = object::spec(object)?;
                let written = spec.get("host")?.as_str()?;
                let rule_host = hosts::qualify(written, namespace_of(object));
                let selector = spec
                    .get("workloadSelector")
                    .map(|s| hosts::labels(s.get("matchLabels")));
                let export = match selector {
                    Some(_) => BTreeSet::from([".".to_owned()]),
                    None => object::strings(object, "exportTo")
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                };
                hosts::covers(&rule_host, host).then_some(Rule {
                    object,
                    host: rule_host,
                    export,
                    selector,
                })
            })
            .collect();
        kept.sort_by_key(order_key);
        Resolver {
            rules: kept,
            host: host.to_owned(),
            service_namespace: service_namespace.map(str::to_owned),
            root: root.to_owned(),
        }
    }

    /// The namespace a service host without a ServiceEntry lives in: the `<ns>` of
    /// `<name>.<ns>.svc.cluster.local`.
    pub fn service_namespace_of(host: &str) -> Option<&str> {
        let rest = host.strip_suffix(&format!(".svc.{}", object::CLUSTER_DOMAIN))?;
        let (_, namespace) = rest.split_once('.')?;
        (!namespace.contains('.')).then_some(namespace)
    }

    /// Every rule that matters for the host, in Istio's order.
    pub fn rules(&self) -> impl Iterator<Item = &'a DynamicObject> + '_ {
        self.rules.iter().map(|r| r.object)
    }

    /// The classes of clients that may resolve differently: each namespace that holds a
    /// rule or is named by one (per selector, and the workloads no selector matches), the
    /// service's and the root namespace, and any other namespace.
    pub fn clients(&self) -> Vec<Client> {
        let mut namespaces: BTreeSet<String> = BTreeSet::new();
        namespaces.extend(self.service_namespace.clone());
        namespaces.insert(self.root.clone());
        for rule in &self.rules {
            namespaces.insert(rule.namespace().to_owned());
            for e in &rule.export {
                if !matches!(e.as_str(), "*" | "." | "~") {
                    namespaces.insert(e.clone());
                }
            }
        }
        let mut out = Vec::new();
        for namespace in namespaces {
            let selectors: BTreeSet<&Labels> = self
                .rules
                .iter()
                .filter(|r| r.namespace() == namespace)
                .filter_map(|r| r.selector.as_ref())
                .collect();
            for labels in selectors {
                out.push(Client {
                    namespace: Some(namespace.clone()),
                    labels: Some(labels.clone()),
                });
            }
            out.push(Client {
                namespace: Some(namespace),
                labels: None,
            });
        }
        out.push(Client {
            namespace: None,
            labels: None,
        });
        out
    }

    /// The merged rule Istio applies for the host to `client`; `None`: no rule at all.
    pub fn resolve(&self, client: &Client) -> Option<Merged<'a>> {
        let own = client.namespace.as_deref();
        let first = if own == Some(self.root.as_str()) {
            self.lookup(Index::RootLocal, own)
        } else {
            own.and_then(|ns| self.lookup(Index::Local(ns), own))
        };
        let entries = first
            .or_else(|| {
                let service = self.service_namespace.as_deref()?;
                self.lookup(Index::Exported(service), own)
            })
            .or_else(|| self.lookup(Index::Exported(&self.root), own))?;
        let mut catch_all = None;
        for entry in &entries {
            let rule = entry.first();
            match &rule.selector {
                None => catch_all = Some(entry),
                Some(selector)
                    if Some(rule.namespace()) == own
                        && client
                            .labels
                            .as_ref()
                            .is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v))) =>
                {
                    return Some(entry.merged());
                }
                Some(_) => {}
            }
        }
        catch_all.map(Entry::merged)
    }

    /// The entries of `index` for the most specific host that it holds, visible to
    /// `client`; `None` when there are none (the lookup goes on to the next index).
    fn lookup(&self, index: Index<'_>, client: Option<&str>) -> Option<Vec<Entry<'_, 'a>>> {
        let members: Vec<&Rule<'a>> = self
            .rules
            .iter()
            .filter(|r| match index {
                Index::Local(ns) => r.namespace() == ns && r.local(),
                Index::RootLocal => r.namespace() == self.root && r.private(),
                Index::Exported(ns) => r.namespace() == ns && !r.private(),
            })
            .collect();
        let best = members
            .iter()
            .map(|r| r.host.as_str())
            .max_by_key(|h| (*h == self.host, h.len()))?
            .to_owned();
        let rules: Vec<&Rule<'a>> = members.into_iter().filter(|r| r.host == best).collect();
        let mut entries = merge(&rules);
        if let Index::Exported(_) = index {
            entries.retain(|e| {
                let export = &e.first().export;
                export.is_empty()
                    || export.contains("*")
                    || client.is_some_and(|c| export.contains(c))
            });
        }
        (!entries.is_empty()).then_some(entries)
    }
}

/// `mergeDestinationRule` (with Istio's default enhanced merge): a rule merges into each
/// entry with the same `exportTo` (or one it covers) and a compatible selector, and becomes
/// an entry of its own unless the last entry it met had the same `exportTo` and selector.
fn merge<'r, 'a>(rules: &[&'r Rule<'a>]) -> Vec<Entry<'r, 'a>> {
    let mut entries: Vec<Entry<'r, 'a>> = Vec::new();
    for rule in rules {
        let mut separate = true;
        for entry in &mut entries {
            let first = entry.first();
            if rule.export == first.export {
                separate = false;
            } else if !first.export.is_empty() && rule.export.is_superset(&first.export) {
                separate = true;
            } else {
                separate = true;
                continue;
            }
            match (&first.selector, &rule.selector) {
                (Some(a), Some(b)) if a != b => {
                    separate = true;
                    continue;
                }
                (None, None) | (Some(_), Some(_)) => separate = false,
                _ => {}
            }
            entry.rules.push(rule);
        }
        if separate {
            entries.push(Entry { rules: vec![rule] });
        }
    }
    entries
}

#[cfg(test)]
mod tests;
