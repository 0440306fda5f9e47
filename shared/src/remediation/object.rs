//! Reading Istio objects: the leaf that host rules, resolution and plans all use.

use kube::api::DynamicObject;
use serde_json::{Map, Value};

/// The cluster DNS domain short host names are qualified with.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The object's `spec`, if it is an object.
pub fn spec(object: &DynamicObject) -> Option<&Map<String, Value>> {
    object.data.get("spec").and_then(Value::as_object)
}

/// The namespace an object lives in.
pub fn namespace_of(object: &DynamicObject) -> &str {
    object.metadata.namespace.as_deref().unwrap_or_default()
}

/// `namespace/name` of an object, for messages.
pub fn name_of(object: &DynamicObject) -> String {
    format!(
        "{}/{}",
        namespace_of(object),
        object.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether the object carries the opt-in label `auto_remediation=active`.
pub fn opted_in(object: &DynamicObject) -> bool {
    crate::cluster::record::opted_in(object.metadata.labels.as_ref())
}

/// A spec member that is a list of strings (`hosts`, `exportTo`, `gateways`).
pub fn strings(object: &DynamicObject, key: &str) -> Option<Vec<String>> {
    spec(object)
        .and_then(|s| s.get(key))
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
}

/// The namespaces the functions may change objects in: not `PROTECTED_NAMESPACES`, and
/// within `ALLOWED_NAMESPACES` when that is set. Planning counts on an opted-in object only
/// where it may change it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// Never changed.
    pub protected: std::collections::BTreeSet<String>,
    /// When non-empty, the only ones changed.
    pub allowed: std::collections::BTreeSet<String>,
}

impl Namespaces {
    /// Why objects in `namespace` are not changed, if they are not.
    pub fn closed(&self, namespace: &str) -> Option<String> {
        if self.protected.contains(namespace) {
            return Some(format!(
                "namespace {namespace} is protected (PROTECTED_NAMESPACES)"
            ));
        }
        if !self.allowed.is_empty() && !self.allowed.contains(namespace) {
            return Some(format!(
                "namespace {namespace} is not in ALLOWED_NAMESPACES"
            ));
        }
        None
    }

    /// Whether the functions change `object`: opted in, in a namespace they may change.
    pub fn changes(&self, object: &DynamicObject) -> bool {
        opted_in(object) && self.closed(namespace_of(object)).is_none()
    }

    /// Why the functions do not change `object`, if they do not.
    pub fn why_unchanged(&self, object: &DynamicObject) -> Option<String> {
        if !opted_in(object) {
            return Some("it is not labelled auto_remediation=active".to_owned());
        }
        self.closed(namespace_of(object))
    }
}
