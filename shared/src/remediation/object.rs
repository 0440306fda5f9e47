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
    crate::record::opted_in(object.metadata.labels.as_ref())
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
