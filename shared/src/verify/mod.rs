//! Closing the loop: every applied change is checked against Prometheus
//! `VERIFY_AFTER_SECONDS` after it landed, and judged `verified`, `not recovered` or `worse`.
//!
//! ```text
//! applied change -> verify request on the function's verify queue (SQS, delivery delay)
//!   -> the same function, a verify request naming the object and the action's trace id
//!   -> the checks (checks.rs), each evaluated now and at the action's time (prometheus.rs)
//!   -> the verdict (verdict.rs, pure) -> recorded on the object, handed off, undone if worse
//! ```
//!
//! The pipeline does the reading and writing (`pipeline/verify.rs`); this module holds
//! what a verification needs outside the cluster.

pub mod aws;
pub mod checks;
pub mod prometheus;
pub mod queue;
pub mod rollout;
pub mod settings;
pub mod sign;
pub mod verdict;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use settings::Settings;
use verdict::Measurement;

/// A request to verify one applied change, sent by the function to its own verify queue
/// when the change lands, and delivered back to it after the delay:
///
/// ```json
/// {"verify": {"remediation": "error-rollback", "namespace": "shop", "kind": "VirtualService",
///             "name": "checkout", "traceId": "1-67a1b2c3-0123456789abcdef01234567",
///             "at": "2026-12-07T23:40:00Z",
///             "labels": {"alertname": "IstioHigh5xxRate", "service": "checkout", "version": "v2"}}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyRequest {
    /// The remediation that made the change; must be the receiving function.
    pub remediation: String,
    /// Namespace of the object changed.
    pub namespace: String,
    /// Its kind, e.g. `VirtualService`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The trace id of the action to verify: a newer action on the object supersedes it.
    pub trace_id: String,
    /// When the action was made ("before" is evaluated at this time).
    pub at: DateTime<Utc>,
    /// The cluster, when one function serves several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The alert's labels, which the checks are templated with.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What verifying needs outside the cluster: the settings, Prometheus and the queue.
pub struct Verifier {
    /// The settings in force.
    pub settings: Settings,
    prometheus: Option<prometheus::Prometheus>,
    queue: Option<Arc<dyn queue::VerifyQueue>>,
}

impl Verifier {
    /// The verifier `settings` describe, on the standard AWS chain for signing.
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        Self::with_access(settings, Arc::new(aws::AwsAccess::default()))
    }

    /// The verifier `settings` describe, signing with `aws` (the queue is SQS).
    pub fn with_access(settings: &Settings, aws: Arc<aws::AwsAccess>) -> Result<Self> {
        let queue: Option<Arc<dyn queue::VerifyQueue>> = match &settings.queue_url {
            Some(url) => Some(Arc::new(queue::SqsQueue::new(
                url,
                settings.timeout,
                aws.clone(),
            )?)),
            None => None,
        };
        Self::with_queue(settings, queue, aws)
    }

    /// A verifier with its own queue (tests and emulators).
    pub fn with_queue(
        settings: &Settings,
        queue: Option<Arc<dyn queue::VerifyQueue>>,
        aws: Arc<aws::AwsAccess>,
    ) -> Result<Self> {
        let prometheus = match &settings.prometheus_url {
            Some(url) => Some(prometheus::Prometheus::new(url, settings.timeout, aws)?),
            None => None,
        };
        Ok(Verifier {
            settings: settings.clone(),
            prometheus,
            queue,
        })
    }

    /// Whether applied changes are scheduled for verification.
    pub fn schedules(&self) -> bool {
        self.settings.enabled() && self.queue.is_some()
    }

    /// Sends `request` to wait `VERIFY_AFTER_SECONDS`.
    pub async fn schedule(&self, request: &VerifyRequest) -> Result<()> {
        match &self.queue {
            Some(queue) if self.settings.enabled() => {
                queue.send(request, self.settings.after).await
            }
            _ => Ok(()),
        }
    }

    /// Every check of `request` evaluated at the action's time and now.
    pub async fn measure(&self, request: &VerifyRequest) -> Result<Vec<Measurement>> {
        let prometheus = self.prometheus.as_ref().ok_or(Error::Config {
            var: "PROMETHEUS_URL",
            message: "not set: a verify request cannot be judged without Prometheus".into(),
        })?;
        let checks = self
            .settings
            .checks
            .clone()
            .unwrap_or_else(|| checks::defaults(&request.remediation));
        let queries = checks::render(&checks, &request.labels, self.settings.match_cluster);
        if queries.is_empty() {
            return Err(Error::Input(format!(
                "no verification check applies to the labels of the alert behind {} {}/{}",
                request.kind, request.namespace, request.name
            )));
        }
        let measured = queries.iter().map(|query| async move {
            let (before, now) = futures::join!(
                prometheus.value(&query.promql, Some(request.at)),
                prometheus.value(&query.promql, None)
            );
            Ok::<_, Error>(Measurement {
                check: query.name.clone(),
                query: query.promql.clone(),
                before: before?,
                now: now?,
                threshold: query.threshold,
            })
        });
        futures::future::join_all(measured)
            .await
            .into_iter()
            .collect()
    }
}
