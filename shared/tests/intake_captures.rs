//! Intake against real Alertmanager captures and the sample events: every input gets the
//! right result, and every bad one a specific error.

use mesh_remediation::intake::{self, Rejection};
use serde_json::{Value, json};

fn capture(name: &str) -> Value {
    let path = format!(
        "{}/tests/data/alertmanager/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("capture exists"))
        .expect("capture is JSON")
}

fn sample(name: &str) -> Value {
    let path = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("sample exists"))
        .expect("sample is JSON")
}

fn input_error(result: mesh_remediation::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(mesh_remediation::Error::Input(message)) => message,
        other => panic!("expected an input error, got {other:?}"),
    }
}

/// Wraps an SNS notification (as delivered over HTTP or to SQS) into a Lambda SNS record.
fn as_lambda_event(notification: &Value) -> Value {
    let mut sns = notification.clone();
    if let Some(attrs) = sns.get("MessageAttributes").cloned() {
        sns["MessageAttributes"] = attrs;
    }
    json!({"Records": [{"EventSource": "aws:sns", "EventVersion": "1.0", "EventSubscriptionArn": "arn:aws:sns:us-east-1:123456789012:x:y", "Sns": sns}]})
}

#[test]
fn json_template_capture_parses_and_its_legacy_remediation_is_rejected_by_name() {
    for name in [
        "json-template-firing.json",
        "attrs-sqs-envelope-firing-HighLatencyGoldenSignal.json",
    ] {
        let notification = capture(name);
        for event in [notification.clone(), as_lambda_event(&notification)] {
            let deliveries = intake::parse_event(&event, None).expect("recognised event");
            assert_eq!(deliveries.len(), 1);
            let group = deliveries[0]
                .content
                .as_ref()
                .expect("valid webhook-v4 JSON");
            assert_eq!(group.alerts.len(), 1);
            assert_eq!(group.alerts[0].fingerprint, "5cde2aa4cccfe6dd");
            assert!(group.alerts[0].annotations["description"].contains("C:\\temp \u{2192} done"));
            match intake::validate_alert(&group.alerts[0], "latency-restart") {
                Err(Rejection::Invalid(why)) => {
                    assert!(why.contains("unknown remediation \"rollback\""), "{why}");
                    assert!(why.contains("latency-restart, error-rollback"), "{why}");
                }
                other => panic!("{name}: expected unknown remediation, got {other:?}"),
            }
        }
    }
}

#[test]
fn resolved_capture_parses_as_resolved() {
    let deliveries = intake::parse_event(
        &as_lambda_event(&capture("json-template-resolved.json")),
        None,
    )
    .expect("event");
    let group = deliveries[0].content.as_ref().expect("valid");
    assert_eq!(
        group.alerts[0].status,
        mesh_remediation::intake::alert::AlertStatus::Resolved
    );
    assert!(group.alerts[0].real_end().is_some());
}

#[test]
fn default_template_is_refused_with_a_pointer_to_the_json_template() {
    for name in [
        "default-template-firing.json",
        "default-template-resolved.json",
    ] {
        let deliveries =
            intake::parse_event(&as_lambda_event(&capture(name)), None).expect("event");
        let why = input_error(deliveries.into_iter().next().expect("one").content);
        assert!(why.contains("default plain-text"), "{why}");
        assert!(why.contains(intake::TEMPLATE_PATH), "{why}");
    }
}

#[test]
fn publish_requests_carry_the_same_payloads() {
    let ok = capture("publish-request-am-json-firing-HighLatencyGoldenSignal-OK.json");
    let group =
        intake::parse_message(ok["form"]["Message"].as_str().expect("message")).expect("valid");
    assert_eq!(group.alerts.len(), 1);
    let rejected =
        capture("publish-request-am-default-firing-HighLatencyGoldenSignal-REJECTED-400.json");
    let why = input_error(intake::parse_message(
        rejected["form"]["Message"].as_str().expect("message"),
    ));
    assert!(why.contains("default plain-text"), "{why}");
}

#[test]
fn native_webhook_payload_is_accepted_for_direct_invokes() {
    let deliveries = intake::parse_event(&capture("webhook-firing.json"), None).expect("event");
    let group = deliveries[0].content.as_ref().expect("valid");
    assert_eq!(group.alerts[0].labels["deployment"], "checkout-v2");
    assert!(deliveries[0].message_id.is_none());
}

#[test]
fn truncated_messages_are_named_as_such() {
    let deliveries = intake::parse_event(&sample("bad-truncated.json"), None).expect("event");
    let why = input_error(deliveries.into_iter().next().expect("one").content);
    assert!(why.contains("truncated"), "{why}");
    // Without the attribute, the broken JSON itself is recognised.
    let message = sample("latency-restart-firing.json")["Records"][0]["Sns"]["Message"]
        .as_str()
        .expect("message")
        .to_owned();
    let why = input_error(intake::parse_message(&message[..message.len() - 40]));
    assert!(why.contains("ends early"), "{why}");
}

#[test]
fn other_bad_inputs_get_specific_errors() {
    let why = input_error(intake::parse_message("CRITICAL: checkout latency high"));
    assert!(why.contains("not JSON"), "{why}");
    let why = input_error(intake::parse_message(r#"{"version":"3","alerts":[]}"#));
    assert!(why.contains("version \"3\""), "{why}");
    let why = input_error(intake::parse_message(
        r#"{"version":"4","status":"firing"}"#,
    ));
    assert!(why.contains("missing field `alerts`"), "{why}");
    let why = input_error(intake::parse_message(
        r#"{"version":"4","status":"firing","alerts":[{"status":"burning"}]}"#,
    ));
    assert!(why.contains("burning"), "{why}");
    let why = input_error(intake::parse_event(&sample("bad-not-sns.json"), None));
    assert!(why.contains("neither a Lambda SNS event"), "{why}");
    let why = input_error(intake::parse_event(&json!([1, 2]), None));
    assert!(why.contains("JSON array"), "{why}");
    let why = input_error(intake::parse_event(&json!({"Records": []}), None));
    assert!(why.contains("no records"), "{why}");
    let why = input_error(
        intake::parse_event(&json!({"Records": [{"Sns": {"Message": "x"}}]}), None)
            .expect("recognised")
            .into_iter()
            .next()
            .expect("one")
            .content,
    );
    assert!(why.contains("not an SNS record"), "{why}");
}

#[test]
fn records_from_another_topic_are_rejected() {
    let event = sample("latency-restart-firing.json");
    let ours = "arn:aws:sns:us-east-1:123456789012:mesh-remediation-alerts";
    assert!(
        intake::parse_event(&event, Some(ours)).expect("event")[0]
            .content
            .is_ok()
    );
    let deliveries = intake::parse_event(&event, Some("arn:aws:sns:us-east-1:123456789012:other"))
        .expect("event");
    let why = input_error(deliveries.into_iter().next().expect("one").content);
    assert!(why.contains("ALERT_TOPIC_ARN"), "{why}");
}

#[test]
fn label_contract_is_enforced() {
    let deliveries = intake::parse_event(&sample("latency-restart-bad-invalid-names.json"), None)
        .expect("event");
    let group = deliveries[0].content.as_ref().expect("valid JSON");
    match intake::validate_alert(&group.alerts[0], "latency-restart") {
        Err(Rejection::Invalid(why)) => assert!(why.contains("`namespace`"), "{why}"),
        other => panic!("expected invalid namespace, got {other:?}"),
    }
    let firing = intake::parse_event(&sample("latency-restart-firing.json"), None).expect("event");
    let alert = &firing[0].content.as_ref().expect("valid").alerts[0];
    assert!(intake::validate_alert(alert, "latency-restart").is_ok());
    assert!(matches!(
        intake::validate_alert(alert, "error-rollback"),
        Err(Rejection::OtherFunction(_))
    ));
}
