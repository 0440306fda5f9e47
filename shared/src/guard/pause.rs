//! Brakes an operator pulls without a redeploy, read before every alert's change:
//!
//! - the whole cluster: the ConfigMap `mesh-remediation` in `kube-system` with a non-empty
//!   `paused` value (the reason);
//! - a namespace: the annotation [`PAUSE_ANNOTATION`] on the Namespace;
//! - one object: the same annotation on it.
//!
//! And a narrower opt-in: an object labelled `auto_remediation=active` is open to every
//! remediation unless its annotation [`REMEDIATIONS_ANNOTATION`] lists the ones allowed
//! (`error-rollback,region-failover`). Revert requests, which a person sends, are not
//! paused.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::Api;

use crate::error::{Error, Result};
use crate::guard::skip::SkipReason;
use crate::intake::names;

/// The annotation that pauses a namespace or an object; its value says why.
pub const PAUSE_ANNOTATION: &str = "auto-remediation.io/paused";
/// The annotation listing the remediations an opted-in object accepts.
pub const REMEDIATIONS_ANNOTATION: &str = "auto-remediation.io/remediations";
/// Where the cluster-wide control ConfigMap lives.
pub const CONTROL_NAMESPACE: &str = "kube-system";
/// The cluster-wide control ConfigMap.
pub const CONTROL_CONFIGMAP: &str = "mesh-remediation";

/// What the cluster and the namespace say, read once per target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Brakes {
    /// The cluster-wide pause reason, if any.
    pub cluster: Option<String>,
    /// The paused namespace and its reason, if any.
    pub namespace: Option<(String, String)>,
}

fn reason(value: Option<&String>) -> Option<String> {
    value
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(names::printable)
}

/// Reads the cluster's pause and each of `namespaces`' (the object's, and the alert's when
/// the object lives elsewhere). A brake that cannot be read is an error: acting without
/// knowing whether someone pulled it is not safe.
pub async fn read(client: &kube::Client, namespaces: &[&str]) -> Result<Brakes> {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), CONTROL_NAMESPACE);
    let control = configmaps.get_opt(CONTROL_CONFIGMAP).await.map_err(|err| {
        Error::kube(
            format!("get configmap {CONTROL_NAMESPACE}/{CONTROL_CONFIGMAP} (the pause switch)"),
            err,
        )
    })?;
    let api: Api<Namespace> = Api::all(client.clone());
    let mut paused = None;
    for namespace in namespaces {
        let ns = api
            .get_opt(namespace)
            .await
            .map_err(|err| Error::kube(format!("get namespace {namespace} (its pause)"), err))?;
        let why = ns.and_then(|n| reason(n.metadata.annotations.as_ref()?.get(PAUSE_ANNOTATION)));
        if let Some(why) = why {
            paused = Some(((*namespace).to_owned(), why));
            break;
        }
    }
    Ok(Brakes {
        cluster: control.and_then(|c| reason(c.data.as_ref().and_then(|d| d.get("paused")))),
        namespace: paused,
    })
}

/// Why `remediation` may not act on `target` now, if it may not: a pause (the widest
/// first), or an opt-in that leaves this remediation out.
pub fn refusal(
    brakes: &Brakes,
    remediation: &str,
    target: &str,
    annotations: Option<&BTreeMap<String, String>>,
) -> Option<SkipReason> {
    refusal_text(brakes, remediation, target, annotations).map(|(paused, why)| {
        if paused {
            SkipReason::Paused(why)
        } else {
            SkipReason::Declined(why)
        }
    })
}

fn refusal_text(
    brakes: &Brakes,
    remediation: &str,
    target: &str,
    annotations: Option<&BTreeMap<String, String>>,
) -> Option<(bool, String)> {
    let paused = |why: String| Some((true, why));
    if let Some(why) = &brakes.cluster {
        return paused(format!(
            "paused for the whole cluster (configmap {CONTROL_NAMESPACE}/{CONTROL_CONFIGMAP}: {why})"
        ));
    }
    if let Some((namespace, why)) = &brakes.namespace {
        return paused(format!(
            "paused for namespace {namespace} (annotation {PAUSE_ANNOTATION}: {why})"
        ));
    }
    let annotation = |key: &str| annotations.and_then(|a| a.get(key));
    if let Some(why) = reason(annotation(PAUSE_ANNOTATION)) {
        return paused(format!(
            "paused for {target} (annotation {PAUSE_ANNOTATION}: {why})"
        ));
    }
    let allowed = annotation(REMEDIATIONS_ANNOTATION)?;
    if allowed.split(',').map(str::trim).any(|r| r == remediation) {
        return None;
    }
    Some((
        false,
        format!(
            "{target} accepts only {} (annotation {REMEDIATIONS_ANNOTATION}), not {remediation}",
            names::printable(allowed.trim())
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(
        brakes: &Brakes,
        remediation: &str,
        target: &str,
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Option<String> {
        refusal_text(brakes, remediation, target, annotations).map(|(_, why)| why)
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_widest_pause_wins_and_names_where_to_lift_it() {
        let object = annotations(&[(PAUSE_ANNOTATION, "canary under study")]);
        let all = Brakes {
            cluster: Some("incident 42".into()),
            namespace: Some(("shop".into(), "freeze".into())),
        };
        let why = text(
            &all,
            "error-rollback",
            "VirtualService shop/checkout",
            Some(&object),
        );
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("whole cluster") && w.contains("incident 42")),
            "{why:?}"
        );
        let ns = Brakes {
            cluster: None,
            namespace: Some(("shop".into(), "freeze".into())),
        };
        let why = text(
            &ns,
            "error-rollback",
            "VirtualService shop/checkout",
            Some(&object),
        );
        assert!(
            why.as_deref().is_some_and(|w| w.contains("namespace shop")),
            "{why:?}"
        );
        let why = text(
            &Brakes::default(),
            "error-rollback",
            "VirtualService shop/checkout",
            Some(&object),
        );
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("canary under study")),
            "{why:?}"
        );
        // An empty value is no pause.
        let empty = annotations(&[(PAUSE_ANNOTATION, " ")]);
        assert_eq!(text(&Brakes::default(), "x", "t", Some(&empty)), None);
    }

    #[test]
    fn an_object_may_accept_only_some_remediations() {
        let only = annotations(&[(REMEDIATIONS_ANNOTATION, "region-failover, db-circuit-break")]);
        assert_eq!(
            refusal(&Brakes::default(), "region-failover", "t", Some(&only)),
            None
        );
        let why = text(
            &Brakes::default(),
            "error-rollback",
            "VirtualService shop/checkout",
            Some(&only),
        );
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("accepts only region-failover, db-circuit-break")),
            "{why:?}"
        );
        assert_eq!(text(&Brakes::default(), "error-rollback", "t", None), None);
    }
}
