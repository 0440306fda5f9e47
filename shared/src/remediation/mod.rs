//! The remediations. Each is one module behind the [`Remediation`] trait: which object it
//! targets, what change it plans, and (optionally) what a resolved alert restores. The
//! pipeline around it (intake, decision, enactment, report) is shared.

use chrono::{DateTime, Utc};
use kube::api::{ApiResource, DynamicObject};
use serde_json::Value;

use crate::config::Config;
use crate::intake::AlertInput;
use crate::record::ActionRecord;

pub mod latency_restart;

pub use latency_restart::LatencyRestart;

/// Where the target of an alert lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locator {
    /// The resource type.
    pub resource: ApiResource,
    /// Namespace of the object(s).
    pub namespace: String,
    /// The object's name; `None` means "every opted-in object the remediation selects".
    pub name: Option<String>,
}

impl Locator {
    /// A stable key for grouping alerts that target the same object(s).
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.resource.group,
            self.resource.plural,
            self.namespace,
            self.name.as_deref().unwrap_or("*")
        )
    }
}

/// Describes an object for reports: `Deployment shop/checkout-v2`.
pub fn describe(resource: &ApiResource, namespace: &str, name: &str) -> String {
    format!("{} {namespace}/{name}", resource.kind)
}

/// A change the remediation wants to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// JSON merge patch (RFC 7386) of the change itself; the pipeline adds the record and
    /// the `resourceVersion` precondition.
    pub patch: Value,
    /// The change in words, for the record, the Event and the report.
    pub summary: String,
    /// Short verb for the Kubernetes Event `action` field, e.g. `Restart`.
    pub action: &'static str,
    /// The exact spec fragment before the change, kept for instant rollback.
    pub previous: Option<Value>,
    /// The spec fragment after the change.
    pub applied: Option<Value>,
}

/// Why a remediation will not plan a change for this object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not now, and that is fine (e.g. a rollout is in progress).
    Skip(String),
    /// Cannot be done safely; humans must look (e.g. no stable version to route to).
    Fail(String),
}

/// What a remediation may look at when planning.
#[derive(Debug, Clone, Copy)]
pub struct PlanContext<'a> {
    /// The time of the decision.
    pub now: DateTime<Utc>,
    /// The function's configuration.
    pub config: &'a Config,
}

/// One kind of remediation.
pub trait Remediation: Send + Sync + 'static {
    /// The function and `remediation` label value, e.g. `latency-restart`.
    fn name(&self) -> &'static str;

    /// Where the alert's target is, from its validated labels. An `Err` is an input error
    /// (missing or invalid label) reported as a failure and never retried.
    fn locate(&self, input: &AlertInput, config: &Config) -> Result<Locator, String>;

    /// For list locators: whether this opted-in object is a target of the alert.
    fn selects(&self, _input: &AlertInput, _object: &DynamicObject) -> bool {
        true
    }

    /// Plans the change for a firing alert, from the object as it is now.
    fn plan(
        &self,
        input: &AlertInput,
        object: &DynamicObject,
        context: PlanContext<'_>,
    ) -> Result<Plan, Refusal>;

    /// Plans what a resolved alert does to an object this remediation changed. `None`
    /// (the default) means only recovery is recorded; nothing is changed.
    fn plan_resolved(
        &self,
        _input: &AlertInput,
        _object: &DynamicObject,
        _record: &ActionRecord,
        _context: PlanContext<'_>,
    ) -> Option<Result<Plan, Refusal>> {
        None
    }
}
