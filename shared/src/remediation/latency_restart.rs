//! `latency-restart`: rollout restart of a Deployment whose P95 latency alert fires.
//!
//! The change is the one `kubectl rollout restart` makes: a new value of the pod-template
//! annotation `kubectl.kubernetes.io/restartedAt`, which rolls every pod through the
//! Deployment's own update strategy (respecting maxUnavailable and PodDisruptionBudgets).

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ApiResource, DynamicObject};
use serde::Deserialize;
use serde_json::json;

use super::{Locator, Plan, PlanContext, Refusal, Remediation};
use crate::config::Config;
use crate::intake::AlertInput;
use crate::intake::names;

/// The pod-template annotation `kubectl rollout restart` writes.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Restarts the Deployment named by the alert's `deployment` label.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatencyRestart;

impl Remediation for LatencyRestart {
    type Facts = ();
    type Observed = ();

    fn name(&self) -> &'static str {
        "latency-restart"
    }

    fn verifiable(&self, _config: &Config) -> Vec<ApiResource> {
        vec![ApiResource::erase::<Deployment>(&())]
    }

    fn locate(&self, input: &AlertInput, _config: &Config) -> Result<Locator, String> {
        let deployment = input
            .alert
            .label("deployment")
            .ok_or("alert has no `deployment` label (latency-restart needs it)")?;
        names::dns_subdomain("deployment", deployment)?;
        Ok(Locator {
            resource: ApiResource::erase::<Deployment>(&()),
            namespace: input.namespace.clone(),
            name: Some(deployment.to_owned()),
            everywhere: false,
            subject: None,
            cluster: None,
        })
    }

    fn plan(
        &self,
        _input: &AlertInput,
        object: &DynamicObject,
        context: PlanContext<'_>,
    ) -> Result<Plan, Refusal> {
        let deployment = as_deployment(object)
            .map_err(|err| Refusal::Fail(format!("object is not a readable Deployment: {err}")))?;
        if let Some(why) = rollout_in_progress(&deployment) {
            return Err(Refusal::Hold(why));
        }
        let previous = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(RESTARTED_AT))
            .cloned();
        let stamp = context
            .now
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        Ok(Plan {
            patch: json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}),
            summary: format!("rollout restart ({RESTARTED_AT}={stamp})"),
            action: "Restart",
            previous: Some(json!({ RESTARTED_AT: previous })),
            applied: Some(json!({ RESTARTED_AT: stamp })),
        })
    }
}

/// Reads a Deployment's spec and status straight from the fetched object (its metadata is
/// already decoded), without re-serializing the whole object first.
fn as_deployment(object: &DynamicObject) -> Result<Deployment, serde_json::Error> {
    let field = |name: &str| object.data.get(name).filter(|v| !v.is_null());
    Ok(Deployment {
        metadata: object.metadata.clone(),
        spec: field("spec").map(Deserialize::deserialize).transpose()?,
        status: field("status").map(Deserialize::deserialize).transpose()?,
    })
}

/// Why a restart now would pile onto a rollout that has not finished, or `None` when the
/// Deployment is settled. Mirrors the checks of `kubectl rollout status`.
pub fn rollout_in_progress(deployment: &Deployment) -> Option<String> {
    let spec = deployment.spec.as_ref()?;
    if spec.paused == Some(true) {
        return Some("deployment is paused; a restart would not roll out".into());
    }
    let generation = deployment.metadata.generation.unwrap_or(0);
    let Some(status) = deployment.status.as_ref() else {
        return Some("deployment has no status yet; the controller has not seen it".into());
    };
    if status.observed_generation.unwrap_or(0) < generation {
        return Some(format!(
            "rollout in progress: controller has observed generation {} of {generation}",
            status.observed_generation.unwrap_or(0)
        ));
    }
    let desired = spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < desired {
        return Some(format!(
            "rollout in progress: {updated} of {desired} replicas updated"
        ));
    }
    if total > updated {
        return Some(format!(
            "rollout in progress: {} old replicas pending termination",
            total - updated
        ));
    }
    if available < updated {
        return Some(format!(
            "rollout in progress: {available} of {updated} updated replicas available"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "checkout-v2", "namespace": "shop", "generation": generation},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "checkout"}},
                     "template": {"metadata": {"labels": {"app": "checkout"}},
                                  "spec": {"containers": [{"name": "app", "image": "x"}]}}},
            "status": status
        }))
        .expect("valid deployment")
    }

    #[test]
    fn deployment_read_from_the_fetched_object_matches_a_full_decode() {
        let fetched = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "checkout-v2", "namespace": "shop", "generation": 4,
                         "resourceVersion": "17", "annotations": {"a": "b"}},
            "spec": {"replicas": 3, "paused": true, "selector": {"matchLabels": {"app": "checkout"}},
                     "template": {"metadata": {"annotations": {RESTARTED_AT: "2026-01-01T00:00:00Z"}},
                                  "spec": {"containers": [{"name": "app", "image": "x"}]}}},
            "status": {"observedGeneration": 3, "replicas": 3, "updatedReplicas": 1}
        });
        let object: DynamicObject = serde_json::from_value(fetched.clone()).expect("object");
        let full: Deployment = serde_json::from_value(fetched).expect("deployment");
        assert_eq!(as_deployment(&object).expect("readable"), full);

        let bare: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "new"}, "status": null
        }))
        .expect("object");
        let read = as_deployment(&bare).expect("readable");
        assert!(read.spec.is_none() && read.status.is_none());

        let broken: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "x"}, "spec": {"replicas": "three"}
        }))
        .expect("object");
        assert!(as_deployment(&broken).is_err());
    }

    #[test]
    fn settled_deployment_may_restart() {
        let d = deployment(
            3,
            json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert_eq!(rollout_in_progress(&d), None);
    }

    #[test]
    fn unfinished_rollouts_block_a_restart() {
        let cases = [
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
            json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 2}),
            json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}),
            json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
        ];
        for status in cases {
            let why = rollout_in_progress(&deployment(3, status.clone()));
            assert!(
                why.is_some_and(|w| w.starts_with("rollout in progress")),
                "{status}"
            );
        }
    }

    #[test]
    fn paused_deployment_is_not_restarted() {
        let mut d = deployment(
            1,
            json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        if let Some(spec) = d.spec.as_mut() {
            spec.paused = Some(true);
        }
        assert!(rollout_in_progress(&d).is_some_and(|w| w.contains("paused")));
    }
}
