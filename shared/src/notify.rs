//! Reports to the notification topic (Slack, PagerDuty and e-mail subscribe to it).

use futures::future::BoxFuture;

use crate::error::{Error, Result};
use crate::report::InvocationReport;

/// Sends an invocation report somewhere humans see it.
pub trait Notifier: Send + Sync {
    /// Publishes the report. A failure never undoes the remediation; the caller logs it.
    fn notify<'a>(&'a self, report: &'a InvocationReport) -> BoxFuture<'a, Result<()>>;
}

/// Publishes reports to an SNS topic.
pub struct SnsNotifier {
    topic_arn: String,
    client: tokio::sync::OnceCell<aws_sdk_sns::Client>,
}

impl SnsNotifier {
    /// A notifier for `topic_arn`; the SNS client is built on first use.
    pub fn new(topic_arn: String) -> Self {
        SnsNotifier {
            topic_arn,
            client: tokio::sync::OnceCell::new(),
        }
    }
}

impl Notifier for SnsNotifier {
    fn notify<'a>(&'a self, report: &'a InvocationReport) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let client = self
                .client
                .get_or_init(|| async {
                    let sdk =
                        aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                    aws_sdk_sns::Client::new(&sdk)
                })
                .await;
            let body = serde_json::to_string(report).map_err(|err| Error::Aws {
                operation: "sns:Publish",
                message: err.to_string(),
                retryable: false,
            })?;
            let worst = report
                .outcomes
                .iter()
                .map(|o| o.outcome)
                .max()
                .map_or("none", |o| o.as_str());
            let attribute = |value: &str| {
                aws_sdk_sns::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .expect("data type and value are set")
            };
            client
                .publish()
                .topic_arn(&self.topic_arn)
                .subject(report.subject())
                .message(body)
                .message_attributes("remediation", attribute(&report.function))
                .message_attributes("outcome", attribute(worst))
                .message_attributes("trace_id", attribute(&report.trace_id))
                .send()
                .await
                .map_err(|err| Error::Aws {
                    operation: "sns:Publish",
                    message: aws_sdk_sns::error::DisplayErrorContext(&err).to_string(),
                    retryable: true,
                })?;
            Ok(())
        })
    }
}
