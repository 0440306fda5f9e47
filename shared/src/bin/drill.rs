//! `drill`: publishes a chaos-drill alert for one function to the alert topic.
//!
//! The alert is labelled `drill="true"`, so the function always makes a server-side dry run
//! and its report says whether the drill passed (routed to the right function, target found,
//! patch accepted by the API server's dry run) or failed and why. The same command works
//! against AWS and a local emulator (set `AWS_ENDPOINT_URL`).
//!
//! ```text
//! drill latency-restart --topic ARN --namespace shop --deployment checkout-v2
//! drill error-rollback  --topic ARN --namespace shop --service checkout --version v2
//! drill region-failover --topic ARN --namespace shop --service frontend --region us-east-1
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use mesh_remediation::intake::KNOWN_REMEDIATIONS;
use serde_json::json;

const USAGE: &str = "usage: drill <latency-restart|error-rollback|db-circuit-break|region-failover> --topic ARN --namespace NS [--deployment D] [--service S] [--version V] [--region R] [--cluster C]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(message_id) => {
            println!("drill published: MessageId {message_id}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("drill: {err}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<String, String> {
    let mut args = std::env::args().skip(1);
    let function = args.next().ok_or("missing function")?;
    if !KNOWN_REMEDIATIONS.contains(&function.as_str()) {
        return Err(format!("unknown function {function:?}"));
    }
    let mut options = BTreeMap::new();
    while let Some(flag) = args.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or(format!("unexpected argument {flag:?}"))?;
        let value = args.next().ok_or(format!("--{name} needs a value"))?;
        options.insert(name.to_owned(), value);
    }
    let topic = options.remove("topic").ok_or("--topic is required")?;
    let namespace = options
        .remove("namespace")
        .ok_or("--namespace is required")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    let started =
        chrono::DateTime::from_timestamp(i64::try_from(now.as_secs()).unwrap_or_default(), 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut labels = BTreeMap::from([
        ("alertname".to_owned(), "RemediationDrill".to_owned()),
        ("remediation".to_owned(), function.clone()),
        ("namespace".to_owned(), namespace),
        ("severity".to_owned(), "info".to_owned()),
        ("drill".to_owned(), "true".to_owned()),
        ("auto_remediation".to_owned(), "active".to_owned()),
    ]);
    for key in ["deployment", "service", "version", "region", "cluster"] {
        if let Some(value) = options.remove(key) {
            labels.insert(key.to_owned(), value);
        }
    }
    if let Some(unknown) = options.keys().next() {
        return Err(format!("unknown option --{unknown}"));
    }
    let fingerprint = format!("drill{:011x}", now.as_micros() & 0xfff_ffff_ffff);
    let message = json!({
        "version": "4",
        "groupKey": format!("drill:{function}"),
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "drill",
        "groupLabels": {"remediation": function},
        "commonLabels": labels,
        "commonAnnotations": {"summary": "chaos drill: validates routing, target and patch without changing anything"},
        "externalURL": "",
        "alerts": [{
            "status": "firing",
            "labels": labels,
            "annotations": {"summary": "chaos drill"},
            "startsAt": started,
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "",
            "fingerprint": fingerprint,
        }],
    });
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sns = aws_sdk_sns::Client::new(&sdk);
    let attribute = |value: &str| {
        aws_sdk_sns::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(|e| e.to_string())
    };
    let out = sns
        .publish()
        .topic_arn(&topic)
        .subject(format!("[DRILL] {function}"))
        .message(message.to_string())
        .message_attributes("remediation", attribute(&function)?)
        .message_attributes("status", attribute("firing")?)
        .message_attributes("severity", attribute("info")?)
        .message_attributes("drill", attribute("true")?)
        .send()
        .await
        .map_err(|err| aws_sdk_sns::error::DisplayErrorContext(&err).to_string())?;
    Ok(out.message_id.unwrap_or_default())
}
