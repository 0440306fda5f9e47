//! `drill`: the library's drill alert, published to the alert topic (the path Alertmanager
//! takes; with `--wait`, the outcome is then read from the function's log group) or handed
//! to the function directly (Lambda's Invoke, waiting for the answer), whose outcome is then
//! shown.

use std::time::{Duration, Instant};

use aws_sdk_lambda::primitives::Blob;
use chrono::{DateTime, Utc};
use mesh_remediation::drill::Drill;
use serde_json::{Value, json};

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
    let published = Utc::now();
    let message_id = drill.publish(topic).await?;
    if let Some(seconds) = args.wait {
        let log_group = args
            .log_group
            .clone()
            .unwrap_or_else(|| format!("/aws/lambda/{}-{}", args.stack, args.function));
        let waited = Duration::from_secs(seconds);
        sent.answer = Some(outcome_logged(&log_group, &message_id, published, waited).await?);
    }
    sent.message_id = Some(message_id);
    Ok(sent)
}

/// How often the log group is asked again while waiting.
const POLL: Duration = Duration::from_secs(2);

/// The function's outcome for the message `message_id`, from its `remediation outcome` log
/// lines (which carry the SNS MessageId), as its report would give it: `{"outcomes": [...]}`.
/// Lambda writes the function's lines to its log group within seconds of the invocation.
async fn outcome_logged(
    log_group: &str,
    message_id: &str,
    published: DateTime<Utc>,
    wait: Duration,
) -> Result<Value, OpError> {
    use aws_sdk_cloudwatchlogs::error::{DisplayErrorContext, ProvideErrorMetadata};
    let failed = |message: String, retryable: bool| OpError::Logs {
        log_group: log_group.to_owned(),
        message,
        retryable,
    };
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&sdk);
    // A little before the publish: the two clocks are not the same clock.
    let since = (published - chrono::Duration::seconds(30)).timestamp_millis();
    let deadline = Instant::now() + wait;
    loop {
        let mut outcomes = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = logs
                .filter_log_events()
                .log_group_name(log_group)
                .filter_pattern(format!("\"{message_id}\""))
                .start_time(since)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|err| match (err.code(), err.message()) {
                    (Some("ResourceNotFoundException"), Some(message)) => failed(
                        format!("{message} (the stack's log groups are /aws/lambda/STACK-FUNCTION: check --stack, or give --log-group)"),
                        false,
                    ),
                    (Some(code), Some(message)) => failed(format!("{code}: {message}"), true),
                    _ => failed(DisplayErrorContext(&err).to_string(), true),
                })?;
            outcomes.extend(
                page.events()
                    .iter()
                    .filter_map(|e| e.message())
                    .filter_map(|line| outcome_line(line, message_id)),
            );
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        if !outcomes.is_empty() {
            return Ok(json!({ "outcomes": outcomes }));
        }
        if Instant::now() + POLL > deadline {
            return Err(OpError::NoOutcome {
                message_id: message_id.to_owned(),
                log_group: log_group.to_owned(),
                seconds: wait.as_secs(),
                hint: "the function's subscription may filter the drill out (its remediation attribute), the function may not have run yet (retry with a longer --wait), or the log group is another (--log-group)",
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One `remediation outcome` line for `message_id`, as the report's outcome: the line's
/// fields, its patch parsed back from the text it is logged as.
fn outcome_line(line: &str, message_id: &str) -> Option<Value> {
    let mut fields: Value = serde_json::from_str(line).ok()?;
    if fields["message"] != "remediation outcome" || fields["message_id"] != message_id {
        return None;
    }
    let patch = fields["patch"]
        .as_str()
        .filter(|p| !p.is_empty())
        .and_then(|p| serde_json::from_str::<Value>(p).ok());
    fields["patch"] = patch.unwrap_or(Value::Null);
    Some(fields)
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
