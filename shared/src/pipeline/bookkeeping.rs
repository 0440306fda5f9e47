//! Record bookkeeping: what each request means for one object, given its action record:
//! act, escalate, record recovery, restore, or revert, as a [`Step`].

use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::{Invocation, Pipeline, Work};
use crate::decide::{self, SkipReason, Verdict};
use crate::error::Error;
use crate::intake::{AlertInput, RevertRequest};
use crate::record::{self, ActionRecord, Reversal};
use crate::remediation::{Plan, PlanContext, Refusal, Remediation};
use crate::report::{Outcome, OutcomeKind};

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

    pub(super) fn resolved_step(
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
    pub(super) fn revert_step(
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
    pub(super) fn write_step(
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
}
