//! The Lambda edge: typed config and lazy clients at start, then one call to the pipeline
//! per invocation. Bad input answers normally (a retry cannot fix it); transient
//! failures answer with a typed error ([`InvocationError`], `errorType`
//! `MeshRemediation.Retryable`) so Lambda retries and, after that, dead-letters.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::Value;
use tracing::instrument;

use crate::cluster::connect::{AwsClusterDirectory, Connections};
use crate::config::Config;
use crate::pipeline::{Invocation, Pipeline};
use crate::remediation::Remediation;
use crate::report::InvocationReport;
use crate::report::grafana::GrafanaNotifier;
use crate::report::notify::{self, Notifier, PagerDutyNotifier, SlackNotifier, SnsNotifier};
use crate::report::secrets::{SecretStore, SecretsManager, SinkSecret};
use crate::report::sinks::CredentialKind;

/// The error type `main` returns.
pub type BoxError = lambda_runtime::Error;

/// Why an invocation fails: Lambda retries a failed asynchronous invocation (twice, then
/// the dead-letter queue), and reports the `errorType` of each one.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// Alerts failed in a way a retry may fix (API trouble, conflicts, the deadline).
    #[error(
        "{count} alert(s) failed transiently, retry will re-evaluate them (trace {trace_id}): {reasons}",
        count = .reasons.len(),
        reasons = .reasons.join("; ")
    )]
    Retryable {
        /// The invocation's trace id.
        trace_id: String,
        /// Each retryable failure's reason.
        reasons: Vec<String>,
    },
    /// The report could not be turned into the response.
    #[error("cannot serialise the report: {0}")]
    Report(#[from] serde_json::Error),
}

impl InvocationError {
    /// The Lambda `errorType`: what alarms and the dead-letter queue's readers match on.
    pub fn error_type(&self) -> &'static str {
        match self {
            InvocationError::Retryable { .. } => "MeshRemediation.Retryable",
            InvocationError::Report(_) => "MeshRemediation.Report",
        }
    }
}

impl From<InvocationError> for Diagnostic {
    fn from(error: InvocationError) -> Self {
        Diagnostic {
            error_type: error.error_type().to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// Like [`run`], for a remediation with settings of its own: `settings` reads them once
/// logging is up, so a bad value is logged with its variable's name and stops the start.
pub async fn run_with<R: Remediation>(
    settings: impl FnOnce() -> crate::Result<R>,
) -> Result<(), BoxError> {
    crate::report::telemetry::init();
    let remediation = settings().inspect_err(|err| {
        tracing::error!(error = %err, "invalid configuration; the function cannot start");
    })?;
    run(remediation).await
}

/// Runs `remediation` as a Lambda function until the runtime stops it.
pub async fn run<R: Remediation>(remediation: R) -> Result<(), BoxError> {
    crate::report::telemetry::init();
    let config = Config::from_env().inspect_err(|err| {
        tracing::error!(error = %err, "invalid configuration; the function cannot start");
    })?;
    // One connection per cluster, each built on first use and cached across invocations.
    let connections = Connections::for_clusters(
        &config.clusters,
        config.api_timeout,
        Arc::new(AwsClusterDirectory::default()),
    );
    let notifiers = notifiers(&config);
    let verifier = verifier(&config)?;
    let mut pipeline = Pipeline::with_connections(config, remediation, connections);
    if let Some(verifier) = verifier {
        pipeline = pipeline.with_verifier(verifier);
    }
    let function = Function::new(pipeline).with_notifiers(notifiers);
    let function = &function;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        function.invoke(event).await
    }))
    .await
}

/// The verifier the configuration asks for: none without a queue or Prometheus (clients
/// are built, nothing is contacted at start).
pub fn verifier(config: &Config) -> crate::Result<Option<crate::verify::Verifier>> {
    let settings = &config.verify;
    if settings.queue_url.is_none() && settings.prometheus_url.is_none() {
        return Ok(None);
    }
    if !settings.enabled() {
        tracing::info!(
            "VERIFY_AFTER_SECONDS=0 or no VERIFY_QUEUE_URL: applied changes are not verified"
        );
    }
    crate::verify::Verifier::from_settings(settings).map(Some)
}

/// The report sinks the configuration asks for (none are contacted at start, and a
/// stored credential is read when its sink first has something to send).
pub fn notifiers(config: &Config) -> Vec<Arc<dyn Notifier>> {
    let mut sinks: Vec<Arc<dyn Notifier>> = Vec::new();
    let store: Arc<dyn SecretStore> = Arc::new(SecretsManager::default());
    if let Some(arn) = &config.notify_topic_arn {
        sinks.push(Arc::new(SnsNotifier::new(arn.clone())));
    }
    if let Some(webhook) = &config.sinks.slack_webhook {
        let webhook = SinkSecret::new(webhook.clone(), CredentialKind::SlackWebhook, store.clone());
        sinks.push(Arc::new(SlackNotifier::new(webhook)));
    }
    if let Some(grafana) = &config.sinks.grafana {
        let token = SinkSecret::new(
            grafana.token.clone(),
            CredentialKind::GrafanaToken,
            store.clone(),
        );
        sinks.push(Arc::new(GrafanaNotifier::new(
            &grafana.url,
            token,
            grafana.dashboard_uid.clone(),
        )));
    }
    if let Some(key) = &config.sinks.pagerduty_routing_key {
        let key = SinkSecret::new(key.clone(), CredentialKind::PagerDutyRoutingKey, store);
        sinks.push(Arc::new(PagerDutyNotifier::new(
            key,
            config.sinks.pagerduty_events_url.clone(),
        )));
    }
    sinks
}

/// A pipeline plus where its reports go.
pub struct Function<R> {
    pipeline: Pipeline<R>,
    notifiers: Vec<Arc<dyn Notifier>>,
}

impl<R: Remediation> Function<R> {
    /// A function that reports only in its response and logs.
    pub fn new(pipeline: Pipeline<R>) -> Self {
        Function {
            pipeline,
            notifiers: Vec::new(),
        }
    }

    /// Adds report sinks.
    pub fn with_notifiers(mut self, notifiers: Vec<Arc<dyn Notifier>>) -> Self {
        self.notifiers = notifiers;
        self
    }

    /// Handles one Lambda invocation.
    pub async fn invoke(&self, event: LambdaEvent<Value>) -> Result<Value, InvocationError> {
        let started = Instant::now();
        let context = &event.context;
        let invocation = Invocation::new(
            &context.request_id,
            context.xray_trace_id.as_deref(),
            deadline_instant(context.deadline),
        );
        let report = self.pipeline.handle_owned(event.payload, &invocation).await;
        self.finish(report, started).await
    }

    /// Logs, emits metrics and notifies; turns retryable failures into an invocation error.
    #[instrument(name = "report", skip_all, fields(trace_id = %report.trace_id))]
    pub async fn finish(
        &self,
        mut report: InvocationReport,
        started: Instant,
    ) -> Result<Value, InvocationError> {
        report.log();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        // EMF must be lines of their own on stdout; CloudWatch turns them into metrics.
        // Written at once: one write, and the log pipe's reader woken once.
        let mut metrics = report.metric_lines(started.elapsed(), now_ms).join("\n");
        if !metrics.is_empty() {
            metrics.push('\n');
            if let Err(err) = std::io::stdout().lock().write_all(metrics.as_bytes()) {
                tracing::warn!(error = %err, "cannot write metrics");
            }
        }
        if !self.notifiers.is_empty() {
            let timeout = self.pipeline.config().sinks.timeout;
            report.notifications = notify::deliver_all(&self.notifiers, &report, timeout).await;
            for failed in report.notifications.iter().filter(|d| !d.ok) {
                tracing::warn!(
                    sink = failed.sink,
                    error = failed.error.as_deref().unwrap_or(""),
                    "report delivery failed; the remediation itself stands"
                );
            }
        }
        let reasons: Vec<String> = report
            .retryable_failures()
            .map(|o| o.reason.clone().unwrap_or_default())
            .collect();
        if !reasons.is_empty() {
            return Err(InvocationError::Retryable {
                trace_id: report.trace_id,
                reasons,
            });
        }
        Ok(serde_json::to_value(&report)?)
    }
}

/// Epoch milliseconds before this (2001-09-09) are not a deadline but a duration.
const EPOCH_MS_FLOOR: u64 = 1_000_000_000_000;

/// Lambda and its Runtime Interface Emulator give the deadline as epoch milliseconds;
/// `cargo lambda watch` sends the invocation's timeout instead (`600000` for ten minutes),
/// which read as a date lies in 1970 and would leave no time at all.
fn deadline_instant(deadline_ms: u64) -> Option<Instant> {
    if deadline_ms == 0 {
        return None;
    }
    if deadline_ms < EPOCH_MS_FLOOR {
        return Some(Instant::now() + Duration::from_millis(deadline_ms));
    }
    let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
    let remaining = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Some(Instant::now() + remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_epoch_milliseconds_or_the_emulators_duration() {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let left = |deadline: Option<Instant>| {
            deadline
                .expect("a deadline")
                .saturating_duration_since(Instant::now())
        };
        let epoch = left(deadline_instant(now_ms + 30_000));
        assert!(
            epoch > Duration::from_secs(29) && epoch <= Duration::from_secs(30),
            "{epoch:?}"
        );
        let relative = left(deadline_instant(600_000));
        assert!(relative > Duration::from_secs(599), "{relative:?}");
        assert_eq!(left(deadline_instant(now_ms - 1_000)), Duration::ZERO);
        assert!(deadline_instant(0).is_none());
    }

    #[test]
    fn retryable_failures_leave_as_a_typed_lambda_error() {
        let error = InvocationError::Retryable {
            trace_id: "1-abc".into(),
            reasons: vec!["out of time: x".into(), "kubernetes API get: 503".into()],
        };
        let diagnostic = Diagnostic::from(error);
        assert_eq!(diagnostic.error_type, "MeshRemediation.Retryable");
        assert_eq!(
            diagnostic.error_message,
            "2 alert(s) failed transiently, retry will re-evaluate them (trace 1-abc): out of time: x; kubernetes API get: 503"
        );
    }
}
