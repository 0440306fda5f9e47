//! The delay between a change and its verification: an SQS message with a delivery delay
//! (`DelaySeconds`, at most 900), sent to the function's own verify queue, which invokes the
//! function again when it becomes visible.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::json;

use super::VerifyRequest;
use super::aws::AwsAccess;
use crate::error::{Error, Result};

/// Where verify requests wait for their time.
pub trait VerifyQueue: Send + Sync {
    /// Sends `request`, to be delivered after `delay`.
    fn send<'a>(&'a self, request: &'a VerifyRequest, delay: Duration)
    -> BoxFuture<'a, Result<()>>;
}

/// An SQS queue (`VERIFY_QUEUE_URL`).
pub struct SqsQueue {
    url: String,
    timeout: Duration,
    aws: Arc<AwsAccess>,
    client: tokio::sync::OnceCell<aws_sdk_sqs::Client>,
}

impl SqsQueue {
    /// The queue at `url`; calls give up after `timeout`.
    pub fn new(url: &str, timeout: Duration, aws: Arc<AwsAccess>) -> Result<Self> {
        Ok(SqsQueue {
            url: url.to_owned(),
            timeout,
            aws,
            client: tokio::sync::OnceCell::new(),
        })
    }
}

impl VerifyQueue for SqsQueue {
    fn send<'a>(
        &'a self,
        request: &'a VerifyRequest,
        delay: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let failed = |message: String, retryable: bool| Error::Aws {
                operation: "sqs:SendMessage",
                message,
                retryable,
            };
            let client = self
                .client
                .get_or_init(|| async { aws_sdk_sqs::Client::new(self.aws.sdk().await) })
                .await;
            let delay_seconds = i32::try_from(delay.as_secs().min(900)).unwrap_or(900);
            let send = client
                .send_message()
                .queue_url(&self.url)
                .message_body(json!({"verify": request}).to_string())
                .delay_seconds(delay_seconds)
                .send();
            match tokio::time::timeout(self.timeout, send).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => {
                    // A refusal of the request itself (no such queue, access denied) will
                    // not change on a retry; the service's own trouble will.
                    let retryable = !matches!(err, aws_sdk_sqs::error::SdkError::ServiceError(_))
                        || err.raw_response().is_some_and(|r| {
                            r.status().is_server_error() || r.status().as_u16() == 429
                        });
                    Err(failed(
                        aws_sdk_sqs::error::DisplayErrorContext(&err).to_string(),
                        retryable,
                    ))
                }
                Err(_) => Err(failed(
                    format!("no answer within {} ms", self.timeout.as_millis()),
                    true,
                )),
            }
        })
    }
}
