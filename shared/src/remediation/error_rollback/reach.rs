//! What a route destination reaches: the destination host's Service selector plus, for a
//! subset, the labels of the subset definition Istio uses, for every class of client (by
//! [`crate::remediation::resolution`]: each client may take another DestinationRule),
//! compared by their `version` label.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use serde_json::Value;

use super::VERSION_LABEL;
use crate::remediation::pods;
use crate::remediation::resolution::Resolver;
use crate::remediation::resolution::hosts::{self, Labels};

/// What the cluster holds besides the object being planned, read once per alert.
#[derive(Debug, Clone, Default)]
pub struct RollbackFacts {
    /// The namespaces the function may change VirtualServices in.
    pub changeable: crate::remediation::object::Namespaces,
    /// Every VirtualService in the cluster, opted in or not.
    pub virtual_services: Vec<DynamicObject>,
    /// Every DestinationRule in the cluster (the subsets' labels, per client).
    pub rules: Vec<DynamicObject>,
    /// The selector of every Service read (the alert's and the service's namespace), by
    /// fully qualified host.
    pub services: BTreeMap<String, Labels>,
    /// The labels of the ready pods of the hosts whose pods were read (the alert's
    /// service), by fully qualified host; a host absent here, or with no ready pod at all,
    /// is not judged by its pods.
    pub ready: BTreeMap<String, Vec<Labels>>,
    /// Istio's root namespace (`ISTIO_ROOT_NAMESPACE`).
    pub root: String,
    /// The alert's namespace, whose opted-in VirtualServices are changed (empty: the
    /// namespace of the object planned).
    pub namespace: String,
}

/// The workloads a route destination reaches, for one class of client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Only workloads of this `version`.
    Version(String),
    /// Every version of the Service (no `version` label selects): a subset by region,
    /// or a Service whose selector names no version.
    Every,
    /// A subset no DestinationRule the client uses defines: Istio sends it nothing (IST0101).
    Undefined,
    /// No Service read for it: known only by its host name.
    Named(String),
    /// No ready pod carries its labels: Istio has no endpoint to send it to.
    Empty,
}

impl Reach {
    /// Reaches workloads of the failing version.
    pub fn carries(&self, failing: &str) -> bool {
        match self {
            Reach::Version(v) => v == failing,
            Reach::Every => true,
            Reach::Undefined | Reach::Empty => false,
            Reach::Named(host) => host.split(['.', '-']).any(|part| part == failing),
        }
    }

    /// Reaches workloads, none of them of the failing version.
    pub fn is_other_version(&self, failing: Option<&str>) -> bool {
        match self {
            Reach::Version(_) | Reach::Named(_) => failing.is_none_or(|f| !self.carries(f)),
            Reach::Every | Reach::Undefined | Reach::Empty => false,
        }
    }
}

/// What a destination reaches for every class of client: the same for all of them unless
/// clients take different DestinationRules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaches(pub Vec<Reach>);

impl Reaches {
    /// Some client reaches the failing version through it.
    pub fn carries(&self, failing: &str) -> bool {
        self.0.iter().any(|r| r.carries(failing))
    }

    /// Every client reaches workloads through it, none of the failing version.
    pub fn is_other_version(&self, failing: Option<&str>) -> bool {
        !self.0.is_empty() && self.0.iter().all(|r| r.is_other_version(failing))
    }

    /// No client reaches anything through it.
    pub fn undefined(&self) -> bool {
        self.0.iter().all(|r| *r == Reach::Undefined)
    }

    /// Some client reaches no ready pod through it.
    pub fn empty(&self) -> bool {
        self.0.contains(&Reach::Empty)
    }

    /// Every client reaches exactly `version` through it.
    pub fn only(&self, version: &str) -> bool {
        !self.0.is_empty()
            && self
                .0
                .iter()
                .all(|r| *r == Reach::Version(version.to_owned()))
    }
}

/// A destination's identity: fully qualified host and subset.
pub type Key = (String, Option<String>);

/// A destination in words: `host/subset` or `host`.
pub fn describe_key((host, subset): &Key) -> String {
    match subset {
        Some(subset) => format!("{host}/{subset}"),
        None => host.clone(),
    }
}

impl RollbackFacts {
    /// The identity of a route destination written in `namespace`.
    pub fn key(destination: &Value, namespace: &str) -> Option<Key> {
        let host = hosts::qualify(hosts::destination_host(destination)?, namespace);
        Some((
            host,
            hosts::destination_subset(destination).map(str::to_owned),
        ))
    }

    /// What the destination reaches, for each class of client.
    pub fn reach(&self, (host, subset): &Key) -> Reaches {
        let selector = self.services.get(host);
        let Some(subset) = subset else {
            let mut labels = selector.cloned().unwrap_or_default();
            if self.lands_nowhere(host, &labels) {
                return Reaches(vec![Reach::Empty]);
            }
            return Reaches(vec![match labels.remove(VERSION_LABEL) {
                Some(version) => Reach::Version(version),
                None if selector.is_some() => Reach::Every,
                None => Reach::Named(host.clone()),
            }]);
        };
        let resolver = Resolver::new(
            &self.rules,
            host,
            Resolver::service_namespace_of(host),
            &self.root,
        );
        let mut out: Vec<Reach> = Vec::new();
        for client in resolver.clients() {
            let definition = resolver
                .resolve(&client)
                .and_then(|merged| merged.subset(subset).cloned());
            let reach = match definition {
                None => Reach::Undefined,
                Some(definition) => {
                    let mut labels = selector.cloned().unwrap_or_default();
                    labels.extend(hosts::labels(definition.get("labels")));
                    if self.lands_nowhere(host, &labels) {
                        Reach::Empty
                    } else {
                        match labels.remove(VERSION_LABEL) {
                            Some(version) => Reach::Version(version),
                            None => Reach::Every,
                        }
                    }
                }
            };
            if !out.contains(&reach) {
                out.push(reach);
            }
        }
        Reaches(out)
    }

    /// Whether `host`'s ready pods are known and none carries `labels`.
    fn lands_nowhere(&self, host: &str, labels: &Labels) -> bool {
        self.ready.get(host).is_some_and(|pods| {
            !pods.is_empty() && !pods.iter().any(|pod| pods::carries(pod, labels))
        })
    }

    /// Whether the destination host's workloads are some of the service's: the service
    /// itself, or a Service whose selector narrows the service's (a host split).
    pub fn related(&self, (host, _): &Key, service: &str, routes_service: bool) -> bool {
        if host == service {
            return true;
        }
        match (self.services.get(host), self.services.get(service)) {
            (Some(narrow), Some(wide)) => {
                !wide.is_empty() && wide.iter().all(|(k, v)| narrow.get(k) == Some(v))
            }
            _ => routes_service,
        }
    }
}
