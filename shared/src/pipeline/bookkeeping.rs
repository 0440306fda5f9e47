//! Decide, for a firing alert: what it means for one object, given its action record, as a
//! [`Step`]: act or escalate, and the guarded write every step makes. What a resolved
//! alert or a revert request does is in [`super::undo`].

use kube::api::DynamicObject;
use serde_json::{Value, json};
use tracing::instrument;

use super::audit::EventNote;
use super::timebox::Call;
use super::{Invocation, Pipeline, Subject};
use crate::cluster::record::{self, ActionRecord};
use crate::error::Error;
use crate::guard::decide::{self, Verdict};
use crate::guard::escalation::{self, ESCALATED_ANNOTATION, Escalation, HandOff};
use crate::guard::skip::SkipReason;
use crate::intake::AlertInput;
use crate::remediation::{Plan, PlanContext, Refusal, Remediation};
use crate::report::{Outcome, OutcomeKind, Source};

/// What one attempt on one object comes to.
pub(super) enum Step {
    /// Settled without a write.
    Done(Outcome),
    /// A guarded write to make.
    Write(Write),
}

/// A guarded write: the change and the record in one merge patch, with the object's
/// `resourceVersion` as precondition, and what it comes to once it lands.
pub(super) struct Write {
    /// The merge patch.
    pub(super) body: Value,
    /// Sent as a server-side dry run: validated, nothing stored.
    pub(super) dry_run: bool,
    /// The outcome once it lands.
    pub(super) outcome: Outcome,
    /// The Event it gets once it lands (not in a dry run).
    pub(super) event: EventNote,
    /// Counted against `MAX_TARGETS_PER_INVOCATION` and the budgets: a change to the
    /// object, not bookkeeping on it.
    pub(super) counts_against_budget: bool,
    /// The verification to schedule once the change lands (not in a dry run).
    pub(super) verify: Option<Box<crate::verify::VerifyRequest>>,
}

impl Write {
    /// Once sent, the patch belongs to the outcome, which reports it.
    pub(super) fn sent_as(mut self) -> Self {
        self.outcome.patch = Some(std::mem::take(&mut self.body));
        self
    }
}

impl<R: Remediation> Pipeline<R> {
    pub(super) fn read_record(
        &self,
        object: &DynamicObject,
    ) -> Result<Option<ActionRecord>, Error> {
        ActionRecord::from_annotations(
            object.metadata.annotations.as_ref(),
            self.remediation.name(),
        )
        .map_err(Error::Plan)
    }

    /// Firing alert: act (with a new record), escalate, or say why not.
    #[instrument(
        name = "decide",
        skip_all,
        fields(trace_id = %at.invocation.trace_id, alert = at.alert(), target = %at.target)
    )]
    pub(super) async fn firing_step(
        &self,
        at: &Subject<'_, R>,
        input: &AlertInput,
        client: &kube::Client,
        object: &DynamicObject,
    ) -> Step {
        let source = at.work.source.clone();
        let record = match self.read_record(object) {
            Ok(record) => record,
            Err(err) => return Step::Done(Outcome::failed(source, &err)),
        };
        if let Some(found) = found_on_retry(record.as_ref(), input, at.invocation, &source) {
            return Step::Done(found);
        }
        let (verdict, hand_off) = self.firing_verdict(at, input, object, record.as_ref());
        let streak = match verdict {
            Verdict::Act { streak } => streak,
            Verdict::Skip(reason) => return Step::Done(Outcome::skipped(source, &reason)),
            Verdict::Escalate { streak } => {
                return self.escalate_step(at, input, object, record, streak);
            }
        };
        if let Some(controller) = crate::cluster::controllers::blocking_controller(object) {
            let why = format!(
                "{} is managed by {controller}, which would undo this change or fight over it; not changing it. To let mesh-remediation act on it anyway, annotate it {}=true",
                at.target,
                crate::cluster::controllers::ALLOW_ANNOTATION
            );
            return Step::Done(Outcome::failed(source, &Error::Plan(why)));
        }
        let plan = match self.plan_firing(at, input, client, object).await {
            Ok(plan) => plan,
            Err(outcome) => return Step::Done(*outcome),
        };
        let invocation = at.invocation;
        let new_record = ActionRecord {
            fingerprint: input.alert.fingerprint.clone(),
            trace_id: invocation.trace_id.clone(),
            request_id: Some(invocation.request_id.clone()),
            at: invocation.now,
            streak,
            change: plan.summary.clone(),
            previous: plan.previous.clone(),
            applied: plan.applied.clone(),
            recovered_at: None,
            reverted: None,
            escalated_at: None,
            verification: self.pending_verification(at),
        };
        let mut step = self.write_step(at, object, &plan, &new_record, true);
        if let Step::Write(write) = &mut step {
            write.verify = self.verify_request(at, input, &new_record).map(Box::new);
        }
        if hand_off == HandOff::StayedResolved
            && let Step::Write(write) = &mut step
        {
            // Handed back: the annotation goes in the same write as the new action.
            write.body["metadata"]["annotations"][ESCALATED_ANNOTATION] = Value::Null;
        }
        step
    }

    /// The verdict on a firing alert: held while a person has the target, else the brakes
    /// of [`decide::decide`], started afresh when an escalation was handed back.
    fn firing_verdict(
        &self,
        at: &Subject<'_, R>,
        input: &AlertInput,
        object: &DynamicObject,
        record: Option<&ActionRecord>,
    ) -> (Verdict, HandOff) {
        let now = at.invocation.now;
        let opted_in = record::opted_in(object.metadata.labels.as_ref());
        let hand_off = escalation::check(
            &at.target,
            object.metadata.annotations.as_ref(),
            record,
            &input.alert.fingerprint,
            input.alert.starts_at,
            now,
            self.config.policy.escalation_window,
        );
        if let HandOff::Held(reason) = &hand_off
            && opted_in
        {
            return (Verdict::Skip(reason.clone()), hand_off);
        }
        let verdict = decide::decide(&at.target, opted_in, record, &self.config.policy, now);
        let verdict = match hand_off {
            HandOff::StayedResolved | HandOff::Acknowledged => escalation::afresh(verdict),
            HandOff::Free | HandOff::Held(_) => verdict,
        };
        (verdict, hand_off)
    }

    /// The remediation's plan for a firing alert, from what it observed and gathered (once
    /// per alert and cluster); `Err` is the outcome when it plans none.
    async fn plan_firing(
        &self,
        at: &Subject<'_, R>,
        input: &AlertInput,
        client: &kube::Client,
        object: &DynamicObject,
    ) -> Result<Plan, Box<Outcome>> {
        let work = at.work;
        let failed = |err: &Error| Box::new(Outcome::failed(work.source.clone(), err));
        let timebox = self.timebox(at.invocation);
        let observe = || self.remediation.observe(input);
        let observed = gathered(
            &work.observed,
            timebox,
            "observe what the plan needs",
            observe,
        )
        .await
        .as_ref()
        .map_err(failed)?;
        let prepare = || {
            self.remediation
                .prepare(input, client, &self.config, observed)
        };
        let facts = gathered(&work.facts, timebox, "read what the plan needs", prepare)
            .await
            .as_ref()
            .map_err(failed)?;
        let context = PlanContext {
            now: at.invocation.now,
            config: &self.config,
            facts,
        };
        self.remediation
            .plan(input, object, context)
            .map_err(|refusal| {
                let source = work.source.clone();
                Box::new(match refusal {
                    Refusal::Skip(why) => Outcome::skipped(source, &SkipReason::Declined(why)),
                    Refusal::Hold(why) => Outcome::skipped(source, &SkipReason::Held(why)),
                    Refusal::Fail(why) => Outcome::failed(source, &Error::Plan(why)),
                })
            })
    }

    /// Hands the target to a person: the annotation [`ESCALATED_ANNOTATION`] and the record's
    /// `escalatedAt`, in one guarded write; no change to the object's spec.
    fn escalate_step(
        &self,
        at: &Subject<'_, R>,
        input: &AlertInput,
        object: &DynamicObject,
        record: Option<ActionRecord>,
        streak: u32,
    ) -> Step {
        let Some(mut record) = record else {
            let err = Error::Plan("escalation without an action record".into());
            return Step::Done(Outcome::failed(at.work.source.clone(), &err));
        };
        let policy = &self.config.policy;
        let reason = format!(
            "{streak} actions without recovery (last at {}); not acting again, handed to a person (ESCALATE_AFTER={}). No function acts on it until the alert stays resolved for {}s or someone removes the annotation {ESCALATED_ANNOTATION}",
            record.at.to_rfc3339(),
            policy.escalate_after,
            policy.escalation_window.as_secs()
        );
        let now = at.invocation.now;
        let marker = Escalation {
            remediation: self.remediation.name().to_owned(),
            alert: crate::intake::names::printable(input.alert.name()),
            fingerprint: input.alert.fingerprint.clone(),
            at: now,
            trace_id: at.invocation.trace_id.clone(),
            streak,
            resolved_at: None,
        };
        record.escalated_at = Some(now);
        let plan = Plan {
            patch: json!({"metadata": {"annotations": {ESCALATED_ANNOTATION: marker.to_annotation()}}}),
            summary: format!("escalated to a person after {streak} actions without recovery"),
            action: "Escalated",
            previous: None,
            applied: None,
        };
        match self.write_step(at, object, &plan, &record, false) {
            Step::Write(mut write) => {
                let outcome = &mut write.outcome;
                outcome.outcome = OutcomeKind::Escalated;
                outcome.reason = Some(match outcome.reason.take() {
                    Some(dry) => format!("{reason} ({dry})"),
                    None => reason,
                });
                Step::Write(write)
            }
            done => done,
        }
    }

    /// The merge patch that makes the change and writes the record in one request, with the
    /// object's `resourceVersion` as precondition.
    pub(super) fn write_step(
        &self,
        at: &Subject<'_, R>,
        object: &DynamicObject,
        plan: &Plan,
        new_record: &ActionRecord,
        counts_against_budget: bool,
    ) -> Step {
        let work = at.work;
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
        let kind = if dry_run {
            OutcomeKind::DryRun
        } else {
            OutcomeKind::Applied
        };
        let mut outcome = Outcome::new(kind, work.source.clone());
        outcome.reason = dry_run_reason.map(Into::into);
        outcome.change = Some(plan.summary.clone());
        // The patch joins the outcome once sent (`Write::sent_as`), not copied before: a
        // storm holds hundreds of writes while they wait for their budget slots.
        let note = format!(
            "{} ({}, trace {})",
            plan.summary,
            work.origin(),
            at.invocation.trace_id
        );
        Step::Write(Write {
            body,
            dry_run,
            outcome,
            event: EventNote {
                action: plan.action,
                note,
            },
            counts_against_budget,
            verify: None,
        })
    }
}

/// A Lambda retry of this very invocation: its earlier attempt made the change and lost the
/// answer (cut at the deadline, a reset). Reported, not redone.
fn found_on_retry(
    record: Option<&ActionRecord>,
    input: &AlertInput,
    invocation: &Invocation,
    source: &Source,
) -> Option<Outcome> {
    let earlier = record?;
    let ours = earlier.request_id.as_deref() == Some(invocation.request_id.as_str())
        && earlier.fingerprint == input.alert.fingerprint
        && !earlier.recovered()
        && earlier.reverted.is_none();
    if !ours {
        return None;
    }
    let mut outcome = Outcome::new(OutcomeKind::Applied, source.clone());
    outcome.change = Some(earlier.change.clone());
    outcome.reason = Some(format!(
        "made at {} by an earlier attempt of this invocation (Lambda request id {}), whose answer was lost; found on the retry, not made again",
        earlier.at.to_rfc3339(),
        invocation.request_id
    ));
    Some(outcome)
}

/// What `cell` holds, gathered by `gather` within the time box on first need: every target
/// sharing the cell (an alert's clusters, or one cluster's objects) reuses the answer.
async fn gathered<'c, T, F>(
    cell: &'c tokio::sync::OnceCell<crate::Result<T>>,
    timebox: super::timebox::TimeBox,
    what: &str,
    gather: impl FnOnce() -> F,
) -> &'c crate::Result<T>
where
    F: std::future::Future<Output = crate::Result<T>>,
{
    cell.get_or_init(|| async move {
        timebox
            .call(Call::Read, what, gather())
            .await
            .and_then(|gathered| gathered)
    })
    .await
}
