//! Where a restarted Deployment's rollout stands, read from its status (pure).
//!
//! A crash-looping pod is never Ready, so it is never available: the rollout stays
//! incomplete, and once `progressDeadlineSeconds` pass the Deployment controller marks it
//! `ProgressDeadlineExceeded`, which is read as stuck.

use serde_json::Value;

use super::verdict::Rollout;

/// The rollout of a Deployment object (its JSON), `None` for any other kind.
pub fn of_deployment(kind: &str, object: &Value) -> Option<Rollout> {
    if kind != "Deployment" {
        return None;
    }
    let number = |pointer: &str| object.pointer(pointer).and_then(Value::as_i64);
    let conditions = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let stuck = conditions.iter().find(|c| {
        c.get("type").and_then(Value::as_str) == Some("Progressing")
            && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
    });
    if let Some(condition) = stuck {
        let message = condition
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("past its progress deadline");
        return Some(Rollout::Stuck(format!(
            "ProgressDeadlineExceeded: {}",
            message
                .chars()
                .filter(|c| !c.is_control())
                .take(300)
                .collect::<String>()
        )));
    }
    let wanted = number("/spec/replicas").unwrap_or(1);
    let generation = number("/metadata/generation").unwrap_or(0);
    let observed = number("/status/observedGeneration").unwrap_or(0);
    let updated = number("/status/updatedReplicas").unwrap_or(0);
    let available = number("/status/availableReplicas").unwrap_or(0);
    let total = number("/status/replicas").unwrap_or(0);
    if observed < generation {
        return Some(Rollout::InProgress(
            "the Deployment controller has not observed the latest spec yet".into(),
        ));
    }
    if updated < wanted || available < wanted || total > updated {
        return Some(Rollout::InProgress(format!(
            "{updated} of {wanted} replicas updated, {available} available, {total} in all"
        )));
    }
    Some(Rollout::Complete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(status: Value) -> Value {
        json!({"metadata": {"generation": 4}, "spec": {"replicas": 3}, "status": status})
    }

    #[test]
    fn a_rollout_is_complete_rolling_or_stuck() {
        let complete = deployment(
            json!({"observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
        );
        assert_eq!(
            of_deployment("Deployment", &complete),
            Some(Rollout::Complete)
        );
        for status in [
            json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
            json!({"observedGeneration": 4, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3}),
            json!({"observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2}),
            json!({"observedGeneration": 4, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 3}),
        ] {
            let got = of_deployment("Deployment", &deployment(status.clone()));
            assert!(
                matches!(got, Some(Rollout::InProgress(_))),
                "{status}: {got:?}"
            );
        }
        let stuck = deployment(
            json!({"observedGeneration": 4, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                            "message": "ReplicaSet \"checkout-v2-7d\" has timed out progressing."}]}),
        );
        assert!(
            matches!(of_deployment("Deployment", &stuck), Some(Rollout::Stuck(why)) if why.contains("timed out"))
        );
        assert_eq!(of_deployment("VirtualService", &complete), None);
    }
}
