//! The audit trail: a Kubernetes Event on every changed object, naming the alert or the
//! person's request and the trace id.

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::json;

use super::timebox::Call;
use super::{Invocation, Pipeline};
use crate::record;
use crate::remediation::{Remediation, describe};

impl<R: Remediation> Pipeline<R> {
    /// Records a Kubernetes Event on the changed object. Best effort: the change is made
    /// and recorded on the object already, so a failed Event is logged, not fatal.
    pub(super) async fn record_event(
        &self,
        client: &kube::Client,
        resource: &ApiResource,
        object: &DynamicObject,
        action: &str,
        note: &str,
        invocation: &Invocation,
    ) {
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        let name = object.metadata.name.clone().unwrap_or_default();
        let events: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &event_resource());
        let stamp = invocation.now.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let unique = invocation.now.timestamp_nanos_opt().unwrap_or_default();
        let base: String = name.chars().take(200).collect();
        let mut note = note.to_owned();
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event: DynamicObject = match serde_json::from_value(json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "name": format!("{base}.{unique:x}"),
                "namespace": namespace,
                "annotations": { format!("{}trace-id", record::ANNOTATION_PREFIX): invocation.trace_id },
            },
            "eventTime": stamp,
            "reportingController": format!("{}{}", record::ANNOTATION_PREFIX, self.remediation.name()),
            "reportingInstance": self.remediation.name(),
            "action": action,
            "reason": "AutoRemediation",
            "type": "Normal",
            "note": note,
            "regarding": {
                "apiVersion": resource.api_version,
                "kind": resource.kind,
                "namespace": namespace,
                "name": name,
                "uid": object.metadata.uid,
                "resourceVersion": object.metadata.resource_version,
            },
        })) {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(trace_id = %invocation.trace_id, error = %err, "cannot build Event");
                return;
            }
        };
        let created = self
            .timebox(invocation)
            .call(
                Call::Read,
                "create the Event",
                events.create(&PostParams::default(), &event),
            )
            .await;
        let failed = match created {
            Ok(Ok(_)) => None,
            Ok(Err(err)) => Some(err.to_string()),
            Err(err) => Some(err.to_string()),
        };
        if let Some(err) = failed {
            tracing::warn!(
                trace_id = %invocation.trace_id,
                target = %describe(resource, &namespace, &name),
                error = %err,
                "change applied but recording the Kubernetes Event failed"
            );
        }
    }
}

/// `events.k8s.io/v1` Event.
pub fn event_resource() -> ApiResource {
    ApiResource {
        group: "events.k8s.io".into(),
        version: "v1".into(),
        api_version: "events.k8s.io/v1".into(),
        kind: "Event".into(),
        plural: "events".into(),
    }
}
