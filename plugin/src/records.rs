//! What the functions left on the objects they changed, read with the library's own types:
//! the action record of each function, the escalation annotation, the pause annotations.
//! Pure: objects in, rows out.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::api::{ApiResource, DynamicObject};
use mesh_remediation::cluster::record::{ActionRecord, Verification};
use mesh_remediation::guard::escalation::{self, Escalation};
use mesh_remediation::guard::pause::{self, PAUSE_ANNOTATION, REMEDIATIONS_ANNOTATION};
use mesh_remediation::intake::KNOWN_REMEDIATIONS;
use serde::Serialize;

use crate::objects::describe;

/// One function's last action on one object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRow {
    /// The kubeconfig context (the cluster).
    pub context: String,
    /// `Deployment shop/checkout-v2`.
    pub object: String,
    /// The function that acted.
    pub function: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The alert's fingerprint.
    pub alert: String,
    /// The invocation's trace id (search the function's logs for it).
    pub trace_id: String,
    /// What changed.
    pub change: String,
    /// applied, recovered, reverted or escalated.
    pub state: String,
    /// Who reverted it and why, when it was reverted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverted: Option<String>,
    /// Whether the change helped, where it is verified: pending, or the verdict and its
    /// evidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// Whether the object is handed off to a person now.
    pub escalated: bool,
    /// A record this code cannot read (someone edited the annotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// The records on `objects` of kind `resource`, newest first, limited to `function` and to
/// actions at or after `since` when given.
pub fn actions(
    context: &str,
    resource: &ApiResource,
    objects: &[DynamicObject],
    function: Option<&str>,
    since: Option<DateTime<Utc>>,
) -> Vec<ActionRow> {
    let mut rows = Vec::new();
    for object in objects {
        let annotations = object.metadata.annotations.as_ref();
        let name = object.metadata.name.as_deref().unwrap_or_default();
        let namespace = object.metadata.namespace.as_deref().unwrap_or_default();
        let escalated = escalation::read(annotations).is_some();
        for remediation in KNOWN_REMEDIATIONS
            .iter()
            .filter(|r| function.is_none_or(|f| f == **r))
        {
            let row = |record: Option<ActionRecord>, unreadable: Option<String>| {
                let record = record.as_ref();
                ActionRow {
                    context: context.to_owned(),
                    object: describe(resource, namespace, name),
                    function: (*remediation).to_owned(),
                    at: record.map_or(DateTime::<Utc>::MIN_UTC, |r| r.at),
                    alert: record.map_or(String::new(), |r| r.fingerprint.clone()),
                    trace_id: record.map_or(String::new(), |r| r.trace_id.clone()),
                    change: record.map_or(String::new(), |r| r.change.clone()),
                    state: record.map_or("unreadable".to_owned(), state),
                    reverted: record.and_then(|r| r.reverted.as_ref()).map(|rev| {
                        format!(
                            "at {} by {}: {}",
                            rev.at.to_rfc3339(),
                            rev.requested_by.as_deref().unwrap_or("(unnamed)"),
                            rev.reason
                        )
                    }),
                    verification: record.and_then(|r| r.verification.clone()),
                    escalated,
                    unreadable,
                }
            };
            match ActionRecord::from_annotations(annotations, remediation) {
                Ok(None) => {}
                Ok(Some(record)) if since.is_some_and(|s| record.at < s) => {}
                Ok(Some(record)) => rows.push(row(Some(record), None)),
                Err(why) => rows.push(row(None, Some(why))),
            }
        }
    }
    rows.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.object.cmp(&b.object)));
    rows
}

/// The state of the last action, in one word.
fn state(record: &ActionRecord) -> String {
    if record.reverted.is_some() {
        "reverted"
    } else if record.escalated_at.is_some() {
        "escalated"
    } else if record.recovered() {
        "recovered"
    } else {
        "applied"
    }
    .to_owned()
}

/// One object handed off to a person.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HandOffRow {
    /// The kubeconfig context (the cluster).
    pub context: String,
    /// `Deployment shop/checkout-v2`.
    pub object: String,
    /// What the annotation says, when it can be read.
    #[serde(flatten)]
    pub escalation: Option<Escalation>,
    /// Why it cannot be read (it still holds the object).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// The objects among `objects` that are handed off to a person.
pub fn hand_offs(
    context: &str,
    resource: &ApiResource,
    objects: &[DynamicObject],
) -> Vec<HandOffRow> {
    objects
        .iter()
        .filter_map(|object| {
            let read = escalation::read(object.metadata.annotations.as_ref())?;
            let (escalation, unreadable) = match read {
                Ok(escalation) => (Some(escalation), None),
                Err(why) => (None, Some(why)),
            };
            Some(HandOffRow {
                context: context.to_owned(),
                object: describe(
                    resource,
                    object.metadata.namespace.as_deref().unwrap_or_default(),
                    object.metadata.name.as_deref().unwrap_or_default(),
                ),
                escalation,
                unreadable,
            })
        })
        .collect()
}

/// One brake in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PauseRow {
    /// The kubeconfig context (the cluster).
    pub context: String,
    /// `cluster`, `namespace shop` or the object.
    pub scope: String,
    /// What holds: the pause's reason, or the remediations the object accepts.
    pub holds: String,
}

/// The pause on an object or namespace with these annotations, and its remediation list.
pub fn brakes_on(
    context: &str,
    scope: &str,
    annotations: Option<&BTreeMap<String, String>>,
) -> Vec<PauseRow> {
    let row = |holds: String| PauseRow {
        context: context.to_owned(),
        scope: scope.to_owned(),
        holds,
    };
    let mut rows = Vec::new();
    if let Some(why) = pause::reason(annotations.and_then(|a| a.get(PAUSE_ANNOTATION))) {
        rows.push(row(format!("paused: {why}")));
    }
    if let Some(only) = annotations.and_then(|a| a.get(REMEDIATIONS_ANNOTATION)) {
        rows.push(row(format!("accepts only: {}", only.trim())));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(annotations: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "checkout-v2", "namespace": "shop", "annotations": annotations}
        }))
        .expect("object")
    }

    fn deployment() -> ApiResource {
        ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&())
    }

    #[test]
    fn each_functions_record_is_a_row_newest_first_with_its_state() {
        let restart = json!({"fingerprint": "f1", "traceId": "t1", "at": "2026-12-04T10:00:00Z",
            "streak": 1, "change": "rollout restart",
            "verification": {"state": "not-recovered", "due": "2026-12-04T10:05:00Z"}});
        let rollback = json!({"fingerprint": "f2", "traceId": "t2", "at": "2026-12-04T11:00:00Z",
            "streak": 1, "change": "routed 100%", "reverted": {"at": "2026-12-04T11:05:00Z",
            "traceId": "t3", "reason": "fixed", "requestedBy": "alice"}});
        let objects = vec![object(json!({
            "auto-remediation.io/latency-restart": restart.to_string(),
            "auto-remediation.io/error-rollback": rollback.to_string(),
            "auto-remediation.io/escalated": "{}",
        }))];
        let rows = actions("use1", &deployment(), &objects, None, None);
        let summary: Vec<(&str, &str, bool)> = rows
            .iter()
            .map(|r| (r.function.as_str(), r.state.as_str(), r.escalated))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("error-rollback", "reverted", true),
                ("latency-restart", "applied", true)
            ]
        );
        assert_eq!(rows[0].object, "Deployment shop/checkout-v2");
        assert_eq!(rows[0].verification, None);
        let verified = rows[1].verification.as_ref().map(|v| v.state);
        assert_eq!(
            verified,
            Some(mesh_remediation::cluster::record::VerificationState::NotRecovered)
        );
        assert!(
            rows[0]
                .reverted
                .as_deref()
                .is_some_and(|r| r.contains("alice"))
        );
        let since = "2026-12-04T10:30:00Z".parse().ok();
        assert_eq!(
            actions("use1", &deployment(), &objects, None, since).len(),
            1
        );
        let only = actions(
            "use1",
            &deployment(),
            &objects,
            Some("latency-restart"),
            None,
        );
        assert_eq!(only.len(), 1);
        let hand_offs = hand_offs("use1", &deployment(), &objects);
        assert!(hand_offs[0].unreadable.is_some(), "{hand_offs:?}");
    }

    #[test]
    fn an_unreadable_record_is_shown_not_hidden() {
        let objects = vec![object(
            json!({"auto-remediation.io/latency-restart": "oops"}),
        )];
        let rows = actions("use1", &deployment(), &objects, None, None);
        assert_eq!(rows[0].state, "unreadable");
        assert!(rows[0].unreadable.is_some());
    }

    #[test]
    fn pauses_and_remediation_lists_are_brakes() {
        let annotations = BTreeMap::from([
            (PAUSE_ANNOTATION.to_owned(), "freeze".to_owned()),
            (
                REMEDIATIONS_ANNOTATION.to_owned(),
                "error-rollback".to_owned(),
            ),
        ]);
        let rows = brakes_on("use1", "namespace shop", Some(&annotations));
        let holds: Vec<&str> = rows.iter().map(|r| r.holds.as_str()).collect();
        assert_eq!(
            holds,
            vec!["paused: freeze", "accepts only: error-rollback"]
        );
        let empty = BTreeMap::from([(PAUSE_ANNOTATION.to_owned(), " ".to_owned())]);
        assert!(brakes_on("use1", "x", Some(&empty)).is_empty());
    }
}
