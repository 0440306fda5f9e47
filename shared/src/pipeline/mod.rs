//! The shared pipeline: intake -> decide -> enact -> report, for any [`Remediation`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::config::Config;
use crate::connect::{Connections, KubeConnector};
use crate::decide;
use crate::error::Error;
use crate::intake::{self, AlertInput, RevertRequest};
use crate::record;
use crate::remediation::{Locator, Remediation, describe};
use crate::report::{InvocationReport, Outcome, OutcomeKind, Source};
use crate::skip::SkipReason;

mod audit;
mod bookkeeping;
mod enact;
mod requests;
mod timebox;
mod undo;

use timebox::Call;

pub use audit::event_resource;

/// Facts about one invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Lambda request id.
    pub request_id: String,
    /// Trace id (X-Ray root id when present, else the request id).
    pub trace_id: String,
    /// When Lambda will stop the invocation.
    pub deadline: Option<Instant>,
    /// The time decisions are made at.
    pub now: DateTime<Utc>,
}

impl Invocation {
    /// An invocation with a trace id taken from an X-Ray header value when present.
    pub fn new(request_id: &str, xray_trace_id: Option<&str>, deadline: Option<Instant>) -> Self {
        let trace_id = xray_trace_id
            .and_then(xray_root)
            .unwrap_or(request_id)
            .to_owned();
        Invocation {
            request_id: request_id.to_owned(),
            trace_id,
            deadline,
            now: Utc::now(),
        }
    }
}

/// `Root=1-5759e988-bd862e3fe1be46a994272793;Parent=..;Sampled=1` -> the root id.
fn xray_root(header: &str) -> Option<&str> {
    header
        .split(';')
        .find_map(|part| part.trim().strip_prefix("Root="))
        .filter(|root| !root.is_empty())
}

/// One remediation function's whole behaviour, minus the Lambda runtime.
pub struct Pipeline<R> {
    config: Config,
    remediation: R,
    connections: Connections,
}

/// A request that passed intake and screening and awaits its target.
pub(super) struct Work<R: Remediation> {
    order: usize,
    source: Source,
    locator: Locator,
    request: Request,
    /// What is observed outside the clusters, once per alert for all its clusters.
    observed: Arc<OnceCell<crate::Result<R::Observed>>>,
    /// Facts gathered once per alert and cluster, shared by its targets there.
    facts: Arc<OnceCell<crate::Result<R::Facts>>>,
    /// One of several clusters a request was sent to (a revert for `all`): an object
    /// that is not in this cluster is no failure.
    fanned_out: bool,
}

/// What a piece of work asks for.
pub(super) enum Request {
    /// An alert: firing (act) or resolved (record recovery, maybe restore).
    Alert { input: AlertInput, resolved: bool },
    /// Undo the recorded action on one object.
    Revert(RevertRequest),
}

impl<R: Remediation> Work<R> {
    fn resolved(&self) -> bool {
        matches!(self.request, Request::Alert { resolved: true, .. })
    }

    fn fingerprint(&self) -> &str {
        match &self.request {
            Request::Alert { input, .. } => &input.alert.fingerprint,
            Request::Revert(_) => "revert-request",
        }
    }

    /// Why this runs as a server-side dry run; `None` when it makes changes.
    fn dry_run(&self, config_dry_run: bool) -> Option<&'static str> {
        match &self.request {
            Request::Alert { input, .. } => decide::is_dry_run(config_dry_run, input)
                .then(|| dry_run_reason(config_dry_run, input)),
            Request::Revert(_) if config_dry_run => {
                Some("DRY_RUN=true: validated by server-side dry run, nothing stored")
            }
            Request::Revert(request) if request.dry_run => Some(
                "dryRun in the revert request: validated by server-side dry run, nothing stored",
            ),
            Request::Revert(_) => None,
        }
    }

    /// Where the change comes from, for the Kubernetes Event.
    fn origin(&self) -> String {
        use crate::names::printable;
        match &self.request {
            Request::Alert { input, .. } => format!(
                "alert {} fingerprint {}",
                printable(input.alert.name()),
                printable(&input.alert.fingerprint)
            ),
            Request::Revert(request) => format!(
                "revert request{}: {}",
                request
                    .requested_by
                    .as_deref()
                    .map(|by| format!(" by {}", printable(by)))
                    .unwrap_or_default(),
                printable(&request.reason)
            ),
        }
    }
}

impl<R: Remediation> Pipeline<R> {
    /// A pipeline for `remediation` with one connection for every request.
    pub fn new(config: Config, remediation: R, kube: Arc<dyn KubeConnector>) -> Self {
        Self::with_connections(config, remediation, Connections::single(kube))
    }

    /// A pipeline for `remediation` with one connection per cluster.
    pub fn with_connections(config: Config, remediation: R, connections: Connections) -> Self {
        Pipeline {
            config,
            remediation,
            connections,
        }
    }

    /// How reports name an object: with its cluster when several are served.
    pub(super) fn describe_target(&self, locator: &Locator, name: &str) -> String {
        let object = describe(&locator.resource, &locator.namespace, name);
        match &locator.cluster {
            Some(cluster) if self.config.clusters.several() => format!("{cluster}: {object}"),
            _ => object,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Handles one event; every alert in it gets exactly one outcome in the report.
    pub async fn handle(&self, event: &Value, invocation: &Invocation) -> InvocationReport {
        let mut outcomes = Vec::new();
        let mut work = Vec::new();
        match intake::parse_revert(event, self.config.alert_topic_arn.as_deref()) {
            Some(revert) => self.intake_revert(revert, invocation, &mut outcomes, &mut work),
            None => self.intake(event, invocation, &mut outcomes, &mut work),
        }

        let mut groups: BTreeMap<String, Vec<Work<R>>> = BTreeMap::new();
        for item in work {
            groups.entry(item.locator.key()).or_default().push(item);
        }
        // Objects changed by this invocation, against MAX_TARGETS_PER_INVOCATION.
        let changed = AtomicUsize::new(0);
        let mut acted: Vec<(usize, Outcome)> = futures::stream::iter(groups.into_values())
            .map(|items| self.handle_target(items, invocation, &changed))
            .buffer_unordered(self.config.max_concurrency)
            .flat_map(futures::stream::iter)
            .collect()
            .await;
        outcomes.append(&mut acted);
        InvocationReport::new(
            self.remediation.name(),
            &invocation.trace_id,
            &invocation.request_id,
            self.config.dry_run,
            merge_by_alert(outcomes),
        )
    }

    /// Handles every alert aimed at one locator: the first firing alert (else the first
    /// resolved one) is acted on; the rest are duplicates of it.
    async fn handle_target(
        &self,
        mut items: Vec<Work<R>>,
        invocation: &Invocation,
        changed: &AtomicUsize,
    ) -> Vec<(usize, Outcome)> {
        items.sort_by_key(|w| (w.resolved(), w.order));
        let mut items = items.into_iter();
        let Some(primary) = items.next() else {
            return Vec::new();
        };
        let handled_by = primary.fingerprint().to_owned();
        let mut out: Vec<(usize, Outcome)> = items
            .map(|dup| {
                let reason = SkipReason::Duplicate {
                    handled_by: crate::names::printable(&handled_by),
                };
                (dup.order, Outcome::skipped(dup.source, &reason))
            })
            .collect();
        let outcome = self.act(&primary, invocation, changed).await;
        out.push((primary.order, outcome));
        out
    }

    async fn act(&self, work: &Work<R>, invocation: &Invocation, changed: &AtomicUsize) -> Outcome {
        let locator = &work.locator;
        let timebox = self.timebox(invocation);
        let subject = self.describe_target(locator, locator.name.as_deref().unwrap_or("*"));
        let outcome = match timebox.check(&subject) {
            Err(err) => Outcome::failed(work.source.clone(), &err).on(&subject),
            Ok(()) => {
                self.act_in_cluster(work, invocation, changed, &subject)
                    .await
            }
        };
        match &locator.cluster {
            Some(cluster) if self.config.clusters.several() => outcome.in_cluster(cluster),
            _ => outcome,
        }
    }

    async fn act_in_cluster(
        &self,
        work: &Work<R>,
        invocation: &Invocation,
        changed: &AtomicUsize,
        subject: &str,
    ) -> Outcome {
        let locator = &work.locator;
        let timebox = self.timebox(invocation);
        let connector = match self.connections.get(locator.cluster.as_deref()) {
            Ok(connector) => connector,
            Err(err) => return Outcome::failed(work.source.clone(), &err).on(subject),
        };
        let client = match connector.client().await {
            Ok(client) => client,
            Err(err) => return Outcome::failed(work.source.clone(), &err).on(subject),
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &locator.namespace, &locator.resource);
        let names = match &locator.name {
            Some(name) => vec![name.clone()],
            None => match timebox
                .call(
                    Call::Read,
                    &format!("list {subject}"),
                    self.select(&api, work),
                )
                .await
                .and_then(|listed| listed)
            {
                Ok(names) if names.is_empty() => {
                    let why = format!(
                        "no {} in namespace {} labelled auto_remediation=active matches the alert",
                        locator.resource.kind, locator.namespace
                    );
                    // The alert keeps firing and nothing here acts on it: a person must
                    // opt the right object in or fix the alert's labels.
                    return Outcome::skipped(work.source.clone(), &SkipReason::Held(why))
                        .on(subject);
                }
                Ok(names) => names,
                Err(err) => return Outcome::failed(work.source.clone(), &err).on(subject),
            },
        };
        let mut outcomes = Vec::with_capacity(names.len());
        for name in &names {
            let outcome = self
                .act_on(&api, &client, work, name, invocation, changed)
                .await;
            outcomes.push(outcome);
        }
        merge_outcomes(outcomes)
    }

    async fn select(&self, api: &Api<DynamicObject>, work: &Work<R>) -> Result<Vec<String>, Error> {
        let selector = format!("{}={}", record::OPT_IN_LABEL, record::OPT_IN_VALUE);
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|err| Error::kube(format!("list {}", work.locator.resource.plural), err))?;
        Ok(list
            .items
            .iter()
            .filter(|obj| match &work.request {
                Request::Alert { input, .. } => self.remediation.selects(input, obj),
                Request::Revert(_) => true,
            })
            .filter_map(|obj| obj.metadata.name.clone())
            .collect())
    }
}

fn dry_run_reason(config_dry_run: bool, input: &AlertInput) -> &'static str {
    if input.drill {
        "drill: validated by server-side dry run, nothing stored"
    } else if config_dry_run {
        "DRY_RUN=true: validated by server-side dry run, nothing stored"
    } else {
        "dry_run label: validated by server-side dry run, nothing stored"
    }
}

/// Outcomes in alert order, one per alert: an alert whose targets span several resource
/// types produced one outcome per type, merged here.
fn merge_by_alert(mut outcomes: Vec<(usize, Outcome)>) -> Vec<Outcome> {
    outcomes.sort_by_key(|(order, _)| *order);
    let mut merged: Vec<Outcome> = Vec::with_capacity(outcomes.len());
    let mut outcomes = outcomes.into_iter().peekable();
    while let Some((order, first)) = outcomes.next() {
        let mut same = vec![first];
        while let Some((_, next)) = outcomes.next_if(|(o, _)| *o == order) {
            same.push(next);
        }
        merged.push(merge_outcomes(same));
    }
    merged
}

/// One alert aimed at several objects still gets one outcome, the most important by
/// [`OutcomeKind::importance`] (failed, escalated, applied, dry-run, skipped); targets,
/// reasons and patches are listed together.
fn merge_outcomes(mut outcomes: Vec<Outcome>) -> Outcome {
    let same_as_first = |o: &Outcome| {
        o.target.is_none()
            && o.outcome == outcomes[0].outcome
            && o.reason == outcomes[0].reason
            && o.patch.is_none()
    };
    if outcomes.len() == 1 || outcomes.iter().all(same_as_first) {
        return outcomes.remove(0);
    }
    // The one ranking reports use too: an alert with one applied and one escalated
    // target is escalated, so it pages.
    let kind = outcomes
        .iter()
        .map(|o| o.outcome)
        .max_by_key(|k| k.importance())
        .unwrap_or(OutcomeKind::Skipped);
    let mut merged = Outcome::new(kind, outcomes[0].source.clone());
    let label = |o: &Outcome| o.target.clone().unwrap_or_default();
    let targets: Vec<String> = outcomes.iter().filter_map(|o| o.target.clone()).collect();
    merged.target = (!targets.is_empty()).then(|| targets.join(", "));
    let mut reasons: Vec<String> = Vec::new();
    for o in &outcomes {
        let Some(r) = &o.reason else { continue };
        let line = match &o.target {
            Some(target) => format!("{target}: {} {r}", o.outcome.as_str()),
            None => format!("{} {r}", o.outcome.as_str()),
        };
        if !reasons.contains(&line) {
            reasons.push(line);
        }
    }
    merged.reason = (!reasons.is_empty()).then(|| reasons.join("; "));
    let changes: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.change.as_ref().map(|c| format!("{}: {c}", label(o))))
        .collect();
    merged.change = (!changes.is_empty()).then(|| changes.join("; "));
    let patches: serde_json::Map<String, Value> = outcomes
        .iter()
        .filter_map(|o| o.patch.clone().map(|p| (label(o), p)))
        .collect();
    merged.patch = (!patches.is_empty()).then_some(Value::Object(patches));
    merged.retryable = outcomes.iter().any(|o| o.retryable);
    merged.needs_a_person = outcomes.iter().any(|o| o.needs_a_person);
    for o in &outcomes {
        for (cluster, kind) in &o.clusters {
            merged.add_cluster(cluster, *kind);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_comes_from_the_xray_root() {
        let inv = Invocation::new(
            "req-1",
            Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"),
            None,
        );
        assert_eq!(inv.trace_id, "1-5759e988-bd862e3fe1be46a994272793");
        assert_eq!(Invocation::new("req-1", None, None).trace_id, "req-1");
        assert_eq!(
            Invocation::new("req-1", Some("garbage"), None).trace_id,
            "req-1"
        );
    }

    #[test]
    fn an_alert_spanning_several_resource_types_gets_one_outcome() {
        let vs = Outcome::new(OutcomeKind::Applied, Source::default()).on("VirtualService shop/f");
        let dr = Outcome::new(OutcomeKind::Skipped, Source::default())
            .because("weights do it")
            .on("DestinationRule shop/f");
        let other = Outcome::new(OutcomeKind::Failed, Source::default()).because("bad");
        let dup = |o: usize| {
            let outcome =
                Outcome::new(OutcomeKind::Skipped, Source::default()).because("duplicate");
            (o, outcome)
        };
        let merged = merge_by_alert(vec![(1, other), (0, dr), dup(2), (0, vs), dup(2)]);
        let kinds: Vec<OutcomeKind> = merged.iter().map(|o| o.outcome).collect();
        assert_eq!(
            kinds,
            [
                OutcomeKind::Applied,
                OutcomeKind::Failed,
                OutcomeKind::Skipped
            ]
        );
        assert!(
            merged[0]
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("DestinationRule shop/f: skipped weights do it"))
        );
        // The same skip for both types reads as one.
        assert_eq!(merged[2].reason.as_deref(), Some("duplicate"));
    }

    #[test]
    fn several_targets_make_one_outcome() {
        let a = Outcome::new(OutcomeKind::Applied, Source::default()).on("VirtualService shop/a");
        let b = Outcome::new(OutcomeKind::Skipped, Source::default())
            .because("cooldown")
            .on("VirtualService shop/b");
        let merged = merge_outcomes(vec![a, b]);
        assert_eq!(merged.outcome, OutcomeKind::Applied);
        assert_eq!(
            merged.target.as_deref(),
            Some("VirtualService shop/a, VirtualService shop/b")
        );
        assert!(
            merged
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("shop/b: skipped cooldown"))
        );
        // Applied on one target and escalated on the other: escalated, as reports rank it.
        let a = Outcome::new(OutcomeKind::Applied, Source::default()).on("VirtualService shop/a");
        let e = Outcome::new(OutcomeKind::Escalated, Source::default())
            .because("3 actions without recovery")
            .on("DestinationRule shop/a");
        assert_eq!(merge_outcomes(vec![a, e]).outcome, OutcomeKind::Escalated);
    }
}
