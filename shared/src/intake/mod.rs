//! Intake: turn a Lambda event into Alertmanager alert groups, or say precisely why not.
//!
//! Accepted shapes: a Lambda SNS event (`Records[].Sns`), a bare SNS notification (HTTP or
//! SQS envelope), and a bare Alertmanager webhook payload (direct invoke). Each SNS record
//! is judged on its own so one bad record cannot hide the others' alerts.

pub mod alert;
pub mod names;
pub mod verify;

use std::collections::BTreeMap;

use aws_lambda_events::event::sns::SnsRecord;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use alert::{Alert, AlertGroup};

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
    let opened = open_record(index, record, expected_topic);
    Delivery {
        message_id: opened.message_id,
        topic_arn: opened.topic_arn,
        published_at: opened.published_at,
        content: opened.message.and_then(|message| parse_message(&message)),
    }
}

/// An SNS record's envelope, and its message once the topic and truncation checks pass.
struct Opened {
    message_id: Option<String>,
    topic_arn: Option<String>,
    published_at: Option<DateTime<Utc>>,
    message: Result<String>,
}

fn open_record(index: usize, record: &Value, expected_topic: Option<&str>) -> Opened {
    // Deserialized from the borrowed tree: cloning a record would copy its whole message.
    let sns = match SnsRecord::deserialize(record) {
        Ok(record) => record.sns,
        Err(err) => {
            let id = record
                .pointer("/Sns/MessageId")
                .and_then(Value::as_str)
                .map(str::to_owned);
            return Opened {
                message_id: id,
                topic_arn: None,
                published_at: None,
                message: Err(input(format!("record {index} is not an SNS record: {err}"))),
            };
        }
    };
    let message = check_topic(&sns.topic_arn, expected_topic)
        .and_then(|()| check_not_truncated(&sns.message_attributes))
        .map(|()| sns.message);
    Opened {
        message_id: Some(sns.message_id),
        topic_arn: Some(sns.topic_arn),
        published_at: Some(sns.timestamp),
        message,
    }
}

fn check_topic(topic: &str, expected: Option<&str>) -> Result<()> {
    match expected {
        Some(expected) if expected != topic => Err(Error::Input(format!(
            "record comes from topic {}, but this function only accepts {expected} (ALERT_TOPIC_ARN)",
            names::printable(topic)
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
            input(format!(
                "message JSON ends early after {} bytes (truncated message?): {err}",
                message.len()
            ))
        } else {
            input(format!("message is not valid JSON: {err}"))
        }
    })?;
    parse_alert_group(&value)
}

fn parse_alert_group(value: &Value) -> Result<AlertGroup> {
    match value.get("version") {
        Some(Value::String(v)) if v == "4" => {}
        Some(other) => {
            let shown = match other {
                Value::String(v) => format!("\"{}\"", names::printable(v)),
                v => names::printable(&v.to_string()),
            };
            return Err(Error::Input(format!(
                "unsupported Alertmanager payload version {shown} (expected \"4\")"
            )));
        }
        None if value.get("revert").is_some() => {
            return Err(Error::Input(
                "a revert request must be the only record of its event; send it on its own".into(),
            ));
        }
        None => {
            return Err(Error::Input(
                "message JSON has no `version`: not an Alertmanager webhook payload".into(),
            ));
        }
    }
    AlertGroup::deserialize(value).map_err(|err| {
        input(format!(
            "message is not a valid Alertmanager webhook-v4 payload: {err}"
        ))
    })
}

/// An input error whose message quotes the input (parser errors do): control characters
/// escaped and the length bounded, so a hostile message cannot forge log lines.
fn input(message: String) -> Error {
    Error::Input(names::clean_message(&message))
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

/// A request to undo the last action of a remediation on one object, restoring the
/// recorded `previous` configuration exactly. Sent as a direct invocation of the
/// remediation's function (`{"revert": {...}}`) or as the only message of an SNS event
/// (published with the message attribute `remediation` so the subscription filter routes it).
///
/// ```json
/// {"revert": {"remediation": "error-rollback", "namespace": "shop",
///             "kind": "VirtualService", "name": "checkout",
///             "reason": "v2 fixed, errors were from the database",
///             "traceId": "1-67a1b2c3-0123456789abcdef01234567",
///             "requestedBy": "alice", "dryRun": false}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevertRequest {
    /// The remediation whose action is undone; must be the receiving function.
    pub remediation: String,
    /// Namespace of the object.
    pub namespace: String,
    /// Kind of the object, e.g. `VirtualService` or `DestinationRule`.
    pub kind: String,
    /// Name of the object.
    pub name: String,
    /// Why; kept in the record and the Kubernetes Event.
    pub reason: String,
    /// The trace id of the action meant; when given, the revert refuses if the object's
    /// last action is another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Who asked (kept in the record and the Event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Validate with a server-side dry run only.
    #[serde(default)]
    pub dry_run: bool,
    /// The cluster meant, when one function serves several (one of `CLUSTER_NAMES`, or
    /// `all` for every one of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// A revert request as delivered.
#[derive(Debug)]
pub struct RevertDelivery {
    /// SNS MessageId, when it came through SNS.
    pub message_id: Option<String>,
    /// When SNS accepted the publish.
    pub published_at: Option<DateTime<Utc>>,
    /// The request, or why it could not be read.
    pub request: Result<RevertRequest>,
}

/// Recognises a revert request: a direct invocation `{"revert": {...}}` (nothing else in
/// the object), or an SNS event
/// (or bare SNS notification) whose only message is one. `None`: not a revert request.
pub fn parse_revert(event: &Value, expected_topic: Option<&str>) -> Option<RevertDelivery> {
    let object = event.as_object()?;
    if let Some(body) = object.get("revert").filter(|_| object.len() == 1) {
        return Some(RevertDelivery {
            message_id: None,
            published_at: None,
            request: revert_body(body),
        });
    }
    let record = match object.get("Records").and_then(Value::as_array) {
        Some(records) if records.len() == 1 => records[0].clone(),
        Some(_) => return None,
        None if object.get("Type").and_then(Value::as_str) == Some("Notification") => {
            serde_json::json!({"EventSource": "aws:sns", "EventVersion": "1.0", "EventSubscriptionArn": "", "Sns": event})
        }
        None => return None,
    };
    let message = record.pointer("/Sns/Message").and_then(Value::as_str)?;
    if !message.contains("\"revert\"") {
        return None;
    }
    let body = serde_json::from_str::<Value>(message)
        .ok()?
        .get("revert")?
        .clone();
    let opened = open_record(0, &record, expected_topic);
    Some(RevertDelivery {
        message_id: opened.message_id,
        published_at: opened.published_at,
        request: opened.message.and_then(|_| revert_body(&body)),
    })
}

fn revert_body(body: &Value) -> Result<RevertRequest> {
    RevertRequest::deserialize(body)
        .map_err(|err| input(format!("revert request is malformed: {err}")))
}

/// Validates a revert request for `function`: known remediation equal to the function's,
/// valid namespace and name, a kind and a reason.
pub fn validate_revert(request: &RevertRequest, function: &str) -> Result<(), String> {
    let remediation = request.remediation.as_str();
    if !KNOWN_REMEDIATIONS.contains(&remediation) {
        return Err(format!(
            "revert request names unknown remediation \"{}\" (expected one of: {})",
            names::printable(remediation),
            KNOWN_REMEDIATIONS.join(", ")
        ));
    }
    if remediation != function {
        return Err(format!(
            "revert request is for {remediation}, but this function is {function}: invoke {remediation}"
        ));
    }
    names::dns_label("namespace", &request.namespace)?;
    names::dns_subdomain("name", &request.name)?;
    if request.kind.is_empty() || !request.kind.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!(
            "revert request kind \"{}\" is not a Kubernetes kind",
            names::printable(&request.kind)
        ));
    }
    if request.reason.trim().is_empty() {
        return Err("revert request has an empty `reason`; say why (it is kept in the record and the Event)".into());
    }
    Ok(())
}

#[cfg(test)]
mod revert_tests {
    use super::*;
    use serde_json::json;

    fn request() -> Value {
        json!({"remediation": "error-rollback", "namespace": "shop", "kind": "VirtualService",
               "name": "checkout", "reason": "v2 fixed"})
    }

    #[test]
    fn direct_and_sns_revert_requests_are_recognised() {
        let direct = parse_revert(&json!({"revert": request()}), None).expect("revert");
        let parsed = direct.request.expect("valid");
        assert_eq!(parsed.name, "checkout");
        assert!(validate_revert(&parsed, "error-rollback").is_ok());
        let sns = json!({"Records": [{"EventSource": "aws:sns", "EventVersion": "1.0",
            "EventSubscriptionArn": "arn:aws:sns:us-east-1:1:t:s",
            "Sns": {"Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:aws:sns:us-east-1:1:t",
                    "Message": json!({"revert": request()}).to_string(),
                    "Timestamp": "2026-11-25T21:27:50.081Z", "SignatureVersion": "1",
                    "Signature": "x", "SigningCertUrl": "x", "UnsubscribeUrl": "x",
                    "MessageAttributes": {}}}]});
        let delivery = parse_revert(&sns, None).expect("revert");
        assert_eq!(delivery.message_id.as_deref(), Some("m-1"));
        assert!(delivery.published_at.is_some());
        assert!(delivery.request.is_ok());
        // The topic check applies as for alerts.
        let other = parse_revert(&sns, Some("arn:aws:sns:us-east-1:1:other")).expect("revert");
        assert!(other.request.is_err());
        // Alerts are not revert requests.
        assert!(parse_revert(&json!({"version": "4", "alerts": []}), None).is_none());
    }

    #[test]
    fn bad_revert_requests_say_what_is_wrong() {
        let mut typo = request();
        typo["nmae"] = json!("x");
        let err = parse_revert(&json!({"revert": typo}), None)
            .expect("revert")
            .request
            .expect_err("unknown field");
        assert!(err.to_string().contains("unknown field `nmae`"), "{err}");
        let parse = |patch: Value| {
            let mut body = request();
            json_patch::merge(&mut body, &patch);
            serde_json::from_value::<RevertRequest>(body).expect("shape")
        };
        for (patch, function, expected) in [
            (json!({}), "db-circuit-break", "invoke error-rollback"),
            (
                json!({"remediation": "undo"}),
                "error-rollback",
                "unknown remediation",
            ),
            (
                json!({"namespace": "../x"}),
                "error-rollback",
                "not a valid Kubernetes name",
            ),
            (
                json!({"kind": "Virtual Service"}),
                "error-rollback",
                "not a Kubernetes kind",
            ),
            (json!({"reason": " "}), "error-rollback", "empty `reason`"),
        ] {
            let err = validate_revert(&parse(patch.clone()), function).expect_err("invalid");
            assert!(err.contains(expected), "{patch}: {err}");
        }
    }
}
