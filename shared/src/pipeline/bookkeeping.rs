//! Record bookkeeping: what each request means for one object, given its action record, as
//! a [`Step`]: act or escalate on a firing alert, and the guarded write every step makes.
//! What a resolved alert or a revert request does is in [`super::undo`].

use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::timebox::Call;
use super::{Invocation, Pipeline, Work};
use crate::decide::{self, Verdict};
use crate::error::Error;
use crate::escalation::{self, ESCALATED_ANNOTATION, Escalation, HandOff};
use crate::intake::AlertInput;
use crate::record::{self, ActionRecord};
use crate::remediation::{Plan, PlanContext, Refusal, Remediation};
use crate::report::{Outcome, OutcomeKind};
use crate::skip::SkipReason;

/// What one attempt on one object comes to.
pub(super) enum Step {
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

    pub(super) async fn firing_step(
        &self,
        work: &Work<R>,
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
        if let Some(earlier) = &record
            && earlier.request_id.as_deref() == Some(invocation.request_id.as_str())
            && earlier.fingerprint == input.alert.fingerprint
            && !earlier.recovered()
            && earlier.reverted.is_none()
        {
            // A Lambda retry of this very invocation: its earlier attempt made the change
            // and lost the answer (cut at the deadline, a reset). Report it; do not redo it.
            let mut outcome = Outcome::new(OutcomeKind::Applied, source);
            outcome.change = Some(earlier.change.clone());
            outcome.reason = Some(format!(
                "made at {} by an earlier attempt of this invocation (Lambda request id {}), whose answer was lost; found on the retry, not made again",
                earlier.at.to_rfc3339(),
                invocation.request_id
            ));
            return Step::Done(outcome);
        }
        let opted_in = record::opted_in(object.metadata.labels.as_ref());
        let hand_off = escalation::check(
            target,
            object.metadata.annotations.as_ref(),
            record.as_ref(),
            &input.alert.fingerprint,
            input.alert.starts_at,
            invocation.now,
            self.config.policy.escalation_window,
        );
        if let HandOff::Held(reason) = &hand_off
            && opted_in
        {
            return Step::Done(Outcome::skipped(source, reason));
        }
        let verdict = decide::decide(
            target,
            opted_in,
            record.as_ref(),
            &self.config.policy,
            invocation.now,
        );
        let verdict = match hand_off {
            HandOff::StayedResolved | HandOff::Acknowledged => escalation::afresh(verdict),
            HandOff::Free | HandOff::Held(_) => verdict,
        };
        let streak = match verdict {
            Verdict::Act { streak } => streak,
            Verdict::Skip(reason) => {
                return Step::Done(Outcome::skipped(source, &reason));
            }
            Verdict::Escalate { streak } => {
                return self.escalate_step(work, input, object, record, streak, invocation);
            }
        };
        if let Some(controller) = crate::controllers::blocking_controller(object) {
            let why = format!(
                "{target} is managed by {controller}, which would undo this change or fight over it; not changing it. To let mesh-remediation act on it anyway, annotate it {}=true",
                crate::controllers::ALLOW_ANNOTATION
            );
            return Step::Done(Outcome::failed(source, &Error::Plan(why)));
        }
        let timebox = self.timebox(invocation);
        let observed = match gathered(
            &work.observed,
            timebox,
            "observe what the plan needs",
            || self.remediation.observe(input),
        )
        .await
        {
            Ok(observed) => observed,
            Err(err) => return Step::Done(Outcome::failed(source, err)),
        };
        let facts = match gathered(&work.facts, timebox, "read what the plan needs", || {
            self.remediation
                .prepare(input, client, &self.config, observed)
        })
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
                return Step::Done(Outcome::skipped(source, &SkipReason::Declined(why)));
            }
            Err(Refusal::Hold(why)) => {
                return Step::Done(Outcome::skipped(source, &SkipReason::Held(why)));
            }
            Err(Refusal::Fail(why)) => {
                return Step::Done(Outcome::failed(source, &Error::Plan(why)));
            }
        };
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
        };
        let mut step = self.write_step(work, object, &plan, &new_record, invocation, true);
        if hand_off == HandOff::StayedResolved
            && let Step::Write { body, .. } = &mut step
        {
            // Handed back: the annotation goes in the same write as the new action.
            body["metadata"]["annotations"][ESCALATED_ANNOTATION] = Value::Null;
        }
        step
    }

    /// Hands the target to a person: the annotation [`ESCALATED_ANNOTATION`] and the record's
    /// `escalatedAt`, in one guarded write; no change to the object's spec.
    fn escalate_step(
        &self,
        work: &Work<R>,
        input: &AlertInput,
        object: &DynamicObject,
        record: Option<ActionRecord>,
        streak: u32,
        invocation: &Invocation,
    ) -> Step {
        let Some(mut record) = record else {
            let err = Error::Plan("escalation without an action record".into());
            return Step::Done(Outcome::failed(work.source.clone(), &err));
        };
        let reason = format!(
            "{streak} actions without recovery (last at {}); not acting again, handed to a person (ESCALATE_AFTER={}). No function acts on it until the alert stays resolved for {}s or someone removes the annotation {ESCALATED_ANNOTATION}",
            record.at.to_rfc3339(),
            self.config.policy.escalate_after,
            self.config.policy.escalation_window.as_secs()
        );
        let marker = Escalation {
            remediation: self.remediation.name().to_owned(),
            alert: crate::names::printable(input.alert.name()),
            fingerprint: input.alert.fingerprint.clone(),
            at: invocation.now,
            trace_id: invocation.trace_id.clone(),
            streak,
            resolved_at: None,
        };
        record.escalated_at = Some(invocation.now);
        let plan = Plan {
            patch: json!({"metadata": {"annotations": {ESCALATED_ANNOTATION: marker.to_annotation()}}}),
            summary: format!("escalated to a person after {streak} actions without recovery"),
            action: "Escalated",
            previous: None,
            applied: None,
        };
        match self.write_step(work, object, &plan, &record, invocation, false) {
            Step::Write {
                body,
                dry_run,
                mut outcome,
                event,
                ..
            } => {
                outcome.outcome = OutcomeKind::Escalated;
                outcome.reason = Some(match outcome.reason.take() {
                    Some(dry) => format!("{reason} ({dry})"),
                    None => reason,
                });
                Step::Write {
                    body,
                    dry_run,
                    outcome,
                    event,
                    counts_against_budget: false,
                }
            }
            done => done,
        }
    }

    /// The merge patch that makes the change and writes the record in one request, with the
    /// object's `resourceVersion` as precondition.
    pub(super) fn write_step(
        &self,
        work: &Work<R>,
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
