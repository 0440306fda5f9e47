//! Report: one outcome per alert, emitted from one place so the JSON response, the log
//! line and the notification always agree.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::alert::AlertStatus;

/// The result for one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeKind {
    /// The change was made.
    Applied,
    /// The change was validated by the API server's dry run and not stored.
    DryRun,
    /// Nothing to do, for the stated reason.
    Skipped,
    /// Repeated actions did not help; handed to humans, nothing changed.
    Escalated,
    /// Could not be done, for the stated reason.
    Failed,
}

impl OutcomeKind {
    /// The name used in logs, metrics and message attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Applied => "applied",
            OutcomeKind::DryRun => "dry-run",
            OutcomeKind::Skipped => "skipped",
            OutcomeKind::Escalated => "escalated",
            OutcomeKind::Failed => "failed",
        }
    }
}

/// Where an alert came from.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Source {
    /// SNS MessageId.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Alert name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    /// Alertmanager fingerprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Firing or resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<AlertStatus>,
    /// Target namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `drill="true"`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drill: bool,
}

/// The outcome of one alert (or of one unreadable record).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Applied, dry-run, skipped, escalated or failed.
    pub outcome: OutcomeKind,
    /// Why, for every outcome but applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The alert this is about.
    #[serde(flatten)]
    pub source: Source,
    /// The object acted on, e.g. `Deployment shop/checkout-v2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The change in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// The exact merge patch sent (or that would be sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<Value>,
    /// Whether retrying the invocation could change a failed outcome.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retryable: bool,
}

impl Outcome {
    /// A new outcome for `source`.
    pub fn new(outcome: OutcomeKind, source: Source) -> Self {
        Outcome {
            outcome,
            reason: None,
            source,
            target: None,
            change: None,
            patch: None,
            retryable: false,
        }
    }

    /// Sets the reason.
    pub fn because(mut self, reason: impl ToString) -> Self {
        self.reason = Some(reason.to_string());
        self
    }

    /// Sets the target.
    pub fn on(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// A failure from an error, classified.
    pub fn failed(source: Source, error: &crate::Error) -> Self {
        let mut outcome = Outcome::new(OutcomeKind::Failed, source).because(error);
        outcome.retryable = error.is_retryable();
        outcome
    }
}

/// Everything one invocation did: the function's response and the report body.
#[derive(Debug, Clone, Serialize)]
pub struct InvocationReport {
    /// The function, e.g. `latency-restart`.
    pub function: String,
    /// Trace id shared by every log line, record and Event of this invocation.
    pub trace_id: String,
    /// Lambda request id.
    pub request_id: String,
    /// Whether `DRY_RUN` was on.
    pub dry_run: bool,
    /// How many alerts ended in each outcome.
    pub summary: BTreeMap<&'static str, usize>,
    /// One entry per alert.
    pub outcomes: Vec<Outcome>,
}

impl InvocationReport {
    /// Builds the report and its summary.
    pub fn new(
        function: &str,
        trace_id: &str,
        request_id: &str,
        dry_run: bool,
        outcomes: Vec<Outcome>,
    ) -> Self {
        let mut summary = BTreeMap::new();
        for o in &outcomes {
            *summary.entry(o.outcome.as_str()).or_insert(0) += 1;
        }
        InvocationReport {
            function: function.to_owned(),
            trace_id: trace_id.to_owned(),
            request_id: request_id.to_owned(),
            dry_run,
            summary,
            outcomes,
        }
    }

    /// Failures a retry of the whole invocation could fix.
    pub fn retryable_failures(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes
            .iter()
            .filter(|o| o.outcome == OutcomeKind::Failed && o.retryable)
    }

    /// Writes one structured log line per outcome.
    pub fn log(&self) {
        for o in &self.outcomes {
            let patch = o.patch.as_ref().map(Value::to_string);
            let fields = (
                o.source.alert.as_deref().unwrap_or(""),
                o.source.fingerprint.as_deref().unwrap_or(""),
                o.source.message_id.as_deref().unwrap_or(""),
                o.source.namespace.as_deref().unwrap_or(""),
                o.target.as_deref().unwrap_or(""),
            );
            macro_rules! emit {
                ($level:ident) => {
                    tracing::$level!(
                        trace_id = %self.trace_id,
                        request_id = %self.request_id,
                        function = %self.function,
                        alert = fields.0,
                        fingerprint = fields.1,
                        message_id = fields.2,
                        namespace = fields.3,
                        target = fields.4,
                        outcome = o.outcome.as_str(),
                        reason = o.reason.as_deref().unwrap_or(""),
                        change = o.change.as_deref().unwrap_or(""),
                        patch = patch.as_deref().unwrap_or(""),
                        drill = o.source.drill,
                        retryable = o.retryable,
                        "remediation outcome"
                    )
                };
            }
            match o.outcome {
                OutcomeKind::Failed | OutcomeKind::Escalated => emit!(warn),
                _ => emit!(info),
            }
        }
    }

    /// A short ASCII subject for notifications (SNS allows 100 characters).
    pub fn subject(&self) -> String {
        let counts: Vec<String> = self
            .summary
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let mut subject = format!("[{}] {}", self.function, counts.join(", "));
        subject.retain(|c| c.is_ascii() && !c.is_ascii_control());
        subject.truncate(100);
        subject
    }
}
