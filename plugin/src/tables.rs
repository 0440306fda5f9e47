//! How each kind of row looks in a table.

use chrono::Utc;

use crate::output::{Tabular, age};
use crate::records::{ActionRow, HandOffRow, PauseRow};

impl Tabular for ActionRow {
    fn headers() -> &'static [&'static str] {
        &[
            "CONTEXT",
            "OBJECT",
            "FUNCTION",
            "AGE",
            "STATE",
            "VERIFIED",
            "HANDED OFF",
            "ALERT",
            "TRACE",
            "CHANGE",
        ]
    }

    fn cells(&self) -> Vec<String> {
        let unknown = || "-".to_owned();
        vec![
            self.context.clone(),
            self.object.clone(),
            self.function.clone(),
            if self.unreadable.is_some() {
                unknown()
            } else {
                age(self.at, Utc::now())
            },
            self.state.clone(),
            self.verification.as_ref().map_or_else(unknown, |v| {
                serde_json::to_value(v.state)
                    .ok()
                    .and_then(|s| s.as_str().map(str::to_owned))
                    .unwrap_or_else(unknown)
            }),
            if self.escalated { "yes" } else { "no" }.to_owned(),
            self.alert.clone(),
            self.trace_id.clone(),
            shortened(self.unreadable.as_deref().unwrap_or(&self.change)),
        ]
    }
}

/// A long change in words, cut for a table row (`-o json` or `-o yaml` has it whole).
const CHANGE_COLUMN: usize = 72;

fn shortened(text: &str) -> String {
    if text.chars().count() <= CHANGE_COLUMN {
        return text.to_owned();
    }
    let cut: String = text.chars().take(CHANGE_COLUMN - 3).collect();
    format!("{}...", cut.trim_end())
}

impl Tabular for HandOffRow {
    fn headers() -> &'static [&'static str] {
        &[
            "CONTEXT", "OBJECT", "BY", "ALERT", "SINCE", "ACTIONS", "TRACE", "RESOLVED",
        ]
    }

    fn cells(&self) -> Vec<String> {
        let Some(e) = &self.escalation else {
            let why = self.unreadable.clone().unwrap_or_default();
            return vec![
                self.context.clone(),
                self.object.clone(),
                "-".into(),
                format!("unreadable annotation: {why}"),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ];
        };
        vec![
            self.context.clone(),
            self.object.clone(),
            e.remediation.clone(),
            format!("{} ({})", e.alert, e.fingerprint),
            e.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            e.streak.to_string(),
            e.trace_id.clone(),
            e.resolved_at.map_or_else(
                || "no".to_owned(),
                |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
        ]
    }
}

impl Tabular for PauseRow {
    fn headers() -> &'static [&'static str] {
        &["CONTEXT", "SCOPE", "HOLDS"]
    }

    fn cells(&self) -> Vec<String> {
        vec![self.context.clone(), self.scope.clone(), self.holds.clone()]
    }
}

/// One outcome of a revert or a drill, as the function reported it.
#[derive(Debug, serde::Serialize)]
pub struct OutcomeRow {
    /// The kubeconfig context, or where the drill went.
    pub context: String,
    /// The function's outcome, whole.
    pub outcome: serde_json::Value,
}

impl Tabular for OutcomeRow {
    fn headers() -> &'static [&'static str] {
        &["CONTEXT", "TARGET", "OUTCOME", "DETAIL"]
    }

    fn cells(&self) -> Vec<String> {
        let field = |key: &str| self.outcome[key].as_str().unwrap_or("-").to_owned();
        let detail = self.outcome["change"]
            .as_str()
            .or(self.outcome["reason"].as_str())
            .unwrap_or("-");
        vec![
            self.context.clone(),
            field("target"),
            field("outcome"),
            detail.to_owned(),
        ]
    }
}
