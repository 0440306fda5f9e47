//! Why an alert leads to no action: the skip vocabulary every stage speaks.
//!
//! The decision, the budget, the pause and cluster routing produce a [`SkipReason`]; the
//! pipeline carries it and the report shows it. It depends on no other module of the crate,
//! so any of them can use it without reaching up into the pipeline.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Why an alert leads to no action. Shown verbatim in reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The SNS message was published too long ago (it sat in retries).
    StaleDelivery {
        /// How old the message was.
        age: Duration,
        /// The configured limit.
        limit: Duration,
    },
    /// The alert carries an end time in the past.
    AlertEnded {
        /// When it ended.
        ended_at: DateTime<Utc>,
    },
    /// The namespace is protected.
    ProtectedNamespace(String),
    /// `ALLOWED_NAMESPACES` is set and does not list the namespace.
    NamespaceNotAllowed(String),
    /// The object does not carry `auto_remediation=active`.
    NotOptedIn(String),
    /// The target was acted on too recently.
    Cooldown {
        /// When the last action happened.
        last_action: DateTime<Utc>,
        /// When the next one is allowed.
        next_allowed: DateTime<Utc>,
    },
    /// The invocation already reached its cap of targets.
    BlastRadius {
        /// The cap.
        max_targets: usize,
    },
    /// Another alert of the same invocation already handled this target.
    Duplicate {
        /// Fingerprint of that alert.
        handled_by: String,
    },
    /// The alert is for another function.
    OtherFunction(String),
    /// The alert is for another cluster.
    OtherCluster {
        /// The alert's `cluster` label.
        alert: String,
        /// The one cluster served (`CLUSTER_NAME` / `CLUSTER_NAMES`).
        ours: String,
    },
    /// The remediation itself declined (e.g. a rollout is still in progress).
    Declined(String),
    /// A resolved alert: nothing to do, with what was done instead.
    Resolved(String),
    /// Alertmanager's template left alerts out of the message.
    AlertsOmitted(u64),
    /// An operator paused the remediations, or the object does not accept this one.
    Paused(String),
    /// The remediation held back and a person should know (see [`Refusal::Hold`]).
    ///
    /// [`Refusal::Hold`]: crate::remediation::Refusal::Hold
    Held(String),
    /// The cluster-wide or per-function action budget of the rolling window is spent.
    BudgetSpent(String),
    /// The target was escalated to a person, who has not handed it back yet.
    HandedOff(String),
}

impl SkipReason {
    /// Whether a person must hear of this skip (it goes to the notification topic): the
    /// alert keeps firing and nothing is done about it until someone acts. Routine skips
    /// (cooldown, duplicates, stale or foreign deliveries, objects not opted in, work already
    /// done, an escalation already reported) stay in the log and the metrics.
    pub fn needs_a_person(&self) -> bool {
        match self {
            SkipReason::Paused(_)
            | SkipReason::Held(_)
            | SkipReason::BudgetSpent(_)
            | SkipReason::BlastRadius { .. }
            | SkipReason::AlertsOmitted(_) => true,
            SkipReason::StaleDelivery { .. }
            | SkipReason::AlertEnded { .. }
            | SkipReason::ProtectedNamespace(_)
            | SkipReason::NamespaceNotAllowed(_)
            | SkipReason::NotOptedIn(_)
            | SkipReason::Cooldown { .. }
            | SkipReason::Duplicate { .. }
            | SkipReason::OtherFunction(_)
            | SkipReason::OtherCluster { .. }
            | SkipReason::Declined(_)
            | SkipReason::Resolved(_)
            | SkipReason::HandedOff(_) => false,
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::StaleDelivery { age, limit } => write!(
                f,
                "stale: SNS message published {}s ago, limit is {}s (MAX_DELIVERY_AGE_SECONDS)",
                age.as_secs(),
                limit.as_secs()
            ),
            SkipReason::AlertEnded { ended_at } => {
                write!(f, "stale: alert already ended at {}", ended_at.to_rfc3339())
            }
            SkipReason::ProtectedNamespace(ns) => {
                write!(f, "namespace {ns} is protected (PROTECTED_NAMESPACES)")
            }
            SkipReason::NamespaceNotAllowed(ns) => {
                write!(f, "namespace {ns} is not in ALLOWED_NAMESPACES")
            }
            SkipReason::NotOptedIn(target) => {
                write!(f, "{target} is not labelled auto_remediation=active")
            }
            SkipReason::Cooldown {
                last_action,
                next_allowed,
            } => write!(
                f,
                "cooldown: last action at {}, next allowed at {}",
                last_action.to_rfc3339(),
                next_allowed.to_rfc3339()
            ),
            SkipReason::BlastRadius { max_targets } => write!(
                f,
                "blast radius: this invocation already reached {max_targets} targets (MAX_TARGETS_PER_INVOCATION)"
            ),
            SkipReason::Duplicate { handled_by } => write!(
                f,
                "duplicate: the same target was handled by alert {handled_by} in this invocation"
            ),
            SkipReason::OtherFunction(why) => write!(f, "not for this function: {why}"),
            SkipReason::OtherCluster { alert, ours } => write!(
                f,
                "alert is for cluster {alert}; this function acts on {ours} (CLUSTER_NAMES)"
            ),
            SkipReason::Declined(why) => f.write_str(why),
            SkipReason::Resolved(what) => write!(f, "resolved: {what}"),
            SkipReason::Paused(why) => write!(f, "paused: {why}"),
            SkipReason::Held(why) => write!(f, "held: {why}"),
            SkipReason::BudgetSpent(why) => write!(f, "budget spent: {why}"),
            SkipReason::HandedOff(why) => write!(f, "handed off: {why}"),
            SkipReason::AlertsOmitted(n) => write!(
                f,
                "{n} alerts of this group were left out of the message by the Alertmanager template cap (truncatedAlerts); they get no action"
            ),
        }
    }
}
