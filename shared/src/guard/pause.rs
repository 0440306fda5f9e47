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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::Api;
use tokio::sync::OnceCell;

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

/// What the cluster and the namespace say about one target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Brakes {
    /// The cluster-wide pause reason, if any.
    pub cluster: Option<String>,
    /// The paused namespace and its reason, if any.
    pub namespace: Option<(String, String)>,
}

/// The pause an annotation or the switch's `paused` value holds: its reason, printable;
/// an empty value is no pause.
pub fn reason(value: Option<&String>) -> Option<String> {
    value
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(names::printable)
}

/// A pause reason, read at most once.
type Switch = Arc<OnceCell<Option<String>>>;

/// The brakes as one invocation reads them: each cluster's pause and each namespace's once,
/// however many targets share them (a storm of 200 targets in one namespace reads two
/// objects, not 400). Nothing outlives the invocation, so a brake pulled between two
/// invocations holds the next one. A read that fails is not remembered: the next target
/// that needs it reads again.
#[derive(Debug, Default)]
pub struct BrakeReads {
    /// Per cluster (`None`: the only one served): its pause, and each namespace's.
    clusters: Mutex<HashMap<Option<String>, Arc<ClusterSwitches>>>,
}

#[derive(Debug, Default)]
struct ClusterSwitches {
    cluster: OnceCell<Option<String>>,
    namespaces: Mutex<HashMap<String, Switch>>,
}

impl BrakeReads {
    /// The cluster's pause and the first of `namespaces` paused (the object's, then the
    /// alert's when the object lives elsewhere). A brake that cannot be read is an error:
    /// acting without knowing whether someone pulled it is not safe.
    pub async fn read(
        &self,
        cluster: Option<&str>,
        client: &kube::Client,
        namespaces: &[&str],
    ) -> Result<Brakes> {
        let switches = {
            let mut clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
            clusters
                .entry(cluster.map(str::to_owned))
                .or_default()
                .clone()
        };
        let switch = |name: &str| {
            let mut all = switches
                .namespaces
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            all.entry(name.to_owned()).or_default().clone()
        };
        let cluster_pause = switches
            .cluster
            .get_or_try_init(|| read_cluster_pause(client));
        // The switches are independent: read together, one round trip instead of several.
        let namespace_pauses = futures::future::try_join_all(namespaces.iter().map(|name| {
            let switch = switch(name);
            async move {
                let why = switch
                    .get_or_try_init(|| read_namespace_pause(client, name))
                    .await?;
                Ok::<_, crate::error::Error>(why.clone().map(|why| ((*name).to_owned(), why)))
            }
        }));
        let (paused, namespace_pauses) = futures::try_join!(cluster_pause, namespace_pauses)?;
        Ok(Brakes {
            cluster: paused.clone(),
            // The first paused, in the order given (the object's namespace first).
            namespace: namespace_pauses.into_iter().flatten().next(),
        })
    }
}

async fn read_cluster_pause(client: &kube::Client) -> Result<Option<String>> {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), CONTROL_NAMESPACE);
    let control = configmaps.get_opt(CONTROL_CONFIGMAP).await.map_err(|err| {
        Error::kube(
            format!("get configmap {CONTROL_NAMESPACE}/{CONTROL_CONFIGMAP} (the pause switch)"),
            err,
        )
    })?;
    Ok(control.and_then(|c| reason(c.data.as_ref().and_then(|d| d.get("paused")))))
}

async fn read_namespace_pause(client: &kube::Client, namespace: &str) -> Result<Option<String>> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = api
        .get_opt(namespace)
        .await
        .map_err(|err| Error::kube(format!("get namespace {namespace} (its pause)"), err))?;
    Ok(ns.and_then(|n| reason(n.metadata.annotations.as_ref()?.get(PAUSE_ANNOTATION))))
}

/// Why `remediation` may not act on `target` now, if it may not: a pause (the widest
/// first), or an opt-in list that leaves this remediation out. Both are a `paused: ` skip a
/// person hears of: the remediation list holds the alert as surely as a pause does.
pub fn refusal(
    brakes: &Brakes,
    remediation: &str,
    target: &str,
    annotations: Option<&BTreeMap<String, String>>,
) -> Option<SkipReason> {
    refusal_text(brakes, remediation, target, annotations).map(SkipReason::Paused)
}

fn refusal_text(
    brakes: &Brakes,
    remediation: &str,
    target: &str,
    annotations: Option<&BTreeMap<String, String>>,
) -> Option<String> {
    if let Some(why) = &brakes.cluster {
        return Some(format!(
            "paused for the whole cluster (configmap {CONTROL_NAMESPACE}/{CONTROL_CONFIGMAP}: {why})"
        ));
    }
    if let Some((namespace, why)) = &brakes.namespace {
        return Some(format!(
            "paused for namespace {namespace} (annotation {PAUSE_ANNOTATION}: {why})"
        ));
    }
    let annotation = |key: &str| annotations.and_then(|a| a.get(key));
    if let Some(why) = reason(annotation(PAUSE_ANNOTATION)) {
        return Some(format!(
            "paused for {target} (annotation {PAUSE_ANNOTATION}: {why})"
        ));
    }
    let allowed = annotation(REMEDIATIONS_ANNOTATION)?;
    if allowed.split(',').map(str::trim).any(|r| r == remediation) {
        return None;
    }
    Some(format!(
        "{target} accepts only {} (annotation {REMEDIATIONS_ANNOTATION}), not {remediation}",
        names::printable(allowed.trim())
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
        refusal_text(brakes, remediation, target, annotations)
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

    #[test]
    fn a_remediation_list_that_leaves_the_function_out_is_a_reported_pause() {
        let only = annotations(&[(REMEDIATIONS_ANNOTATION, "error-rollback")]);
        let skip = refusal(&Brakes::default(), "latency-restart", "t", Some(&only))
            .expect("held by the list");
        assert!(matches!(skip, SkipReason::Paused(_)), "{skip:?}");
        assert!(
            skip.to_string().starts_with("paused: t accepts only"),
            "{skip}"
        );
        assert!(skip.needs_a_person(), "reported, as README promises");
    }
}
