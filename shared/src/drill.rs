//! Chaos drills: an alert labelled `drill="true"` for one function, built and published the
//! way Alertmanager publishes a real one (the webhook-v4 message, the message attributes the
//! subscriptions filter on), so a drill travels the real path. The function always makes a
//! server-side dry run for it and reports whether the drill passed.
//!
//! One builder for `scripts/drill` and `kubectl mesh-remediation drill`, so the two cannot
//! send different drills.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::intake::KNOWN_REMEDIATIONS;

/// Labels a drill may carry besides the ones every drill has.
pub const TARGET_LABELS: [&str; 6] = [
    "deployment",
    "service",
    "db_host",
    "version",
    "region",
    "cluster",
];

/// A drill alert for `function` in `namespace`, with `targets` (keys of [`TARGET_LABELS`]).
#[derive(Debug, Clone)]
pub struct Drill {
    /// The function the drill is for.
    pub function: String,
    /// The labels the alert carries.
    pub labels: BTreeMap<String, String>,
    /// Its fingerprint, unique per drill.
    pub fingerprint: String,
    /// When it started.
    pub started: DateTime<Utc>,
}

impl Drill {
    /// Checks the function and the labels, and stamps the drill with `now`.
    pub fn new(
        function: &str,
        namespace: &str,
        targets: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<Drill> {
        if !KNOWN_REMEDIATIONS.contains(&function) {
            return Err(Error::Input(format!(
                "unknown function {function:?} (expected one of: {})",
                KNOWN_REMEDIATIONS.join(", ")
            )));
        }
        if let Some(unknown) = targets
            .keys()
            .find(|k| !TARGET_LABELS.contains(&k.as_str()))
        {
            return Err(Error::Input(format!(
                "a drill carries no label {unknown:?} (expected: {})",
                TARGET_LABELS.join(", ")
            )));
        }
        let mut labels = BTreeMap::from([
            ("alertname".to_owned(), "RemediationDrill".to_owned()),
            ("remediation".to_owned(), function.to_owned()),
            ("namespace".to_owned(), namespace.to_owned()),
            ("severity".to_owned(), "info".to_owned()),
            ("drill".to_owned(), "true".to_owned()),
            ("auto_remediation".to_owned(), "active".to_owned()),
        ]);
        labels.extend(targets.clone());
        let micros = now.timestamp_micros().unsigned_abs();
        Ok(Drill {
            function: function.to_owned(),
            labels,
            fingerprint: format!("drill{:011x}", micros & 0xfff_ffff_ffff),
            started: now,
        })
    }

    /// The Alertmanager webhook-v4 message, as the shipped template renders it.
    pub fn message(&self) -> Value {
        let started = self.started.to_rfc3339_opts(SecondsFormat::Secs, true);
        json!({
            "version": "4",
            "groupKey": format!("drill:{}", self.function),
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "drill",
            "groupLabels": {"remediation": self.function},
            "commonLabels": self.labels,
            "commonAnnotations": {"summary": "chaos drill: validates routing, target and patch without changing anything"},
            "externalURL": "",
            "alerts": [{
                "status": "firing",
                "labels": self.labels,
                "annotations": {"summary": "chaos drill"},
                "startsAt": started,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": self.fingerprint,
            }],
        })
    }

    /// The SNS subject.
    pub fn subject(&self) -> String {
        format!("[DRILL] {}", self.function)
    }

    /// The message attributes the subscriptions filter on.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("remediation", self.function.clone()),
            ("status", "firing".to_owned()),
            ("severity", "info".to_owned()),
            ("drill", "true".to_owned()),
        ]
    }

    /// The event Lambda hands the function when SNS delivers the drill (for a direct
    /// invocation, which bypasses the topic).
    pub fn sns_event(&self, topic: &str) -> Value {
        let attributes: serde_json::Map<String, Value> = self
            .attributes()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), json!({"Type": "String", "Value": v})))
            .collect();
        json!({"Records": [{
            "EventSource": "aws:sns",
            "EventVersion": "1.0",
            "EventSubscriptionArn": format!("{topic}:drill"),
            "Sns": {
                "Type": "Notification",
                "MessageId": self.fingerprint,
                "TopicArn": topic,
                "Subject": self.subject(),
                "Message": self.message().to_string(),
                "Timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
                // Lambda's SNS record carries SNS's signature fields; a direct invocation
                // has none to give, and the function does not check them.
                "SignatureVersion": "1",
                "Signature": "",
                "SigningCertUrl": "",
                "UnsubscribeUrl": "",
                "MessageAttributes": attributes,
            }
        }]})
    }

    /// Publishes the drill to the alert topic (`AWS_ENDPOINT_URL` for an emulator); returns
    /// the SNS MessageId.
    pub async fn publish(&self, topic: &str) -> Result<String> {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let sns = aws_sdk_sns::Client::new(&sdk);
        let mut publish = sns
            .publish()
            .topic_arn(topic)
            .subject(self.subject())
            .message(self.message().to_string());
        for (name, value) in self.attributes() {
            let attribute = aws_sdk_sns::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|err| Error::Input(err.to_string()))?;
            publish = publish.message_attributes(name, attribute);
        }
        let out = publish.send().await.map_err(|err| {
            use aws_sdk_sns::error::{ProvideErrorMetadata, SdkError};
            // SNS's own code and message say what is wrong (a topic that does not exist,
            // no permission); the raw response adds nothing a person needs.
            let why = match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                _ => aws_sdk_sns::error::DisplayErrorContext(&err).to_string(),
            };
            Error::Aws {
                operation: "sns:Publish",
                retryable: matches!(
                    err,
                    SdkError::TimeoutError(_) | SdkError::DispatchFailure(_)
                ),
                message: format!("the drill to {topic}: {why}"),
            }
        })?;
        Ok(out.message_id.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drill_is_a_firing_alert_for_one_function_marked_as_a_drill() {
        let targets = BTreeMap::from([("deployment".to_owned(), "checkout-v2".to_owned())]);
        let drill = Drill::new("latency-restart", "shop", &targets, Utc::now()).expect("drill");
        let message = drill.message();
        let alert = &message["alerts"][0];
        assert_eq!(alert["labels"]["drill"], "true");
        assert_eq!(alert["labels"]["deployment"], "checkout-v2");
        assert_eq!(alert["labels"]["remediation"], "latency-restart");
        assert_eq!(alert["fingerprint"], drill.fingerprint.as_str());
        assert!(
            drill
                .attributes()
                .contains(&("remediation", "latency-restart".to_owned()))
        );
        let event = drill.sns_event("arn:aws:sns:us-east-1:1:alerts");
        let parsed = crate::intake::parse_event(&event, None).expect("an SNS event");
        assert!(parsed[0].content.is_ok(), "intake reads it: {event}");
        assert!(Drill::new("reboot", "shop", &targets, Utc::now()).is_err());
        let odd = BTreeMap::from([("pod".to_owned(), "x".to_owned())]);
        assert!(Drill::new("latency-restart", "shop", &odd, Utc::now()).is_err());
    }
}
