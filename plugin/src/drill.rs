//! `drill`: the library's drill alert, published to the alert topic (the path Alertmanager
//! takes) or handed to the function directly (Lambda's Invoke, waiting for the answer),
//! whose outcome is then shown.

use aws_sdk_lambda::primitives::Blob;
use mesh_remediation::drill::Drill;

use crate::cli::DrillArgs;
use crate::error::OpError;

/// Where the drill went and what came back.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    /// The function drilled.
    pub function: String,
    /// The drill alert's fingerprint (the function's logs and report carry it).
    pub fingerprint: String,
    /// The SNS MessageId, when published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The function's answer (its report, or its invocation error), when invoked directly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<serde_json::Value>,
}

/// Sends the drill `args` describe.
pub async fn send(args: &DrillArgs) -> Result<Sent, OpError> {
    let drill = Drill::new(
        &args.function,
        &args.namespace,
        &args.labels(),
        chrono::Utc::now(),
    )?;
    let mut sent = Sent {
        function: args.function.clone(),
        fingerprint: drill.fingerprint.clone(),
        message_id: None,
        answer: None,
    };
    if let Some(function) = &args.invoke {
        let topic = "arn:aws:sns:drill:000000000000:direct";
        sent.answer = Some(invoke(function, &drill.sns_event(topic)).await?);
        return Ok(sent);
    }
    let topic = args.topic.as_deref().ok_or_else(|| {
        OpError::Usage(
            "say where the drill goes: --topic ARN (or ALERT_TOPIC_ARN), or --invoke FUNCTION"
                .into(),
        )
    })?;
    sent.message_id = Some(drill.publish(topic).await?);
    Ok(sent)
}

/// A synchronous invocation (`RequestResponse`): the function's report, or what failed.
async fn invoke(function: &str, event: &serde_json::Value) -> Result<serde_json::Value, OpError> {
    use aws_sdk_lambda::error::{DisplayErrorContext, ProvideErrorMetadata};
    let failed = |message: String| OpError::Invoke {
        function: function.to_owned(),
        message,
    };
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let lambda = aws_sdk_lambda::Client::new(&sdk);
    let payload = serde_json::to_vec(event).map_err(|err| failed(err.to_string()))?;
    let out = lambda
        .invoke()
        .function_name(function)
        .payload(Blob::new(payload))
        .send()
        .await
        .map_err(|err| {
            // Lambda's own code and message (no such function, no permission) say it all.
            failed(match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                _ => DisplayErrorContext(&err).to_string(),
            })
        })?;
    let body = out
        .payload()
        .map(|p| String::from_utf8_lossy(p.as_ref()).into_owned())
        .unwrap_or_default();
    if let Some(error) = out.function_error() {
        return Err(failed(format!("the function failed ({error}): {body}")));
    }
    serde_json::from_str(&body).map_err(|err| failed(format!("not JSON ({err}): {body}")))
}
