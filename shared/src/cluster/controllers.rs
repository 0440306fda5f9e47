//! Other controllers that manage an object and would undo a change to it or fight over it:
//! Argo Rollouts and Flagger re-assert their own route weights and policies at once, and
//! Argo CD puts a tracked object back as Git has it when its Application self-heals. A
//! firing alert does not change such an object unless its owner allows it with the
//! annotation [`ALLOW_ANNOTATION`]`: "true"`.
//!
//! Signs read, all from the object itself (no access to the controllers' own kinds):
//! - an owner reference to an Argo Rollouts `Rollout` (`argoproj.io`) or a Flagger `Canary`
//!   (`flagger.app`), which is how Flagger marks the VirtualServices and DestinationRules it
//!   generates;
//! - the annotation `argo-rollouts.argoproj.io/managed-by-rollouts`, which Argo Rollouts
//!   puts on the objects it manages;
//! - a field manager `argo-rollouts` or `flagger` in `metadata.managedFields`;
//! - Argo CD's tracking: the annotation `argocd.argoproj.io/tracking-id` or the label
//!   `argocd.argoproj.io/instance` (the `app.kubernetes.io/instance` label, Argo CD's older
//!   default, is left alone: Helm sets it on everything).

use kube::api::DynamicObject;

use crate::intake::names;

/// The annotation that lets the functions change an object another controller manages.
pub const ALLOW_ANNOTATION: &str = "auto-remediation.io/allow-with-controller";

/// Which controller manages `object` and how that shows, when one does and its owner has
/// not allowed changes with [`ALLOW_ANNOTATION`].
pub fn blocking_controller(object: &DynamicObject) -> Option<String> {
    let meta = &object.metadata;
    let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key));
    if annotation(ALLOW_ANNOTATION).is_some_and(|v| v.trim() == "true") {
        return None;
    }
    for owner in meta.owner_references.iter().flatten() {
        let group = owner.api_version.split('/').next().unwrap_or_default();
        let controller = match (group, owner.kind.as_str()) {
            ("argoproj.io", "Rollout") => "Argo Rollouts",
            ("flagger.app", "Canary") => "Flagger",
            _ => continue,
        };
        return Some(format!(
            "{controller} (owner {} {})",
            owner.kind,
            names::printable(&owner.name)
        ));
    }
    if let Some(rollout) = annotation("argo-rollouts.argoproj.io/managed-by-rollouts") {
        return Some(format!(
            "Argo Rollouts (annotation argo-rollouts.argoproj.io/managed-by-rollouts={})",
            names::printable(rollout)
        ));
    }
    for entry in meta.managed_fields.iter().flatten() {
        let manager = entry.manager.as_deref().unwrap_or_default();
        for (name, controller) in [("argo-rollouts", "Argo Rollouts"), ("flagger", "Flagger")] {
            if manager == name || manager.starts_with(&format!("{name}-")) {
                return Some(format!("{controller} (field manager {name})"));
            }
        }
    }
    let tracked = annotation("argocd.argoproj.io/tracking-id").or_else(|| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get("argocd.argoproj.io/instance"))
    });
    tracked.map(|app| {
        format!(
            "Argo CD (tracked as {}; with self-heal on it puts the object back as Git has it)",
            names::printable(app)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn object(metadata: Value) -> DynamicObject {
        let mut meta = json!({"name": "checkout", "namespace": "shop"});
        meta.as_object_mut()
            .expect("meta")
            .extend(metadata.as_object().expect("metadata").clone());
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": meta
        }))
        .expect("object")
    }

    #[test]
    fn each_controller_is_recognised_by_what_it_leaves_on_the_object() {
        let cases = [
            (
                json!({"ownerReferences": [{"apiVersion": "flagger.app/v1beta1", "kind": "Canary",
                    "name": "checkout", "uid": "u", "controller": true}]}),
                "Flagger (owner Canary checkout)",
            ),
            (
                json!({"ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                    "name": "checkout", "uid": "u"}]}),
                "Argo Rollouts (owner Rollout checkout)",
            ),
            (
                json!({"annotations": {"argo-rollouts.argoproj.io/managed-by-rollouts": "checkout"}}),
                "Argo Rollouts (annotation",
            ),
            (
                json!({"managedFields": [{"manager": "argo-rollouts", "operation": "Update",
                    "apiVersion": "networking.istio.io/v1"}]}),
                "Argo Rollouts (field manager argo-rollouts)",
            ),
            (
                json!({"annotations": {"argocd.argoproj.io/tracking-id":
                    "shop:networking.istio.io/VirtualService:shop/checkout"}}),
                "Argo CD (tracked as shop:",
            ),
            (
                json!({"labels": {"argocd.argoproj.io/instance": "shop"}}),
                "Argo CD (tracked as shop;",
            ),
        ];
        for (metadata, expected) in cases {
            let found = blocking_controller(&object(metadata.clone()));
            assert!(
                found.as_deref().is_some_and(|f| f.starts_with(expected)),
                "{metadata}: {found:?}"
            );
            // The owner's annotation allows the change.
            let mut allowed = metadata.clone();
            allowed["annotations"][ALLOW_ANNOTATION] = json!("true");
            assert_eq!(blocking_controller(&object(allowed)), None, "{metadata}");
        }
    }

    #[test]
    fn plain_objects_and_helm_labels_are_not_a_controller() {
        for metadata in [
            json!({}),
            json!({"labels": {"app.kubernetes.io/instance": "shop", "app.kubernetes.io/managed-by": "Helm"}}),
            json!({"managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update"}]}),
            json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "u"}]}),
        ] {
            assert_eq!(
                blocking_controller(&object(metadata.clone())),
                None,
                "{metadata}"
            );
        }
    }
}
