//! The remediations. Each is one module behind the [`Remediation`] trait: which object it
//! targets, what change it plans, and (optionally) what a resolved alert restores and how
//! a revert request undoes it. The pipeline around it (intake, decision, enactment,
//! report) is shared.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use kube::api::{ApiResource, DynamicObject};
use serde_json::Value;

use crate::cluster::record::ActionRecord;
use crate::config::Config;
use crate::intake::AlertInput;

pub mod db_circuit_break;
pub mod error_rollback;
pub mod istio;
pub mod latency_restart;
pub mod object;
pub mod pods;
pub mod region_failover;
pub mod resolution;

pub use db_circuit_break::DbCircuitBreak;
pub use error_rollback::ErrorRollback;
pub use latency_restart::LatencyRestart;
pub use region_failover::RegionFailover;

/// Where the target of an alert lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locator {
    /// The resource type.
    pub resource: ApiResource,
    /// Namespace of the object(s).
    pub namespace: String,
    /// The object's name; `None` means "every opted-in object the remediation selects".
    pub name: Option<String>,
    /// A list locator over every namespace: the opted-in objects the remediation selects
    /// wherever they are (`namespace` is then the alert's, whose pause also applies).
    pub everywhere: bool,
    /// For list locators, what the selection is about (the fully qualified mesh host):
    /// alerts about different subjects in one namespace are different targets, not
    /// duplicates of each other.
    pub subject: Option<String>,
    /// The cluster it lives in (`None`: the one cluster of the kubeconfig default). Set by
    /// the pipeline from the alert's `cluster` label, or for each mesh cluster.
    pub cluster: Option<String>,
}

impl Locator {
    /// A stable key for grouping alerts that target the same object(s).
    pub fn key(&self) -> String {
        format!(
            "{}:{}/{}/{}/{}#{}",
            self.cluster.as_deref().unwrap_or_default(),
            self.resource.group,
            self.resource.plural,
            if self.everywhere {
                "*"
            } else {
                &self.namespace
            },
            self.name.as_deref().unwrap_or("*"),
            self.subject.as_deref().unwrap_or_default()
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
    /// Not now, and that is fine (e.g. already done).
    Skip(String),
    /// Not done, and a person should know: the alert keeps firing and nothing here helps
    /// (e.g. a rollout is in progress, no route reaches the failing version, a foreign edit
    /// blocks the restore). Reported like a failure is, as a skip.
    Hold(String),
    /// Cannot be done safely; humans must look (e.g. no stable version to route to).
    Fail(String),
}

/// What a remediation may look at when planning: the time, the configuration and the
/// facts its [`Remediation::prepare`] gathered for this alert.
#[derive(Debug)]
pub struct PlanContext<'a, F = ()> {
    /// The time of the decision.
    pub now: DateTime<Utc>,
    /// The function's configuration.
    pub config: &'a Config,
    /// Facts gathered by I/O before planning (health checks, related objects).
    pub facts: &'a F,
}

impl<F> Clone for PlanContext<'_, F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F> Copy for PlanContext<'_, F> {}

/// One kind of remediation.
pub trait Remediation: Send + Sync + 'static {
    /// What [`Remediation::prepare`] learns before planning; `()` for remediations that
    /// plan from the object alone.
    type Facts: Default + Send + Sync + 'static;

    /// What [`Remediation::observe`] learns outside the clusters (health checks); `()` for
    /// remediations that need nothing.
    type Observed: Default + Send + Sync + 'static;

    /// The function and `remediation` label value, e.g. `latency-restart`.
    fn name(&self) -> &'static str;

    /// Where the alert's target is, from its validated labels. An `Err` is an input error
    /// (missing or invalid label) reported as a failure and never retried.
    fn locate(&self, input: &AlertInput, config: &Config) -> Result<Locator, String>;

    /// Every place the alert's targets may be, when they span several resource types.
    /// The default is the one [`Remediation::locate`] gives. The alert still gets one
    /// outcome, merged over all of them.
    fn targets(&self, input: &AlertInput, config: &Config) -> Result<Vec<Locator>, String> {
        self.locate(input, config).map(|locator| vec![locator])
    }

    /// Whether one alert's change applies to every cluster of the mesh (`MESH_CLUSTERS`)
    /// rather than to the alert's own cluster only: each cluster's proxies read their own
    /// cluster's configuration. The default is the alert's cluster only.
    fn mesh_wide(&self) -> bool {
        false
    }

    /// What [`Remediation::observe`] depends on: alerts of one invocation with the same key
    /// share one observation (two services failing over from one region: one round of
    /// health checks). `None` (the default): each alert observes for itself.
    fn observation_key(&self, _input: &AlertInput) -> Option<String> {
        None
    }

    /// Observes what lies outside the clusters (health endpoints) once per alert (or per
    /// [`Remediation::observation_key`]), however many clusters it reaches, before the first
    /// plan and only when one is needed. An `Err` fails the alert (retryable when the error
    /// is). The default observes nothing.
    fn observe<'a>(
        &'a self,
        _input: &'a AlertInput,
    ) -> BoxFuture<'a, crate::Result<Self::Observed>> {
        Box::pin(async { Ok(Self::Observed::default()) })
    }

    /// Gathers facts from one cluster (related objects) once per alert and cluster, before
    /// the first plan there and only when a plan is needed, so that planning itself stays
    /// pure. An `Err` fails the alert in that cluster (retryable when the error is). The
    /// default learns nothing.
    fn prepare<'a>(
        &'a self,
        _input: &'a AlertInput,
        _client: &'a kube::Client,
        _config: &'a Config,
        _observed: &'a Self::Observed,
    ) -> BoxFuture<'a, crate::Result<Self::Facts>> {
        Box::pin(async { Ok(Self::Facts::default()) })
    }

    /// For list locators: whether this opted-in object is a target of the alert.
    fn selects(&self, _input: &AlertInput, _object: &DynamicObject) -> bool {
        true
    }

    /// Plans the change for a firing alert, from the object as it is now.
    fn plan(
        &self,
        input: &AlertInput,
        object: &DynamicObject,
        context: PlanContext<'_, Self::Facts>,
    ) -> Result<Plan, Refusal>;

    /// Plans what a resolved alert does to an object this remediation changed. `None`
    /// (the default) means only recovery is recorded; nothing is changed. Undoing a
    /// recorded change needs no facts, so none are gathered for it.
    fn plan_resolved(
        &self,
        _input: &AlertInput,
        _object: &DynamicObject,
        _record: &ActionRecord,
        _context: PlanContext<'_>,
    ) -> Option<Result<Plan, Refusal>> {
        None
    }

    /// The resource types a revert request may name for this remediation. Empty (the
    /// default) means its changes cannot be reverted.
    fn revertible(&self, _config: &Config) -> Vec<ApiResource> {
        Vec::new()
    }

    /// The resource types a verify request may name: the objects this remediation changes.
    /// The default is [`Remediation::revertible`]'s.
    fn verifiable(&self, config: &Config) -> Vec<ApiResource> {
        self.revertible(config)
    }

    /// Plans the revert of the recorded action: restore `previous` exactly, and refuse
    /// when the object no longer holds what was `applied` (someone edited it since).
    fn plan_revert(
        &self,
        _object: &DynamicObject,
        _record: &ActionRecord,
    ) -> Result<Plan, Refusal> {
        Err(Refusal::Fail(format!(
            "{} changes cannot be reverted",
            self.name()
        )))
    }
}
