//! The Lambda edge: typed config and lazy clients at start, then one call to the pipeline
//! per invocation. Bad input answers normally (a retry cannot fix it); transient
//! failures answer with an error so Lambda retries and, after that, dead-letters.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

use crate::config::Config;
use crate::connect::{AwsClusterDirectory, EksConnector, KubeConnector, KubeconfigConnector};
use crate::notify::{Notifier, SnsNotifier};
use crate::pipeline::{Invocation, Pipeline};
use crate::remediation::Remediation;
use crate::report::{InvocationReport, OutcomeKind};

/// The error type `main` returns.
pub type BoxError = lambda_runtime::Error;

/// Runs `remediation` as a Lambda function until the runtime stops it.
pub async fn run<R: Remediation>(remediation: R) -> Result<(), BoxError> {
    crate::telemetry::init();
    let config = Config::from_env().inspect_err(|err| {
        tracing::error!(error = %err, "invalid configuration; the function cannot start");
    })?;
    let kube: Arc<dyn KubeConnector> = match &config.cluster_name {
        Some(cluster) => Arc::new(EksConnector::new(
            cluster.clone(),
            config.api_timeout,
            Arc::new(AwsClusterDirectory::default()),
        )),
        None => Arc::new(KubeconfigConnector::new(config.api_timeout)),
    };
    let notifier: Option<Arc<dyn Notifier>> = config
        .notify_topic_arn
        .clone()
        .map(|arn| Arc::new(SnsNotifier::new(arn)) as Arc<dyn Notifier>);
    let function = Function {
        pipeline: Pipeline::new(config, remediation, kube),
        notifier,
    };
    let function = &function;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        function.invoke(event).await
    }))
    .await
}

/// A pipeline plus where its reports go.
pub struct Function<R> {
    /// The pipeline.
    pub pipeline: Pipeline<R>,
    /// Report sink, when `NOTIFY_TOPIC_ARN` is set.
    pub notifier: Option<Arc<dyn Notifier>>,
}

impl<R: Remediation> Function<R> {
    /// Handles one Lambda invocation.
    pub async fn invoke(&self, event: LambdaEvent<Value>) -> Result<Value, BoxError> {
        let context = &event.context;
        let invocation = Invocation::new(
            &context.request_id,
            context.xray_trace_id.as_deref(),
            deadline_instant(context.deadline),
        );
        let report = self.pipeline.handle(&event.payload, &invocation).await;
        self.finish(report).await
    }

    /// Logs and notifies; turns retryable failures into an invocation error.
    pub async fn finish(&self, report: InvocationReport) -> Result<Value, BoxError> {
        report.log();
        let noteworthy = report
            .outcomes
            .iter()
            .any(|o| o.outcome != OutcomeKind::Skipped);
        if let (Some(notifier), true) = (&self.notifier, noteworthy)
            && let Err(err) = notifier.notify(&report).await
        {
            tracing::warn!(trace_id = %report.trace_id, error = %err, "report could not be published");
        }
        let retryable: Vec<String> = report
            .retryable_failures()
            .map(|o| o.reason.clone().unwrap_or_default())
            .collect();
        if !retryable.is_empty() {
            return Err(format!(
                "{} alert(s) failed transiently, retry will re-evaluate them (trace {}): {}",
                retryable.len(),
                report.trace_id,
                retryable.join("; ")
            )
            .into());
        }
        Ok(serde_json::to_value(&report)?)
    }
}

/// Lambda gives the deadline as epoch milliseconds.
fn deadline_instant(deadline_ms: u64) -> Option<Instant> {
    if deadline_ms == 0 {
        return None;
    }
    let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
    let remaining = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Some(Instant::now() + remaining)
}
