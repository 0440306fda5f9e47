//! Intake: turn a Lambda event into Alertmanager alert groups, or say precisely why not.
//!
//! Accepted shapes: a Lambda SNS event (`Records[].Sns`), a bare SNS notification (HTTP or
//! SQS envelope), and a bare Alertmanager webhook payload (direct invoke). Each SNS record
//! is judged on its own so one bad record cannot hide the others' alerts.

use std::collections::BTreeMap;

use aws_lambda_events::event::sns::SnsRecord;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::alert::{Alert, AlertGroup};
use crate::error::{Error, Result};
use crate::names;

/// Path of the message template users must install in Alertmanager.
pub const TEMPLATE_PATH: &str = "deploy/alertmanager/sns.tmpl";

/// One SNS message (or direct payload) and what it contained.
#[derive(Debug)]
pub struct Delivery {
    /// SNS MessageId, when the alert came through SNS.
    pub message_id: Option<String>,
    /// The topic the message was published to.
    pub topic_arn: Option<String>,
    /// When SNS accepted the publish.
    pub published_at: Option<DateTime<Utc>>,
    /// The alert group, or why the message could not be read.
    pub content: Result<AlertGroup>,
}

/// Parses a Lambda event. Fails only when the event as a whole has no recognisable shape;
/// problems inside one record are reported in that record's [`Delivery::content`].
pub fn parse_event(event: &Value, expected_topic: Option<&str>) -> Result<Vec<Delivery>> {
    let Some(object) = event.as_object() else {
        return Err(Error::Input(format!(
            "event is a JSON {}, expected an object (SNS event or Alertmanager payload)",
            json_kind(event)
        )));
    };
    if let Some(records) = object.get("Records") {
        let records = records.as_array().ok_or_else(|| {
            Error::Input("`Records` is not an array: not a Lambda SNS event".into())
        })?;
        if records.is_empty() {
            return Err(Error::Input("SNS event has no records".into()));
        }
        return Ok(records
            .iter()
            .enumerate()
            .map(|(index, record)| parse_record(index, record, expected_topic))
            .collect());
    }
    if object.get("Type").and_then(Value::as_str) == Some("Notification") {
        // An SNS notification as delivered to HTTP endpoints or SQS queues.
        let record = serde_json::json!({
            "EventSource": "aws:sns",
            "EventVersion": "1.0",
            "EventSubscriptionArn": "",
            "Sns": event
        });
        return Ok(vec![parse_record(0, &record, expected_topic)]);
    }
    if object.contains_key("alerts") || object.contains_key("version") {
        return Ok(vec![Delivery {
            message_id: None,
            topic_arn: None,
            published_at: None,
            content: parse_alert_group(event),
        }]);
    }
    Err(Error::Input(
        "event is neither a Lambda SNS event (`Records`), an SNS notification nor an Alertmanager webhook payload (`version`, `alerts`)".into(),
    ))
}

fn parse_record(index: usize, record: &Value, expected_topic: Option<&str>) -> Delivery {
    let sns = match serde_json::from_value::<SnsRecord>(record.clone()) {
        Ok(record) => record.sns,
        Err(err) => {
            let id = record
                .pointer("/Sns/MessageId")
                .and_then(Value::as_str)
                .map(str::to_owned);
            return Delivery {
                message_id: id,
                topic_arn: None,
                published_at: None,
                content: Err(Error::Input(format!(
                    "record {index} is not an SNS record: {err}"
                ))),
            };
        }
    };
    let content = check_topic(&sns.topic_arn, expected_topic)
        .and_then(|()| check_not_truncated(&sns.message_attributes))
        .and_then(|()| parse_message(&sns.message));
    Delivery {
        message_id: Some(sns.message_id),
        topic_arn: Some(sns.topic_arn),
        published_at: Some(sns.timestamp),
        content,
    }
}

fn check_topic(topic: &str, expected: Option<&str>) -> Result<()> {
    match expected {
        Some(expected) if expected != topic => Err(Error::Input(format!(
            "record comes from topic {topic}, but this function only accepts {expected} (ALERT_TOPIC_ARN)"
        ))),
        _ => Ok(()),
    }
}

fn check_not_truncated(
    attributes: &std::collections::HashMap<String, aws_lambda_events::event::sns::MessageAttribute>,
) -> Result<()> {
    match attributes.get("truncated") {
        Some(attr) if attr.value.eq_ignore_ascii_case("true") => Err(Error::Input(format!(
            "Alertmanager truncated this message at the SNS size limit (attribute truncated=true); \
             its JSON is incomplete. Lower the alert cap in {TEMPLATE_PATH} or group alerts more finely"
        ))),
        _ => Ok(()),
    }
}

/// Parses an SNS `Message` that should hold Alertmanager webhook-v4 JSON.
pub fn parse_message(message: &str) -> Result<AlertGroup> {
    let trimmed = message.trim_start();
    if trimmed.is_empty() {
        return Err(Error::Input("SNS message is empty".into()));
    }
    if !trimmed.starts_with('{') {
        if looks_like_default_template(message) {
            return Err(Error::Input(format!(
                "message is Alertmanager's default plain-text SNS template, not JSON; \
                 install the JSON message template ({TEMPLATE_PATH}) in the sns_configs of alertmanager.yml"
            )));
        }
        return Err(Error::Input(format!(
            "message is not JSON (starts with \"{}\"); expected Alertmanager webhook-v4 JSON from {TEMPLATE_PATH}",
            names::printable(&trimmed.chars().take(40).collect::<String>())
        )));
    }
    let value: Value = serde_json::from_str(message).map_err(|err| {
        if err.is_eof() {
            Error::Input(format!(
                "message JSON ends early after {} bytes (truncated message?): {err}",
                message.len()
            ))
        } else {
            Error::Input(format!("message is not valid JSON: {err}"))
        }
    })?;
    parse_alert_group(&value)
}

fn parse_alert_group(value: &Value) -> Result<AlertGroup> {
    match value.get("version") {
        Some(Value::String(v)) if v == "4" => {}
        Some(other) => {
            return Err(Error::Input(format!(
                "unsupported Alertmanager payload version {other} (expected \"4\")"
            )));
        }
        None => {
            return Err(Error::Input(
                "message JSON has no `version`: not an Alertmanager webhook payload".into(),
            ));
        }
    }
    serde_json::from_value(value.clone()).map_err(|err| {
        Error::Input(format!(
            "message is not a valid Alertmanager webhook-v4 payload: {err}"
        ))
    })
}

fn looks_like_default_template(message: &str) -> bool {
    ["Alerts Firing:", "Alerts Resolved:", "\nLabels:\n - "]
        .iter()
        .any(|marker| message.contains(marker))
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The four remediations this project ships, by the `remediation` label value.
pub const KNOWN_REMEDIATIONS: [&str; 4] = [
    "latency-restart",
    "error-rollback",
    "db-circuit-break",
    "region-failover",
];

/// An alert whose common labels passed validation.
#[derive(Debug, Clone)]
pub struct AlertInput {
    /// The alert as Alertmanager sent it.
    pub alert: Alert,
    /// Validated namespace of the target objects.
    pub namespace: String,
    /// `dry_run="true"` on the alert.
    pub dry_run_requested: bool,
    /// `drill="true"` on the alert: always a dry run, reported as a drill.
    pub drill: bool,
}

/// Why an alert will not be handled by this function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Malformed: a clear error, never retried.
    Invalid(String),
    /// Well-formed but meant for another function (misrouted or mixed group).
    OtherFunction(String),
}

/// Validates the labels every remediation needs: a known `remediation` equal to this
/// function's, and a valid `namespace`.
pub fn validate_alert(alert: &Alert, function: &str) -> Result<AlertInput, Rejection> {
    let remediation = alert
        .label("remediation")
        .ok_or_else(|| Rejection::Invalid("alert has no `remediation` label".into()))?;
    if !KNOWN_REMEDIATIONS.contains(&remediation) {
        return Err(Rejection::Invalid(format!(
            "unknown remediation \"{}\" (expected one of: {})",
            names::printable(remediation),
            KNOWN_REMEDIATIONS.join(", ")
        )));
    }
    if remediation != function {
        return Err(Rejection::OtherFunction(format!(
            "alert asks for {remediation}, which is another function's job (this is {function})"
        )));
    }
    let namespace = alert
        .label("namespace")
        .ok_or_else(|| Rejection::Invalid("alert has no `namespace` label".into()))?;
    names::dns_label("namespace", namespace).map_err(Rejection::Invalid)?;
    Ok(AlertInput {
        alert: alert.clone(),
        namespace: namespace.to_owned(),
        dry_run_requested: alert.flag("dry_run"),
        drill: alert.flag("drill"),
    })
}

/// Flattens SNS message attributes for reports (used by tests and reports).
pub fn attribute_map(
    attributes: &std::collections::HashMap<String, aws_lambda_events::event::sns::MessageAttribute>,
) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect()
}
