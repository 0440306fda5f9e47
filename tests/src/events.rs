//! The sample events in `events/`, loaded as tests and the demo use them.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// The repository root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// A sample event exactly as stored.
pub fn raw(name: &str) -> Value {
    let path = workspace_root().join("events").join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// A sample event made current: SNS `Timestamp` set to `published`, alerts started five
/// minutes before it, and the demo namespace `shop` replaced by `namespace` (in alerts
/// and in revert requests).
pub fn fresh_at(name: &str, namespace: &str, published: DateTime<Utc>) -> Value {
    let mut event = raw(name);
    let stamp = published.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let started = (published - chrono::Duration::minutes(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let ended = (published - chrono::Duration::seconds(10))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if let Some(records) = event.get_mut("Records").and_then(Value::as_array_mut) {
        for record in records {
            let sns = &mut record["Sns"];
            sns["Timestamp"] = Value::String(stamp.clone());
            let Some(message) = sns["Message"].as_str() else {
                continue;
            };
            let Ok(mut body) = serde_json::from_str::<Value>(message) else {
                continue;
            };
            refresh_group(&mut body, namespace, &started, &ended);
            sns["Message"] = Value::String(body.to_string());
        }
    } else if event.get("alerts").is_some() {
        refresh_group(&mut event, namespace, &started, &ended);
    } else if event["revert"]["namespace"] == "shop" {
        event["revert"]["namespace"] = Value::String(namespace.to_owned());
    }
    event
}

/// [`fresh_at`] with the current time.
pub fn fresh(name: &str, namespace: &str) -> Value {
    fresh_at(name, namespace, Utc::now())
}

fn refresh_group(body: &mut Value, namespace: &str, started: &str, ended: &str) {
    for labels in ["commonLabels", "groupLabels"] {
        if body[labels]["namespace"] == "shop" {
            body[labels]["namespace"] = Value::String(namespace.to_owned());
        }
    }
    if let Some(alerts) = body.get_mut("alerts").and_then(Value::as_array_mut) {
        for alert in alerts {
            if alert["labels"]["namespace"] == "shop" {
                alert["labels"]["namespace"] = Value::String(namespace.to_owned());
            }
            alert["startsAt"] = Value::String(started.to_owned());
            if alert["status"] == "resolved" {
                alert["endsAt"] = Value::String(ended.to_owned());
            }
        }
    }
}

/// The `Message` of the first record, parsed.
pub fn message(event: &Value) -> Value {
    let text = event["Records"][0]["Sns"]["Message"]
        .as_str()
        .expect("SNS message");
    serde_json::from_str(text).expect("message JSON")
}

/// Replaces the `Message` of the first record.
pub fn set_message(event: &mut Value, message: &Value) {
    event["Records"][0]["Sns"]["Message"] = Value::String(message.to_string());
}

/// The SNS MessageId of the first record.
pub fn message_id(event: &Value) -> String {
    event["Records"][0]["Sns"]["MessageId"]
        .as_str()
        .expect("MessageId")
        .to_owned()
}

/// The fingerprint of the first alert of the first record.
pub fn fingerprint(event: &Value) -> String {
    message(event)["alerts"][0]["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned()
}

/// The two ways a function is asked for a dry run, each with the variables to set: its
/// firing sample with `DRY_RUN=true`, and its drill sample (a drill always runs dry).
pub fn dry_runs(function: &str) -> [(String, &'static [(&'static str, &'static str)]); 2] {
    [
        (format!("{function}-firing.json"), &[("DRY_RUN", "true")]),
        (format!("{function}-drill.json"), &[]),
    ]
}
