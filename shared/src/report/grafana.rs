//! Grafana annotations: a mark on the dashboards' time axis for every change the function
//! made and every hand-off to a person, through Grafana's HTTP API (`POST /api/annotations`,
//! the way deployment tools mark their rollouts). The shipped dashboard shows the marks
//! tagged [`ANNOTATION_TAG`]; a dashboard of one's own can ask for them by the same tag.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use super::notify::{Notifier, post_json_as};
use super::secrets::SinkSecret;
use super::{InvocationReport, Outcome, OutcomeKind};
use crate::error::Result;

/// The tag every annotation carries, which the dashboard's annotation query asks for.
pub const ANNOTATION_TAG: &str = "mesh-remediation";

/// Marks per invocation; a storm's further changes are counted in one more mark, as a
/// time axis with hundreds of marks shows none of them.
pub const MAX_ANNOTATIONS: usize = 20;

/// Requests in flight at once.
const CONCURRENT_POSTS: usize = 4;

/// Posts one annotation per change or hand-off of a report.
pub struct GrafanaNotifier {
    endpoint: String,
    token: SinkSecret,
    dashboard_uid: Option<String>,
}

impl GrafanaNotifier {
    /// Annotations on the Grafana at `base_url`, with the token `token` holds, on the
    /// dashboard `dashboard_uid` (else the organization's).
    pub fn new(base_url: &str, token: SinkSecret, dashboard_uid: Option<String>) -> Self {
        GrafanaNotifier {
            endpoint: format!("{}/api/annotations", base_url.trim_end_matches('/')),
            token,
            dashboard_uid,
        }
    }

    /// The annotation bodies for a report at `time_ms` (milliseconds since the epoch).
    pub fn annotations(&self, report: &InvocationReport, time_ms: i64) -> Vec<Value> {
        let marked: Vec<&Outcome> = report.outcomes.iter().filter(|o| marks(o)).collect();
        let mut bodies: Vec<Value> = marked
            .iter()
            .take(MAX_ANNOTATIONS)
            .map(|o| self.body(time_ms, tags(report, o), text(report, o)))
            .collect();
        if marked.len() > MAX_ANNOTATIONS {
            let more = marked.len() - MAX_ANNOTATIONS;
            let text = format!(
                "{}: {more} more changes or hand-offs in this invocation (trace {})",
                report.function, report.trace_id
            );
            let tags = vec![ANNOTATION_TAG.to_owned(), report.function.clone()];
            bodies.push(self.body(time_ms, tags, text));
        }
        bodies
    }

    fn body(&self, time_ms: i64, tags: Vec<String>, text: String) -> Value {
        let mut body = json!({ "time": time_ms, "tags": tags, "text": text });
        if let Some(uid) = &self.dashboard_uid {
            body["dashboardUID"] = Value::from(uid.as_str());
        }
        body
    }
}

/// A change that landed (not a dry run or a drill), or a hand-off to a person.
fn marks(o: &Outcome) -> bool {
    matches!(o.outcome, OutcomeKind::Applied | OutcomeKind::Escalated) && !o.source.drill
}

/// The project's tag, the function, the outcome, and the cluster and namespace where known,
/// so a dashboard can narrow the marks (`cluster:prod-use1`).
fn tags(report: &InvocationReport, o: &Outcome) -> Vec<String> {
    let mut tags = vec![
        ANNOTATION_TAG.to_owned(),
        report.function.clone(),
        o.outcome.as_str().to_owned(),
    ];
    tags.extend(o.clusters.keys().map(|c| format!("cluster:{c}")));
    tags.extend(o.source.namespace.iter().map(|n| format!("namespace:{n}")));
    tags
}

/// `latency-restart applied to Deployment shop/checkout: <change>; alert ...; trace ...`.
fn text(report: &InvocationReport, o: &Outcome) -> String {
    let mut text = format!("{} {}", report.function, o.outcome.as_str());
    if let Some(target) = &o.target {
        text.push_str(&format!(" {target}"));
    }
    if let Some(what) = o.change.as_ref().or(o.reason.as_ref()) {
        text.push_str(&format!(": {what}"));
    }
    if let Some(alert) = &o.source.alert {
        text.push_str(&format!("; alert {alert}"));
    }
    text.push_str(&format!("; trace {}", report.trace_id));
    text
}

impl Notifier for GrafanaNotifier {
    fn name(&self) -> &'static str {
        "grafana"
    }

    fn wants(&self, report: &InvocationReport) -> bool {
        report.outcomes.iter().any(marks)
    }

    fn notify<'a>(&'a self, report: &'a InvocationReport) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let token = self.token.get().await?;
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            futures::stream::iter(self.annotations(report, now_ms))
                .map(|body| async move {
                    post_json_as("grafana", &self.endpoint, Some(token.expose()), &body).await
                })
                .buffer_unordered(CONCURRENT_POSTS)
                .try_collect::<Vec<()>>()
                .await
                .map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::report::Source;
    use crate::report::secrets::SinkSecret;
    use crate::report::sinks::{CredentialKind, Secret, SinkCredential};

    fn notifier(dashboard: Option<&str>) -> GrafanaNotifier {
        let token = SinkSecret::new(
            SinkCredential::Value(Secret::new("glsa_token".into())),
            CredentialKind::GrafanaToken,
            Arc::new(crate::report::secrets::SecretsManager::default()),
        );
        GrafanaNotifier::new(
            "https://grafana.example/",
            token,
            dashboard.map(str::to_owned),
        )
    }

    fn outcome(kind: OutcomeKind, drill: bool) -> Outcome {
        let source = Source {
            alert: Some("HighLatencyP95".into()),
            namespace: Some("shop".into()),
            drill,
            ..Source::default()
        };
        let mut o = Outcome::new(kind, source);
        o.target = Some("Deployment shop/checkout".into());
        o.change = Some("restarted its pods (rollout restart)".into());
        o.clusters = BTreeMap::from([("prod-use1".to_owned(), kind)]);
        o
    }

    fn report(outcomes: Vec<Outcome>) -> InvocationReport {
        InvocationReport {
            function: "latency-restart".into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            request_id: "r".into(),
            dry_run: false,
            summary: BTreeMap::new(),
            outcomes,
            notifications: Vec::new(),
        }
    }

    #[test]
    fn a_change_is_one_tagged_annotation_on_the_dashboard_named() {
        let report = report(vec![outcome(OutcomeKind::Applied, false)]);
        let bodies = notifier(Some("mesh-remediation")).annotations(&report, 1_765_000_000_000);
        assert_eq!(
            bodies,
            vec![json!({
                "time": 1_765_000_000_000_i64,
                "dashboardUID": "mesh-remediation",
                "tags": ["mesh-remediation", "latency-restart", "applied", "cluster:prod-use1", "namespace:shop"],
                "text": "latency-restart applied Deployment shop/checkout: restarted its pods (rollout restart); alert HighLatencyP95; trace 0af7651916cd43dd8448eb211c80319c",
            })]
        );
        assert_eq!(
            notifier(None).endpoint,
            "https://grafana.example/api/annotations"
        );
        assert!(
            notifier(None).annotations(&report, 0)[0]
                .get("dashboardUID")
                .is_none()
        );
    }

    #[test]
    fn only_changes_and_hand_offs_are_marked_never_drills_dry_runs_or_skips() {
        let grafana = notifier(None);
        for (kind, drill, marked) in [
            (OutcomeKind::Applied, false, true),
            (OutcomeKind::Escalated, false, true),
            (OutcomeKind::Applied, true, false),
            (OutcomeKind::DryRun, false, false),
            (OutcomeKind::Skipped, false, false),
            (OutcomeKind::Failed, false, false),
        ] {
            let report = report(vec![outcome(kind, drill)]);
            assert_eq!(grafana.wants(&report), marked, "{kind:?} drill={drill}");
            assert_eq!(grafana.annotations(&report, 0).len(), usize::from(marked));
        }
    }

    #[test]
    fn a_storm_gets_its_first_marks_and_one_that_counts_the_rest() {
        let changes = (0..MAX_ANNOTATIONS + 7)
            .map(|_| outcome(OutcomeKind::Applied, false))
            .collect();
        let bodies = notifier(None).annotations(&report(changes), 0);
        assert_eq!(bodies.len(), MAX_ANNOTATIONS + 1);
        let last = bodies.last().expect("the count");
        assert!(
            last["text"].as_str().is_some_and(|t| t.contains("7 more")),
            "{last}"
        );
        assert_eq!(last["tags"], json!(["mesh-remediation", "latency-restart"]));
    }
}
