//! Decide, for undoing, as a [`Step`] for one object with an action record: a resolved alert
//! records the recovery or restores the previous configuration; a revert request restores
//! it exactly.

use kube::api::DynamicObject;
use serde_json::{Value, json};
use tracing::instrument;

use super::bookkeeping::Step;
use super::{Pipeline, Subject};
use crate::cluster::record::{self, ActionRecord, Reversal};
use crate::error::Error;
use crate::guard::escalation::{self, ESCALATED_ANNOTATION};
use crate::guard::skip::SkipReason;
use crate::intake::{AlertInput, RevertRequest};
use crate::remediation::{Plan, PlanContext, Refusal, Remediation};
use crate::report::{Outcome, Source};

/// What a resolution notes on an escalated target.
struct Noted {
    /// The escalation's annotation with the resolution noted, when the target is escalated
    /// for this alert.
    escalation: Option<String>,
    /// The words for it in the report (empty when nothing is noted).
    words: String,
}

impl Noted {
    /// The merge patch that writes the noted escalation.
    fn marker(&self) -> Value {
        json!({"metadata": {"annotations": {ESCALATED_ANNOTATION: self.escalation}}})
    }

    /// `plan` with the noted escalation written too, when there is one.
    fn on(&self, mut plan: Plan) -> Plan {
        if self.escalation.is_some() {
            json_patch::merge(&mut plan.patch, &self.marker());
        }
        plan
    }
}

fn resolved(source: &Source, what: String) -> Step {
    Step::Done(Outcome::skipped(
        source.clone(),
        &SkipReason::Resolved(what),
    ))
}

impl<R: Remediation> Pipeline<R> {
    /// Resolved alert: record the recovery on the object its alert acted on, and restore
    /// what the remediation restores.
    #[instrument(
        name = "decide",
        skip_all,
        fields(trace_id = %at.invocation.trace_id, alert = at.alert(), target = %at.target)
    )]
    pub(super) fn resolved_step(
        &self,
        at: &Subject<'_, R>,
        input: &AlertInput,
        object: &DynamicObject,
    ) -> Step {
        let source = &at.work.source;
        let target = &at.target;
        let record = match self.read_record(object) {
            Ok(Some(record)) => record,
            Ok(None) => {
                return resolved(
                    source,
                    format!("nothing to undo; no action recorded on {target}"),
                );
            }
            Err(err) => return Step::Done(Outcome::failed(source.clone(), &err)),
        };
        if !record::opted_in(object.metadata.labels.as_ref()) {
            let why = format!("{target} is no longer labelled auto_remediation=active; left as is");
            return resolved(source, why);
        }
        if record.fingerprint != input.alert.fingerprint {
            let why = format!(
                "the action on {target} was for another alert ({})",
                record.fingerprint
            );
            return resolved(source, why);
        }
        // An escalated target notes each resolution: it is handed back once the alert stays
        // resolved long enough.
        let escalation = escalation::on_resolved(
            object.metadata.annotations.as_ref(),
            self.remediation.name(),
            &input.alert.fingerprint,
            at.invocation.now,
        );
        let words = escalation.as_ref().map_or(String::new(), |_| {
            format!(
                "; the escalation notes the resolution: handed back if the alert stays resolved for {}s",
                self.config.policy.escalation_window.as_secs()
            )
        });
        let noted = Noted { escalation, words };
        if record.recovered() {
            return self.note_resolution(at, object, &record, &noted);
        }
        self.recover(at, input, object, record, &noted)
    }

    /// The recovery is recorded already: only an escalation's note of this resolution is
    /// written.
    fn note_resolution(
        &self,
        at: &Subject<'_, R>,
        object: &DynamicObject,
        record: &ActionRecord,
        noted: &Noted,
    ) -> Step {
        let dry_run = at.work.dry_run(self.config.dry_run).is_some();
        if noted.escalation.is_none() || dry_run {
            return resolved(&at.work.source, "recovery already recorded".into());
        }
        let plan = Plan {
            patch: noted.marker(),
            summary: "resolution after the escalation recorded".into(),
            action: "Recovered",
            previous: None,
            applied: None,
        };
        let what = format!("recovery already recorded{}", noted.words);
        self.bookkeeping(at, object, plan, record, what)
    }

    /// Records the recovery, with the restoring change the remediation plans, if any.
    fn recover(
        &self,
        at: &Subject<'_, R>,
        input: &AlertInput,
        object: &DynamicObject,
        record: ActionRecord,
        noted: &Noted,
    ) -> Step {
        let source = &at.work.source;
        let context = PlanContext {
            now: at.invocation.now,
            config: &self.config,
            facts: &(),
        };
        let planned = self
            .remediation
            .plan_resolved(input, object, &record, context);
        let mut new_record = record;
        new_record.recovered_at = Some(at.invocation.now);
        match planned {
            None if at.work.dry_run(self.config.dry_run).is_some() => resolved(
                source,
                "nothing to change (dry run: recovery not recorded)".into(),
            ),
            None => {
                let plan = noted.on(Plan {
                    patch: json!({}),
                    summary: "recovery recorded; escalation streak reset".into(),
                    action: "Recovered",
                    previous: None,
                    applied: None,
                });
                let what = format!(
                    "nothing to change; recovery recorded, escalation streak reset{}",
                    noted.words
                );
                self.bookkeeping(at, object, plan, &new_record, what)
            }
            Some(Ok(plan)) => {
                new_record.change = plan.summary.clone();
                self.write_step(at, object, &noted.on(plan), &new_record, false)
            }
            Some(Err(Refusal::Skip(why))) => resolved(source, why),
            Some(Err(Refusal::Hold(why))) => {
                Step::Done(Outcome::skipped(source.clone(), &SkipReason::Held(why)))
            }
            Some(Err(Refusal::Fail(why))) => {
                Step::Done(Outcome::failed(source.clone(), &Error::Plan(why)))
            }
        }
    }

    /// A write that changes only the record (and the escalation's note): reported as the
    /// skip it is, with its patch, counted against no budget.
    fn bookkeeping(
        &self,
        at: &Subject<'_, R>,
        object: &DynamicObject,
        plan: Plan,
        new_record: &ActionRecord,
        what: String,
    ) -> Step {
        match self.write_step(at, object, &plan, new_record, false) {
            Step::Write(mut write) => {
                write.outcome =
                    Outcome::skipped(at.work.source.clone(), &SkipReason::Resolved(what));
                write.counts_against_budget = false;
                Step::Write(write)
            }
            done => done,
        }
    }

    /// Revert request: restore the recorded `previous` exactly, only on an opted-in
    /// object whose last action is the one meant and was not edited since.
    #[instrument(
        name = "decide",
        skip_all,
        fields(trace_id = %at.invocation.trace_id, alert = at.alert(), target = %at.target)
    )]
    pub(super) fn revert_step(
        &self,
        at: &Subject<'_, R>,
        request: &RevertRequest,
        object: &DynamicObject,
    ) -> Step {
        let source = at.work.source.clone();
        let target = &at.target;
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
                crate::intake::names::printable(meant)
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
            at: at.invocation.now,
            trace_id: at.invocation.trace_id.clone(),
            reason: request.reason.clone(),
            requested_by: request.requested_by.clone(),
        });
        self.write_step(at, object, &plan, &new_record, false)
    }
}
