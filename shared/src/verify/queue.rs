//! The delay between a change and its verification: an SQS message with a delivery delay
//! (`DelaySeconds`, at most 900), sent to the function's own verify queue, which invokes the
//! function again when it becomes visible. Sent with `SendMessage` in the JSON protocol.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::json;

use super::VerifyRequest;
use super::aws::AwsAccess;
use super::sign::Post;
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
    http: reqwest::Client,
    aws: Arc<AwsAccess>,
}

impl SqsQueue {
    /// The queue at `url`.
    pub fn new(url: &str, timeout: Duration, aws: Arc<AwsAccess>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|err| Error::Aws {
                operation: "sqs:SendMessage",
                message: format!("cannot build the HTTP client: {err}"),
                retryable: false,
            })?;
        Ok(SqsQueue {
            url: url.to_owned(),
            http,
            aws,
        })
    }

    /// The SQS endpoint: `AWS_ENDPOINT_URL` for an emulator, else the queue URL's host.
    async fn endpoint(&self) -> String {
        if let Some(endpoint) = self.aws.endpoint_url().await {
            return format!("{}/", endpoint.trim_end_matches('/'));
        }
        let host = self
            .url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        format!("https://{host}/")
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
            let message = json!({"verify": request}).to_string();
            let body = json!({
                "QueueUrl": self.url,
                "MessageBody": message,
                "DelaySeconds": delay.as_secs().min(900),
            })
            .to_string();
            let endpoint = self.endpoint().await;
            let headers = [
                ("content-type", "application/x-amz-json-1.0"),
                ("x-amz-target", "AmazonSQS.SendMessage"),
            ];
            let post = Post {
                url: &endpoint,
                headers: &headers,
                body: body.as_bytes(),
            };
            let mut http = self.http.post(&endpoint).body(body.clone());
            for (name, value) in headers {
                http = http.header(name, value);
            }
            for (name, value) in self.aws.sign(&post, "sqs", None).await? {
                http = http.header(name, value);
            }
            let response = http
                .send()
                .await
                .map_err(|err| failed(format!("{endpoint} unreachable: {err}"), true))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let detail: String = response
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            Err(failed(
                format!("answered {status}: {detail}"),
                status.is_server_error() || status.as_u16() == 429,
            ))
        })
    }
}
