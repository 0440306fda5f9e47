//! Reports leave the function here: the SNS notification topic (chat through Amazon Q
//! Developer, e-mail and anything else subscribe to it) and, optionally, Slack and PagerDuty
//! directly. A sink that fails never blocks or undoes a remediation; its failure is itself
//! reported.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::intake::alert::AlertStatus;
use crate::report::secrets::SinkSecret;
use crate::report::{Delivery, InvocationReport, Outcome, OutcomeKind};

/// Sends an invocation report somewhere humans see it.
pub trait Notifier: Send + Sync {
    /// Short name for the report (`sns`, `slack`, `pagerduty`).
    fn name(&self) -> &'static str;
    /// Publishes the report.
    fn notify<'a>(&'a self, report: &'a InvocationReport) -> BoxFuture<'a, Result<()>>;
    /// Whether this sink hears of the report: by default when an outcome needs a report
    /// (anything but a routine skip).
    fn wants(&self, report: &InvocationReport) -> bool {
        report.outcomes.iter().any(Outcome::needs_a_report)
    }
}

/// Sends the report to every sink that wants it ([`Notifier::wants`]) at once, each bounded
/// by `timeout`.
pub async fn deliver_all(
    sinks: &[Arc<dyn Notifier>],
    report: &InvocationReport,
    timeout: Duration,
) -> Vec<Delivery> {
    let sends = sinks
        .iter()
        .filter(|sink| sink.wants(report))
        .map(|sink| async move {
            let result = match tokio::time::timeout(timeout, sink.notify(report)).await {
                Ok(result) => result,
                Err(_) => Err(Error::Sink {
                    sink: sink.name(),
                    message: format!("no answer within {} ms", timeout.as_millis()),
                    retryable: true,
                }),
            };
            Delivery {
                sink: sink.name(),
                ok: result.is_ok(),
                error: result.err().map(|e| e.to_string()),
            }
        });
    futures::future::join_all(sends).await
}

/// Publishes reports to an SNS topic, with attributes subscribers can filter on.
pub struct SnsNotifier {
    topic_arn: String,
    client: tokio::sync::OnceCell<aws_sdk_sns::Client>,
}

impl SnsNotifier {
    /// A notifier for `topic_arn`; the SNS client is built on first use.
    pub fn new(topic_arn: String) -> Self {
        SnsNotifier {
            topic_arn,
            client: tokio::sync::OnceCell::new(),
        }
    }
}

impl Notifier for SnsNotifier {
    fn name(&self) -> &'static str {
        "sns"
    }

    fn notify<'a>(&'a self, report: &'a InvocationReport) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let client = self
                .client
                .get_or_init(|| async {
                    let sdk =
                        aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                    aws_sdk_sns::Client::new(&sdk)
                })
                .await;
            let body = serde_json::to_string(report).map_err(|err| Error::Aws {
                operation: "sns:Publish",
                message: err.to_string(),
                retryable: false,
            })?;
            let mut publish = client
                .publish()
                .topic_arn(&self.topic_arn)
                .subject(report.subject());
            publish = match per_protocol_message(report, &body) {
                Some(message) => publish.message_structure("json").message(message),
                None => {
                    tracing::warn!(
                        bytes = body.len(),
                        "report too large to carry its chat form as well; published as JSON only"
                    );
                    publish.message(body)
                }
            };
            for (name, value) in report.attributes() {
                let attribute = aws_sdk_sns::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .expect("data type and value are set");
                publish = publish.message_attributes(name, attribute);
            }
            publish.send().await.map_err(|err| Error::Aws {
                operation: "sns:Publish",
                message: aws_sdk_sns::error::DisplayErrorContext(&err).to_string(),
                retryable: true,
            })?;
            Ok(())
        })
    }
}

/// Largest SNS message: 256 KiB, counted over the whole per-protocol structure.
const SNS_MAX_MESSAGE_BYTES: usize = 262_144;

/// The report JSON for every subscriber (`default`) and its chat form for HTTPS ones, where
/// Amazon Q Developer in chat applications listens ([`super::chat`]); `None` when both do not
/// fit in one message.
pub fn per_protocol_message(report: &InvocationReport, body: &str) -> Option<String> {
    let chat = super::chat::custom_notification(report).to_string();
    let message = json!({ "default": body, "https": chat }).to_string();
    (message.len() <= SNS_MAX_MESSAGE_BYTES).then_some(message)
}

fn http_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default()
    })
}

/// Posts JSON and maps failures to errors that never carry the URL (it is a secret).
async fn post_json(sink: &'static str, url: &str, body: &Value) -> Result<()> {
    post_json_as(sink, url, None, body).await
}

/// [`post_json`] with a bearer token (never in an error either).
pub(crate) async fn post_json_as(
    sink: &'static str,
    url: &str,
    bearer: Option<&str>,
    body: &Value,
) -> Result<()> {
    let failure = |message: String, retryable: bool| Error::Sink {
        sink,
        message,
        retryable,
    };
    let mut request = http_client().post(url).json(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|err| failure(err.without_url().to_string(), true))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(failure(
            format!("HTTP {}", status.as_u16()),
            status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS,
        ))
    }
}

/// A Slack incoming webhook: one message per report that changed, failed or escalated something.
pub struct SlackNotifier {
    webhook: SinkSecret,
}

impl SlackNotifier {
    /// A notifier posting to the URL `webhook` holds.
    pub fn new(webhook: SinkSecret) -> Self {
        SlackNotifier { webhook }
    }

    /// The message text (Slack mrkdwn).
    pub fn text(report: &InvocationReport) -> String {
        let mut lines = vec![format!(
            "*{}* {} (trace `{}`)",
            report.function,
            report.subject_counts(),
            report.trace_id
        )];
        lines.extend(super::chat::outcome_lines(report));
        lines.join("\n")
    }
}

impl Notifier for SlackNotifier {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn notify<'a>(&'a self, report: &'a InvocationReport) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let webhook = self.webhook.get().await?;
            post_json(
                "slack",
                webhook.expose(),
                &json!({ "text": SlackNotifier::text(report) }),
            )
            .await
        })
    }
}

/// PagerDuty Events API v2: pages for failed and escalated outcomes (never for drills),
/// deduplicated on the alert fingerprint so repeats update one incident, and resolves that
/// incident when the alert resolves (same key; PagerDuty ignores a resolve for a key it never
/// opened).
pub struct PagerDutyNotifier {
    routing_key: SinkSecret,
    url: String,
}

impl PagerDutyNotifier {
    /// A notifier for the key `routing_key` holds, posting to `url`.
    pub fn new(routing_key: SinkSecret, url: String) -> Self {
        PagerDutyNotifier { routing_key, url }
    }

    /// The Events API v2 bodies for a report: a trigger per outcome that pages, a resolve
    /// per resolved alert. The routing key is added when they are sent.
    pub fn events(&self, report: &InvocationReport) -> Vec<Value> {
        report
            .outcomes
            .iter()
            .filter(|o| !o.source.drill)
            .filter_map(|o| {
                if matches!(o.outcome, OutcomeKind::Failed | OutcomeKind::Escalated) {
                    Some(self.event(report, o))
                } else if o.source.status == Some(AlertStatus::Resolved) {
                    Some(json!({
                        "event_action": "resolve",
                        "dedup_key": dedup_key(report, o),
                    }))
                } else {
                    None
                }
            })
            .collect()
    }

    fn event(&self, report: &InvocationReport, o: &Outcome) -> Value {
        let dedup = dedup_key(report, o);
        let severity = match (o.outcome, o.source.severity.as_deref()) {
            (OutcomeKind::Escalated, _) | (_, Some("critical")) => "critical",
            _ => "error",
        };
        let links: Vec<Value> = o
            .source
            .links
            .iter()
            .map(|(name, url)| json!({"href": url, "text": name}))
            .collect();
        json!({
            "event_action": "trigger",
            "dedup_key": dedup,
            "payload": {
                "summary": format!(
                    "{} {} {}: {}",
                    report.function,
                    o.outcome.as_str(),
                    o.target.as_deref().unwrap_or("-"),
                    o.reason.as_deref().unwrap_or("")
                ).chars().take(1024).collect::<String>(),
                "source": o.target.as_deref().unwrap_or(&report.function),
                "severity": severity,
                "component": report.function,
                "custom_details": {"trace_id": report.trace_id, "outcome": o},
            },
            "links": links,
        })
    }
}

/// One incident per function and alert: the alert's fingerprint, which Alertmanager keeps
/// from firing to resolved.
fn dedup_key(report: &InvocationReport, o: &Outcome) -> String {
    format!(
        "{}:{}",
        report.function,
        o.source
            .fingerprint
            .as_deref()
            .or(o.source.message_id.as_deref())
            .unwrap_or(&report.trace_id)
    )
}

impl Notifier for PagerDutyNotifier {
    fn name(&self) -> &'static str {
        "pagerduty"
    }

    fn wants(&self, report: &InvocationReport) -> bool {
        !self.events(report).is_empty()
    }

    fn notify<'a>(&'a self, report: &'a InvocationReport) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let routing_key = self.routing_key.get().await?;
            for mut event in self.events(report) {
                event["routing_key"] = Value::from(routing_key.expose());
                post_json("pagerduty", &self.url, &event).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Source;

    fn report(kind: OutcomeKind, status: AlertStatus) -> InvocationReport {
        let source = Source {
            fingerprint: Some("7fb675b975cf0c44".into()),
            status: Some(status),
            ..Source::default()
        };
        let outcome = Outcome::new(kind, source).because("3 actions without recovery");
        InvocationReport::new("latency-restart", "t-1", "req-1", false, vec![outcome])
    }

    #[test]
    fn the_topic_gets_the_report_for_everyone_and_its_chat_form_for_https() {
        let escalated = report(OutcomeKind::Escalated, AlertStatus::Firing);
        let body = serde_json::to_string(&escalated).expect("json");
        let message = per_protocol_message(&escalated, &body).expect("fits");
        let variants: Value = serde_json::from_str(&message).expect("per-protocol JSON");
        assert_eq!(variants["default"], body.as_str());
        let chat: Value =
            serde_json::from_str(variants["https"].as_str().expect("https")).expect("chat JSON");
        assert_eq!(chat["source"], "custom");
        // A report too large to carry both goes out as the report alone.
        let huge = report(OutcomeKind::Failed, AlertStatus::Firing);
        let huge_body = "x".repeat(SNS_MAX_MESSAGE_BYTES - 100);
        assert_eq!(per_protocol_message(&huge, &huge_body), None);
    }

    #[test]
    fn the_alert_resolving_resolves_the_incident_its_escalation_opened() {
        let key = SinkSecret::new(
            crate::config::SinkCredential::Value(crate::config::Secret::new("key".into())),
            crate::report::sinks::CredentialKind::PagerDutyRoutingKey,
            std::sync::Arc::new(crate::report::secrets::SecretsManager::default()),
        );
        let pagerduty = PagerDutyNotifier::new(key, "http://pd".into());
        let opened = pagerduty.events(&report(OutcomeKind::Escalated, AlertStatus::Firing));
        assert_eq!(opened.len(), 1, "{opened:#?}");
        assert_eq!(opened[0]["event_action"], "trigger");
        assert_eq!(opened[0]["payload"]["severity"], "critical");
        let closed = pagerduty.events(&report(OutcomeKind::Skipped, AlertStatus::Resolved));
        assert_eq!(closed.len(), 1, "{closed:#?}");
        assert_eq!(closed[0]["event_action"], "resolve");
        assert_eq!(
            closed[0]["dedup_key"], opened[0]["dedup_key"],
            "the same incident"
        );
        // A routine skip of a firing alert neither pages nor resolves.
        assert!(
            pagerduty
                .events(&report(OutcomeKind::Skipped, AlertStatus::Firing))
                .is_empty()
        );
    }
}
