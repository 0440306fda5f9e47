//! Undoing, as a [`Step`] for one object with an action record: a resolved alert records
//! the recovery or restores the previous configuration; a revert request restores it exactly.

use kube::api::DynamicObject;
use serde_json::json;

use super::bookkeeping::Step;
use super::{Invocation, Pipeline, Work};
use crate::error::Error;
use crate::escalation::{self, ESCALATED_ANNOTATION};
use crate::intake::{AlertInput, RevertRequest};
use crate::record::{self, ActionRecord, Reversal};
use crate::remediation::{Plan, PlanContext, Refusal, Remediation};
use crate::report::Outcome;
use crate::skip::SkipReason;

impl<R: Remediation> Pipeline<R> {
    pub(super) fn resolved_step(
        &self,
        work: &Work<R>,
        input: &AlertInput,
        object: &DynamicObject,
        target: &str,
        invocation: &Invocation,
    ) -> Step {
        let source = work.source.clone();
        let skip = |what: String| {
            Step::Done(Outcome::skipped(
                source.clone(),
                &SkipReason::Resolved(what),
            ))
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
        // An escalated target notes each resolution: it is handed back once the alert stays
        // resolved long enough.
        let escalation = escalation::on_resolved(
            object.metadata.annotations.as_ref(),
            self.remediation.name(),
            &input.alert.fingerprint,
            invocation.now,
        );
        let noted = escalation.as_ref().map_or(String::new(), |_| {
            format!(
                "; the escalation notes the resolution: handed back if the alert stays resolved for {}s",
                self.config.policy.escalation_window.as_secs()
            )
        });
        let dry_run = work.dry_run(self.config.dry_run).is_some();
        let marker = json!({"metadata": {"annotations": {ESCALATED_ANNOTATION: escalation}}});
        let bookkeeping = |plan: Plan, new_record: &ActionRecord, what: String| match self
            .write_step(work, object, &plan, new_record, invocation, false)
        {
            Step::Write {
                body,
                dry_run,
                event,
                ..
            } => {
                let mut outcome = Outcome::skipped(source.clone(), &SkipReason::Resolved(what));
                outcome.patch = Some(body.clone());
                Step::Write {
                    body,
                    dry_run,
                    outcome,
                    event,
                    counts_against_budget: false,
                }
            }
            done => done,
        };
        if record.recovered() {
            if escalation.is_none() || dry_run {
                return skip("recovery already recorded".into());
            }
            let plan = Plan {
                patch: marker,
                summary: "resolution after the escalation recorded".into(),
                action: "Recovered",
                previous: None,
                applied: None,
            };
            return bookkeeping(plan, &record, format!("recovery already recorded{noted}"));
        }
        let context = PlanContext {
            now: invocation.now,
            config: &self.config,
            facts: &(),
        };
        let mut new_record = record.clone();
        new_record.recovered_at = Some(invocation.now);
        let with_marker = |mut plan: Plan| {
            if escalation.is_some() {
                json_patch::merge(&mut plan.patch, &marker);
            }
            plan
        };
        match self
            .remediation
            .plan_resolved(input, object, &record, context)
        {
            None => {
                if dry_run {
                    return skip("nothing to change (dry run: recovery not recorded)".into());
                }
                let plan = with_marker(Plan {
                    patch: json!({}),
                    summary: "recovery recorded; escalation streak reset".into(),
                    action: "Recovered",
                    previous: None,
                    applied: None,
                });
                bookkeeping(
                    plan,
                    &new_record,
                    format!("nothing to change; recovery recorded, escalation streak reset{noted}"),
                )
            }
            Some(Ok(plan)) => {
                new_record.change = plan.summary.clone();
                self.write_step(
                    work,
                    object,
                    &with_marker(plan),
                    &new_record,
                    invocation,
                    false,
                )
            }
            Some(Err(Refusal::Skip(why))) => skip(why),
            Some(Err(Refusal::Hold(why))) => {
                Step::Done(Outcome::skipped(source, &SkipReason::Held(why)))
            }
            Some(Err(Refusal::Fail(why))) => Step::Done(Outcome::failed(source, &Error::Plan(why))),
        }
    }

    /// Revert request: restore the recorded `previous` exactly, only on an opted-in
    /// object whose last action is the one meant and was not edited since.
    pub(super) fn revert_step(
        &self,
        work: &Work<R>,
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
            return Step::Done(Outcome::skipped(source, &SkipReason::Declined(why)));
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
                return Step::Done(Outcome::skipped(source, &SkipReason::Declined(why)));
            }
            // A person asked for this revert: what holds it back is theirs to see, as a failure.
            Err(Refusal::Fail(why) | Refusal::Hold(why)) => return fail(why),
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
}
