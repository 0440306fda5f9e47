//! `intake-check EVENT.json`: runs the functions' intake on an event file and prints what
//! it found, as JSON. Exit status 0 when every alert parsed with a known remediation and
//! valid names, 1 otherwise. Used to prove that Alertmanager renders messages the
//! functions accept.

use std::process::ExitCode;

use mesh_remediation::intake::{self, Rejection};
use serde_json::{Value, json};

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: intake-check EVENT.json");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("{path}: {err}");
            return ExitCode::from(2);
        }
    };
    let (report, ok) = check(&text);
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check(text: &str) -> (Value, bool) {
    let event: Value = match serde_json::from_str(text) {
        Ok(event) => event,
        Err(err) => return (json!({"error": format!("event is not JSON: {err}")}), false),
    };
    let deliveries = match intake::parse_event(&event, None) {
        Ok(deliveries) => deliveries,
        Err(err) => return (json!({"error": err.to_string()}), false),
    };
    let mut ok = true;
    let mut alerts = Vec::new();
    let mut errors = Vec::new();
    for delivery in deliveries {
        match delivery.content {
            Err(err) => {
                ok = false;
                errors.push(err.to_string());
            }
            Ok(group) => {
                for alert in &group.alerts {
                    let remediation = alert.label("remediation").unwrap_or_default().to_owned();
                    let verdict = match intake::validate_alert(alert, &remediation) {
                        Ok(_) => "valid".to_owned(),
                        Err(Rejection::Invalid(why) | Rejection::OtherFunction(why)) => {
                            ok = false;
                            why
                        }
                    };
                    alerts.push(json!({
                        "fingerprint": alert.fingerprint,
                        "status": alert.status,
                        "labels": alert.labels,
                        "verdict": verdict,
                    }));
                }
                if group.truncated_alerts > 0 {
                    errors.push(format!(
                        "{} alerts omitted by the template (truncatedAlerts)",
                        group.truncated_alerts
                    ));
                }
            }
        }
    }
    (json!({"alerts": alerts, "errors": errors}), ok)
}
