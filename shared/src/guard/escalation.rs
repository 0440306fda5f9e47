//! Escalation as a hand-off: once repeated actions on a target did not help, the function
//! writes the annotation [`ESCALATED_ANNOTATION`] on the object and no function acts on it
//! again until it is handed back, by either
//!
//! - a person removing the annotation (`kubectl annotate ... auto-remediation.io/escalated-`),
//!   which acknowledges it; or
//! - the alert resolving and staying resolved for `ESCALATION_WINDOW_SECONDS`: its resolved
//!   notification stamps `resolvedAt` on the annotation, and the next firing alert that
//!   started at least that long after it finds the target handed back.
//!
//! Pure functions; the pipeline reads and writes the annotation with the action record.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cluster::record::ActionRecord;
use crate::guard::decide::Verdict;
use crate::guard::skip::SkipReason;

/// The annotation that hands an object to a person.
pub const ESCALATED_ANNOTATION: &str = "auto-remediation.io/escalated";

/// What the annotation holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Escalation {
    /// The function that escalated.
    pub remediation: String,
    /// The alert that kept firing.
    pub alert: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// When the function gave up.
    pub at: DateTime<Utc>,
    /// The escalating invocation's trace id.
    pub trace_id: String,
    /// Actions taken without recovery.
    pub streak: u32,
    /// When the alert last resolved after the escalation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
}

impl Escalation {
    /// The annotation value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Where a target stands with respect to a hand-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandOff {
    /// Never escalated, or handed back long ago: decide as usual.
    Free,
    /// With a person: no action.
    Held(SkipReason),
    /// The alert stayed resolved: act afresh and remove the annotation in the same write.
    StayedResolved,
    /// A person removed the annotation: act afresh.
    Acknowledged,
}

/// Reads the annotation; a value this code cannot read still holds the target.
pub fn read(annotations: Option<&BTreeMap<String, String>>) -> Option<Result<Escalation, String>> {
    let raw = annotations?.get(ESCALATED_ANNOTATION)?;
    Some(serde_json::from_str(raw).map_err(|err| err.to_string()))
}

/// The hand-off state of `target` for a firing alert (`fingerprint`, started at
/// `alert_started`), given its annotations and `remediation`'s record.
pub fn check(
    target: &str,
    annotations: Option<&BTreeMap<String, String>>,
    record: Option<&ActionRecord>,
    fingerprint: &str,
    alert_started: DateTime<Utc>,
    now: DateTime<Utc>,
    stay_resolved: Duration,
) -> HandOff {
    let lift = format!(
        "to hand it back, remove the annotation: kubectl annotate <kind> <name> {ESCALATED_ANNOTATION}-"
    );
    let escalation = match read(annotations) {
        None => {
            return match record.and_then(|r| r.escalated_at) {
                // Our record says we escalated and the annotation is gone: a person took it.
                Some(_) => HandOff::Acknowledged,
                None => HandOff::Free,
            };
        }
        Some(Err(err)) => {
            return HandOff::Held(SkipReason::HandedOff(format!(
                "{target} carries an unreadable {ESCALATED_ANNOTATION} ({err}); {lift}"
            )));
        }
        Some(Ok(escalation)) => escalation,
    };
    let quiet = chrono::Duration::from_std(stay_resolved).unwrap_or(chrono::Duration::MAX);
    if let Some(resolved) = escalation.resolved_at {
        // The escalating alert itself stayed resolved only if it started again at least
        // `quiet` after resolving; any other alert only needs that much time to have passed.
        let restarted = if fingerprint == escalation.fingerprint {
            alert_started
        } else {
            now
        };
        if restarted - resolved >= quiet {
            return HandOff::StayedResolved;
        }
    }
    let resolved = escalation.resolved_at.map_or_else(
        || "the alert has not resolved since".to_owned(),
        |at| {
            format!(
                "the alert resolved at {} but did not stay resolved for {}s",
                at.to_rfc3339(),
                stay_resolved.as_secs()
            )
        },
    );
    HandOff::Held(SkipReason::HandedOff(format!(
        "{target} was escalated to a person by {} at {} after {} actions without recovery (alert {}, trace {}); {resolved}. Handed back when the alert stays resolved for {}s (ESCALATION_WINDOW_SECONDS), or {lift}",
        escalation.remediation,
        escalation.at.to_rfc3339(),
        escalation.streak,
        escalation.alert,
        escalation.trace_id,
        stay_resolved.as_secs()
    )))
}

/// After a hand-back the streak starts again at one: the person's fix, or the quiet period,
/// is a recovery.
pub fn afresh(verdict: Verdict) -> Verdict {
    match verdict {
        Verdict::Act { .. } | Verdict::Escalate { .. } => Verdict::Act { streak: 1 },
        skip @ Verdict::Skip(_) => skip,
    }
}

/// The annotation value after `fingerprint` resolved at `now`, when it is the escalating
/// alert of `remediation`.
pub fn on_resolved(
    annotations: Option<&BTreeMap<String, String>>,
    remediation: &str,
    fingerprint: &str,
    now: DateTime<Utc>,
) -> Option<String> {
    let mut escalation = read(annotations)?.ok()?;
    if escalation.remediation != remediation || escalation.fingerprint != fingerprint {
        return None;
    }
    escalation.resolved_at = Some(now);
    Some(escalation.to_annotation())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, hour, minute, 0)
            .single()
            .expect("time")
    }

    fn marked(resolved_at: Option<DateTime<Utc>>) -> BTreeMap<String, String> {
        let escalation = Escalation {
            remediation: "latency-restart".into(),
            alert: "IstioHighLatencyP95".into(),
            fingerprint: "abc".into(),
            at: at(10, 0),
            trace_id: "t-1".into(),
            streak: 3,
            resolved_at,
        };
        BTreeMap::from([(ESCALATED_ANNOTATION.to_owned(), escalation.to_annotation())])
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn an_escalated_target_is_held_until_the_alert_stays_resolved() {
        let held = check(
            "D",
            Some(&marked(None)),
            None,
            "abc",
            at(10, 0),
            at(15, 0),
            HOUR,
        );
        match held {
            HandOff::Held(reason) => {
                let text = reason.to_string();
                assert!(text.contains("has not resolved since"), "{text}");
                assert!(text.contains("auto-remediation.io/escalated-"), "{text}");
                assert!(!reason.needs_a_person(), "reported once, when it escalated");
            }
            other => panic!("{other:?}"),
        }
        // Resolved at 11:00, fired again at 11:30: it did not stay resolved for an hour.
        let flapping = marked(Some(at(11, 0)));
        assert!(matches!(
            check(
                "D",
                Some(&flapping),
                None,
                "abc",
                at(11, 30),
                at(13, 0),
                HOUR
            ),
            HandOff::Held(_)
        ));
        // Fired again at 12:05, over an hour after resolving: handed back.
        assert_eq!(
            check(
                "D",
                Some(&flapping),
                None,
                "abc",
                at(12, 5),
                at(12, 5),
                HOUR
            ),
            HandOff::StayedResolved
        );
        // Another alert on the same object waits for the same quiet hour.
        assert!(matches!(
            check(
                "D",
                Some(&flapping),
                None,
                "zzz",
                at(11, 10),
                at(11, 30),
                HOUR
            ),
            HandOff::Held(_)
        ));
        assert_eq!(
            check(
                "D",
                Some(&flapping),
                None,
                "zzz",
                at(11, 10),
                at(12, 0),
                HOUR
            ),
            HandOff::StayedResolved
        );
    }

    #[test]
    fn removing_the_annotation_acknowledges_and_a_bad_one_still_holds() {
        let record: ActionRecord = serde_json::from_value(serde_json::json!({
            "fingerprint": "abc", "traceId": "t", "at": "2026-12-04T10:00:00Z", "streak": 3,
            "change": "restart", "escalatedAt": "2026-12-04T10:05:00Z"}))
        .expect("record");
        assert_eq!(
            check("D", None, Some(&record), "abc", at(10, 0), at(10, 6), HOUR),
            HandOff::Acknowledged
        );
        let never = ActionRecord {
            escalated_at: None,
            verification: None,
            ..record
        };
        assert_eq!(
            check("D", None, Some(&never), "abc", at(10, 0), at(10, 6), HOUR),
            HandOff::Free
        );
        let bad = BTreeMap::from([(ESCALATED_ANNOTATION.to_owned(), "yes".to_owned())]);
        assert!(matches!(
            check("D", Some(&bad), None, "abc", at(10, 0), at(10, 6), HOUR),
            HandOff::Held(_)
        ));
    }

    #[test]
    fn only_the_escalating_alert_stamps_its_resolution() {
        let marker = marked(None);
        let stamped =
            on_resolved(Some(&marker), "latency-restart", "abc", at(11, 0)).expect("stamped");
        assert!(
            stamped.contains("\"resolvedAt\":\"2026-12-04T11:00:00Z\""),
            "{stamped}"
        );
        assert_eq!(
            on_resolved(Some(&marker), "latency-restart", "zzz", at(11, 0)),
            None
        );
        assert_eq!(
            on_resolved(Some(&marker), "error-rollback", "abc", at(11, 0)),
            None
        );
        assert_eq!(
            afresh(Verdict::Escalate { streak: 3 }),
            Verdict::Act { streak: 1 }
        );
    }
}
