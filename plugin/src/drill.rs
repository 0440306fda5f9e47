//! `drill`: the library's drill alert, published to the alert topic (the path Alertmanager
//! takes) or handed to the function directly (its invocations endpoint), whose outcome is
//! then shown.

use std::time::Duration;

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
    if let Some(url) = &args.invoke_url {
        let topic = args
            .topic
            .clone()
            .unwrap_or_else(|| "arn:aws:sns:drill:000000000000:direct".to_owned());
        sent.answer = Some(invoke(url, &drill.sns_event(&topic)).await?);
        return Ok(sent);
    }
    let topic = args.topic.as_deref().ok_or_else(|| {
        OpError::Usage(
            "say where the drill goes: --topic ARN (or ALERT_TOPIC_ARN), or --invoke-url URL"
                .into(),
        )
    })?;
    sent.message_id = Some(drill.publish(topic).await?);
    Ok(sent)
}

async fn invoke(url: &str, event: &serde_json::Value) -> Result<serde_json::Value, OpError> {
    let failed = |message: String| OpError::Invoke {
        url: url.to_owned(),
        message,
    };
    let response = reqwest::Client::new()
        .post(url)
        .timeout(Duration::from_secs(120))
        .json(event)
        .send()
        .await
        .map_err(|err| failed(err.to_string()))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|err| failed(err.to_string()))?;
    if !status.is_success() {
        return Err(failed(format!("{status}: {body}")));
    }
    serde_json::from_str(&body).map_err(|err| failed(format!("not JSON ({err}): {body}")))
}
