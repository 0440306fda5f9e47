//! Exact restoration of a recorded change: the `previous` fragment written back only while
//! the object still holds the `applied` one, for resolved alerts and revert requests alike.

use kube::api::DynamicObject;
use serde_json::{Map, Value, json};

use super::{HTTP_ROUTES, fragment, http_routes, merge_diff, namespace_of};
use crate::cluster::record::{ActionRecord, record_annotation};
use crate::remediation::{Plan, Refusal};

/// What a plan that restores the recorded `previous` does when the object was edited
/// since the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnEdit {
    /// Refuse with a failure (an explicit revert request that cannot be honoured).
    Fail,
    /// Leave the edit alone and hold, reported (a resolved alert restoring on its own).
    Hold,
}

/// Plans the exact restoration of the recorded `previous` fragment, provided the object
/// still holds the `applied` one. Already restored: skipped.
pub fn plan_restore(
    object: &DynamicObject,
    record: &ActionRecord,
    remediation: &str,
    action: &'static str,
    on_edit: OnEdit,
) -> Result<Plan, Refusal> {
    let (Some(previous), Some(Value::Object(applied))) = (&record.previous, &record.applied) else {
        return Err(Refusal::Fail(format!(
            "the action record ({}) holds no previous/applied configuration to restore",
            record_annotation(remediation)
        )));
    };
    if let (Some(Value::Object(before)), Some(Value::Object(after))) =
        (previous.get(HTTP_ROUTES), applied.get(HTTP_ROUTES))
    {
        return plan_restore_routes(object, record, remediation, action, on_edit, before, after);
    }
    let keys: Vec<&str> = applied.keys().map(String::as_str).collect();
    let fields = keys
        .iter()
        .map(|k| format!("spec.{k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let current = fragment(object, keys.iter().copied());
    if &current == previous {
        return Err(Refusal::Skip(format!(
            "{fields} already equals the configuration from before the action at {}",
            record.at.to_rfc3339()
        )));
    }
    if current != Value::Object(applied.clone()) {
        return Err(edited_refusal(
            object,
            record,
            remediation,
            &fields,
            on_edit,
        ));
    }
    Ok(Plan {
        patch: json!({ "spec": merge_diff(&current, previous) }),
        summary: format!(
            "restored {fields} exactly as before the action at {} (trace {})",
            record.at.to_rfc3339(),
            record.trace_id
        ),
        action,
        previous: Some(current),
        applied: Some(previous.clone()),
    })
}

fn edited_refusal(
    object: &DynamicObject,
    record: &ActionRecord,
    remediation: &str,
    fields: &str,
    on_edit: OnEdit,
) -> Refusal {
    let why = format!(
        "{} was edited after the action at {} ({fields} no longer equals what was applied); \
         not overwriting that edit. The configuration from before the action is in annotation {}",
        object_name(object),
        record.at.to_rfc3339(),
        record_annotation(remediation)
    );
    match on_edit {
        OnEdit::Fail => Refusal::Fail(why),
        OnEdit::Hold => Refusal::Hold(why),
    }
}

/// [`plan_restore`] for a record of changed HTTP routes.
fn plan_restore_routes(
    object: &DynamicObject,
    record: &ActionRecord,
    remediation: &str,
    action: &'static str,
    on_edit: OnEdit,
    before: &Map<String, Value>,
    after: &Map<String, Value>,
) -> Result<Plan, Refusal> {
    let mut http = http_routes(object);
    let fields = after
        .keys()
        .map(|i| format!("spec.http[{i}].route"))
        .collect::<Vec<_>>()
        .join(", ");
    let current: Map<String, Value> = after
        .keys()
        .map(|i| {
            let route = i
                .parse::<usize>()
                .ok()
                .and_then(|i| http.get(i))
                .and_then(|r| r.get("route"))
                .cloned()
                .unwrap_or(Value::Null);
            (i.clone(), route)
        })
        .collect();
    if &current == before {
        return Err(Refusal::Skip(format!(
            "{fields} already equals the configuration from before the action at {}",
            record.at.to_rfc3339()
        )));
    }
    if &current != after {
        return Err(edited_refusal(
            object,
            record,
            remediation,
            &fields,
            on_edit,
        ));
    }
    for (i, route) in before {
        if let Some(slot) = i.parse::<usize>().ok().and_then(|i| http.get_mut(i)) {
            slot["route"] = route.clone();
        }
    }
    Ok(Plan {
        patch: json!({ "spec": { "http": http } }),
        summary: format!(
            "restored {fields} exactly as before the action at {} (trace {})",
            record.at.to_rfc3339(),
            record.trace_id
        ),
        action,
        previous: Some(json!({ HTTP_ROUTES: current })),
        applied: Some(json!({ HTTP_ROUTES: before })),
    })
}

fn object_name(object: &DynamicObject) -> String {
    let kind = object
        .types
        .as_ref()
        .map(|t| t.kind.as_str())
        .unwrap_or("object");
    format!(
        "{kind} {}/{}",
        namespace_of(object),
        object.metadata.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remediation::istio::{http_plan, reweigh_routes};

    fn vs(hosts: Value, http: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "checkout", "namespace": "shop", "resourceVersion": "1"},
            "spec": {"hosts": hosts, "http": http}
        }))
        .expect("object")
    }

    fn record(previous: Value, applied: Value) -> ActionRecord {
        ActionRecord {
            fingerprint: "f".into(),
            trace_id: "t-1".into(),
            request_id: None,
            at: chrono::Utc::now(),
            streak: 1,
            change: "x".into(),
            previous: Some(previous),
            applied: Some(applied),
            recovered_at: None,
            reverted: None,
            escalated_at: None,
            verification: None,
        }
    }

    #[test]
    fn restore_needs_the_applied_fragment_and_returns_the_previous_one() {
        let before = json!([{"route": [{"destination": {"host": "a"}, "weight": 50},
                                       {"destination": {"host": "b"}, "weight": 50}]}]);
        let after = json!([{"route": [{"destination": {"host": "a"}, "weight": 100},
                                      {"destination": {"host": "b"}, "weight": 0}]}]);
        let rec = record(json!({"http": before}), json!({"http": after}));
        let plan = plan_restore(
            &vs(json!(["a"]), after.clone()),
            &rec,
            "error-rollback",
            "Revert",
            OnEdit::Fail,
        )
        .expect("plan");
        assert_eq!(plan.patch, json!({"spec": {"http": before}}));
        // Edited since: refused, as a failure or a skip.
        let edited = json!([{"route": [{"destination": {"host": "a"}, "weight": 90},
                                       {"destination": {"host": "b"}, "weight": 10}]}]);
        let object = vs(json!(["a"]), edited);
        match plan_restore(&object, &rec, "error-rollback", "Revert", OnEdit::Fail) {
            Err(Refusal::Fail(why)) => assert!(why.contains("was edited"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan_restore(&object, &rec, "error-rollback", "Revert", OnEdit::Hold),
            Err(Refusal::Hold(_))
        ));
        // Already restored: nothing to do.
        let object = vs(json!(["a"]), before);
        match plan_restore(&object, &rec, "error-rollback", "Revert", OnEdit::Fail) {
            Err(Refusal::Skip(why)) => assert!(why.contains("already equals"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn route_records_hold_only_the_changed_routes_and_restore_them_exactly() {
        let untouched = json!({"name": "tenant", "match": [{"headers": {"x-t": {"exact": "1"}}}],
                               "route": [{"destination": {"host": "a"}}]});
        let split = |a: i64, b: i64| {
            json!({"route": [{"destination": {"host": "a"}, "weight": a},
                                                      {"destination": {"host": "b"}, "weight": b}]})
        };
        let object = vs(json!(["a"]), json!([untouched, split(50, 50)]));
        let reweighed = reweigh_routes(&http_routes(&object), |_, d| {
            Ok(Some(
                (0..d.len()).map(|i| if i == 0 { 100 } else { 0 }).collect(),
            ))
        })
        .expect("reweighed");
        let plan = http_plan(&object, reweighed, "rolled back", "Rollback");
        assert_eq!(
            plan.previous,
            Some(json!({"httpRoutes": {"1": split(50, 50)["route"]}})),
            "the untouched route is not recorded"
        );
        let rec = record(
            plan.previous.clone().expect("previous"),
            plan.applied.clone().expect("applied"),
        );
        let changed = vs(json!(["a"]), plan.patch["spec"]["http"].clone());
        let restore =
            plan_restore(&changed, &rec, "error-rollback", "Revert", OnEdit::Fail).expect("plan");
        assert_eq!(restore.patch["spec"]["http"], object.data["spec"]["http"]);
        // Edited since: refused; restored already: skipped.
        let edited = vs(json!(["a"]), json!([untouched, split(90, 10)]));
        assert!(matches!(
            plan_restore(&edited, &rec, "error-rollback", "Revert", OnEdit::Fail),
            Err(Refusal::Fail(why)) if why.contains("spec.http[1].route")
        ));
        assert!(matches!(
            plan_restore(&object, &rec, "error-rollback", "Revert", OnEdit::Fail),
            Err(Refusal::Skip(_))
        ));
    }
}
