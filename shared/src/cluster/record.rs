//! The action record kept on the target object itself.
//!
//! It is written in the same request as the change and guarded by the object's
//! `resourceVersion`, so two concurrent invocations cannot both act: the second write
//! fails with 409, re-reads the object, finds the record and stands down.
//!
//! The format is additive JSON (camelCase); readers ignore fields they do not know. Since
//! verification, a record may carry `verification`:
//!
//! ```json
//! {"fingerprint": "...", "traceId": "1-...", "at": "...", "streak": 1, "change": "...",
//!  "verification": {"state": "pending", "due": "2026-12-07T23:45:00Z"}}
//! {"...": "...",
//!  "verification": {"state": "worse", "due": "...", "at": "...", "traceId": "<verifying invocation>",
//!                   "summary": "worse than before the change (by more than 20%): error_ratio 0.3 > 0.005 (was 0.05)",
//!                   "evidence": [{"check": "error_ratio", "query": "...", "before": 0.05, "now": 0.3, "threshold": 0.005}],
//!                   "undone": true}}
//! ```
//!
//! `state` is `pending` (written with the change when verification is on), then one of
//! `verified`, `not-recovered`, `worse`; `undone` is set when a worse change was undone
//! (the record's `reverted` says when and why). A record without `verification` was made
//! with verification off, in a dry run or before it existed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::verify::verdict::{Measurement, Verdict};

/// Label that opts an object into automation.
pub const OPT_IN_LABEL: &str = "auto_remediation";
/// Value of [`OPT_IN_LABEL`] that opts in.
pub const OPT_IN_VALUE: &str = "active";
/// Prefix of the annotations this project writes.
pub const ANNOTATION_PREFIX: &str = "auto-remediation.io/";
/// Field manager name on every write (visible in `managedFields`).
pub const FIELD_MANAGER: &str = "mesh-remediation";

/// Annotation holding the record of one remediation on an object. Each remediation has
/// its own key so two functions acting on one object never overwrite each other's record.
pub fn record_annotation(remediation: &str) -> String {
    format!("{ANNOTATION_PREFIX}{remediation}")
}

/// What the last action of one remediation on this object was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRecord {
    /// Fingerprint of the alert that caused it.
    pub fingerprint: String,
    /// Trace id of the invocation that made the change (find its logs with it).
    pub trace_id: String,
    /// Lambda request id of that invocation: Lambda's retries of an invocation keep it, so
    /// a retry recognises a change its earlier attempt made but could not report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// When the change was made.
    pub at: DateTime<Utc>,
    /// Actions without recovery in a row, this one included.
    pub streak: u32,
    /// What changed, in words.
    pub change: String,
    /// The exact spec fragment before the change (for instant rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Value>,
    /// The spec fragment as written (a revert refuses if the object no longer has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Value>,
    /// When a resolved alert reported recovery after this action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_at: Option<DateTime<Utc>>,
    /// Set when a revert request restored `previous`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted: Option<Reversal>,
    /// When this streak was escalated to a person (see [`crate::guard::escalation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_at: Option<DateTime<Utc>>,
    /// Whether the change helped, once verified (see [`crate::verify`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

/// Where the verification of the recorded action stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerificationState {
    /// Scheduled, not judged yet.
    Pending,
    /// Recovered.
    Verified,
    /// Not recovered: handed to a person.
    NotRecovered,
    /// Worse than before: undone where it can be, and handed to a person.
    Worse,
}

impl From<Verdict> for VerificationState {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Verified => VerificationState::Verified,
            Verdict::NotRecovered => VerificationState::NotRecovered,
            Verdict::Worse => VerificationState::Worse,
        }
    }
}

/// The verification of one action, on its record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// Pending, or the verdict.
    pub state: VerificationState,
    /// When the check is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<DateTime<Utc>>,
    /// When it was judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// Trace id of the invocation that judged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The verdict in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Each check: query, value before, value then, threshold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<Measurement>,
    /// A worse change was undone (the record's `reverted` says how).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub undone: bool,
}

impl Verification {
    /// Scheduled for `due`.
    pub fn pending(due: DateTime<Utc>) -> Self {
        Verification {
            state: VerificationState::Pending,
            due: Some(due),
            at: None,
            trace_id: None,
            summary: None,
            evidence: Vec::new(),
            undone: false,
        }
    }

    /// Whether a verdict is recorded (a repeated verify request then changes nothing).
    pub fn judged(&self) -> bool {
        self.state != VerificationState::Pending
    }
}

/// A revert request that undid the recorded action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reversal {
    /// When the revert was made.
    pub at: DateTime<Utc>,
    /// Trace id of the invocation that made it.
    pub trace_id: String,
    /// Why, as the request said.
    pub reason: String,
    /// Who asked, when the request said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl ActionRecord {
    /// Reads the record of `remediation` from object annotations. A record that cannot be
    /// parsed is treated as absent only for reading; the caller reports it.
    pub fn from_annotations(
        annotations: Option<&std::collections::BTreeMap<String, String>>,
        remediation: &str,
    ) -> Result<Option<ActionRecord>, String> {
        let Some(raw) = annotations.and_then(|a| a.get(&record_annotation(remediation))) else {
            return Ok(None);
        };
        serde_json::from_str(raw).map(Some).map_err(|err| {
            format!(
                "annotation {} is not a valid action record ({err}); remove or fix it",
                record_annotation(remediation)
            )
        })
    }

    /// The annotation value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("an action record always serialises")
    }

    /// Whether recovery was reported after the last action.
    pub fn recovered(&self) -> bool {
        self.recovered_at.is_some_and(|t| t >= self.at)
    }
}

/// Whether an object's labels opt it into automation.
pub fn opted_in(labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(OPT_IN_LABEL))
        .is_some_and(|v| v == OPT_IN_VALUE)
}
