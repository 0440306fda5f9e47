//! The shared pipeline: intake -> decide -> enact -> report, for any [`Remediation`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::config::Config;
use crate::connect::KubeConnector;
use crate::decide::{self, Gate, SkipReason, Verdict};
use crate::error::Error;
use crate::intake::{self, AlertInput, Rejection, RevertDelivery, RevertRequest};
use crate::pause;
use crate::record::{self, ActionRecord, Reversal};
use crate::remediation::{Locator, Plan, PlanContext, Refusal, Remediation, describe};
use crate::report::{InvocationReport, Outcome, OutcomeKind, Source};

/// Writes refused with 409 before giving up (each one re-reads and decides again).
const MAX_WRITE_ATTEMPTS: u32 = 6;
/// Transient API failures (5xx, 429, timeouts) retried within one invocation.
const MAX_TRANSIENT_RETRIES: u32 = 2;
/// No new target is started with less time than this before the Lambda deadline.
const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

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
    kube: Arc<dyn KubeConnector>,
}

/// A request that passed intake and screening and awaits its target.
struct Work<F> {
    order: usize,
    source: Source,
    locator: Locator,
    request: Request,
    /// Facts gathered once per alert, shared by all its targets; filled on first need.
    facts: Arc<OnceCell<crate::Result<F>>>,
}

/// What a piece of work asks for.
enum Request {
    /// An alert: firing (act) or resolved (record recovery, maybe restore).
    Alert { input: AlertInput, resolved: bool },
    /// Undo the recorded action on one object.
    Revert(RevertRequest),
}

impl<F> Work<F> {
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

/// What one attempt on one object comes to.
enum Step {
    Done(Outcome),
    Write {
        body: Value,
        dry_run: bool,
        outcome: Outcome,
        event: Option<(&'static str, String)>,
        counts_against_budget: bool,
    },
}

impl<R: Remediation> Pipeline<R> {
    /// A pipeline for `remediation`.
    pub fn new(config: Config, remediation: R, kube: Arc<dyn KubeConnector>) -> Self {
        Pipeline {
            config,
            remediation,
            kube,
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

        let mut groups: BTreeMap<String, Vec<Work<R::Facts>>> = BTreeMap::new();
        for item in work {
            groups.entry(item.locator.key()).or_default().push(item);
        }
        let budget = AtomicUsize::new(0);
        let mut acted: Vec<(usize, Outcome)> = futures::stream::iter(groups.into_values())
            .map(|items| self.handle_target(items, invocation, &budget))
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

    /// Parses, validates and screens; settles every alert that needs no API call.
    fn intake(
        &self,
        event: &Value,
        invocation: &Invocation,
        outcomes: &mut Vec<(usize, Outcome)>,
        work: &mut Vec<Work<R::Facts>>,
    ) {
        let deliveries = match intake::parse_event(event, self.config.alert_topic_arn.as_deref()) {
            Ok(deliveries) => deliveries,
            Err(err) => {
                outcomes.push((0, Outcome::failed(Source::default(), &err)));
                return;
            }
        };
        let mut order = 0;
        for delivery in deliveries {
            let base = Source {
                message_id: delivery.message_id.clone(),
                ..Source::default()
            };
            let group = match delivery.content {
                Ok(group) => group,
                Err(err) => {
                    outcomes.push((order, Outcome::failed(base, &err)));
                    order += 1;
                    continue;
                }
            };
            if group.alerts.is_empty() && group.truncated_alerts == 0 {
                let err = Error::Input("Alertmanager message holds no alerts".into());
                outcomes.push((order, Outcome::failed(base.clone(), &err)));
                order += 1;
            }
            if group.truncated_alerts > 0 {
                let reason = SkipReason::AlertsOmitted(group.truncated_alerts);
                outcomes.push((
                    order,
                    Outcome::new(OutcomeKind::Skipped, base.clone()).because(reason),
                ));
                order += 1;
            }
            for alert in &group.alerts {
                let mut source = Source::for_alert(&base, alert, group.external_url.as_deref());
                let this = order;
                order += 1;
                let input = match intake::validate_alert(alert, self.remediation.name()) {
                    Ok(input) => input,
                    Err(Rejection::Invalid(why)) => {
                        outcomes.push((this, Outcome::failed(source, &Error::Input(why))));
                        continue;
                    }
                    Err(Rejection::OtherFunction(why)) => {
                        let reason = SkipReason::OtherFunction(why);
                        outcomes.push((
                            this,
                            Outcome::new(OutcomeKind::Skipped, source).because(reason),
                        ));
                        continue;
                    }
                };
                source.namespace = Some(input.namespace.clone());
                let resolved = match decide::screen(
                    &input,
                    delivery.published_at,
                    self.config.cluster_name.as_deref(),
                    &self.config.policy,
                    invocation.now,
                ) {
                    Gate::Firing => false,
                    Gate::Resolved => true,
                    Gate::Skip(reason) => {
                        outcomes.push((
                            this,
                            Outcome::new(OutcomeKind::Skipped, source).because(reason),
                        ));
                        continue;
                    }
                };
                match self.remediation.targets(&input, &self.config) {
                    Ok(locators) if !locators.is_empty() => {
                        let facts = Arc::new(OnceCell::new());
                        for locator in locators {
                            work.push(Work {
                                order: this,
                                source: source.clone(),
                                locator,
                                request: Request::Alert {
                                    input: input.clone(),
                                    resolved,
                                },
                                facts: facts.clone(),
                            });
                        }
                    }
                    Ok(_) => {
                        let err = Error::Input("the alert names no target".into());
                        outcomes.push((this, Outcome::failed(source, &err)));
                    }
                    Err(why) => outcomes.push((this, Outcome::failed(source, &Error::Input(why)))),
                }
            }
        }
    }

    /// Validates and screens a revert request; it becomes one piece of work on one object.
    fn intake_revert(
        &self,
        delivery: RevertDelivery,
        invocation: &Invocation,
        outcomes: &mut Vec<(usize, Outcome)>,
        work: &mut Vec<Work<R::Facts>>,
    ) {
        let mut source = Source {
            message_id: delivery.message_id,
            alert: Some("RevertRequest".into()),
            ..Source::default()
        };
        let request = match delivery.request.and_then(|request| {
            intake::validate_revert(&request, self.remediation.name())
                .map(|()| request)
                .map_err(Error::Input)
        }) {
            Ok(request) => request,
            Err(err) => return outcomes.push((0, Outcome::failed(source, &err))),
        };
        source.namespace = Some(request.namespace.clone());
        let screened = decide::Request {
            namespace: &request.namespace,
            cluster: request.cluster.as_deref(),
            published_at: delivery.published_at,
        };
        if let Some(reason) = decide::screen_request(
            &screened,
            self.config.cluster_name.as_deref(),
            &self.config.policy,
            invocation.now,
        ) {
            return outcomes.push((
                0,
                Outcome::new(OutcomeKind::Skipped, source).because(reason),
            ));
        }
        let revertible = self.remediation.revertible(&self.config);
        let Some(resource) = revertible.iter().find(|r| r.kind == request.kind).cloned() else {
            let kinds: Vec<&str> = revertible.iter().map(|r| r.kind.as_str()).collect();
            let why = if kinds.is_empty() {
                format!("{} changes cannot be reverted", self.remediation.name())
            } else {
                format!(
                    "{} reverts {} objects, not {}",
                    self.remediation.name(),
                    kinds.join(" and "),
                    crate::names::printable(&request.kind)
                )
            };
            return outcomes.push((0, Outcome::failed(source, &Error::Input(why))));
        };
        work.push(Work {
            order: 0,
            source,
            locator: Locator {
                resource,
                namespace: request.namespace.clone(),
                name: Some(request.name.clone()),
                subject: None,
            },
            request: Request::Revert(request),
            facts: Arc::new(OnceCell::new()),
        });
    }

    /// Handles every alert aimed at one locator: the first firing alert (else the first
    /// resolved one) is acted on; the rest are duplicates of it.
    async fn handle_target(
        &self,
        mut items: Vec<Work<R::Facts>>,
        invocation: &Invocation,
        budget: &AtomicUsize,
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
                (
                    dup.order,
                    Outcome::new(OutcomeKind::Skipped, dup.source).because(reason),
                )
            })
            .collect();
        let outcome = self.act(&primary, invocation, budget).await;
        out.push((primary.order, outcome));
        out
    }

    async fn act(
        &self,
        work: &Work<R::Facts>,
        invocation: &Invocation,
        budget: &AtomicUsize,
    ) -> Outcome {
        let client = match self.kube.client().await {
            Ok(client) => client,
            Err(err) => return Outcome::failed(work.source.clone(), &err),
        };
        let locator = &work.locator;
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &locator.namespace, &locator.resource);
        let names = match &locator.name {
            Some(name) => vec![name.clone()],
            None => match self.select(&api, work).await {
                Ok(names) if names.is_empty() => {
                    let why = format!(
                        "no {} in namespace {} labelled auto_remediation=active matches the alert",
                        locator.resource.kind, locator.namespace
                    );
                    return Outcome::new(OutcomeKind::Skipped, work.source.clone())
                        .because(SkipReason::Declined(why))
                        .on(describe(&locator.resource, &locator.namespace, "*"));
                }
                Ok(names) => names,
                Err(err) => return Outcome::failed(work.source.clone(), &err),
            },
        };
        let mut outcomes = Vec::with_capacity(names.len());
        let mut budget_taken = false;
        for name in &names {
            let outcome = self
                .act_on(
                    &api,
                    &client,
                    work,
                    name,
                    invocation,
                    budget,
                    &mut budget_taken,
                )
                .await;
            outcomes.push(outcome);
        }
        merge_outcomes(outcomes)
    }

    async fn select(
        &self,
        api: &Api<DynamicObject>,
        work: &Work<R::Facts>,
    ) -> Result<Vec<String>, Error> {
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

    #[allow(clippy::too_many_arguments)]
    async fn act_on(
        &self,
        api: &Api<DynamicObject>,
        client: &kube::Client,
        work: &Work<R::Facts>,
        name: &str,
        invocation: &Invocation,
        budget: &AtomicUsize,
        budget_taken: &mut bool,
    ) -> Outcome {
        let resource = &work.locator.resource;
        let target = describe(resource, &work.locator.namespace, name);
        let mut transient_retries = 0;
        // A write whose answer never came (reset, timeout, 5xx): it may have landed.
        let mut unanswered: Option<Unanswered> = None;
        // The operator's brakes, read once the object is, for alerts only (a revert is a
        // person's own request).
        let mut brakes: Option<pause::Brakes> = None;
        for attempt in 0..MAX_WRITE_ATTEMPTS {
            if let Some(deadline) = invocation.deadline
                && deadline.saturating_duration_since(Instant::now()) < DEADLINE_MARGIN
            {
                return Outcome::failed(work.source.clone(), &Error::Deadline(DEADLINE_MARGIN))
                    .on(&target);
            }
            let object = match api.get_opt(name).await {
                Ok(Some(object)) => object,
                Ok(None) => {
                    let err = Error::Plan(format!("{target} not found"));
                    return Outcome::failed(work.source.clone(), &err).on(&target);
                }
                Err(err) => {
                    let err = Error::kube(format!("get {target}"), err);
                    if err.is_retryable() && transient_retries < MAX_TRANSIENT_RETRIES {
                        transient_retries += 1;
                        tokio::time::sleep(transient_backoff(&err, transient_retries)).await;
                        continue;
                    }
                    return Outcome::failed(work.source.clone(), &err).on(&target);
                }
            };
            if brakes.is_none() && matches!(work.request, Request::Alert { .. }) {
                match pause::read(client, &work.locator.namespace).await {
                    Ok(read) => brakes = Some(read),
                    Err(err) if err.is_retryable() && transient_retries < MAX_TRANSIENT_RETRIES => {
                        transient_retries += 1;
                        tokio::time::sleep(transient_backoff(&err, transient_retries)).await;
                        continue;
                    }
                    Err(err) => return Outcome::failed(work.source.clone(), &err).on(&target),
                }
            }
            if let Some(brakes) = &brakes
                && let Some(reason) = pause::refusal(
                    brakes,
                    self.remediation.name(),
                    &target,
                    &work.locator.namespace,
                    object.metadata.annotations.as_ref(),
                )
            {
                return Outcome::new(OutcomeKind::Skipped, work.source.clone())
                    .because(reason)
                    .on(&target);
            }
            if let Some((sent, outcome, event)) = unanswered.take()
                && record_landed(&object, self.remediation.name(), &sent)
            {
                // Our own write landed; only its answer was lost. Report it, do not redo it.
                if let Some((action, note)) = event {
                    self.record_event(client, resource, &object, action, &note, invocation)
                        .await;
                }
                return outcome.on(&target);
            }
            let step = match &work.request {
                Request::Alert {
                    input,
                    resolved: false,
                } => {
                    self.firing_step(work, input, client, &object, &target, invocation)
                        .await
                }
                Request::Alert {
                    input,
                    resolved: true,
                } => self.resolved_step(work, input, &object, &target, invocation),
                Request::Revert(request) => {
                    self.revert_step(work, request, &object, &target, invocation)
                }
            };
            let (body, dry_run, outcome, event, counts) = match step {
                Step::Done(outcome) => return outcome.on(&target),
                Step::Write {
                    body,
                    dry_run,
                    outcome,
                    event,
                    counts_against_budget,
                } => (body, dry_run, outcome, event, counts_against_budget),
            };
            if counts && !*budget_taken {
                if budget.fetch_add(1, Ordering::SeqCst) >= self.config.policy.max_targets {
                    let reason = SkipReason::BlastRadius {
                        max_targets: self.config.policy.max_targets,
                    };
                    return Outcome::new(OutcomeKind::Skipped, work.source.clone())
                        .because(reason)
                        .on(&target);
                }
                *budget_taken = true;
            }
            let mut params = PatchParams {
                field_manager: Some(record::FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            params.dry_run = dry_run;
            match api.patch(name, &params, &Patch::Merge(&body)).await {
                Ok(updated) => {
                    if !dry_run && let Some((action, note)) = event {
                        self.record_event(client, resource, &updated, action, &note, invocation)
                            .await;
                    }
                    return outcome.on(&target);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    tracing::info!(
                        trace_id = %invocation.trace_id,
                        target = %target,
                        attempt,
                        "write conflict; re-reading and deciding again"
                    );
                    tokio::time::sleep(conflict_backoff(attempt)).await;
                }
                Err(err) => {
                    // Safe to retry: the write is guarded by resourceVersion, so if the
                    // failed attempt did land, the retry re-reads, finds this very record
                    // and reports the write instead of making it again.
                    if !dry_run {
                        unanswered = sent_record(&body, self.remediation.name())
                            .map(|sent| (sent, outcome, event));
                    }
                    let err = Error::kube(format!("patch {target}"), err);
                    if err.is_retryable() && transient_retries < MAX_TRANSIENT_RETRIES {
                        transient_retries += 1;
                        tokio::time::sleep(transient_backoff(&err, transient_retries)).await;
                        continue;
                    }
                    // No retry left, but the write may have landed: read once more before
                    // calling it failed, or the Lambda retry would find the change, call
                    // it a cooldown and it would never be reported.
                    if let Some(landed) = self
                        .confirm_landed(api, client, resource, name, unanswered.take(), invocation)
                        .await
                    {
                        return landed.on(&target);
                    }
                    return Outcome::failed(work.source.clone(), &err).on(&target);
                }
            }
        }
        let err = Error::ConflictStorm {
            target: target.clone(),
            attempts: MAX_WRITE_ATTEMPTS,
        };
        Outcome::failed(work.source.clone(), &err).on(&target)
    }

    /// The outcome of a write whose answer was lost, when a fresh read shows it landed.
    async fn confirm_landed(
        &self,
        api: &Api<DynamicObject>,
        client: &kube::Client,
        resource: &ApiResource,
        name: &str,
        unanswered: Option<Unanswered>,
        invocation: &Invocation,
    ) -> Option<Outcome> {
        let (sent, outcome, event) = unanswered?;
        let object = api.get_opt(name).await.ok().flatten()?;
        if !record_landed(&object, self.remediation.name(), &sent) {
            return None;
        }
        if let Some((action, note)) = event {
            self.record_event(client, resource, &object, action, &note, invocation)
                .await;
        }
        Some(outcome)
    }

    fn read_record(&self, object: &DynamicObject) -> Result<Option<ActionRecord>, Error> {
        ActionRecord::from_annotations(
            object.metadata.annotations.as_ref(),
            self.remediation.name(),
        )
        .map_err(Error::Plan)
    }

    async fn firing_step(
        &self,
        work: &Work<R::Facts>,
        input: &AlertInput,
        client: &kube::Client,
        object: &DynamicObject,
        target: &str,
        invocation: &Invocation,
    ) -> Step {
        let source = work.source.clone();
        let record = match self.read_record(object) {
            Ok(record) => record,
            Err(err) => return Step::Done(Outcome::failed(source, &err)),
        };
        let opted_in = record::opted_in(object.metadata.labels.as_ref());
        let streak = match decide::decide(
            target,
            opted_in,
            record.as_ref(),
            &self.config.policy,
            invocation.now,
        ) {
            Verdict::Act { streak } => streak,
            Verdict::Skip(reason) => {
                return Step::Done(Outcome::new(OutcomeKind::Skipped, source).because(reason));
            }
            Verdict::Escalate { streak } => {
                let since = record
                    .as_ref()
                    .map(|r| r.at.to_rfc3339())
                    .unwrap_or_default();
                let reason = format!(
                    "{streak} actions without recovery (last at {since}); not acting again, humans must look (ESCALATE_AFTER={})",
                    self.config.policy.escalate_after
                );
                return Step::Done(Outcome::new(OutcomeKind::Escalated, source).because(reason));
            }
        };
        if let Some(controller) = crate::controllers::blocking_controller(object) {
            let why = format!(
                "{target} is managed by {controller}, which would undo this change or fight over it; not changing it. To let mesh-remediation act on it anyway, annotate it {}=true",
                crate::controllers::ALLOW_ANNOTATION
            );
            return Step::Done(Outcome::failed(source, &Error::Plan(why)));
        }
        let facts = match work
            .facts
            .get_or_init(|| self.remediation.prepare(input, client, &self.config))
            .await
        {
            Ok(facts) => facts,
            Err(err) => return Step::Done(Outcome::failed(source, err)),
        };
        let context = PlanContext {
            now: invocation.now,
            config: &self.config,
            facts,
        };
        let plan = match self.remediation.plan(input, object, context) {
            Ok(plan) => plan,
            Err(Refusal::Skip(why)) => {
                return Step::Done(
                    Outcome::new(OutcomeKind::Skipped, source).because(SkipReason::Declined(why)),
                );
            }
            Err(Refusal::Fail(why)) => {
                return Step::Done(Outcome::failed(source, &Error::Plan(why)));
            }
        };
        let new_record = ActionRecord {
            fingerprint: input.alert.fingerprint.clone(),
            trace_id: invocation.trace_id.clone(),
            at: invocation.now,
            streak,
            change: plan.summary.clone(),
            previous: plan.previous.clone(),
            applied: plan.applied.clone(),
            recovered_at: None,
            reverted: None,
        };
        self.write_step(work, object, &plan, &new_record, invocation, true)
    }

    fn resolved_step(
        &self,
        work: &Work<R::Facts>,
        input: &AlertInput,
        object: &DynamicObject,
        target: &str,
        invocation: &Invocation,
    ) -> Step {
        let source = work.source.clone();
        let skip = |what: String| {
            Step::Done(
                Outcome::new(OutcomeKind::Skipped, source.clone())
                    .because(SkipReason::Resolved(what)),
            )
        };
        let record = match self.read_record(object) {
            Ok(Some(record)) => record,
            Ok(None) => return skip(format!("nothing to undo; no action recorded on {target}")),
            Err(err) => return Step::Done(Outcome::failed(source, &err)),
        };
        if !record::opted_in(object.metadata.labels.as_ref()) {
            return skip(format!(
                "{target} is no longer labelled auto_remediation=active; left as is"
            ));
        }
        if record.fingerprint != input.alert.fingerprint {
            return skip(format!(
                "the action on {target} was for another alert ({})",
                record.fingerprint
            ));
        }
        if record.recovered() {
            return skip("recovery already recorded".into());
        }
        let context = PlanContext {
            now: invocation.now,
            config: &self.config,
            facts: &(),
        };
        let mut new_record = record.clone();
        new_record.recovered_at = Some(invocation.now);
        match self
            .remediation
            .plan_resolved(input, object, &record, context)
        {
            None => {
                if work.dry_run(self.config.dry_run).is_some() {
                    return skip("nothing to change (dry run: recovery not recorded)".into());
                }
                let plan = Plan {
                    patch: json!({}),
                    summary: "recovery recorded; escalation streak reset".into(),
                    action: "Recovered",
                    previous: None,
                    applied: None,
                };
                match self.write_step(work, object, &plan, &new_record, invocation, false) {
                    Step::Write {
                        body,
                        dry_run,
                        event,
                        ..
                    } => Step::Write {
                        body: body.clone(),
                        dry_run,
                        outcome: {
                            let mut o =
                                Outcome::new(OutcomeKind::Skipped, source.clone())
                                    .because(SkipReason::Resolved(
                                    "nothing to change; recovery recorded, escalation streak reset"
                                        .into(),
                                ));
                            o.patch = Some(body);
                            o
                        },
                        event,
                        counts_against_budget: false,
                    },
                    done => done,
                }
            }
            Some(Ok(plan)) => {
                new_record.change = plan.summary.clone();
                self.write_step(work, object, &plan, &new_record, invocation, false)
            }
            Some(Err(Refusal::Skip(why))) => skip(why),
            Some(Err(Refusal::Fail(why))) => Step::Done(Outcome::failed(source, &Error::Plan(why))),
        }
    }

    /// Revert request: restore the recorded `previous` exactly, only on an opted-in
    /// object whose last action is the one meant and was not edited since.
    fn revert_step(
        &self,
        work: &Work<R::Facts>,
        request: &RevertRequest,
        object: &DynamicObject,
        target: &str,
        invocation: &Invocation,
    ) -> Step {
        let source = work.source.clone();
        let fail = |why: String| Step::Done(Outcome::failed(source.clone(), &Error::Plan(why)));
        let annotation = record::record_annotation(self.remediation.name());
        if !record::opted_in(object.metadata.labels.as_ref()) {
            return fail(format!(
                "{target} is not labelled auto_remediation=active; revert it by hand (the previous configuration is in annotation {annotation})"
            ));
        }
        let record = match self.read_record(object) {
            Ok(Some(record)) => record,
            Ok(None) => {
                return fail(format!(
                    "no {} action is recorded on {target}; nothing to revert",
                    self.remediation.name()
                ));
            }
            Err(err) => return Step::Done(Outcome::failed(source, &err)),
        };
        if let Some(done) = &record.reverted {
            let why = format!(
                "the action of {} on {target} was already reverted at {} (trace {})",
                record.at.to_rfc3339(),
                done.at.to_rfc3339(),
                done.trace_id
            );
            return Step::Done(
                Outcome::new(OutcomeKind::Skipped, source).because(SkipReason::Declined(why)),
            );
        }
        if let Some(meant) = &request.trace_id
            && meant != &record.trace_id
        {
            return fail(format!(
                "the last action on {target} is trace {} at {}, not {}; refusing to revert another action",
                record.trace_id,
                record.at.to_rfc3339(),
                crate::names::printable(meant)
            ));
        }
        let plan = match self.remediation.plan_revert(object, &record) {
            Ok(plan) => plan,
            Err(Refusal::Skip(why)) => {
                return Step::Done(
                    Outcome::new(OutcomeKind::Skipped, source).because(SkipReason::Declined(why)),
                );
            }
            Err(Refusal::Fail(why)) => return fail(why),
        };
        let mut new_record = record;
        new_record.reverted = Some(Reversal {
            at: invocation.now,
            trace_id: invocation.trace_id.clone(),
            reason: request.reason.clone(),
            requested_by: request.requested_by.clone(),
        });
        self.write_step(work, object, &plan, &new_record, invocation, false)
    }

    /// The merge patch that makes the change and writes the record in one request, with the
    /// object's `resourceVersion` as precondition.
    fn write_step(
        &self,
        work: &Work<R::Facts>,
        object: &DynamicObject,
        plan: &Plan,
        new_record: &ActionRecord,
        invocation: &Invocation,
        counts: bool,
    ) -> Step {
        let Some(resource_version) = object.metadata.resource_version.clone() else {
            let err =
                Error::Plan("object has no resourceVersion; refusing an unguarded write".into());
            return Step::Done(Outcome::failed(work.source.clone(), &err));
        };
        let mut body = plan.patch.clone();
        json_patch::merge(
            &mut body,
            &json!({"metadata": {
                "resourceVersion": resource_version,
                "annotations": { record::record_annotation(self.remediation.name()): new_record.to_annotation() }
            }}),
        );
        let dry_run_reason = work.dry_run(self.config.dry_run);
        let dry_run = dry_run_reason.is_some();
        let mut outcome = Outcome::new(
            if dry_run {
                OutcomeKind::DryRun
            } else {
                OutcomeKind::Applied
            },
            work.source.clone(),
        );
        outcome.reason = dry_run_reason.map(Into::into);
        outcome.change = Some(plan.summary.clone());
        outcome.patch = Some(body.clone());
        let note = format!(
            "{} ({}, trace {})",
            plan.summary,
            work.origin(),
            invocation.trace_id
        );
        Step::Write {
            body,
            dry_run,
            outcome,
            event: Some((plan.action, note)),
            counts_against_budget: counts,
        }
    }

    /// Records a Kubernetes Event on the changed object. Best effort: the change is made
    /// and recorded on the object already, so a failed Event is logged, not fatal.
    async fn record_event(
        &self,
        client: &kube::Client,
        resource: &ApiResource,
        object: &DynamicObject,
        action: &str,
        note: &str,
        invocation: &Invocation,
    ) {
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        let name = object.metadata.name.clone().unwrap_or_default();
        let events: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &event_resource());
        let stamp = invocation.now.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let unique = invocation.now.timestamp_nanos_opt().unwrap_or_default();
        let base: String = name.chars().take(200).collect();
        let mut note = note.to_owned();
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event: DynamicObject = match serde_json::from_value(json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "name": format!("{base}.{unique:x}"),
                "namespace": namespace,
                "annotations": { format!("{}trace-id", record::ANNOTATION_PREFIX): invocation.trace_id },
            },
            "eventTime": stamp,
            "reportingController": format!("{}{}", record::ANNOTATION_PREFIX, self.remediation.name()),
            "reportingInstance": self.remediation.name(),
            "action": action,
            "reason": "AutoRemediation",
            "type": "Normal",
            "note": note,
            "regarding": {
                "apiVersion": resource.api_version,
                "kind": resource.kind,
                "namespace": namespace,
                "name": name,
                "uid": object.metadata.uid,
                "resourceVersion": object.metadata.resource_version,
            },
        })) {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(trace_id = %invocation.trace_id, error = %err, "cannot build Event");
                return;
            }
        };
        if let Err(err) = events.create(&PostParams::default(), &event).await {
            tracing::warn!(
                trace_id = %invocation.trace_id,
                target = %describe(resource, &namespace, &name),
                error = %err,
                "change applied but recording the Kubernetes Event failed"
            );
        }
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

/// A write that got no answer: the record it carried, and the outcome and Event it would
/// have had, kept in case it landed.
type Unanswered = (String, Outcome, Option<(&'static str, String)>);

/// The action record a write carries (the annotation value, unique to this invocation).
fn sent_record(body: &Value, remediation: &str) -> Option<String> {
    body.pointer("/metadata/annotations")?
        .get(record::record_annotation(remediation))?
        .as_str()
        .map(str::to_owned)
}

/// Whether the object carries exactly the record a write of ours sent.
fn record_landed(object: &DynamicObject, remediation: &str, sent: &str) -> bool {
    object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&record::record_annotation(remediation)))
        .is_some_and(|stored| stored == sent)
}

/// `events.k8s.io/v1` Event.
pub fn event_resource() -> ApiResource {
    ApiResource {
        group: "events.k8s.io".into(),
        version: "v1".into(),
        api_version: "events.k8s.io/v1".into(),
        kind: "Event".into(),
        plural: "events".into(),
    }
}

/// Exponential backoff with jitter between conflicting writes: 10, 20, 40 ms ... plus up
/// to the same again, so racing invocations spread out instead of colliding again.
fn conflict_backoff(attempt: u32) -> Duration {
    let base = 10u64 << attempt.min(6);
    let jitter = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos(),
    ) % (base + 1);
    Duration::from_millis(base + jitter)
}

/// Backoff before retrying a transient failure: 100 ms, 200 ms (plus jitter), or the
/// server's `Retry-After` when it says so, capped at two seconds.
fn transient_backoff(error: &Error, retry: u32) -> Duration {
    let server_hint = match error {
        Error::Kube { source, .. } => match source.as_ref() {
            kube::Error::Api(status) => status
                .details
                .as_ref()
                .map(|d| u64::from(d.retry_after_seconds))
                .filter(|s| *s > 0),
            _ => None,
        },
        _ => None,
    };
    match server_hint {
        Some(seconds) => Duration::from_secs(seconds).min(Duration::from_secs(2)),
        None => conflict_backoff(retry + 3),
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
    fn backoff_grows_and_is_bounded() {
        assert!(conflict_backoff(0) <= Duration::from_millis(20));
        assert!(conflict_backoff(3) >= Duration::from_millis(80));
        assert!(conflict_backoff(50) <= Duration::from_millis(1280));
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
