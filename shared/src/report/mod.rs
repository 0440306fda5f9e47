//! Report: one outcome per alert, emitted from one place so the JSON response, the log
//! line and the notification always agree.

pub(crate) mod chat;
pub mod grafana;
pub(crate) mod notify;
pub(crate) mod secrets;
pub mod sinks;
pub(crate) mod telemetry;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::intake::alert::{Alert, AlertStatus};
use crate::intake::names::printable;

/// The result for one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord, Hash)]
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

/// CloudWatch namespace of the metrics.
pub const METRIC_NAMESPACE: &str = "MeshRemediation";

/// A drill passes when the alert reached the right function, the target was found and the
/// API server accepted the patch in its dry run, which is exactly a `dry-run` outcome.
fn judge_drill(function: &str, o: &mut Outcome) {
    let reason = o.reason.take().unwrap_or_default();
    o.reason = Some(if o.outcome == OutcomeKind::DryRun {
        format!(
            "drill passed: routed to {function}, {} found, patch accepted by the API server's dry run, nothing stored",
            o.target.as_deref().unwrap_or("target")
        )
    } else {
        format!("drill failed: {reason}")
    });
}

impl Outcome {
    /// Whether the report sinks hear of it: anything but a skip, the skips a person must act
    /// on ([`crate::guard::skip::SkipReason::needs_a_person`]), and every verdict.
    pub fn needs_a_report(&self) -> bool {
        self.outcome != OutcomeKind::Skipped || self.needs_a_person || self.verification.is_some()
    }
}

impl OutcomeKind {
    /// Ranks outcomes for headlines: failed > escalated > applied > dry-run > skipped.
    pub fn importance(self) -> u8 {
        match self {
            OutcomeKind::Skipped => 0,
            OutcomeKind::DryRun => 1,
            OutcomeKind::Applied => 2,
            OutcomeKind::Escalated => 3,
            OutcomeKind::Failed => 4,
        }
    }

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
    /// `severity` label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// `drill="true"`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drill: bool,
    /// Links back to the alert: `prometheus` (the expression), `alertmanager`, `runbook`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<&'static str, String>,
}

impl Source {
    /// The source of one alert of a delivery.
    pub fn for_alert(delivery: &Source, alert: &Alert, alertmanager_url: Option<&str>) -> Self {
        let mut links = BTreeMap::new();
        let mut link = |name: &'static str, url: Option<&str>| {
            if let Some(url) = url.filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            {
                links.insert(name, url.chars().take(2048).collect());
            }
        };
        link("prometheus", alert.generator_url.as_deref());
        link("alertmanager", alertmanager_url);
        link(
            "runbook",
            alert.annotations.get("runbook_url").map(String::as_str),
        );
        Source {
            alert: Some(printable(alert.name())),
            fingerprint: Some(printable(&alert.fingerprint)),
            status: Some(alert.status),
            severity: alert.label("severity").map(printable),
            drill: alert.flag("drill"),
            links,
            ..delivery.clone()
        }
    }
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
    /// A skip a person must act on; it is reported like a failure.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub needs_a_person: bool,
    /// When several clusters are served: the outcome in each cluster the alert reached
    /// (for a mesh-wide drain, which clusters were drained and which were not).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub clusters: BTreeMap<String, OutcomeKind>,
    /// For a verify request: the verdict (`verified`, `not-recovered`, `worse`) and its
    /// evidence, as recorded on the object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<Value>,
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
            needs_a_person: false,
            clusters: BTreeMap::new(),
            verification: None,
        }
    }

    /// Marks this as the outcome in `cluster` (the target names it already).
    pub fn in_cluster(mut self, cluster: &str) -> Self {
        self.clusters.clear();
        self.add_cluster(cluster, self.outcome);
        self
    }

    /// Adds `cluster`'s outcome; a cluster reached twice keeps the more important one.
    pub fn add_cluster(&mut self, cluster: &str, kind: OutcomeKind) {
        let slot = self.clusters.entry(cluster.to_owned()).or_insert(kind);
        if kind.importance() > slot.importance() {
            *slot = kind;
        }
    }

    /// A skip, for `reason`; one a person must act on is marked so and reported.
    pub fn skipped(source: Source, reason: &crate::guard::skip::SkipReason) -> Self {
        let mut outcome = Outcome::new(OutcomeKind::Skipped, source).because(reason);
        outcome.needs_a_person = reason.needs_a_person();
        outcome
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
    /// What happened to the report's own deliveries (SNS, Slack, PagerDuty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<Delivery>,
}

/// What happened to one sink's delivery.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Delivery {
    /// The sink.
    pub sink: &'static str,
    /// Whether it was accepted.
    pub ok: bool,
    /// Why not (never contains the sink's URL or key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl InvocationReport {
    /// Builds the report and its summary.
    pub fn new(
        function: &str,
        trace_id: &str,
        request_id: &str,
        dry_run: bool,
        mut outcomes: Vec<Outcome>,
    ) -> Self {
        let mut summary = BTreeMap::new();
        for o in &mut outcomes {
            *summary.entry(o.outcome.as_str()).or_insert(0) += 1;
            if o.source.drill {
                judge_drill(function, o);
            }
        }
        InvocationReport {
            function: function.to_owned(),
            trace_id: trace_id.to_owned(),
            request_id: request_id.to_owned(),
            dry_run,
            summary,
            outcomes,
            notifications: Vec::new(),
        }
    }

    /// The most important outcome, for filtering: failed > escalated > applied > dry-run > skipped.
    pub fn headline(&self) -> Option<OutcomeKind> {
        self.outcomes
            .iter()
            .map(|o| o.outcome)
            .max_by_key(|k| k.importance())
    }

    /// SNS message attributes subscribers filter on (e.g. page only on failed or escalated).
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let severity = self
            .outcomes
            .iter()
            .filter_map(|o| o.source.severity.as_deref())
            .max_by_key(|s| match *s {
                "critical" => 3,
                "error" => 2,
                "warning" => 1,
                _ => 0,
            })
            .unwrap_or("none");
        let drill = self.outcomes.iter().find(|o| o.source.drill);
        vec![
            ("remediation", self.function.clone()),
            (
                "outcome",
                self.headline()
                    .map_or("none", OutcomeKind::as_str)
                    .to_owned(),
            ),
            ("severity", severity.to_owned()),
            (
                "drill",
                match drill {
                    None => "false".to_owned(),
                    Some(o) if o.outcome == OutcomeKind::DryRun => "passed".to_owned(),
                    Some(_) => "failed".to_owned(),
                },
            ),
            ("trace_id", self.trace_id.clone()),
        ]
    }

    /// `2 applied, 1 skipped`.
    pub fn subject_counts(&self) -> String {
        self.summary
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// CloudWatch Embedded Metric Format lines: remediations by function and outcome, and
    /// how long the invocation took to act. Printed to stdout, they become metrics with no
    /// extra code or API call.
    pub fn metric_lines(&self, elapsed: std::time::Duration, now_ms: i64) -> Vec<String> {
        let mut lines: Vec<String> = self
            .summary
            .iter()
            .map(|(outcome, count)| {
                serde_json::json!({
                    "_aws": {
                        "Timestamp": now_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": METRIC_NAMESPACE,
                            "Dimensions": [["Function", "Outcome"], ["Function"]],
                            "Metrics": [{"Name": "Remediations", "Unit": "Count"}]
                        }]
                    },
                    "Function": self.function,
                    "Outcome": outcome,
                    "Remediations": count,
                    "trace_id": self.trace_id,
                })
                .to_string()
            })
            .collect();
        if self
            .outcomes
            .iter()
            .any(|o| matches!(o.outcome, OutcomeKind::Applied | OutcomeKind::DryRun))
        {
            lines.push(
                serde_json::json!({
                    "_aws": {
                        "Timestamp": now_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": METRIC_NAMESPACE,
                            "Dimensions": [["Function"]],
                            "Metrics": [{"Name": "ActionLatency", "Unit": "Milliseconds"}]
                        }]
                    },
                    "Function": self.function,
                    "ActionLatency": elapsed.as_secs_f64() * 1000.0,
                    "trace_id": self.trace_id,
                })
                .to_string(),
            );
        }
        lines.extend(self.verification_metric_lines(now_ms));
        lines
    }

    /// `Verifications` (Count) by `Function` and `Verdict`: what the checks of applied
    /// changes found.
    fn verification_metric_lines(&self, now_ms: i64) -> Vec<String> {
        let mut verdicts: BTreeMap<&str, u32> = BTreeMap::new();
        for outcome in &self.outcomes {
            let verdict = outcome
                .verification
                .as_ref()
                .and_then(|v| v.get("state")?.as_str());
            if let Some(verdict) = verdict {
                *verdicts.entry(verdict).or_default() += 1;
            }
        }
        verdicts
            .into_iter()
            .map(|(verdict, count)| {
                serde_json::json!({
                    "_aws": {
                        "Timestamp": now_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": METRIC_NAMESPACE,
                            "Dimensions": [["Function", "Verdict"]],
                            "Metrics": [{"Name": "Verifications", "Unit": "Count"}]
                        }]
                    },
                    "Function": self.function,
                    "Verdict": verdict,
                    "Verifications": count,
                    "trace_id": self.trace_id,
                })
                .to_string()
            })
            .collect()
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
        let drill = if self.outcomes.iter().any(|o| o.source.drill) {
            " (drill)"
        } else {
            ""
        };
        let mut subject = format!("[{}] {}{drill}", self.function, self.subject_counts());
        subject.retain(|c| c.is_ascii() && !c.is_ascii_control());
        subject.truncate(100);
        subject
    }
}
