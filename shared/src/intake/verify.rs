//! Verify requests as delivered: a direct invocation `{"verify": {...}}`, or an SQS event
//! from the function's verify queue whose messages are `{"verify": {...}}` (see
//! [`crate::verify::VerifyRequest`]).

use serde::Deserialize;
use serde_json::Value;

use super::names;
use crate::error::{Error, Result};
use crate::verify::VerifyRequest;

/// One verify request as delivered.
#[derive(Debug)]
pub struct VerifyDelivery {
    /// The SQS message id, when it came from the queue.
    pub message_id: Option<String>,
    /// The request, or why it could not be read.
    pub request: Result<VerifyRequest>,
}

/// Recognises verify requests: `None` when the event is something else.
pub fn parse_verify(event: &Value) -> Option<Vec<VerifyDelivery>> {
    let object = event.as_object()?;
    if let Some(body) = object.get("verify").filter(|_| object.len() == 1) {
        return Some(vec![VerifyDelivery {
            message_id: None,
            request: verify_body(body),
        }]);
    }
    let records = object.get("Records")?.as_array()?;
    let from_sqs =
        |record: &Value| record.get("eventSource").and_then(Value::as_str) == Some("aws:sqs");
    if records.is_empty() || !records.iter().all(from_sqs) {
        return None;
    }
    Some(
        records
            .iter()
            .map(|record| VerifyDelivery {
                message_id: record
                    .get("messageId")
                    .and_then(Value::as_str)
                    .map(names::printable),
                request: sqs_body(record),
            })
            .collect(),
    )
}

fn sqs_body(record: &Value) -> Result<VerifyRequest> {
    let body = record
        .get("body")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Input("SQS record has no body".into()))?;
    let message: Value = serde_json::from_str(body).map_err(|err| {
        Error::Input(names::clean_message(&format!(
            "SQS message is not JSON: {err}"
        )))
    })?;
    match message.get("verify") {
        Some(body) => verify_body(body),
        None => Err(Error::Input(
            "SQS message is not a verify request (no `verify` object); only the function's verify queue may invoke it".into(),
        )),
    }
}

fn verify_body(body: &Value) -> Result<VerifyRequest> {
    VerifyRequest::deserialize(body).map_err(|err| {
        Error::Input(names::clean_message(&format!(
            "verify request is malformed: {err}"
        )))
    })
}

/// Validates a verify request for `function`: its own remediation, valid names.
pub fn validate_verify(request: &VerifyRequest, function: &str) -> Result<(), String> {
    if request.remediation != function {
        return Err(format!(
            "verify request is for {}, but this function is {function}",
            names::printable(&request.remediation)
        ));
    }
    names::dns_label("namespace", &request.namespace)?;
    names::dns_subdomain("name", &request.name)?;
    if request.trace_id.trim().is_empty() {
        return Err("verify request has no `traceId`".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> Value {
        json!({"remediation": "error-rollback", "namespace": "shop", "kind": "VirtualService",
               "name": "checkout", "traceId": "1-abc", "at": "2026-12-07T23:40:00Z",
               "labels": {"service": "checkout"}})
    }

    #[test]
    fn direct_and_queued_requests_are_recognised() {
        let direct = parse_verify(&json!({"verify": request()})).expect("verify");
        let parsed = direct[0].request.as_ref().expect("valid");
        assert_eq!(parsed.name, "checkout");
        assert!(validate_verify(parsed, "error-rollback").is_ok());
        assert!(validate_verify(parsed, "db-circuit-break").is_err());
        let sqs = json!({"Records": [
            {"messageId": "m-1", "eventSource": "aws:sqs", "body": json!({"verify": request()}).to_string()},
            {"messageId": "m-2", "eventSource": "aws:sqs", "body": "{\"hello\": 1}"}
        ]});
        let delivered = parse_verify(&sqs).expect("verify");
        assert_eq!(delivered[0].message_id.as_deref(), Some("m-1"));
        assert!(delivered[0].request.is_ok());
        let err = delivered[1]
            .request
            .as_ref()
            .expect_err("not a verify request");
        assert!(err.to_string().contains("not a verify request"), "{err}");
        // Alerts, SNS events and revert requests are not verify requests.
        assert!(parse_verify(&json!({"version": "4", "alerts": []})).is_none());
        assert!(parse_verify(&json!({"Records": [{"EventSource": "aws:sns"}]})).is_none());
        assert!(parse_verify(&json!({"revert": {}})).is_none());
    }

    #[test]
    fn the_sample_verify_event_is_a_verify_request_from_the_queue() {
        let sample: Value =
            serde_json::from_str(include_str!("../../../events/error-rollback-verify.json"))
                .expect("sample is JSON");
        let delivered = parse_verify(&sample).expect("a verify request");
        let request = delivered[0].request.as_ref().expect("valid");
        assert!(validate_verify(request, "error-rollback").is_ok());
        assert_eq!(
            request.labels.get("version").map(String::as_str),
            Some("v2")
        );
        assert!(delivered[0].message_id.is_some());
    }

    #[test]
    fn a_typo_is_named() {
        let mut typo = request();
        typo["trace"] = json!("x");
        let delivered = parse_verify(&json!({"verify": typo})).expect("verify");
        let err = delivered[0].request.as_ref().expect_err("unknown field");
        assert!(err.to_string().contains("unknown field `trace`"), "{err}");
    }
}
