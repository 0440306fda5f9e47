//! The report as a custom notification of Amazon Q Developer in chat applications (formerly
//! AWS Chatbot), the only form of our own messages it shows in Slack or Teams; anything else
//! published to a topic it watches is dropped without a word.
//!
//! The notification topic carries it as the `https` variant of a per-protocol message
//! (SNS `MessageStructure=json`): the chat integration subscribes to a topic over HTTPS, so
//! it gets this form, while e-mail, SQS and Lambda subscribers keep getting the report JSON
//! (`default`), and CloudWatch alarms on the same topic keep their native rendering.
//!
//! Schema (version `1.0`): required `version` = `"1.0"`, `source` = `"custom"` and
//! `content.description`; optional `content.textType` (only `client-markdown`),
//! `content.title`, `content.nextSteps` and `content.keywords` (lists of strings), and
//! `metadata` (`summary`, `eventType`, `relatedResources`, `additionalContext`).

use serde_json::{Value, json};

use crate::report::{InvocationReport, OutcomeKind};

/// Longest description sent: a chat message is read, not scrolled; the full report stays in
/// the log and the e-mail.
pub const MAX_DESCRIPTION_CHARS: usize = 6000;

/// Most entries of `relatedResources` and `keywords`.
const MAX_LISTED: usize = 10;

/// The custom notification for `report`.
pub fn custom_notification(report: &InvocationReport) -> Value {
    let headline = report.headline();
    let drill = report.outcomes.iter().any(|o| o.source.drill);
    let title = format!(
        "{} {}: {}{}",
        headline.map_or(":information_source:", emoji),
        report.function,
        report.subject_counts(),
        if drill { " (drill)" } else { "" }
    );
    let mut description = outcome_lines(report).join("\n");
    if description.is_empty() {
        description = format!("No outcome needs a person (trace `{}`).", report.trace_id);
    }
    if report.dry_run {
        description.push_str("\n_DRY_RUN is on: nothing was changed._");
    }
    let description = capped(description);
    let mut targets: Vec<&str> = Vec::new();
    for target in report.outcomes.iter().filter_map(|o| o.target.as_deref()) {
        if targets.len() < MAX_LISTED && !targets.contains(&target) {
            targets.push(target);
        }
    }
    let mut keywords = vec![report.function.clone()];
    keywords.extend(headline.map(|h| h.as_str().to_owned()));
    if drill {
        keywords.push("drill".into());
    }
    json!({
        "version": "1.0",
        "source": "custom",
        "id": report.trace_id,
        "content": {
            "textType": "client-markdown",
            "title": title,
            "description": description,
            "nextSteps": next_steps(report),
            "keywords": keywords,
        },
        "metadata": {
            "summary": report.subject(),
            "eventType": format!(
                "mesh-remediation.{}",
                headline.map_or("none", OutcomeKind::as_str)
            ),
            "relatedResources": targets,
            "additionalContext": {
                "function": report.function,
                "trace_id": report.trace_id,
                "request_id": report.request_id,
                "dry_run": report.dry_run.to_string(),
            },
        },
    })
}

fn emoji(kind: OutcomeKind) -> &'static str {
    match kind {
        OutcomeKind::Failed => ":x:",
        OutcomeKind::Escalated => ":rotating_light:",
        OutcomeKind::Applied => ":white_check_mark:",
        OutcomeKind::DryRun => ":memo:",
        OutcomeKind::Skipped => ":pause_button:",
    }
}

/// What a person does next, for the outcomes that need one.
fn next_steps(report: &InvocationReport) -> Vec<String> {
    let has = |kind| report.outcomes.iter().any(|o| o.outcome == kind);
    let mut steps = Vec::new();
    if has(OutcomeKind::Escalated) {
        steps.push("The target is handed to you: no function acts on it until the annotation auto-remediation.io/escalated is removed or the alert stays resolved for the escalation window".to_owned());
    }
    if has(OutcomeKind::Failed) || has(OutcomeKind::Escalated) {
        steps.push(format!(
            "Read the function's log for trace_id {}",
            report.trace_id
        ));
    }
    steps
}

/// `text` cut to [`MAX_DESCRIPTION_CHARS`] on a line boundary, saying how much was left out.
fn capped(text: String) -> String {
    if text.chars().count() <= MAX_DESCRIPTION_CHARS {
        return text;
    }
    let total = text.lines().count();
    let mut kept = String::new();
    let mut lines = 0;
    for line in text.lines() {
        // Room for the closing note.
        if kept.chars().count() + line.chars().count() + 80 > MAX_DESCRIPTION_CHARS {
            break;
        }
        kept.push_str(line);
        kept.push('\n');
        lines += 1;
    }
    if lines == 0 {
        kept = text.chars().take(MAX_DESCRIPTION_CHARS - 80).collect();
        kept.push('\n');
    }
    kept.push_str(&format!(
        "… {} more line(s) in the e-mail report and the log",
        total - lines
    ));
    kept
}

/// One Slack mrkdwn line per outcome that is not a skip: the Slack webhook's message and the
/// chat notification's description.
pub(crate) fn outcome_lines(report: &InvocationReport) -> Vec<String> {
    let mut lines = Vec::new();
    for o in report
        .outcomes
        .iter()
        .filter(|o| o.outcome != OutcomeKind::Skipped)
    {
        let mut line = format!(
            "• {} *{}* {}",
            if o.source.drill { "[drill]" } else { "" },
            o.outcome.as_str(),
            o.target.as_deref().unwrap_or("-")
        );
        if let Some(what) = o.change.as_deref().or(o.reason.as_deref()) {
            line.push_str(&format!(" — {what}"));
        }
        if let Some(alert) = &o.source.alert {
            line.push_str(&format!(" — alert {alert}"));
        }
        for (name, url) in &o.source.links {
            line.push_str(&format!(" <{url}|{name}>"));
        }
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Outcome, Source};

    fn report(outcomes: Vec<Outcome>) -> InvocationReport {
        InvocationReport::new("error-rollback", "1-abc", "req-1", false, outcomes)
    }

    fn outcome(kind: OutcomeKind, target: &str) -> Outcome {
        Outcome::new(kind, Source::default())
            .on(target)
            .because("routed 100% to the stable destination")
    }

    /// The schema's required fields and the types of the optional ones.
    fn assert_schema(message: &Value) {
        assert_eq!(message["version"], "1.0", "{message:#}");
        assert_eq!(message["source"], "custom", "{message:#}");
        let content = &message["content"];
        assert!(
            content["description"]
                .as_str()
                .is_some_and(|d| !d.trim().is_empty()),
            "{message:#}"
        );
        assert_eq!(content["textType"], "client-markdown");
        assert!(content["title"].is_string());
        for list in [
            &content["nextSteps"],
            &content["keywords"],
            &message["metadata"]["relatedResources"],
        ] {
            assert!(
                list.as_array()
                    .is_some_and(|items| items.iter().all(Value::is_string)),
                "{list}"
            );
        }
        let context = message["metadata"]["additionalContext"]
            .as_object()
            .expect("additionalContext");
        assert!(context.values().all(Value::is_string), "{context:?}");
    }

    #[test]
    fn a_report_becomes_a_custom_notification_with_the_required_fields() {
        let escalated = report(vec![
            outcome(OutcomeKind::Applied, "VirtualService shop/checkout"),
            outcome(OutcomeKind::Escalated, "VirtualService shop/cart"),
        ]);
        let message = custom_notification(&escalated);
        assert_schema(&message);
        let description = message["content"]["description"].as_str().expect("text");
        assert!(
            description.contains("VirtualService shop/cart"),
            "{description}"
        );
        assert!(
            message["content"]["title"]
                .as_str()
                .is_some_and(|t| t.starts_with(":rotating_light: error-rollback")),
            "{message:#}"
        );
        assert_eq!(
            message["metadata"]["eventType"],
            "mesh-remediation.escalated"
        );
        assert_eq!(
            message["content"]["nextSteps"].as_array().map(Vec::len),
            Some(2)
        );
        // Even a report with nothing to say is a valid notification.
        assert_schema(&custom_notification(&report(vec![])));
    }

    #[test]
    fn a_long_report_is_cut_on_a_line_and_says_so() {
        let many = report(
            (0..400)
                .map(|i| outcome(OutcomeKind::Applied, &format!("VirtualService shop/s{i}")))
                .collect(),
        );
        let message = custom_notification(&many);
        assert_schema(&message);
        let description = message["content"]["description"].as_str().expect("text");
        assert!(description.chars().count() <= MAX_DESCRIPTION_CHARS);
        assert!(
            description.ends_with("in the e-mail report and the log"),
            "{description}"
        );
        assert_eq!(
            message["metadata"]["relatedResources"]
                .as_array()
                .map(Vec::len),
            Some(MAX_LISTED)
        );
    }
}
