//! The audit trail: a Kubernetes Event on every changed object, naming the alert or the
//! person's request and the trace id.

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::json;
use tracing::instrument;

use super::timebox::Call;
use super::{Invocation, Pipeline, Subject};
use crate::cluster::record;
use crate::remediation::Remediation;

/// The Event a change gets: its action (`Restarted`, `Escalated`, ...) and its note.
#[derive(Debug, Clone)]
pub(super) struct EventNote {
    /// The Event's `action`.
    pub(super) action: &'static str,
    /// The Event's `note`: the change, where it came from and the trace id.
    pub(super) note: String,
}

impl<R: Remediation> Pipeline<R> {
    /// Records a Kubernetes Event on the changed object. Best effort: the change is made
    /// and recorded on the object already, so a failed Event is logged, not fatal.
    #[instrument(
        name = "audit",
        skip_all,
        fields(trace_id = %at.invocation.trace_id, alert = at.alert(), target = %at.target)
    )]
    pub(super) async fn record_event(
        &self,
        client: &kube::Client,
        at: &Subject<'_, R>,
        object: &DynamicObject,
        event: &EventNote,
    ) {
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        let events: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &event_resource());
        let resource = &at.work.locator.resource;
        let event = match self.event(resource, object, event, at.invocation) {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(error = %err, "cannot build Event");
                return;
            }
        };
        let created = self
            .timebox(at.invocation)
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
                error = %err,
                "change applied but recording the Kubernetes Event failed"
            );
        }
    }

    /// The `events.k8s.io/v1` Event about `object`.
    fn event(
        &self,
        resource: &ApiResource,
        object: &DynamicObject,
        event: &EventNote,
        invocation: &Invocation,
    ) -> serde_json::Result<DynamicObject> {
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        let name = object.metadata.name.clone().unwrap_or_default();
        let stamp = invocation.now.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let unique = invocation.now.timestamp_nanos_opt().unwrap_or_default();
        let base: String = name.chars().take(200).collect();
        serde_json::from_value(json!({
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
            "action": event.action,
            "reason": "AutoRemediation",
            "type": "Normal",
            "note": truncated(&event.note, 1000),
            "regarding": {
                "apiVersion": resource.api_version,
                "kind": resource.kind,
                "namespace": namespace,
                "name": name,
                "uid": object.metadata.uid,
                "resourceVersion": object.metadata.resource_version,
            },
        }))
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
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
